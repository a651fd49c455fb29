"""`File`: GPU or host memory to and from a file, through a GPU-direct engine (cuFile, hipFile) or POSIX.

Opened by path and mode, registered once, closed explicitly (or by `with`). `read`/`write` move
bytes synchronously and return the count; `pread`/`pwrite` return futures. Requests larger than
the task size are split over the shared pool (`pygds.pool`), a synchronous caller working through
the pieces too; buffered POSIX writes from host memory go in one call instead (the file system
serialises them anyway). Short reads at end of file are returned, never hidden; a short write raises.

Every call, future, batch and stream transfer that may touch the descriptors is counted on the
`File` from before it looks at the handle until its last piece has ended, and holds the `File`
meanwhile; `close()` waits for that count to reach zero before it deregisters and closes the
descriptors, so no piece ever runs on a closed descriptor or on another file that reused its number.
"""
from __future__ import annotations

import errno
import logging
import os
import stat
import threading
from collections.abc import Callable
from concurrent.futures import Future

from . import pool
from ._lifetime import ClosedWhenCollected
from .engines import registry
from .engines.base import EngineHandle
from .errors import (
    FileClosedError,
    InvalidArgumentError,
    IOFailedError,
    PygdsError,
    errno_advice,
)
from .memory import BufferView, as_buffer, held_view
from .stream import StreamIO, stream_handle

log = logging.getLogger(__name__)

_MODES = {  # as `open` documents them; "+" adds the other direction
    "r": os.O_RDONLY,
    "r+": os.O_RDWR,
    "w": os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
    "w+": os.O_RDWR | os.O_CREAT | os.O_TRUNC,
    "x": os.O_WRONLY | os.O_CREAT | os.O_EXCL,
    "x+": os.O_RDWR | os.O_CREAT | os.O_EXCL,
}
_APPEND_MODES = ("a", "a+")
_MAX_OFFSET = (1 << 63) - 1
_FAST_OFFSET_END = 1 << 62  # below it no request of one task can overflow a file offset
_SMALL = pool.MIN_TASK_SIZE  # a request this small is one task whatever the task size


def _open_fd(path: str, flags: int, perm: int, mode: str, at: str | None = None) -> tuple[int, os.stat_result]:
    """Open `path` (through the name `at` when given): the descriptor and its `fstat`. Every
    failure names the path, the mode, the cause and the fix. A directory is refused here (reading
    it would only fail later, with EISDIR from the first read)."""
    try:
        # O_NONBLOCK only so that a FIFO at the path cannot block the open (it is refused below);
        # it changes nothing for regular files and block devices, and is cleared again
        fd = os.open(path if at is None else at, flags | os.O_CLOEXEC | os.O_NONBLOCK, perm)
    except FileNotFoundError as exc:
        parent = os.path.dirname(os.path.abspath(path))
        cause = (f"directory {parent} does not exist; create it first" if not os.path.isdir(parent)
                 else "no such file; open with mode 'w' or 'x' to create it")
        raise FileNotFoundError(exc.errno, f"cannot open {path} (mode {mode!r}): {cause}", path) from None
    except IsADirectoryError:
        raise _is_a_directory(path, mode) from None
    except PermissionError as exc:
        raise PermissionError(exc.errno, f"cannot open {path} (mode {mode!r}): permission denied; "
                                         "check the file and directory permissions or open read-only", path) from None
    except OSError as exc:
        if exc.errno == errno.EINVAL and flags & getattr(os, "O_DIRECT", 0):
            raise OSError(exc.errno, f"cannot open {path} with O_DIRECT: the file system does not support it "
                                     "(tmpfs before Linux 6.6, some FUSE file systems); open without direct=True", path) from None
        raise OSError(exc.errno, f"cannot open {path} (mode {mode!r}): {exc.strerror}", path) from None
    st = os.fstat(fd)
    kind = st.st_mode
    if stat.S_ISDIR(kind):
        os.close(fd)
        raise _is_a_directory(path, mode)
    if stat.S_ISFIFO(kind) or stat.S_ISSOCK(kind):
        os.close(fd)
        raise InvalidArgumentError(f"cannot open {path}: it is a {'FIFO' if stat.S_ISFIFO(kind) else 'socket'}, "
                                   "which has no file offsets; pygds reads and writes regular files and block devices")
    os.set_blocking(fd, True)
    return fd, st


_PROC_FDS = os.path.isdir("/proc/self/fd")
"""Whether this process can reopen its descriptors by name (Linux with /proc mounted)."""


def _open_direct(path: str, fd: int, opened: os.stat_result, flags: int, perm: int, mode: str) -> int:
    """An O_DIRECT descriptor of the very file `fd` has open. It is opened through
    `/proc/self/fd` where that exists, and checked to be the same file: the engine reads a
    request's unaligned ends through `fd` and its aligned middle through this one, so a file
    renamed onto `path` between two opens of the name would mix two files' bytes in one read."""
    at = f"/proc/self/fd/{fd}" if _PROC_FDS else None
    direct_fd, st = _open_fd(path, flags | os.O_DIRECT, perm, mode, at=at)
    if (st.st_dev, st.st_ino) != (opened.st_dev, opened.st_ino):
        os.close(direct_fd)
        raise OSError(errno.ESTALE, f"cannot open {path} (mode {mode!r}) with O_DIRECT: another file was renamed "
                                    "onto the name while it was being opened; open it again", path)
    return direct_fd


def _is_a_directory(path: str, mode: str) -> IsADirectoryError:
    return IsADirectoryError(errno.EISDIR, f"cannot open {path} (mode {mode!r}): it is a directory; pass the "
                                           "path of a file (e.g. a file inside that directory)", path)


class File(ClosedWhenCollected):
    """A file for GPU-direct (or POSIX) I/O, always binary, read and written at explicit offsets.

    `mode` is as for `open`: "r" reads, "w" writes (created, truncated), "x" writes a new file
    (fails if it exists); "+" adds the other direction ("r+": read and write an existing file,
    "w+", "x+"). Reading a file opened "w" or "x", or writing one opened "r", raises
    `IOFailedError` (EBADF). Append ("a") is refused: every write names its `file_offset`, so
    there is no end to append at; open with "r+" and write at `f.size()`. `engine` is "auto"
    (the first GPU-direct engine that works here, in `pygds.ENGINES` order, else POSIX; POSIX too
    where cuFile would only run its compatibility mode; the reason is `engine_reason`, logged once),
    "cufile", "hipfile" or "posix"; `PYGDS_ENGINE` sets the default. `direct=True`
    opens with `O_DIRECT` (unaligned offsets and sizes still work). `opened_stat` is the file's
    `os.fstat` as it was opened (identity, size, times), so that a caller need not ask again.

    `close()` (or the end of a `with` block, or garbage collection) first finishes every transfer
    still running or queued on this file: futures, batches and stream-ordered I/O included; the
    closing thread runs queued pieces itself, so it never waits on busy pool threads. A transfer
    blocked in the kernel (a hung network mount) makes `close()` wait as long as the kernel does.
    """

    def __init__(self, path: str | os.PathLike, mode: str = "r", *, engine: str | None = None,
                 direct: bool = False, perm: int = 0o644) -> None:
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)  # notified when `_active` empties while closing
        self._active: list[None] = []  # one entry per call or request that may touch the descriptors
        self._drains: set[Callable[[], None]] = set()  # run by close(): finish a request, batch or stream I/O
        self._handle: EngineHandle | None = None
        self._closing: EngineHandle | None = None  # the handle between close() and the descriptors' close
        self.engine_reason = ""  # why `engine` runs this file: the choice of `auto`, or "requested (...)"
        if mode in _APPEND_MODES:
            raise InvalidArgumentError(f"mode {mode!r} (append) is not supported: every pygds write goes to an "
                                       "explicit file_offset; open with 'r+' and write at file_offset=f.size()")
        if mode not in _MODES:
            raise InvalidArgumentError(f"unknown mode {mode!r}; use one of {', '.join(_MODES)}")
        if type(perm) is not int or not 0 <= perm <= 0o7777:
            raise InvalidArgumentError(f"perm must be an int of permission bits such as 0o644, got {perm!r}")
        self.path = os.fspath(path)
        self.mode = mode
        self.direct = bool(direct)
        access = _MODES[mode] & os.O_ACCMODE
        self._readable = access != os.O_WRONLY
        self._writable = access != os.O_RDONLY
        self.fd, self.opened_stat = _open_fd(self.path, _MODES[mode], perm, mode)
        self.direct_fd: int | None = None
        try:
            if self.direct:
                if not hasattr(os, "O_DIRECT"):
                    raise InvalidArgumentError("O_DIRECT is not available on this platform; open without direct=True")
                flags = _MODES[mode] & ~(os.O_CREAT | os.O_TRUNC | os.O_EXCL)
                self.direct_fd = _open_direct(self.path, self.fd, self.opened_stat, flags, perm, mode)
            self._handle = self._open_engine(engine)
        except BaseException:
            self._close_fds()
            raise

    def _open_engine(self, engine: str | None) -> EngineHandle:
        """The chosen engine's handle, and why it was chosen in `engine_reason`; under `auto` a
        GPU-direct engine that fails to open this file gives way to the POSIX fallback, the reason
        logged once."""
        requested = registry.requested_engine(engine)
        choice = registry.choose_engine(engine)
        chosen = registry.get(choice.name)
        self.engine_reason = choice.reason
        if requested == "auto":
            registry.log_choice_once(choice)
        if requested != "auto" or not chosen.gpu_direct:
            return chosen.open(self.fd, self.direct_fd, self.path)
        try:
            return chosen.open(self.fd, self.direct_fd, self.path)
        except PygdsError as exc:
            self.engine_reason = f"{chosen.label} failed on {self.path}: {exc}"
            registry.log_fallback_once(self.engine_reason)
        return registry.get(registry.FALLBACK).open(self.fd, self.direct_fd, self.path)

    @property
    def engine(self) -> str:
        """The engine actually in use: "cufile", "hipfile" or "posix" (why: `engine_reason`)."""
        return self._live().engine

    @property
    def closed(self) -> bool:
        """True from the moment `close()` starts: no new transfer may begin."""
        return self._handle is None

    def size(self) -> int:
        """The file's current size in bytes."""
        self._acquire()
        try:
            return os.fstat(self.fd).st_size
        finally:
            self._release()

    def _live(self) -> EngineHandle:
        handle = self._handle
        if handle is None:
            raise FileClosedError(f"I/O on closed file {self.path}; open a new pygds.File")
        return handle

    # -- in-flight accounting ---------------------------------------------------------------
    def _acquire(self, drain: Callable[[], None] | None = None) -> EngineHandle:
        """Count one user of the descriptors (until `_release`); FileClosedError once closing.

        `drain`, when given, finishes that user's work on the calling thread: `close()` runs it
        so that it never waits on work nobody else would run.
        """
        with self._lock:
            handle = self._handle
            if handle is None:
                raise FileClosedError(f"I/O on closed file {self.path}; open a new pygds.File")
            self._active.append(None)
            if drain is not None:
                self._drains.add(drain)
        return handle

    def _release(self, drain: Callable[[], None] | None = None) -> None:
        with self._lock:
            self._active.pop()
            if drain is not None:
                self._drains.discard(drain)
            if not self._active:
                self._idle.notify_all()

    def _wake_closer(self) -> None:
        with self._lock:
            self._idle.notify_all()

    def lease(self, drain: Callable[[], None] | None = None) -> Lease:
        """Hold this file open for work that outlives the call starting it (`Batch`, stream-ordered
        I/O), until `Lease.release()`; `FileClosedError` once closing.

        `close()` waits for every lease to be released, first running its `drain` (which must see
        the holder's work to its end) on the closing thread, so it never waits on work nobody runs.
        """
        return Lease(self, self._acquire(drain), drain)

    # -- argument checks -----------------------------------------------------------------
    def check_request(self, buf: object, size: int | None = None, file_offset: int = 0, *, buf_offset: int = 0,
                      writing: bool = False) -> tuple[BufferView, int]:
        """The buffer view and size of a read (or, `writing`, a write) as `read`/`write` take them,
        checked against this file's mode and the buffer; every bad argument raises naming it."""
        if self._handle is None:
            raise FileClosedError(f"I/O on closed file {self.path}; open a new pygds.File")
        if writing and not self._writable:
            raise IOFailedError(errno.EBADF, f"cannot write to {self.path}: it was opened read-only "
                                             "(mode 'r'); open it with 'r+', 'w' or 'x'")
        if not writing and not self._readable:
            raise IOFailedError(errno.EBADF, f"cannot read {self.path}: it was opened write-only "
                                             f"(mode {self.mode!r}); open it with {self.mode + '+'!r} or 'r+'")
        # `type(x) is int` is the fast test (it also refuses bool); anything else gets the full check
        if not (type(file_offset) is int and type(buf_offset) is int and file_offset >= 0 and buf_offset >= 0):
            for name, value in (("file_offset", file_offset), ("buf_offset", buf_offset)):
                if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                    raise InvalidArgumentError(f"{name} must be a non-negative int, got {value!r}")
        view = buf if isinstance(buf, BufferView) else as_buffer(buf, writable=not writing)
        if size is None:
            if buf_offset > view.nbytes:
                raise InvalidArgumentError(f"buf_offset {buf_offset} lies past the end of the {view.nbytes}-byte "
                                           "buffer; pass a smaller buf_offset or a larger buffer")
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
        return view, size

    # -- synchronous ------------------------------------------------------------------------
    def read(self, buf: object, size: int | None = None, file_offset: int = 0, *, buf_offset: int = 0) -> int:
        """Read into `buf`; returns the bytes read, fewer than `size` only at end of file."""
        active = self._active
        active.append(None)  # counted before the handle is looked at: close() waits for this call
        try:
            handle = self._handle
            if handle is not None and self._readable:
                # The small-request fast path: plain ints, one task; the same checks as
                # `check_request`, which every other call goes through. `buf` holds the memory
                # of a held view until this returns.
                view = buf if type(buf) is BufferView else held_view(buf)
                n = view.nbytes - buf_offset if size is None and type(buf_offset) is int else size
                if (type(n) is type(file_offset) is type(buf_offset) is int
                        and 0 < n and (n <= _SMALL or n <= pool.task_size())
                        and 0 <= file_offset < _FAST_OFFSET_END
                        and 0 <= buf_offset and buf_offset + n <= view.nbytes and not view.readonly):
                    try:
                        done = handle.read(view, n, file_offset, buf_offset)
                    except IOFailedError:
                        raise
                    except OSError as exc:
                        raise _os_failure(exc, "read", self.path, 0, n, file_offset) from exc
                    if done == n or done <= 0:
                        return done
                    return _read_full(handle, view, n, file_offset, buf_offset, self.path, done)
            else:
                view = buf
            view, size = self.check_request(view, size, file_offset, buf_offset=buf_offset, writing=False)
            return self._transfer(self._live(), view, size, file_offset, buf_offset, writing=False)
        finally:
            active.pop()
            if self._handle is None:
                self._wake_closer()

    def write(self, buf: object, size: int | None = None, file_offset: int = 0, *, buf_offset: int = 0) -> int:
        """Write from `buf`; returns the bytes written (all of them, or an exception)."""
        active = self._active
        active.append(None)
        try:
            handle = self._handle
            if handle is not None and self._writable:  # `read`'s fast path, for writing
                view = buf if type(buf) is BufferView else held_view(buf)
                n = view.nbytes - buf_offset if size is None and type(buf_offset) is int else size
                if (type(n) is type(file_offset) is type(buf_offset) is int
                        and 0 < n and (n <= _SMALL or n <= pool.task_size())
                        and 0 <= file_offset < _FAST_OFFSET_END and 0 <= buf_offset and buf_offset + n <= view.nbytes):
                    return _write_full(handle, view, n, file_offset, buf_offset, self.path)
            else:
                view = buf
            view, size = self.check_request(view, size, file_offset, buf_offset=buf_offset, writing=True)
            return self._transfer(self._live(), view, size, file_offset, buf_offset, writing=True)
        finally:
            active.pop()
            if self._handle is None:
                self._wake_closer()

    def _transfer(self, handle: EngineHandle, view: BufferView, size: int, file_offset: int, buf_offset: int,
                  *, writing: bool) -> int:
        """A whole synchronous transfer for a caller already counted in `_active`: inline when it
        is one task, else split with the calling thread working through the pieces too."""
        if pool.inline(size) or (writing and handle.whole_writes(view)):
            full = _write_full if writing else _read_full
            return full(handle, view, size, file_offset, buf_offset, self.path)
        return self._request(handle, view, size, file_offset, buf_offset, writing=writing).run()

    # -- futures ----------------------------------------------------------------------------
    def pread(self, buf: object, size: int | None = None, file_offset: int = 0, *, buf_offset: int = 0) -> Future:
        """Like `read`, but returns a `concurrent.futures.Future` of the byte count."""
        return self._submit(buf, size, file_offset, buf_offset, writing=False)

    def pwrite(self, buf: object, size: int | None = None, file_offset: int = 0, *, buf_offset: int = 0) -> Future:
        """Like `write`, but returns a `concurrent.futures.Future` of the byte count."""
        return self._submit(buf, size, file_offset, buf_offset, writing=True)

    def _submit(self, buf: object, size: int | None, file_offset: int, buf_offset: int, *, writing: bool) -> Future:
        """A request on the pool, counted from here until its last piece ends; its pieces hold this
        `File`, so the file outlives them even when the caller drops it at once."""
        view, size = self.check_request(buf, size, file_offset, buf_offset=buf_offset, writing=writing)
        request = self._request(self._live(), view, size, file_offset, buf_offset, writing=writing)
        request.finish = lambda: self._release(request.work)
        request.promise()  # before `close()` can see the request and drain it
        self._acquire(request.work)
        return request.start()

    def _request(self, handle: EngineHandle, view: BufferView, size: int, file_offset: int, buf_offset: int,
                 *, writing: bool) -> pool.Request:
        full = _write_full if writing else _read_full
        path = self.path

        def part(start: int, n: int) -> int:
            return full(handle, view, n, file_offset + start, buf_offset + start, path)

        step = max(size, 1) if writing and handle.whole_writes(view) else None
        return pool.Request(part, size, step=step)

    # -- stream-ordered ---------------------------------------------------------------------
    def read_async(self, buf: object, size: int | None = None, file_offset: int = 0, *, buf_offset: int = 0,
                   stream: object = None) -> StreamIO:
        """Stream-ordered read (the engine's own, e.g. `cuFileReadAsync`, else the stream synchronized
        and a threaded read); `wait()` on the result gives the byte count."""
        view, size = self.check_request(buf, size, file_offset, buf_offset=buf_offset, writing=False)
        return StreamIO.start(self, view, size, file_offset, buf_offset, stream_handle(stream), write=False)

    def write_async(self, buf: object, size: int | None = None, file_offset: int = 0, *, buf_offset: int = 0,
                    stream: object = None) -> StreamIO:
        """Stream-ordered write (as `read_async`); `wait()` on the result gives the byte count."""
        view, size = self.check_request(buf, size, file_offset, buf_offset=buf_offset, writing=True)
        return StreamIO.start(self, view, size, file_offset, buf_offset, stream_handle(stream), write=True)

    # -- lifetime ---------------------------------------------------------------------------
    def fsync(self) -> None:
        """Flush the file's data to stable storage."""
        self._acquire()
        try:
            os.fsync(self.fd)
        finally:
            self._release()

    def close(self) -> None:
        """Finish every transfer on this file, then deregister and close; closing twice is harmless.

        New transfers fail with `FileClosedError` from the moment this starts. Work still queued is
        run on this thread, work already running is waited for; only then are the descriptors
        closed. A concurrent second `close()` waits too; one interrupted (KeyboardInterrupt) leaves
        the descriptors open for the next `close()`, never closed under a running transfer.
        """
        with self._lock:
            handle = self._handle or self._closing
            if handle is None:
                return
            self._handle, self._closing = None, handle
            drains = list(self._drains)
        for drain in drains:
            drain()
        with self._idle:
            self._idle.wait_for(lambda: not self._active)
            if self._closing is not handle:
                return  # another close() finished meanwhile
            self._closing = None
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


class Lease:
    """One holder of a `File` (from `File.lease()` until `release()`): its engine handle stays open
    and its descriptors unclosed meanwhile."""

    __slots__ = ("file", "handle", "_drain", "_held")

    def __init__(self, file: File, handle: EngineHandle, drain: Callable[[], None] | None) -> None:
        self.file, self.handle, self._drain, self._held = file, handle, drain, True

    def transfer(self, view: BufferView, size: int, file_offset: int, buf_offset: int, *, writing: bool) -> int:
        """A whole synchronous transfer of checked arguments, as `File.read`/`write` do it."""
        return self.file._transfer(self.handle, view, size, file_offset, buf_offset, writing=writing)

    def release(self) -> None:
        """Let the file close; releasing twice is harmless."""
        if self._held:
            self._held = False
            self.file._release(self._drain)


def _os_failure(exc: OSError, op: str, path: str, done: int, size: int, file_offset: int) -> IOFailedError:
    """An `IOFailedError` naming the operation, the file, how far it got, the cause and the fix."""
    code = exc.errno or errno.EIO
    advice = errno_advice(code, end=file_offset + size)
    return IOFailedError(code, f"{op} of {size} bytes at offset {file_offset} of {path} failed after "
                               f"{done} bytes: {os.strerror(code)} ({errno.errorcode.get(code, code)})"
                               + (f"; {advice}" if advice else ""), op=op, path=path)


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
