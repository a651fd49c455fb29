"""`File`: GPU or host memory to and from a file, through cuFile or the POSIX engine.

Opened by path and mode, registered once, closed explicitly (or by `with`). `read`/`write` move
bytes synchronously and return the count; `pread`/`pwrite` return futures. Requests larger than
the task size are split over the shared pool (`pygds.pool`), a synchronous caller working through
the pieces too; buffered POSIX writes from host memory go in one call instead (the file system
serialises them anyway). Short reads at end of file are returned, never hidden; a short write raises.
"""
from __future__ import annotations

import errno
import logging
import os
import threading
from concurrent.futures import Future

from . import guard, pool
from ._lifetime import ClosedWhenCollected
from .engines.base import EngineHandle
from .engines.posix import PosixHandle
from .errors import FileClosedError, InvalidArgumentError, IOFailedError, PygdsError
from .memory import BufferView, as_buffer
from .stream import StreamIO
from .stream import submit as stream_submit

log = logging.getLogger(__name__)

_MODES = {
    "r": os.O_RDONLY,
    "r+": os.O_RDWR,
    "w": os.O_RDWR | os.O_CREAT | os.O_TRUNC,
    "w+": os.O_RDWR | os.O_CREAT | os.O_TRUNC,
    "a": os.O_RDWR | os.O_CREAT,
    "x": os.O_RDWR | os.O_CREAT | os.O_EXCL,
}
_MAX_OFFSET = (1 << 63) - 1
_GDS_APIS = {"cufile": "cuFile", "hipfile": "hipFile"}  # the GPU-direct engines, by engine name
_FAST_OFFSET_END = 1 << 62  # below it no request of one task can overflow a file offset


def _open_fd(path: str, flags: int, perm: int, mode: str) -> int:
    try:
        return os.open(path, flags | os.O_CLOEXEC, perm)
    except FileNotFoundError as exc:
        parent = os.path.dirname(os.path.abspath(path))
        cause = (f"directory {parent} does not exist; create it first" if not os.path.isdir(parent)
                 else "no such file; open with mode 'w' or 'x' to create it")
        raise FileNotFoundError(exc.errno, f"cannot open {path} (mode {mode!r}): {cause}", path) from None
    except PermissionError as exc:
        raise PermissionError(exc.errno, f"cannot open {path} (mode {mode!r}): permission denied; "
                                         "check the file and directory permissions or open read-only", path) from None
    except OSError as exc:
        if exc.errno == errno.EINVAL and flags & getattr(os, "O_DIRECT", 0):
            raise OSError(exc.errno, f"cannot open {path} with O_DIRECT: the file system does not support it "
                                     "(tmpfs before Linux 6.6, some FUSE file systems); open without direct=True", path) from None
        raise OSError(exc.errno, f"cannot open {path} (mode {mode!r}): {exc.strerror}", path) from None


def _gds_handle_class(engine: str) -> type[EngineHandle]:
    """The handle class of a GPU-direct engine, imported only when that engine is chosen."""
    if engine == "cufile":
        from .engines.cufile import CuFileHandle

        return CuFileHandle
    from .engines.hipfile import HipFileHandle

    return HipFileHandle


class File(ClosedWhenCollected):
    """A file for GPU-direct (or POSIX) I/O.

    `mode` is "r", "r+", "w", "w+", "a" or "x" (as for `open`, always binary). `engine` is
    "auto" (cuFile when it works, else POSIX, the reason logged once), "cufile", "hipfile" or
    "posix"; `PYGDS_ENGINE` sets the default. `direct=True` opens with `O_DIRECT` (unaligned
    offsets and sizes still work).
    """

    def __init__(self, path: str | os.PathLike, mode: str = "r", *, engine: str | None = None,
                 direct: bool = False, perm: int = 0o644) -> None:
        if mode not in _MODES:
            raise InvalidArgumentError(f"unknown mode {mode!r}; use one of {', '.join(_MODES)}")
        self.path = os.fspath(path)
        self.mode = mode
        self.direct = bool(direct)
        self._lock = threading.Lock()
        self._handle: EngineHandle | None = None
        self.fd = _open_fd(self.path, _MODES[mode], perm, mode)
        self.direct_fd: int | None = None
        try:
            if self.direct:
                if not hasattr(os, "O_DIRECT"):
                    raise InvalidArgumentError("O_DIRECT is not available on this platform; open without direct=True")
                flags = _MODES[mode] & ~(os.O_CREAT | os.O_TRUNC | os.O_EXCL)
                self.direct_fd = _open_fd(self.path, flags | os.O_DIRECT, perm, mode)
            self._handle = self._open_engine(engine)
        except BaseException:
            self._close_fds()
            raise

    def _open_engine(self, engine: str | None) -> EngineHandle:
        choice = guard.choose_engine(engine)
        requested = guard.requested_engine(engine)
        fd = self.direct_fd if self.direct_fd is not None else self.fd
        if choice.name in _GDS_APIS:
            try:
                return _gds_handle_class(choice.name)(fd, self.path)
            except PygdsError as exc:
                if requested != "auto":
                    raise
                guard.log_fallback_once(f"{_GDS_APIS[choice.name]} failed on {self.path}: {exc}")
        elif requested == "auto":
            guard.log_fallback_once(choice.reason)
        return PosixHandle(self.fd, self.direct_fd)

    @property
    def engine(self) -> str:
        """The engine actually in use: "cufile", "hipfile" or "posix"."""
        return self._live().engine

    @property
    def closed(self) -> bool:
        return self._handle is None

    def size(self) -> int:
        """The file's current size in bytes."""
        self._live()
        return os.fstat(self.fd).st_size

    def _live(self) -> EngineHandle:
        handle = self._handle
        if handle is None:
            raise FileClosedError(f"I/O on closed file {self.path}; open a new pygds.File")
        return handle

    # -- argument checks -----------------------------------------------------------------
    def _prepare(self, buf: object, size: int | None, file_offset: int, buf_offset: int,
                 *, writing: bool) -> tuple[EngineHandle, BufferView, int]:
        handle = self._handle
        if handle is None:
            raise FileClosedError(f"I/O on closed file {self.path}; open a new pygds.File")
        if writing and self.mode == "r":
            raise IOFailedError(errno.EBADF, f"cannot write to {self.path}: it was opened read-only "
                                             "(mode 'r'); open it with 'r+', 'w' or 'a'")
        # `type(x) is int` is the fast test (it also refuses bool); anything else gets the full check
        if not (type(file_offset) is int and type(buf_offset) is int and file_offset >= 0 and buf_offset >= 0):
            for name, value in (("file_offset", file_offset), ("buf_offset", buf_offset)):
                if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                    raise InvalidArgumentError(f"{name} must be a non-negative int, got {value!r}")
        view = buf if isinstance(buf, BufferView) else as_buffer(buf, writable=not writing)
        if size is None:
            size = view.nbytes - buf_offset
        if not (type(size) is int and size >= 0):
            raise InvalidArgumentError(f"size must be a non-negative int, got {size!r}")
        if buf_offset + size > view.nbytes:
            raise InvalidArgumentError(f"the buffer holds {view.nbytes} bytes but the request needs "
                                       f"{buf_offset + size} (buf_offset {buf_offset} + size {size}); "
                                       "pass a larger buffer or a smaller size")
        if file_offset + size > _MAX_OFFSET:
            raise InvalidArgumentError(f"file_offset {file_offset} + size {size} overflows a 64-bit file offset")
        if not writing and view.readonly:
            raise InvalidArgumentError("cannot read into a read-only buffer (bytes?); pass a bytearray or tensor")
        return handle, view, size

    # -- synchronous ------------------------------------------------------------------------
    def read(self, buf: object, size: int | None = None, file_offset: int = 0, buf_offset: int = 0) -> int:
        """Read into `buf`; returns the bytes read, fewer than `size` only at end of file."""
        handle = self._handle
        # The small-request fast path (issue 8): a BufferView, plain ints, one task; the same
        # checks as `_prepare`, which every other call goes through.
        if (type(buf) is BufferView and type(size) is type(file_offset) is type(buf_offset) is int
                and handle is not None and 0 < size and (size <= pool.MIN_TASK_SIZE or size <= pool.task_size())
                and 0 <= file_offset < _FAST_OFFSET_END
                and 0 <= buf_offset and buf_offset + size <= buf.nbytes and not buf.readonly):
            try:
                done = handle.read(buf, size, file_offset, buf_offset)
            except IOFailedError:
                raise
            except OSError as exc:
                raise _os_failure(exc, "read", self.path, 0, size, file_offset) from exc
            if done == size or done <= 0:
                return done
            return _read_full(handle, buf, size, file_offset, buf_offset, self.path, done)
        handle, view, size = self._prepare(buf, size, file_offset, buf_offset, writing=False)
        if pool.inline(size):
            return _read_full(handle, view, size, file_offset, buf_offset, self.path)
        return self._split(handle, view, size, file_offset, buf_offset, writing=False, caller_helps=True).result()

    def write(self, buf: object, size: int | None = None, file_offset: int = 0, buf_offset: int = 0) -> int:
        """Write from `buf`; returns the bytes written (all of them, or an exception)."""
        handle = self._handle
        if (type(buf) is BufferView and type(size) is type(file_offset) is type(buf_offset) is int
                and handle is not None and 0 < size and (size <= pool.MIN_TASK_SIZE or size <= pool.task_size())
                and 0 <= file_offset < _FAST_OFFSET_END and 0 <= buf_offset and buf_offset + size <= buf.nbytes
                and self.mode != "r"):  # `read`'s fast path, for writing
            return _write_full(handle, buf, size, file_offset, buf_offset, self.path)
        handle, view, size = self._prepare(buf, size, file_offset, buf_offset, writing=True)
        if pool.inline(size) or self._serial_write(handle, view):
            return _write_full(handle, view, size, file_offset, buf_offset, self.path)
        return self._split(handle, view, size, file_offset, buf_offset, writing=True, caller_helps=True).result()

    # -- futures ----------------------------------------------------------------------------
    def pread(self, buf: object, size: int | None = None, file_offset: int = 0, buf_offset: int = 0) -> Future:
        """Like `read`, but returns a `concurrent.futures.Future` of the byte count."""
        handle, view, size = self._prepare(buf, size, file_offset, buf_offset, writing=False)
        return self._split(handle, view, size, file_offset, buf_offset, writing=False, caller_helps=False)

    def pwrite(self, buf: object, size: int | None = None, file_offset: int = 0, buf_offset: int = 0) -> Future:
        """Like `write`, but returns a `concurrent.futures.Future` of the byte count."""
        handle, view, size = self._prepare(buf, size, file_offset, buf_offset, writing=True)
        return self._split(handle, view, size, file_offset, buf_offset, writing=True, caller_helps=False)

    def _serial_write(self, handle: EngineHandle, view: BufferView) -> bool:
        """Buffered POSIX writes from host memory go in one call: local Linux file systems (ext4,
        XFS, btrfs) hold the inode lock through a buffered write, so split tasks would only queue
        for it and add their own cost (measured in BENCHMARKS.md)."""
        return self.direct_fd is None and handle.engine == "posix" and view.kind != "device"

    def _split(self, handle: EngineHandle, view: BufferView, size: int, file_offset: int, buf_offset: int,
               *, writing: bool, caller_helps: bool) -> Future:
        full = _write_full if writing else _read_full
        path = self.path

        def part(start: int, n: int) -> int:
            return full(handle, view, n, file_offset + start, buf_offset + start, path)

        step = max(size, 1) if writing and self._serial_write(handle, view) else None
        return pool.split(part, size, caller_helps=caller_helps, step=step)

    # -- stream-ordered ---------------------------------------------------------------------
    def read_async(self, buf: object, size: int | None = None, file_offset: int = 0, buf_offset: int = 0,
                   stream: object = None) -> StreamIO:
        """Stream-ordered read (`cuFileReadAsync`); `wait()` on the result gives the byte count."""
        _, _, size = self._prepare(buf, size, file_offset, buf_offset, writing=False)
        return stream_submit(self, buf, size, file_offset, buf_offset, stream, write=False)

    def write_async(self, buf: object, size: int | None = None, file_offset: int = 0, buf_offset: int = 0,
                    stream: object = None) -> StreamIO:
        """Stream-ordered write (`cuFileWriteAsync`); `wait()` on the result gives the byte count."""
        _, _, size = self._prepare(buf, size, file_offset, buf_offset, writing=True)
        return stream_submit(self, buf, size, file_offset, buf_offset, stream, write=True)

    # -- lifetime ---------------------------------------------------------------------------
    def fsync(self) -> None:
        """Flush the file's data to stable storage."""
        self._live()
        os.fsync(self.fd)

    def close(self) -> None:
        """Deregister and close; closing twice is harmless."""
        with self._lock:
            handle, self._handle = self._handle, None
        if handle is not None:
            try:
                handle.close()
            finally:
                self._close_fds()

    def _close_fds(self) -> None:
        for fd in (self.direct_fd, self.fd):
            if fd is not None and fd >= 0:
                os.close(fd)
        self.fd, self.direct_fd = -1, None

    def __repr__(self) -> str:
        state = "closed" if self.closed else self.engine
        return f"<pygds.File {self.path!r} mode={self.mode!r} {state}{' O_DIRECT' if self.direct else ''}>"


_FIXES = {
    errno.ENOSPC: "free space on that file system or use another path",
    errno.EDQUOT: "raise the disk quota or free space within it",
    errno.EFBIG: "the file-size limit was reached (ulimit -f / RLIMIT_FSIZE); raise it",
    errno.EIO: "the device reported an I/O error; check it (dmesg) and the file system",
    errno.EROFS: "the file system is mounted read-only; remount it read-write or use another path",
    errno.EACCES: "check the file's permissions",
    errno.EPERM: "check the file's permissions and attributes",
    errno.EINVAL: "with O_DIRECT the file system may reject this request; try without direct=True",
}


def _os_failure(exc: OSError, op: str, path: str, done: int, size: int, file_offset: int) -> IOFailedError:
    """An `IOFailedError` naming the operation, the file, how far it got, the cause and the fix."""
    code = exc.errno or errno.EIO
    fix = _FIXES.get(code, "see the operating system error above")
    return IOFailedError(code, f"{op} of {size} bytes at offset {file_offset} of {path} failed after "
                               f"{done} bytes: {os.strerror(code)} ({errno.errorcode.get(code, code)}); {fix}")


def _read_full(handle: EngineHandle, view: BufferView, size: int, file_offset: int, buf_offset: int,
               path: str = "", done: int = 0) -> int:
    """Read until `size` bytes or end of file: one engine call unless it comes back short.
    `done`: bytes already read by the caller."""
    try:
        if size and not done:
            done = handle.read(view, size, file_offset, buf_offset)
        while 0 < done < size:
            got = handle.read(view, size - done, file_offset + done, buf_offset + done)
            if got <= 0:
                break
            done += got
    except IOFailedError:
        raise
    except OSError as exc:
        raise _os_failure(exc, "read", path, done, size, file_offset) from exc
    return done


def _write_full(handle: EngineHandle, view: BufferView, size: int, file_offset: int, buf_offset: int,
                path: str) -> int:
    done = 0
    try:
        while done < size:
            got = handle.write(view, size - done, file_offset + done, buf_offset + done)
            if got <= 0:
                raise IOFailedError(errno.EIO, f"short write to {path}: {done} of {size} bytes written at offset "
                                               f"{file_offset}; the device may be full or failing")
            done += got
    except IOFailedError:
        raise
    except OSError as exc:
        raise _os_failure(exc, "write", path, done, size, file_offset) from exc
    return done
