"""Putting files in place and taking entries away, for the store and for `pygds cache` alike.

Publication is one step: a file is written under a fresh temporary name next to its final name
(`<final>.tmp<8 hex>`, which every scan knows as temporary) and renamed over it, so a reader sees
the whole old file, the whole new one, or none. An entry publishes its data file first and its
`.metadata` last, and a failure on the way removes what it had made: nothing partial is ever
visible (an entry of a store without `.metadata` files is its data file alone, published in the
one rename). With `fsync` each file reaches the disk before its rename; without it a process crash
still loses nothing renamed, and a file torn by a power loss fails the size check on read.

Removal is the reverse order: the `.metadata` first, so that no scan indexes half an entry.
"""

from __future__ import annotations

import errno
import logging
import os
from typing import Any, Callable

import pygds

from .format import EntryHeader, pack_header
from .layout import metadata_path, tmp_path
from .summed_io import write_data

logger = logging.getLogger(__name__)

OpenFile = Callable[[str, str, int], pygds.File]
"""Opens an entry's data file with a mode ("r" or "x") for an entry of so many data bytes: the
store's engine and direct-I/O choice."""


def publish(final: str, write: Callable[[str], None], *, make_dirs: bool = False) -> None:
    """`write(tmp)` creates and fills a temporary file (exclusively), which is then renamed to
    `final`; on any failure the temporary file is removed and the error raised. `make_dirs`
    creates missing parent directories."""
    tmp = tmp_path(final)
    try:
        try:
            write(tmp)
        except FileNotFoundError:
            if not make_dirs:
                raise
            os.makedirs(os.path.dirname(final), exist_ok=True)
            write(tmp)
        os.rename(tmp, final)
    except BaseException:
        unlink_quietly(tmp)
        raise


def publish_bytes(final: str, data: bytes, *, fsync: bool = False, make_dirs: bool = False) -> None:
    """Publish a small file holding `data` (a `.metadata`, the store's counters)."""

    def write(tmp: str) -> None:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            pwrite_all(fd, data, 0)
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)

    publish(final, write, make_dirs=make_dirs)


def publish_entry(
    final: str, header: EntryHeader, view: Any, open_file: OpenFile, *, fsync: bool, metadata: bool = True,
    spread: bool = False,
) -> tuple[EntryHeader, bytes]:
    """Publish an entry: the data file (`header.nbytes` of `view` through `open_file`, then the
    header), then, with `metadata`, its `.metadata`; the header written and its bytes. A header
    with a checksum (any of the right length) is written with the checksum of the data, computed
    while writing it (`summed_io`, `spread` there). All or nothing: a failed `.metadata` removes the data file
    again."""
    written = header, b""

    def write(tmp: str) -> None:
        nonlocal written
        with open_file(tmp, "x", header.nbytes) as f:
            actual = write_data(f, view, header.nbytes, header.checksum is not None, spread)
            final_header = header if actual is None else header.with_checksum(actual)
            header_bytes = pack_header(final_header)
            pwrite_all(f.fd, header_bytes, 0)
            if fsync:
                f.fsync()
        written = final_header, header_bytes

    publish(final, write, make_dirs=True)
    header, header_bytes = written
    if metadata:
        try:
            publish_bytes(metadata_path(final), header_bytes, fsync=fsync)
        except BaseException:
            unlink_quietly(final)
            raise
    return header, header_bytes


def delete_entry_files(data_path: str) -> tuple[bool, OSError | None]:
    """Unlink an entry's `.metadata`, then its data file: (whether a file was removed, the error
    that stopped it). A `.metadata` that cannot be unlinked leaves the data file alone."""
    removed = False
    for path in (metadata_path(data_path), data_path):
        try:
            os.unlink(path)
            removed = True
        except (FileNotFoundError, NotADirectoryError):
            pass
        except OSError as exc:
            return removed, exc
    return removed, None


def unlink_quietly(path: str) -> None:
    """Unlink a temporary or half-published file; errors other than a missing file are logged."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        logger.debug("cannot remove %s: %s", path, exc)


def pwrite_all(fd: int, data: bytes, offset: int) -> None:
    """`os.pwrite` until all of `data` is written."""
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        if n <= 0:
            raise OSError(errno.EIO, "short write")
        view, offset = view[n:], offset + n
