"""The hipFile engine's handle: a file registered with hipFileHandleRegister.

hipFile refuses host memory that is not registered with it, so `HipFileHandle` moves unregistered
host, pinned and managed memory with the POSIX engine on the same file, and device memory
(registered or not) through hipFileRead/hipFileWrite. Batches and stream-ordered I/O run on
pygds's thread pool (hipFile's own have no AMD backend yet).
"""
from __future__ import annotations

import ctypes
import fcntl
import os

from ... import _hipfile_abi as abi
from ..._lib import hipfile
from ...errors import HipFileError, decode_io_result
from ...memory import BufferView
from ..base import EngineHandle
from ..posix import PosixHandle
from .driver import HipFileDriver, check_status


class HipFileHandle(EngineHandle):
    """A file descriptor registered with `hipFileHandleRegister`; holds a driver reference.

    Device memory goes through hipFileRead/hipFileWrite (as registered base and offset when it lies
    in a `HipFileRegisteredBuffer`); other memory through a POSIX handle on the same file.
    """

    engine = "hipfile"

    def __init__(self, fd: int, path: str = "") -> None:
        self.path = path
        self._driver = HipFileDriver()
        self._lib = hipfile()
        self.handle = abi.hipFileHandle_t()
        self._buffered_fd: int | None = None
        descr = abi.hipFileDescr_t()
        descr.type = abi.hipFileHandleTypeOpaqueFD
        descr.handle.fd = fd
        try:
            check_status(f"hipFileHandleRegister({path})",
                         self._lib.hipFileHandleRegister(ctypes.byref(self.handle), ctypes.byref(descr)), path=path)
            self._posix = self._posix_handle(fd)
        except BaseException:
            self.close()
            raise
        # bound once: these are the per-call hot path
        self._read = self._lib.hipFileRead
        self._write = self._lib.hipFileWrite
        self._find = HipFileDriver.registry.find

    def _posix_handle(self, fd: int) -> PosixHandle:
        """POSIX I/O on the same file for memory hipFile refuses; an O_DIRECT `fd` gets a buffered twin."""
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        if not flags & getattr(os, "O_DIRECT", 0):
            return PosixHandle(fd)
        twin = f"/proc/self/fd/{fd}" if os.path.exists(f"/proc/self/fd/{fd}") else self.path
        self._buffered_fd = os.open(twin, (flags & os.O_ACCMODE) | os.O_CLOEXEC)
        return PosixHandle(self._buffered_fd, fd)

    def _target(self, view: BufferView, size: int, buf_offset: int) -> tuple[int, int] | None:
        """(base, offset) to hand hipFile, or None when POSIX must move this memory."""
        ptr = view.ptr + buf_offset
        base = self._find(ptr, size)
        if base is not None:
            return base, ptr - base
        return (ptr, 0) if view.kind == "device" else None

    def read(self, view: BufferView, size: int, file_offset: int, buf_offset: int) -> int:
        target = self._target(view, size, buf_offset)
        if target is None:
            return self._posix.read(view, size, file_offset, buf_offset)
        ret = self._read(self.handle, target[0], size, file_offset, target[1])
        if ret >= 0:
            return ret
        return decode_io_result("hipFileRead", ret, ctypes.get_errno(), path=self.path, error=HipFileError)

    def write(self, view: BufferView, size: int, file_offset: int, buf_offset: int) -> int:
        target = self._target(view, size, buf_offset)
        if target is None:
            return self._posix.write(view, size, file_offset, buf_offset)
        ret = self._write(self.handle, target[0], size, file_offset, target[1])
        if ret >= 0:
            return ret
        return decode_io_result("hipFileWrite", ret, ctypes.get_errno(), path=self.path, error=HipFileError)

    def close(self) -> None:
        if self.handle:
            self._lib.hipFileHandleDeregister(self.handle)
            self.handle = abi.hipFileHandle_t()
        if self._buffered_fd is not None:
            os.close(self._buffered_fd)
            self._buffered_fd = None
        if self._driver is not None:
            self._driver.close()
            self._driver = None
