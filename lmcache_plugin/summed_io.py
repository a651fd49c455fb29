"""An entry's data to and from its open file, with the data's checksum computed on the way.

Host memory is hashed a piece at a time, right after the piece is read or right before it is
written, while it is still in the CPU's cache: hashing a whole 32 MiB chunk after reading it reads
it again from main memory, which made a warm get from the page cache about a third slower
(BENCHMARKS.md, "The checksum in the CPU's cache"). An O_DIRECT file moves whole (the disk wants
one large request, and a DMA leaves nothing in the cache), and device memory is hashed through a
host copy, as is any memory `checksum` is given.
"""

from __future__ import annotations

import ctypes
from typing import Any, Iterator

import pygds

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


def read_data(f: pygds.File, view: Any, nbytes: int, summed: bool) -> tuple[int, str | None]:
    """Read an entry's `nbytes` of data (from `HEADER_SIZE` on) into `view`: the bytes read (fewer
    only at the end of a truncated file) and, when `summed`, the checksum of exactly those bytes."""
    if summed and _in_pieces(f, view):
        pieces = _Reading(f, view, nbytes)
        actual = checksum_of(pieces)
        return pieces.got, actual
    got = f.read(view, nbytes, file_offset=HEADER_SIZE) if nbytes else 0
    return got, (checksum(view, got) if summed else None)


def write_data(f: pygds.File, view: Any, nbytes: int, summed: bool) -> str | None:
    """Write the first `nbytes` of `view` as an entry's data (from `HEADER_SIZE` on); when
    `summed`, the checksum of the bytes written."""
    if summed and _in_pieces(f, view):
        return checksum_of(_writing(f, view, nbytes))
    actual = checksum(view, nbytes) if summed else None
    if nbytes:
        f.write(view, nbytes, file_offset=HEADER_SIZE)
    return actual


def host_memory(ptr: int, nbytes: int) -> Any:
    """`nbytes` of host memory at `ptr` as a buffer (no copy)."""
    return (ctypes.c_ubyte * nbytes).from_address(ptr) if nbytes else b""


def _in_pieces(f: pygds.File, view: Any) -> bool:
    return view.kind in HOST_KINDS and not f.direct


class _Reading:
    """The pieces of an entry's data as they are read into host memory (each hashed before the
    next is read), and how many bytes came."""

    def __init__(self, f: pygds.File, view: Any, nbytes: int) -> None:
        self._f, self._view, self._nbytes, self.got = f, view, nbytes, 0

    def __iter__(self) -> Iterator[Any]:
        while self.got < self._nbytes:
            n = min(PIECE_BYTES, self._nbytes - self.got)
            done = self._f.read(self._view, n, file_offset=HEADER_SIZE + self.got, buf_offset=self.got)
            if done <= 0:
                return
            piece = host_memory(self._view.ptr + self.got, done)
            self.got += done
            yield piece
            if done < n:  # the end of the file
                return


def _writing(f: pygds.File, view: Any, nbytes: int) -> Iterator[Any]:
    """The pieces of `view` to be hashed, each written once the consumer asks for the next (so
    right after it was hashed); the last is written when the consumer asks past it."""
    for offset in range(0, nbytes, PIECE_BYTES):
        n = min(PIECE_BYTES, nbytes - offset)
        yield host_memory(view.ptr + offset, n)
        f.write(view, n, file_offset=HEADER_SIZE + offset, buf_offset=offset)


def _staged(view: Any, nbytes: int) -> Iterator[memoryview]:
    """The first `nbytes` of `view` (any memory kind) in consecutive pieces copied to the host;
    each piece is valid until the next is asked for."""
    staging = bytearray(min(nbytes, STAGING_BYTES))
    target = pygds.as_buffer(staging, writable=True)
    for offset in range(0, nbytes, len(staging)):
        n = min(len(staging), nbytes - offset)
        pygds.memory.copy(target, view.slice(offset, n), n)
        yield memoryview(staging)[:n]
