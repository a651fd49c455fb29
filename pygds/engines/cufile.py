"""The cuFile engine: one registered cuFile handle per file, reads and writes through libcufile.

Views inside a `RegisteredBuffer` are passed as (registered base, offset) so cuFile uses the
registration; any other memory (unregistered device memory, host memory) is passed as is and
cuFile stages it itself.
"""
from __future__ import annotations

import ctypes
from bisect import bisect_right

from .. import _cufile_abi as abi
from .._lib import cufile
from ..driver import registry, shared
from ..errors import check_status, decode_io_result
from ..memory import BufferView
from .base import EngineHandle


class CuFileHandle(EngineHandle):
    """A file descriptor registered with `cuFileHandleRegister` (the shared driver kept open)."""

    engine = "cufile"

    def __init__(self, fd: int, path: str = "") -> None:
        self.path = path
        shared()
        self._lib = cufile()
        self.handle = abi.CUfileHandle_t()
        descr = abi.CUfileDescr_t()
        descr.type = abi.CU_FILE_HANDLE_TYPE_OPAQUE_FD
        descr.handle.fd = fd
        check_status(f"cuFileHandleRegister({path})",
                     self._lib.cuFileHandleRegister(ctypes.byref(self.handle), ctypes.byref(descr)))
        # bound once: looked up on every call otherwise
        self._read = self._lib.cuFileRead
        self._write = self._lib.cuFileWrite

    def _base(self, view: BufferView, size: int, buf_offset: int) -> tuple[int, int]:
        """(registered base, offset) for memory inside a registration, else (address, 0)."""
        ptr = view.ptr + buf_offset
        base = registry.find(ptr, size)
        if base is None:
            return ptr, 0
        return base, ptr - base

    # read and write do `_base`'s lookup inline, without a call: they are the per-call hot path
    # whose cost issue 8 bounds (see BENCHMARKS.md)
    def read(self, view: BufferView, size: int, file_offset: int, buf_offset: int) -> int:
        ptr = view.ptr + buf_offset
        starts, ends = registry.ranges
        i = bisect_right(starts, ptr) - 1
        if i >= 0 and ptr + size <= ends[i]:
            base = starts[i]
            ret = self._read(self.handle, base, size, file_offset, ptr - base)
        else:
            ret = self._read(self.handle, ptr, size, file_offset, 0)
        if ret >= 0:
            return ret
        return decode_io_result("cuFileRead", ret, ctypes.get_errno(), path=self.path)

    def write(self, view: BufferView, size: int, file_offset: int, buf_offset: int) -> int:
        ptr = view.ptr + buf_offset
        starts, ends = registry.ranges
        i = bisect_right(starts, ptr) - 1
        if i >= 0 and ptr + size <= ends[i]:
            base = starts[i]
            ret = self._write(self.handle, base, size, file_offset, ptr - base)
        else:
            ret = self._write(self.handle, ptr, size, file_offset, 0)
        if ret >= 0:
            return ret
        return decode_io_result("cuFileWrite", ret, ctypes.get_errno(), path=self.path)

    def close(self) -> None:
        if self.handle:
            self._lib.cuFileHandleDeregister(self.handle)
            self.handle = abi.CUfileHandle_t()
