"""cuFile's stream-ordered I/O (`cuFileReadAsync`/`cuFileWriteAsync`) and when it gives up on it.

Where libcufile cannot do the stream-side work it accepts the async call and the byte count
comes back as -EIO. That depends on the CUDA driver, not on nvidia-fs alone: in compatibility mode
libcufile launches a copy kernel of its own (cuFileGpuCopy), which a real driver runs (libcufile 1.15
on an H200) and the test suite's stand-in driver cannot. The first such -EIO is logged once and turns
the native path off (`broken()` says why): stream-ordered I/O then synchronizes the stream and does
the I/O on the calling thread, as KvikIO's compat mode does. The switch is process-wide, as the
cause is; `reset()` turns the native path back on, and opening the cuFile driver does so too.
"""
from __future__ import annotations

import ctypes
import errno
import logging
import threading

from ... import cuda
from ..._lib import cufile
from ...errors import IOFailedError, check_status, errno_advice
from ..base import StreamOp

log = logging.getLogger(__name__)

_lock = threading.Lock()
_broken: str | None = None  # why native stream-ordered I/O is off, or None while it is on


def broken() -> str | None:
    """Why cuFile's native stream-ordered I/O is off in this process, or None while it is on."""
    return _broken


def reset() -> None:
    """Turn cuFile's native stream-ordered I/O back on (it turns itself off at the first -EIO)."""
    global _broken
    with _lock:
        _broken = None


def _give_up(reason: str) -> None:
    global _broken
    with _lock:
        first = _broken is None
        _broken = reason
    if first:
        log.warning("pygds: %s; stream-ordered I/O now synchronizes the stream and uses the threaded path", reason)


class CuFileStreamOp(StreamOp):
    """One `cuFileReadAsync`/`cuFileWriteAsync` queued on a stream; its arguments live here until
    the stream has run it (cuFile reads them from the stream)."""

    def __init__(self, handle: object, base: int, offset: int, size: int, file_offset: int, stream: int,
                 *, write: bool, path: str) -> None:
        self.op = "cuFileWriteAsync" if write else "cuFileReadAsync"
        self.path = path
        self._stream = stream
        self._size = ctypes.c_size_t(size)
        self._file_offset = ctypes.c_int64(file_offset)
        self._buf_offset = ctypes.c_int64(offset)
        self._done = ctypes.c_ssize_t(0)
        fn = cufile().cuFileWriteAsync if write else cufile().cuFileReadAsync
        check_status(self.op, fn(handle, ctypes.c_void_p(base), ctypes.byref(self._size),
                                 ctypes.byref(self._file_offset), ctypes.byref(self._buf_offset),
                                 ctypes.byref(self._done), ctypes.c_void_p(stream)))

    def finish(self) -> int | None:
        cuda.stream_synchronize(self._stream)
        done = self._done.value
        if done >= 0:
            return done
        if done == -errno.EIO:
            _give_up(f"{self.op} returned -EIO (libcufile could not run its stream path here; see cufile.log)")
            return None
        advice = errno_advice(-done)
        raise IOFailedError(-done, f"{self.op} on {self.path} failed: {errno.errorcode.get(-done, -done)}"
                                   + (f"; {advice}" if advice else ""), op=self.op, path=self.path)
