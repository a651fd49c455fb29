"""Stream-ordered I/O (`File.read_async`/`write_async`) on any engine, with a fallback that always works.

An engine with stream-ordered I/O of its own (cuFile's `cuFileReadAsync`) queues the transfer on
the stream; where it has none, or gives up on it (an -EIO from cuFile's async call), the transfer
is done the way KvikIO's compatibility mode does it: synchronize the stream, then do the I/O on
the calling thread. `reset_stream_io()` lets every engine try its own path again.
"""
from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from . import memory
from .engines import registry
from .engines.base import StreamOp
from .errors import PygdsError
from .memory import BufferView

if TYPE_CHECKING:
    from .file import File, Lease

log = logging.getLogger(__name__)


def stream_handle(stream: object) -> int:
    """A raw stream value from an int, a cuda-python `CUstream`, a torch or CuPy stream, or None."""
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


def reset_stream_io() -> None:
    """Let stream-ordered I/O use each engine's own stream path again. cuFile gives its path up for
    the whole process at the first -EIO from its async calls (a driver that cannot run libcufile's
    stream path); opening the cuFile driver, or this, turns it back on."""
    for engine in registry.all_engines():
        engine.reset_stream_io()


class StreamIO:
    """One stream-ordered transfer; `wait()` returns the bytes moved or raises.

    It holds its `File` (a lease) from submission until `wait()` has seen it end (or, if the file is
    closed first, until `close()` has waited for it), so the descriptor and the engine's handle stay
    open while the stream may still use them. `native` tells whether the engine's own stream call
    took the transfer.
    """

    def __init__(self, file: File, view: BufferView, size: int, file_offset: int, buf_offset: int,
                 stream: int, write: bool) -> None:
        self._file, self._view, self._write = file, view, write
        self._args = (size, file_offset, buf_offset)
        self._stream = stream
        self._lease: Lease | None = None  # held from a native submission until it ends
        self._op: StreamOp | None = None
        self._result: int | None = None
        self._error: BaseException | None = None
        self._lock = threading.Lock()
        self.native = False

    @classmethod
    def start(cls, file: File, view: BufferView, size: int, file_offset: int, buf_offset: int, stream: int,
              *, write: bool) -> StreamIO:
        """Start a stream-ordered transfer of arguments `file` has checked."""
        io = cls(file, view, size, file_offset, buf_offset, stream, write)
        io._begin()
        return io

    def _begin(self) -> None:
        lease = self._file.lease(self._drain)
        try:
            size, file_offset, buf_offset = self._args
            self._op = lease.handle.stream_io(self._view, size, file_offset, buf_offset, self._stream,
                                              write=self._write)
            if self._op is None:
                self._result = self._threaded(lease)
            else:
                self.native = True
                self._lease, lease = lease, None  # the file stays held until wait() sees the end
        finally:
            if lease is not None:
                lease.release()

    def _threaded(self, lease: Lease) -> int:
        if memory.gpu_available():
            memory.gpu_runtime().stream_synchronize(self._stream)
        size, file_offset, buf_offset = self._args
        return lease.transfer(self._view, size, file_offset, buf_offset, writing=self._write)

    def wait(self) -> int:
        """Wait for the stream, then report; a transfer the engine gave back is redone threaded."""
        with self._lock:
            if self._error is not None:
                raise self._error
            if self._result is not None:
                return self._result
            lease, op = self._lease, self._op
            assert lease is not None and op is not None  # an unfinished transfer is a native one
            try:
                done = op.finish()
                self._result = self._threaded(lease) if done is None else done
            except BaseException as exc:
                self._error = exc
                raise
            finally:
                self._lease = self._op = None
                lease.release()
            return self._result

    def _drain(self) -> None:
        """Run by `File.close()`: see the transfer to its end. Its error is kept for `wait()`,
        whose caller owns it."""
        try:
            self.wait()
        except Exception as exc:  # noqa: BLE001 - kept, and raised again by the owner's wait()
            log.debug("pygds: stream-ordered I/O on %s ended with %s while the file closed", self._file.path, exc)
