"""The hipFile engine (AMD GPU-direct storage on ROCm through libhipfile), self-contained.

| module | holds |
|---|---|
| `check.py` | the never-hang guard: libhipfile loads, the HIP runtime answers with a GPU; `usable()` |
| `driver.py` | `HipFileDriver` (reference counted), `HipFileRegisteredBuffer`, the registry |
| `handle.py` | `HipFileHandle`: device memory through hipFileRead/Write, other memory through POSIX |

hipFile has no batch or stream-ordered I/O of its own here: `pygds.Batch` and `File.read_async`
run those on pygds's thread pool. Each file's handle holds its own driver reference.
"""
from __future__ import annotations

from ..._probe import Check
from ..base import Engine
from ..gds import Registry
from .check import ensure_safe, library_check, usable
from .driver import HipFileDriver, HipFileRegisteredBuffer
from .handle import HipFileHandle

__all__ = ["ENGINE", "HipFileDriver", "HipFileEngine", "HipFileHandle", "HipFileRegisteredBuffer", "ensure_safe",
           "library_check", "usable"]


class HipFileEngine(Engine):
    name = "hipfile"
    label = "hipFile"

    def check(self) -> Check:
        return usable()

    def open(self, fd: int, direct_fd: int | None, path: str) -> HipFileHandle:
        return HipFileHandle(direct_fd if direct_fd is not None else fd, path)

    def driver(self) -> HipFileDriver:
        return HipFileDriver()

    @property
    def registry(self) -> Registry:
        return HipFileDriver.registry


ENGINE = HipFileEngine()
