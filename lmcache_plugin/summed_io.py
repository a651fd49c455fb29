"""An entry's data to and from its open file, with the data's checksum computed on the way.

Host memory is hashed a piece at a time, right after the piece is read or right before it is
written, while it is still in the CPU's cache: hashing a whole 32 MiB chunk after reading it reads
it again from main memory (BENCHMARKS.md, "The checksum in the CPU's cache"). With `spread`, a
transfer of more than one pygds task moves its pieces on pygds's pool while the calling thread
hashes them in order, which pays where CPUs sit idle (`spare_cores`). An O_DIRECT file moves whole
(the disk wants one large request, and a DMA leaves nothing in the cache), and device memory is
hashed through a host copy, as is any memory `checksum` is given.
"""

from __future__ import annotations

import ctypes
import math
import os
from concurrent import futures
from typing import Any, Iterator

import pygds
from pygds import pool

from .format import HEADER_SIZE, checksum_of

HOST_KINDS = ("host", "pinned")
"""Buffer kinds the CPU hashes in place; device and managed memory need a copy to the host."""
PIECE_BYTES = 1 << 20
"""Bytes read or written between two hash updates: the data is hashed while it sits in the core's
L2 cache (1-2 MiB on current server CPUs)."""
STAGING_BYTES = 16 << 20
"""Piece size of the host copy through which device memory is hashed, and of `verify_file`'s reads."""


def sums(mode: str, kind: str) -> bool:
    """Whether checksum `mode` writes or verifies a checksum for memory of this kind."""
    return mode == "always" or (mode in ("auto", "once") and kind in HOST_KINDS)


def checksum(view: Any, nbytes: int) -> str:
    """The checksum of the first `nbytes` of `view`: hashed in place in host memory, through a
    host copy in pieces otherwise."""
    if view.kind in HOST_KINDS:
        return checksum_of([host_memory(view.ptr, nbytes)])
    return checksum_of(_staged(view, nbytes))


CGROUP_CPU_LIMITS = (
    "/sys/fs/cgroup/cpu.max", "/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "/sys/fs/cgroup/cpu/cpu.cfs_period_us"
)
"""Where a container's CPU quota shows (cgroup v2; cgroup v1 quota and period)."""


def spare_cores(io_threads: int) -> bool:
    """Whether summed transfers should `spread` over pygds's pool: when this process may run on at
    least twice as many CPUs as its I/O threads and the pool's threads together. On 16 CPUs with 4
    I/O threads, warm 32 MiB gets ran 1.4x faster spread than in turn; with 8 I/O threads there,
    or on 2 CPUs, slower (the hand-offs cost more than the overlap gains; BENCHMARKS.md)."""
    return usable_cpus() >= 2 * (max(io_threads, 1) + pool.num_threads())


def usable_cpus(limits: tuple[str, str, str] = CGROUP_CPU_LIMITS) -> int:
    """The CPUs this process may run on, capped by its container's CPU quota: a container limited
    to 2 CPUs on a 64-CPU host still sees all 64 in its affinity."""
    cpus = len(os.sched_getaffinity(0))
    v2, v1_quota, v1_period = (_read_text(path) for path in limits)
    quota = period = None
    if v2 is not None:
        fields = v2.split()
        if len(fields) == 2 and fields[0] != "max":
            quota, period = fields
    elif v1_quota is not None and v1_period is not None:
        quota, period = v1_quota, v1_period
    try:
        share = int(quota) / int(period) if quota is not None and period is not None else 0.0
    except (ValueError, ZeroDivisionError):
        share = 0.0
    return max(1, min(cpus, math.ceil(share))) if share > 0 else cpus


def _read_text(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def read_data(f: pygds.File, view: Any, nbytes: int, summed: bool, spread: bool = False) -> tuple[int, str | None]:
    """Read an entry's `nbytes` of data (from `HEADER_SIZE` on) into `view`: the bytes read (fewer
    only at the end of a truncated file) and, when `summed`, the checksum of exactly those bytes."""
    if summed and _in_pieces(f, view):
        pieces = _Reading(f, view, nbytes, _spreads(spread, nbytes))
        actual = checksum_of(pieces)
        return pieces.got, actual
    got = f.read(view, nbytes, file_offset=HEADER_SIZE) if nbytes else 0
    return got, (checksum(view, got) if summed else None)


def write_data(f: pygds.File, view: Any, nbytes: int, summed: bool, spread: bool = False) -> str | None:
    """Write the first `nbytes` of `view` as an entry's data (from `HEADER_SIZE` on); when
    `summed`, the checksum of the bytes written."""
    if summed and _in_pieces(f, view):
        return checksum_of(_writing(f, view, nbytes, _spreads(spread, nbytes)))
    actual = checksum(view, nbytes) if summed else None
    if nbytes:
        f.write(view, nbytes, file_offset=HEADER_SIZE)
    return actual


def host_memory(ptr: int, nbytes: int) -> Any:
    """`nbytes` of host memory at `ptr` as a buffer (no copy)."""
    return (ctypes.c_ubyte * nbytes).from_address(ptr) if nbytes else b""


def _in_pieces(f: pygds.File, view: Any) -> bool:
    return view.kind in HOST_KINDS and not f.direct


def _spreads(spread: bool, nbytes: int) -> bool:
    """Spread only what is more than one task, and never from a pool thread, whose wait for other
    pool work could wait for ever."""
    return spread and nbytes > pool.task_size() and not pool.on_pool_thread()


class _Reading:
    """The pieces of an entry's data as they come into host memory, in order (each hashed before
    the next is taken), and how many bytes came. Spread, every piece after the first is handed to
    pygds's pool at once (`_taken`); none is left running once the iteration ends."""

    def __init__(self, f: pygds.File, view: Any, nbytes: int, spread: bool) -> None:
        self._f, self._view, self._nbytes, self._spread, self.got = f, view, nbytes, spread, 0

    def __iter__(self) -> Iterator[Any]:
        f, view = self._f, self._view
        pieces = _pieces(self._nbytes, self._spread)
        ahead = [pool.submit(_move, f, view, start, n, False) for start, n in pieces[1:]] if self._spread else []
        try:
            for i, (start, n) in enumerate(pieces):
                if i and ahead:
                    done = _taken(ahead[i - 1], f, view, start, n, False)
                else:
                    done = _move(f, view, start, n, False)
                if done <= 0:
                    return
                self.got += done
                yield host_memory(view.ptr + start, done)
                if done < n:  # the end of the file
                    return
        finally:
            _settle(ahead)


def _writing(f: pygds.File, view: Any, nbytes: int, spread: bool) -> Iterator[Any]:
    """The pieces of `view` to be hashed, each written once the consumer asks for the next (so
    right after it was hashed; spread, handed to pygds's pool); the last when the consumer asks
    past it, which also sees every write done and raises the first failure."""
    behind: list[tuple[futures.Future, int, int]] = []
    try:
        for start, n in _pieces(nbytes, spread):
            yield host_memory(view.ptr + start, n)
            if spread:
                behind.append((pool.submit(_move, f, view, start, n, True), start, n))
            else:
                _move(f, view, start, n, True)
        for write, start, n in behind:
            _taken(write, f, view, start, n, True)
    finally:
        _settle([write for write, _, _ in behind])


def _pieces(nbytes: int, spread: bool) -> list[tuple[int, int]]:
    """(offset, size) of each piece: the pool's task size spread, else `PIECE_BYTES`."""
    step = pool.task_size() if spread else PIECE_BYTES
    return [(start, min(step, nbytes - start)) for start in range(0, nbytes, step)]


def _move(f: pygds.File, view: Any, start: int, n: int, write: bool) -> int:
    """Move the piece at data offset `start` between `view` and the file."""
    if write:
        return f.write(view, n, file_offset=HEADER_SIZE + start, buf_offset=start)
    return f.read(view, n, file_offset=HEADER_SIZE + start, buf_offset=start)


def _taken(piece: futures.Future, f: pygds.File, view: Any, start: int, n: int, write: bool) -> int:
    """The count of a piece handed to the pool; moved on this thread if no pool thread has taken
    it yet, so that a caller never waits on a busy pool (few CPUs, other work)."""
    return _move(f, view, start, n, write) if piece.cancel() else piece.result()


def _settle(pieces: list[futures.Future]) -> None:
    """Let no handed-over piece touch the memory after this: those no pool thread has taken never
    run (a cancelled item is skipped when its turn comes), the others are waited for."""
    futures.wait([piece for piece in pieces if not piece.cancel()])


def _staged(view: Any, nbytes: int) -> Iterator[memoryview]:
    """The first `nbytes` of `view` (any memory kind) in consecutive pieces copied to the host;
    each piece is valid until the next is asked for."""
    staging = bytearray(min(nbytes, STAGING_BYTES))
    target = pygds.as_buffer(staging, writable=True)
    for offset in range(0, nbytes, STAGING_BYTES):
        n = min(STAGING_BYTES, nbytes - offset)
        pygds.memory.copy(target, view.slice(offset, n), n)
        yield memoryview(staging)[:n]
