"""The cuFile engine (NVIDIA GPUDirect Storage through libcufile), self-contained.

| module | holds |
|---|---|
| `check.py` | the never-hang guard: /proc/modules readable, a CUDA driver answering; `usable()` |
| `driver.py` | `CuFileDriver` (reference counted), `CuFileRegisteredBuffer`, the registry, the shared reference |
| `handle.py` | `CuFileHandle`: cuFileRead/cuFileWrite, registered memory as (base, offset) |
| `batch.py` | `CuFileBatch`: cuFile's batch API, for device memory |
| `stream.py` | cuFileReadAsync/WriteAsync and the -EIO switch back to the threaded path |
"""
from __future__ import annotations

from collections.abc import Sequence

from ..._probe import Check
from ...memory import BufferView
from ..base import BatchOp, Engine, EngineBatch
from ..gds import Registry
from . import batch, stream
from .batch import CuFileBatch
from .check import check_proc_modules, ensure_safe, nvidia_fs_loaded, usable
from .driver import CuFileDriver, CuFileRegisteredBuffer, close_shared, shared
from .handle import CuFileHandle

__all__ = ["ENGINE", "CuFileBatch", "CuFileDriver", "CuFileEngine", "CuFileHandle", "CuFileRegisteredBuffer",
           "check_proc_modules", "close_shared", "ensure_safe", "nvidia_fs_loaded", "shared", "usable"]


class CuFileEngine(Engine):
    name = "cufile"
    label = "cuFile"

    def check(self) -> Check:
        return usable()

    def open(self, fd: int, direct_fd: int | None, path: str) -> CuFileHandle:
        return CuFileHandle(direct_fd if direct_fd is not None else fd, path)

    def driver(self) -> CuFileDriver:
        return CuFileDriver()

    @property
    def registry(self) -> Registry:
        return CuFileDriver.registry

    def batch_accepts(self, view: BufferView) -> bool:
        return batch.accepts(view.kind)

    def submit_batch(self, ops: Sequence[BatchOp]) -> EngineBatch:
        return CuFileBatch(ops)

    def close_shared(self) -> None:
        close_shared()

    def reset_stream_io(self) -> None:
        stream.reset()


ENGINE = CuFileEngine()
