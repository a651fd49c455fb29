"""The POSIX engine: `pread`/`pwrite` straight into host memory, device memory through bounce buffers.

It needs neither libcufile nor a GPU for host buffers. Device buffers go through reusable pinned
bounce buffers and cuda-python (or hip-python) copies; a large read alternates between a stage's
two halves, so the copy of one piece to the device overlaps the read of the next. This is what
cuFile's compatibility mode does underneath, minus libcufile's costs, so `auto` picks this engine
where cuFile would run that mode (no nvidia-fs). With `O_DIRECT` the aligned middle of a request goes through
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
from types import ModuleType

from .. import cuda, memory
from .._probe import Check
from ..memory import BufferView
from .base import Engine, EngineHandle

DIRECT_ALIGNMENT = 4096
_BOUNCE_SIZE = 8 << 20
_PIECE = _BOUNCE_SIZE // 2  # device transfers larger than this alternate between the stage's halves
_CPU_KINDS = ("host", "pinned", "managed")  # memory the CPU reaches: read and written in place


def host_array(ptr: int, nbytes: int) -> ctypes.Array:
    """A writable buffer-protocol view of `nbytes` of host memory at `ptr` (no copy)."""
    return (ctypes.c_ubyte * nbytes).from_address(ptr)


class _Stage:
    """One page-aligned staging buffer: its address, size and kind, and a writable memoryview of it
    (slicing that is cheaper than a ctypes array per call)."""

    __slots__ = ("_buffer", "kind", "mem", "nbytes", "ptr")

    def __init__(self, size: int) -> None:
        if cuda.cuda_available():
            buf: object = memory.PinnedBuffer(size)
            self.ptr, self.kind, self.mem = buf.ptr, "pinned", buf.buffer  # type: ignore[attr-defined]
        else:
            buf = mmap.mmap(-1, size)
            self.ptr, self.kind, self.mem = ctypes.addressof(ctypes.c_char.from_buffer(buf)), "host", memoryview(buf)
        self.nbytes = size
        self._buffer = buf


class _BouncePool:
    """A few reusable page-aligned staging buffers (pinned when CUDA is usable), never freed."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._free: queue.SimpleQueue = queue.SimpleQueue()

    def acquire(self) -> _Stage:
        try:
            return self._free.get_nowait()
        except queue.Empty:
            return _Stage(self.size)

    def release(self, stage: _Stage) -> None:
        self._free.put(stage)


_pool_lock = threading.Lock()
_pool: _BouncePool | None = None


def bounce_pool() -> _BouncePool:
    """The process-wide pool of staging buffers, created on first use."""
    global _pool
    if _pool is None:
        with _pool_lock:
            if _pool is None:
                _pool = _BouncePool(_BOUNCE_SIZE)
    return _pool


class _Streams(threading.local):
    """Each thread's two copy streams per device, for the stage's two halves."""

    def __init__(self) -> None:
        self.by_device: dict[int | None, tuple[int, int]] = {}


_streams = _Streams()


def _thread_streams(runtime: ModuleType, device: int | None) -> tuple[int, int]:
    pair = _streams.by_device.get(device)
    if pair is None:
        pair = _streams.by_device[device] = (runtime.stream_create(device), runtime.stream_create(device))
    return pair


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

    def _stage_io(self, stage: _Stage, at: int, n: int, file_offset: int, *, read: bool) -> int:
        """`n` bytes between the file and the stage at `at`."""
        if self.direct_fd is None:
            return _full_mem(os.preadv if read else os.pwritev, self.fd, stage.mem[at:at + n], file_offset)
        return self._direct_split(stage.ptr + at, n, file_offset, read=read)

    # -- the engine interface ----------------------------------------------------------------
    def read(self, view: BufferView, size: int, file_offset: int, buf_offset: int) -> int:
        if view.kind in _CPU_KINDS:
            return self._host_read(view.ptr + buf_offset, size, file_offset)
        return self._device_read(view, size, file_offset, buf_offset)

    def write(self, view: BufferView, size: int, file_offset: int, buf_offset: int) -> int:
        if view.kind in _CPU_KINDS:
            return self._host_write(view.ptr + buf_offset, size, file_offset)
        return self._device_write(view, size, file_offset, buf_offset)

    def _device_read(self, view: BufferView, size: int, file_offset: int, buf_offset: int) -> int:
        """Device memory: read into a pinned stage, copy to the device. Up to `_PIECE` bytes in one
        read and one copy; beyond, the stage's halves alternate, each half's copy running on its own
        stream while the next piece is read into the other half, as KvikIO overlaps its tasks."""
        runtime = memory.gpu_runtime()
        pool = bounce_pool()
        stage = pool.acquire()
        dst, device, kind = view.ptr + buf_offset, view.device, stage.kind
        try:
            if size <= _PIECE:
                got = self._stage_io(stage, 0, size, file_offset, read=True)
                if got:
                    runtime.memcpy(dst, "device", stage.ptr, kind, got, device=device)
                return got
            streams = _thread_streams(runtime, device)
            busy = [False, False]
            done = half = 0
            try:
                while done < size:
                    if busy[half]:  # this half's last copy must have left it before it is refilled
                        runtime.stream_synchronize(streams[half])
                    n = min(_PIECE, size - done)
                    at = half * _PIECE
                    got = self._stage_io(stage, at, n, file_offset + done, read=True)
                    if got:
                        runtime.memcpy(dst + done, "device", stage.ptr + at, kind, got, device=device,
                                       stream=streams[half])
                        busy[half] = True
                    done += got
                    if got < n:
                        break
                    half ^= 1
            finally:  # every copy has landed before the count is returned and the stage is reused
                for stream, pending in zip(streams, busy):
                    if pending:
                        runtime.stream_synchronize(stream)
            return done
        finally:
            pool.release(stage)

    def _device_write(self, view: BufferView, size: int, file_offset: int, buf_offset: int) -> int:
        """Device memory: copy a piece into the pinned stage, write it; piece by piece."""
        runtime = memory.gpu_runtime()
        pool = bounce_pool()
        stage = pool.acquire()
        src, device, kind = view.ptr + buf_offset, view.device, stage.kind
        try:
            done = 0
            for rel, n in _chunks(size, stage.nbytes):
                runtime.memcpy(stage.ptr, kind, src + rel, "device", n, device=device)
                got = self._stage_io(stage, 0, n, file_offset + rel, read=False)
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
    """Repeat `os.preadv`/`os.pwritev` on `fd` until `size` bytes at `ptr` moved or it returns 0
    (end of file); see `_full_mem`."""
    return _full_mem(call, fd, host_array(ptr, size), offset)


def _full_mem(call: Callable[[int, list, int], int], fd: int, mem: object, offset: int) -> int:
    """Repeat `os.preadv`/`os.pwritev` on `fd` until all of `mem` (a byte buffer) moved or it
    returns 0 (end of file).

    An error after some bytes moved returns that count, a short transfer: the caller's next call
    meets the error again and reports it with the true progress.
    """
    size = len(mem)  # type: ignore[arg-type]
    got = _once(call, fd, mem, offset, 0)
    if got == size or got <= 0:  # nearly always: the whole request in one call
        return got
    rest = memoryview(mem).cast("B")  # type: ignore[arg-type]
    done = got
    while done < size:
        got = _once(call, fd, rest[done:], offset + done, done)
        if got <= 0:
            break
        done += got
    return done


def _once(call: Callable[[int, list, int], int], fd: int, mem: object, offset: int, done: int) -> int:
    """One call; an error after `done` bytes already moved ends the transfer short (-1) instead."""
    try:
        return call(fd, [mem], offset)
    except OSError:
        if done:
            return -1
        raise
