"""Tests in this folder call the real libcufile: they run only where PYGDS_TEST_CUFILE=1.

tests/test_cufile_on_standin.py runs them in a subprocess under the CUDA driver stand-in (which sets
it); on a GPU machine, run them directly with PYGDS_TEST_CUFILE=1.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from standin.build import NVIDIA_FS_ENV

from pygds.engines.cufile import nvidia_fs_loaded

HERE = Path(__file__).resolve().parent
SKIP_REASON = ("cuFile tests run under the stand-in driver via tests/test_cufile_on_standin.py, "
               "or on a GPU machine with PYGDS_TEST_CUFILE=1")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("PYGDS_TEST_CUFILE") == "1":
        return
    for item in items:  # this hook sees the whole session's items: mark only this folder's
        if HERE in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.skip(reason=SKIP_REASON))


@pytest.fixture
def gds_mode(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Present GDS mode (nvidia-fs loaded) to pygds: the sandbox shim of tests/standin opens a
    directory of ours for /proc/driver/nvidia-fs. libcufile, which opens only files inside it,
    keeps running its compatibility mode; `auto` then picks cuFile, as on a GDS machine."""
    if not nvidia_fs_loaded():
        nvidia_fs = tmp_path / "nvidia-fs"
        nvidia_fs.mkdir()
        monkeypatch.setenv(NVIDIA_FS_ENV, str(nvidia_fs))
        if not nvidia_fs_loaded():
            pytest.skip("presenting GDS mode needs the sandbox shim of tests/standin (LD_PRELOAD)")


@pytest.fixture
def compat_mode() -> None:
    """nvidia-fs absent, cuFile in its compatibility mode: the stand-in's (and most clouds') case."""
    if nvidia_fs_loaded():
        pytest.skip("nvidia-fs is loaded here: cuFile runs in GDS mode")
