"""Shared fixtures: the CUDA driver stand-in, KV stores closed at the end of a test, and skipping `gpu` tests where no GPU is."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess

import pytest

from standin.build import CompilerMissing, Standin, build_standin

GPU_ENV = "PYGDS_TEST_GPU"


@pytest.fixture(scope="session")
def standin(tmp_path_factory: pytest.TempPathFactory) -> Standin:
    """The stand-in `libcuda.so.1` and sandbox shim, built once per session."""
    try:
        return build_standin(tmp_path_factory.mktemp("standin"))
    except CompilerMissing as exc:
        pytest.skip(str(exc))


@functools.lru_cache(maxsize=None)
def gpu_absent_reason() -> str | None:
    """None when `gpu` tests should run, else why they are skipped.

    PYGDS_TEST_GPU=1 forces them on, PYGDS_TEST_GPU=0 off; otherwise they run when
    `nvidia-smi -L` lists a GPU or /dev/nvidia0 exists.
    """
    forced = os.environ.get(GPU_ENV)
    if forced == "1":
        return None
    if forced == "0":
        return f"{GPU_ENV}=0"
    if os.path.exists("/dev/nvidia0"):
        return None
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            listed = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20)
        except (OSError, subprocess.TimeoutExpired):
            listed = None
        if listed is not None and listed.returncode == 0 and "GPU" in listed.stdout:
            return None
    return (f"needs a real CUDA GPU: none found (no /dev/nvidia0, nvidia-smi -L lists none); "
            f"set {GPU_ENV}=1 to run anyway")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    gpu_items = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu_items:
        return
    reason = gpu_absent_reason()
    if reason is not None:
        for item in gpu_items:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture
def stores():
    """`make(paths, **options)`: KV stores on the POSIX engine unless told otherwise, all closed when
    the test ends."""
    from lmcache_plugin.store import KVStore, StoreOptions

    made = []

    def make(paths, **kw):
        kw.setdefault("engine", "posix")
        store = KVStore(StoreOptions(paths=paths, **kw))
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()
