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
from typing import TYPE_CHECKING

from . import memory
from .engines.base import EngineHandle
from .errors import IOFailedError, PygdsError, check_status, errno_advice
from .memory import BufferView

if TYPE_CHECKING:
    from .file import File

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
    """One stream-ordered transfer; `wait()` returns the bytes moved or raises.

    It counts as a user of its `File` from submission until `wait()` has seen it end (or, if the
    file is closed first, until `close()` has waited for it), so the descriptor and the cuFile
    handle stay open while the stream may still use them.
    """

    def __init__(self, file: File, view: BufferView, size: int, file_offset: int, buf_offset: int,
                 stream: int, write: bool) -> None:
        self._file, self._view, self._write = file, view, write
        self._args = (size, file_offset, buf_offset)
        self._stream = stream
        self._size = ctypes.c_size_t(size)
        self._file_offset = ctypes.c_int64(file_offset)
        self._buf_offset = ctypes.c_int64(0)
        self._done = ctypes.c_ssize_t(0)
        self._handle: EngineHandle | None = None  # held from an async submission until it ends
        self._result: int | None = None
        self._error: BaseException | None = None
        self._lock = threading.Lock()
        self.used_cufile_async = False

    def _start(self) -> None:
        handle = self._file._acquire(self._drain)
        in_flight = False
        try:
            if handle.engine == "cufile" and _async_broken is None:
                self._submit_cufile(handle)
                in_flight = True  # the file stays counted until wait() sees the end
            else:
                self._result = self._threaded(handle)
        finally:
            if not in_flight:
                self._handle = None
                self._file._release(self._drain)

    def _submit_cufile(self, handle: EngineHandle) -> None:
        from ._lib import cufile

        size, _, buf_offset = self._args
        base, offset = handle._base(self._view, size, buf_offset)
        self._buf_offset.value = offset
        self._handle = handle
        fn = cufile().cuFileWriteAsync if self._write else cufile().cuFileReadAsync
        check_status("cuFileWriteAsync" if self._write else "cuFileReadAsync",
                     fn(handle.handle, ctypes.c_void_p(base), ctypes.byref(self._size),
                        ctypes.byref(self._file_offset), ctypes.byref(self._buf_offset),
                        ctypes.byref(self._done), ctypes.c_void_p(self._stream)))
        self.used_cufile_async = True

    def _threaded(self, handle: EngineHandle) -> int:
        if memory.gpu_available():
            memory.gpu_runtime().stream_synchronize(self._stream)
        size, file_offset, buf_offset = self._args
        return self._file._transfer(handle, self._view, size, file_offset, buf_offset, writing=self._write)

    def wait(self) -> int:
        """Wait for the stream, then report; falls back to the threaded path on cuFile's -EIO."""
        with self._lock:
            if self._error is not None:
                raise self._error
            if self._result is not None:
                return self._result
            handle = self._handle
            assert handle is not None  # an unfinished transfer is an async one
            try:
                self._result = self._finish(handle)
            except BaseException as exc:
                self._error = exc
                raise
            finally:
                self._handle = None
                self._file._release(self._drain)
            return self._result

    def _finish(self, handle: EngineHandle) -> int:
        global _async_broken
        memory.gpu_runtime().stream_synchronize(self._stream)
        done = self._done.value
        if done >= 0:
            return done
        if done == -errno.EIO:
            with _lock:
                first = _async_broken is None
                _async_broken = "cuFile async I/O returned -EIO (compatibility mode without nvidia-fs)"
            if first:
                log.warning("pygds: %s; stream-ordered I/O now synchronizes the stream and uses the "
                            "threaded path", _async_broken)
            return self._threaded(handle)
        op = "cuFileWriteAsync" if self._write else "cuFileReadAsync"
        advice = errno_advice(-done)
        raise IOFailedError(-done, f"{op} on {self._file.path} failed: {errno.errorcode.get(-done, -done)}"
                                   + (f"; {advice}" if advice else ""), op=op, path=self._file.path)

    def _drain(self) -> None:
        """Run by `File.close()`: see the transfer to its end. Its error is kept for `wait()`,
        whose caller owns it."""
        try:
            self.wait()
        except Exception as exc:  # noqa: BLE001 - kept, and raised again by the owner's wait()
            log.debug("pygds: stream-ordered I/O on %s ended with %s while the file closed", self._file.path, exc)


def submit(file: File, view: BufferView, size: int, file_offset: int, buf_offset: int, stream: object,
           *, write: bool) -> StreamIO:
    """Start a stream-ordered transfer of checked arguments (`File.read_async`/`write_async`)."""
    io = StreamIO(file, view, size, file_offset, buf_offset, stream_handle(stream), write)
    io._start()
    return io
