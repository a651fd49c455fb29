"""Building LMCache 0.5.6's objects the way LMCache builds them, for tests (CPU only).

Plain functions and context managers, and two pytest fixtures that a test module uses by
importing them (`loop`, and the autouse `no_lmcache_environment`). Everything here is the real
`lmcache` package: configs, metadata, keys, LMCache's own backend factory and plugin loader, its
asyncio loop thread, and memory objects from its allocators.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
from collections import OrderedDict
from typing import Any, Iterator, Mapping

import pytest
import torch
from lmcache.utils import CacheEngineKey, start_loop_in_thread_with_exceptions
from lmcache.v1.config import LMCacheEngineConfig
from lmcache.v1.memory_management import MemoryFormat, MemoryObj
from lmcache.v1.metadata import LMCacheMetadata
from lmcache.v1.storage_backend import CreateStorageBackends, storage_plugin_launcher

PLUGIN = "gds"
MODULE_PATH = "lmcache_plugin.backend"
CLASS_NAME = "GdsPluginBackend"

# A small model: 2 layers, 16 tokens per chunk, 2 heads of 8 -> one chunk is 2 KiB of bf16.
LAYERS, CHUNK, HEADS, HEAD_DIM = 2, 16, 2, 8
KV_DTYPE = torch.bfloat16
MODEL = "test/model"


def registration(name: str = PLUGIN) -> dict[str, str]:
    """The two extra_config keys that make LMCache load this plugin under `name`."""
    return {f"storage_plugin.{name}.module_path": MODULE_PATH,
            f"storage_plugin.{name}.class_name": CLASS_NAME}


def plugin_extra(paths: str | None = None, name: str = PLUGIN, **scoped: Any) -> dict[str, Any]:
    """extra_config registering the plugin, with `paths` and other keys scoped to it."""
    extra: dict[str, Any] = registration(name)
    if paths is not None:
        scoped["gds_path"] = paths
    extra.update({f"storage_plugin.{name}.{k}": v for k, v in scoped.items()})
    return extra


def make_config(extra_config: Mapping[str, Any] | None = None, **kwargs: Any) -> Any:
    """An `LMCacheEngineConfig` as `from_defaults` makes it, with small CPU sizes and the
    plugin listed in `storage_plugins`."""
    values: dict[str, Any] = dict(chunk_size=CHUNK, local_cpu=False, max_local_cpu_size=0.02,
                                  storage_plugins=[PLUGIN])
    values.update(kwargs)
    if extra_config is not None:
        values["extra_config"] = dict(extra_config)
    return LMCacheEngineConfig.from_defaults(**values)


def config_from_env(environ: Mapping[str, str]) -> Any:
    """The config vLLM's LMCache connector builds (`lmcache_get_or_create_config`): from
    `LMCACHE_CONFIG_FILE` plus `LMCACHE_*` variables, or from the variables alone."""
    with patched_environ(environ):
        path = os.environ.get("LMCACHE_CONFIG_FILE")
        if path:
            config = LMCacheEngineConfig.from_file(path)
            config.update_config_from_env()
        else:
            config = LMCacheEngineConfig.from_env()
            config.validate()
    return config


@contextlib.contextmanager
def patched_environ(environ: Mapping[str, str]) -> Iterator[None]:
    """Replace every `LMCACHE_*` variable by those in `environ` for the duration."""
    saved = {k: v for k, v in os.environ.items() if k.startswith("LMCACHE_")}
    for k in saved:
        del os.environ[k]
    os.environ.update({k: v for k, v in environ.items() if k.startswith("LMCACHE_")})
    try:
        yield
    finally:
        for k in [k for k in os.environ if k.startswith("LMCACHE_")]:
            del os.environ[k]
        os.environ.update(saved)


def make_metadata(role: str | None = None, kv_dtype: torch.dtype = KV_DTYPE) -> LMCacheMetadata:
    return LMCacheMetadata(model_name=MODEL, world_size=1, local_world_size=1, worker_id=0, local_worker_id=0,
                           kv_dtype=kv_dtype, kv_shape=(LAYERS, 2, CHUNK, HEADS, HEAD_DIM), chunk_size=CHUNK,
                           role=role)


def make_key(chunk_hash: int, model: str = MODEL, dtype: torch.dtype = KV_DTYPE,
             tags: Mapping[str, str] | None = None) -> CacheEngineKey:
    configs = {f"lmcache.tag.{k}": v for k, v in (tags or {}).items()}
    return CacheEngineKey(model, 1, 0, chunk_hash, dtype, request_configs=configs)


def chunk_shape(tokens: int = CHUNK) -> torch.Size:
    """The KV_2LTD shape of one chunk: [2, layers, tokens, heads * head_dim]."""
    return torch.Size([2, LAYERS, tokens, HEADS * HEAD_DIM])


@contextlib.contextmanager
def event_loop() -> Iterator[asyncio.AbstractEventLoop]:
    """LMCache's asyncio loop in its own thread, as `StorageManager` runs it."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=start_loop_in_thread_with_exceptions, args=(loop,), daemon=True)
    thread.start()
    try:
        yield loop
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """LMCache's asyncio loop thread for one test."""
    with event_loop() as lp:
        yield lp


@pytest.fixture(autouse=True)
def no_lmcache_environment() -> Iterator[None]:
    """The plugin reads LMCACHE_* variables; the tests set the ones they mean."""
    with patched_environ({}):
        yield


def run(loop: asyncio.AbstractEventLoop, coro: Any, timeout: float = 30) -> Any:
    """Run a coroutine on LMCache's loop thread and wait for its result."""
    return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)


def create_backends(config: Any, metadata: LMCacheMetadata, loop: asyncio.AbstractEventLoop
                    ) -> OrderedDict[str, Any]:
    """LMCache's `CreateStorageBackends` (plugins loaded by its own launcher)."""
    return CreateStorageBackends(config, metadata, loop)


def launch_plugins(config: Any, metadata: LMCacheMetadata, loop: asyncio.AbstractEventLoop,
                   dst_device: str = "cpu", local_cpu_backend: Any = None) -> OrderedDict[str, Any]:
    """LMCache's `storage_plugin_launcher` alone, with a chosen `dst_device` (LMCache passes
    "cuda:<current device>" on a GPU worker and "cpu" elsewhere)."""
    backends: OrderedDict[str, Any] = OrderedDict()
    storage_plugin_launcher(config, metadata, loop, local_cpu_backend, dst_device, backends)
    return backends


def close_all(backends: Mapping[str, Any]) -> None:
    """Close plugins before LMCache's own backends, as `StorageManager.close` does."""
    for name in sorted(backends, key=lambda n: n == "LocalCPUBackend"):
        backends[name].close()


def random_obj(allocator_backend: Any, seed: int, tokens: int = CHUNK,
               dtype: torch.dtype = KV_DTYPE) -> MemoryObj:
    """A memory object from `allocator_backend` filled with random bits (every byte random)."""
    obj = allocator_backend.allocate(chunk_shape(tokens), dtype, fmt=MemoryFormat.KV_2LTD)
    assert obj is not None, "allocation failed"
    gen = torch.Generator().manual_seed(seed)
    raw = obj.raw_tensor.reshape(-1).view(torch.uint8)
    raw[:obj.get_size()] = torch.randint(0, 256, (obj.get_size(),), dtype=torch.uint8, generator=gen)
    return obj


def obj_bytes(obj: MemoryObj) -> bytes:
    """The bytes a memory object holds (its logical size)."""
    return obj.raw_tensor.reshape(-1).view(torch.uint8)[:obj.get_size()].cpu().numpy().tobytes()


class LogCapture(logging.Handler):
    """Collects records of loggers that do not propagate (LMCache's own)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def messages(self, level: int = logging.DEBUG) -> list[str]:
        return [r.getMessage() for r in self.records if r.levelno >= level]


@contextlib.contextmanager
def capture_logs(*names: str) -> Iterator[LogCapture]:
    """Capture the records of the named loggers (default: LMCache's backend loader and ours)."""
    handler = LogCapture()
    loggers = [logging.getLogger(n) for n in (names or ("lmcache.v1.storage_backend", "lmcache_plugin"))]
    saved = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        for lg, level in zip(loggers, saved):
            lg.removeHandler(handler)
            lg.setLevel(level)
