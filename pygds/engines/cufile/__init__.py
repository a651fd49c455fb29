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

from ... import cuda
from ..._probe import Check
from ...memory import BufferView
from ..base import BatchOp, Engine, EngineBatch
from ..gds import Registry
from . import batch, stream
from .batch import CuFileBatch
from .check import check_proc_modules, ensure_safe, gds_mode, nvidia_fs_loaded, usable
from .driver import CuFileDriver, CuFileRegisteredBuffer, close_shared, shared
from .handle import CuFileHandle

__all__ = ["ENGINE", "CuFileBatch", "CuFileDriver", "CuFileEngine", "CuFileHandle", "CuFileRegisteredBuffer",
           "check_proc_modules", "close_shared", "ensure_safe", "gds_mode", "nvidia_fs_loaded", "shared",
           "usable"]


class CuFileEngine(Engine):
    name = "cufile"
    label = "cuFile"

    def check(self) -> Check:
        return usable()

    def preference(self) -> Check:
        """cuFile in GDS mode; without nvidia-fs (compatibility mode: pread/pwrite into libcufile's own
        bounce buffers) the POSIX engine, which reads host memory directly and stages device memory
        in pinned buffers itself, as KvikIO's default does there, unless pygds cannot copy device
        memory (no cuda-python), where cuFile stays the only way to it."""
        mode = gds_mode()
        if mode.ok:
            return mode
        if not cuda.cuda_available():
            return Check(True, f"{mode.reason}; still cuFile: without cuda-python it is pygds's only way to "
                               "device memory", "install cuda-python (pygds[cuda13] or [cuda12])")
        return Check(False, f"{mode.reason}; pygds's POSIX engine is faster there: preadv/pwritev straight "
                            "into host memory, device memory staged in pinned bounce buffers", mode.fix)

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
