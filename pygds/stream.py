"""Stream-ordered I/O: `cuFileReadAsync`/`cuFileWriteAsync`, with a fallback that always works.

In compatibility mode (no nvidia-fs) libcufile accepts the async calls but the stream-side copy
fails and the byte count comes back as -EIO. pygds detects that once, logs it once, and from then
on performs stream-ordered I/O the way KvikIO's compat mode does: synchronize the stream, then do
the I/O on the calling thread. The POSIX and hipFile engines always take that path.
"""
from __future__ import annotations

import ctypes
import errno
import logging
import threading

from . import memory
from .errors import IOFailedError, PygdsError, check_status

log = logging.getLogger(__name__)

_async_broken: str | None = None
_lock = threading.Lock()


def stream_handle(stream: object) -> int:
    """A raw `CUstream` value from an int, a cuda-python `CUstream`, a torch or CuPy stream, or None."""
    if stream is None:
        return 0
    for attr in ("cuda_stream", "ptr", "handle"):
        value = getattr(stream, attr, None)
        if isinstance(value, int):
            return value
    try:
        return int(stream)  # cuda-python CUstream supports int()
    except (TypeError, ValueError):
        raise PygdsError(f"cannot use {type(stream).__name__} as a CUDA stream; pass an int handle, "
                         "a cuda-python CUstream, or a torch/CuPy stream") from None


class StreamIO:
    """One stream-ordered transfer; `wait()` returns the bytes moved or raises."""

    def __init__(self, file: object, buf: object, size: int, file_offset: int, buf_offset: int,
                 stream: int, write: bool) -> None:
        self._file, self._buf, self._write = file, buf, write
        self._args = (size, file_offset, buf_offset)
        self._stream = stream
        self._size = ctypes.c_size_t(size)
        self._file_offset = ctypes.c_int64(file_offset)
        self._buf_offset = ctypes.c_int64(0)
        self._done = ctypes.c_ssize_t(0)
        self._result: int | None = None
        self.used_cufile_async = False

    def _start(self) -> None:
        handle = self._file._live()
        if handle.engine == "cufile" and _async_broken is None:
            from ._lib import cufile

            _, view, size = self._file._prepare(self._buf, self._args[0], self._args[1], self._args[2],
                                                writing=self._write)
            base, offset = handle._base(view, size, self._args[2])
            self._buf_offset.value = offset
            self._view = view
            lib = cufile()
            fn = lib.cuFileWriteAsync if self._write else lib.cuFileReadAsync
            check_status("cuFileWriteAsync" if self._write else "cuFileReadAsync",
                         fn(handle.handle, ctypes.c_void_p(base), ctypes.byref(self._size),
                            ctypes.byref(self._file_offset), ctypes.byref(self._buf_offset),
                            ctypes.byref(self._done), ctypes.c_void_p(self._stream)))
            self.used_cufile_async = True
        else:
            self._result = self._threaded()

    def _threaded(self) -> int:
        if memory.gpu_available():
            memory.gpu_runtime().stream_synchronize(self._stream)
        op = self._file.write if self._write else self._file.read
        return op(self._buf, *self._args)

    def wait(self) -> int:
        """Wait for the stream, then report; falls back to the threaded path on cuFile's -EIO."""
        global _async_broken
        if self._result is not None:
            return self._result
        memory.gpu_runtime().stream_synchronize(self._stream)
        done = self._done.value
        if done >= 0:
            self._result = done
            return done
        if done == -errno.EIO:
            with _lock:
                first = _async_broken is None
                _async_broken = "cuFile async I/O returned -EIO (compatibility mode without nvidia-fs)"
            if first:
                log.warning("pygds: %s; stream-ordered I/O now synchronizes the stream and uses the "
                            "threaded path", _async_broken)
            self._result = self._threaded()
            return self._result
        raise IOFailedError(-done, f"{'cuFileWriteAsync' if self._write else 'cuFileReadAsync'} on "
                                   f"{self._file.path} failed: {errno.errorcode.get(-done, -done)}")


def submit(file: object, buf: object, size: int, file_offset: int, buf_offset: int, stream: object,
           *, write: bool) -> StreamIO:
    io = StreamIO(file, buf, size, file_offset, buf_offset, stream_handle(stream), write)
    io._start()
    return io
