"""The POSIX engine: `pread`/`pwrite` straight into host memory, device memory through bounce buffers.

It needs neither libcufile nor a GPU for host buffers. Device buffers go through reusable pinned
bounce buffers and cuda-python copies. With `O_DIRECT` the aligned middle of a request goes through
the direct descriptor (via an aligned bounce buffer when the caller's memory is not aligned) and the
unaligned head and tail through a buffered descriptor of the same file, as KvikIO does, so any
offset and size work.
"""
from __future__ import annotations

import ctypes
import mmap
import os
import queue
import threading
from collections.abc import Callable, Iterator

from .. import cuda, memory
from .._probe import Check
from ..memory import BufferView
from .base import Engine, EngineHandle

DIRECT_ALIGNMENT = 4096
_BOUNCE_SIZE = 8 << 20


def host_array(ptr: int, nbytes: int) -> ctypes.Array:
    """A writable buffer-protocol view of `nbytes` of host memory at `ptr` (no copy)."""
    return (ctypes.c_ubyte * nbytes).from_address(ptr)


class _BouncePool:
    """A few reusable page-aligned staging buffers (pinned when CUDA is usable)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._free: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._all: list = []

    def _new(self) -> tuple[object, BufferView]:
        if cuda.cuda_available():
            buf = memory.PinnedBuffer(self.size)
            view = BufferView(buf.ptr, self.size, "pinned", None, False, buf)
        else:
            buf = mmap.mmap(-1, self.size)
            view = BufferView(ctypes.addressof(ctypes.c_char.from_buffer(buf)), self.size, "host", None, False, buf)
        with self._lock:
            self._all.append(buf)
        return buf, view

    def acquire(self) -> BufferView:
        try:
            return self._free.get_nowait()
        except queue.Empty:
            return self._new()[1]

    def release(self, view: BufferView) -> None:
        self._free.put(view)


_pool_lock = threading.Lock()
_pool: _BouncePool | None = None


def bounce_pool() -> _BouncePool:
    """The process-wide pool of staging buffers, created on first use."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = _BouncePool(_BOUNCE_SIZE)
        return _pool


def _chunks(size: int, step: int) -> Iterator[tuple[int, int]]:
    done = 0
    while done < size:
        n = min(step, size - done)
        yield done, n
        done += n


class PosixHandle(EngineHandle):
    """POSIX I/O on one file: `fd` is buffered, `direct_fd` (optional) was opened with O_DIRECT."""

    engine = "posix"

    def __init__(self, fd: int, direct_fd: int | None = None) -> None:
        self.fd = fd
        self.direct_fd = direct_fd

    # -- host memory -------------------------------------------------------------------------
    def _host_read(self, ptr: int, size: int, file_offset: int) -> int:
        if self.direct_fd is None:
            return _full(os.preadv, self.fd, ptr, size, file_offset)
        return self._direct_split(ptr, size, file_offset, read=True)

    def _host_write(self, ptr: int, size: int, file_offset: int) -> int:
        if self.direct_fd is None:
            return _full(os.pwritev, self.fd, ptr, size, file_offset)
        return self._direct_split(ptr, size, file_offset, read=False)

    def _direct_split(self, ptr: int, size: int, file_offset: int, *, read: bool) -> int:
        """Head and tail through the buffered fd, the aligned middle through O_DIRECT."""
        a = DIRECT_ALIGNMENT
        start = min(-(-file_offset // a) * a, file_offset + size)
        end = max(((file_offset + size) // a) * a, start)
        buffered = os.preadv if read else os.pwritev
        done = 0
        pieces = ((file_offset, start - file_offset, False), (start, end - start, True),
                  (end, file_offset + size - end, False))
        for off, n, direct in pieces:
            if n == 0:
                continue
            p = ptr + (off - file_offset)
            if direct:
                got = self._direct_middle(p, n, off, read=read)
            else:
                got = _full(buffered, self.fd, p, n, off)
            done += got
            if got < n:
                break
        return done

    def _direct_middle(self, ptr: int, size: int, file_offset: int, *, read: bool) -> int:
        assert self.direct_fd is not None
        fd = self.direct_fd
        call = os.preadv if read else os.pwritev
        if ptr % DIRECT_ALIGNMENT == 0:
            return _full(call, fd, ptr, size, file_offset)
        pool = bounce_pool()
        stage = pool.acquire()
        try:
            done = 0
            for rel, n in _chunks(size, stage.nbytes):
                if not read:
                    ctypes.memmove(stage.ptr, ptr + rel, n)
                got = _full(call, fd, stage.ptr, n, file_offset + rel)
                if read:
                    ctypes.memmove(ptr + rel, stage.ptr, got)
                done += got
                if got < n:
                    break
            return done
        finally:
            pool.release(stage)

    # -- the engine interface ----------------------------------------------------------------
    def read(self, view: BufferView, size: int, file_offset: int, buf_offset: int) -> int:
        if view.kind in ("host", "pinned", "managed"):
            return self._host_read(view.ptr + buf_offset, size, file_offset)
        return self._through_bounce(view, size, file_offset, buf_offset, read=True)

    def write(self, view: BufferView, size: int, file_offset: int, buf_offset: int) -> int:
        if view.kind in ("host", "pinned", "managed"):
            return self._host_write(view.ptr + buf_offset, size, file_offset)
        return self._through_bounce(view, size, file_offset, buf_offset, read=False)

    def _through_bounce(self, view: BufferView, size: int, file_offset: int, buf_offset: int,
                        *, read: bool) -> int:
        """Device memory: stage each piece in a pinned buffer and copy with cuda-python."""
        pool = bounce_pool()
        stage = pool.acquire()
        try:
            done = 0
            for rel, n in _chunks(size, stage.nbytes):
                dev = view.slice(buf_offset + rel, n)
                if read:
                    got = self._host_read(stage.ptr, n, file_offset + rel)
                    if got:
                        memory.copy(dev.slice(0, got), stage.slice(0, got), got)
                else:
                    memory.copy(stage.slice(0, n), dev, n)
                    got = self._host_write(stage.ptr, n, file_offset + rel)
                done += got
                if got < n:
                    break
            return done
        finally:
            pool.release(stage)

    def whole_writes(self, view: BufferView) -> bool:
        """Buffered writes from host memory go in one call: local Linux file systems (ext4, XFS,
        btrfs) hold the inode lock through a buffered write, so split tasks would only queue for it
        and add their own cost (measured in BENCHMARKS.md)."""
        return self.direct_fd is None and view.kind != "device"

    def close(self) -> None:
        """Nothing to release: the file descriptors belong to the `File`."""


class PosixEngine(Engine):
    """The fallback every machine has: nothing to check, no driver, no registrations."""

    name = "posix"
    label = "POSIX"
    gpu_direct = False

    def check(self) -> Check:
        return Check(True, "pread/pwrite need nothing beyond the operating system")

    def open(self, fd: int, direct_fd: int | None, path: str) -> PosixHandle:
        return PosixHandle(fd, direct_fd)


ENGINE = PosixEngine()


def _full(call: Callable[[int, list, int], int], fd: int, ptr: int, size: int, offset: int) -> int:
    """Repeat `os.preadv`/`os.pwritev` on `fd` until `size` bytes moved or it returns 0 (end of file).

    An error after some bytes moved returns that count, a short transfer: the caller's next call
    meets the error again and reports it with the true progress.
    """
    done = 0
    while done < size:
        try:
            got = call(fd, [host_array(ptr + done, size - done)], offset + done)
        except OSError:
            if done:
                return done
            raise
        if got <= 0:
            break
        done += got
    return done
