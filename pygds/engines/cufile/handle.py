"""The cuFile engine's handle: one registered cuFile handle per file, reads and writes through libcufile.

Views inside a registered buffer are passed as (registered base, offset) so cuFile uses the
registration; any other memory (unregistered device memory, host memory) is passed as is and
cuFile stages it itself.
"""
from __future__ import annotations

import ctypes
from bisect import bisect_right

from ... import _cufile_abi as abi
from ..._lib import cufile
from ...errors import check_status, decode_io_result
from ...memory import BufferView
from ..base import EngineHandle
from .driver import CuFileDriver, shared
from .stream import CuFileStreamOp, broken


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
        # bound once: read and write are the per-call hot path
        self._read = self._lib.cuFileRead
        self._write = self._lib.cuFileWrite
        self._registry = CuFileDriver.registry

    def target(self, view: BufferView, size: int, buf_offset: int) -> tuple[int, int]:
        """(registered base, offset) for memory inside a registration, else (address, 0)."""
        ptr = view.ptr + buf_offset
        base = self._registry.find(ptr, size)
        return (ptr, 0) if base is None else (base, ptr - base)

    def read(self, view: BufferView, size: int, file_offset: int, buf_offset: int) -> int:
        ptr = view.ptr + buf_offset  # `target` and `Registry.find`, inline: this is the per-call hot path
        starts, ends = self._registry.ranges
        i = bisect_right(starts, ptr) - 1
        base = starts[i] if i >= 0 and ptr + size <= ends[i] else ptr
        ret = self._read(self.handle, base, size, file_offset, ptr - base)
        if ret >= 0:
            return ret
        return decode_io_result("cuFileRead", ret, ctypes.get_errno(), path=self.path)

    def write(self, view: BufferView, size: int, file_offset: int, buf_offset: int) -> int:
        ptr = view.ptr + buf_offset  # as `read`
        starts, ends = self._registry.ranges
        i = bisect_right(starts, ptr) - 1
        base = starts[i] if i >= 0 and ptr + size <= ends[i] else ptr
        ret = self._write(self.handle, base, size, file_offset, ptr - base)
        if ret >= 0:
            return ret
        return decode_io_result("cuFileWrite", ret, ctypes.get_errno(), path=self.path)

    def stream_io(self, view: BufferView, size: int, file_offset: int, buf_offset: int, stream: int,
                  *, write: bool) -> CuFileStreamOp | None:
        if broken() is not None:
            return None
        base, offset = self.target(view, size, buf_offset)
        return CuFileStreamOp(self.handle, base, offset, size, file_offset, stream, write=write, path=self.path)

    def close(self) -> None:
        if self.handle:
            self._lib.cuFileHandleDeregister(self.handle)
            self.handle = abi.CUfileHandle_t()
