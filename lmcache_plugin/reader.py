"""Reading entries and proving them: the header, the key it names, the length, the checksum.

Nothing on disk is taken on trust. Every read re-reads the header from the open file and checks
it against the key asked for (a renamed or swapped file, or a name a case-insensitive file system
folds onto another, holds another key), the file's length, the header `lookup` returned and the
destination; it checks that all the data came and verifies the checksum of exactly the bytes
read, except, with checksum "once", where this process already verified the very same file
version (`verified.py`).
`verify_file` runs the same checks for `pygds cache verify`, reading into host memory, always
hashing.
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass
from typing import Any, Iterator

import pygds

from .counters import Counters
from .entries import Entries
from .format import HEADER_SIZE, CorruptEntryError, EntryHeader, checksum_of, header_digest, unpack_header
from .index import Entry
from .layout import InvalidKeyError, Layout, is_bounded_stem, key_from_stem, metadata_path
from .publish import OpenFile, publish_bytes
from .summed_io import STAGING_BYTES, checksum, read_data, sums
from .verified import VerifiedFiles

logger = logging.getLogger(__name__)

IO_ERRORS = (OSError, pygds.PygdsError)
"""What a failed data-file operation raises (`pygds.IOFailedError` is both)."""


class EntryGoneError(LookupError):
    """The entry vanished between lookup and read (removed, evicted); treat it as a miss."""


@dataclass(frozen=True)
class EntryInfo:
    """What `lookup` returns: where an entry lives and its validated header."""

    key_text: str
    path: str
    base: str
    size: int
    header: EntryHeader


def check_key(stem: str, header: EntryHeader, key_text: str | None, layout: Layout) -> None:
    """Refuse a header naming another key than the entry's. Without `key_text` the expected key
    is the one the stem was made from. A header without a key (LMCache wrote it) passes, except
    under a bounded name, whose key only the header records."""
    stored = header.key
    if stored is None:
        if is_bounded_stem(stem):
            raise CorruptEntryError("the entry under a bounded name records no key")
        return
    expected = key_text or key_from_stem(stem)
    if expected is not None:
        if stored != expected:
            raise CorruptEntryError(f"entry holds key {stored!r}, not {expected!r}"[:300])
        return
    try:
        same = layout.stem(stored) == stem
    except InvalidKeyError:
        same = False
    if not same:
        raise CorruptEntryError(f"entry holds key {stored!r}, whose name is not this file's"[:300])


def read_header(
    fd: int, stem: str, key_text: str | None, layout: Layout, size: int | None = None
) -> tuple[EntryHeader, bytes]:
    """The header of the open data file `fd`, checked against its length (`size`, else its
    `fstat`) and key, and its raw bytes. Raises `CorruptEntryError` or `OSError`."""
    if size is None:
        size = os.fstat(fd).st_size
    raw = os.pread(fd, HEADER_SIZE, 0)
    header = unpack_header(raw, file_size=size)
    check_key(stem, header, key_text, layout)
    return header, raw


def check_complete(got: int, header: EntryHeader) -> None:
    if got != header.nbytes:
        raise CorruptEntryError(f"short read: {got} of {header.nbytes} bytes")


def check_checksum(header: EntryHeader, actual: str) -> None:
    if actual != header.checksum:
        raise CorruptEntryError(f"data checksum {actual} does not match the header's {header.checksum}")


def verify_file(path: str, stem: str, layout: Layout) -> EntryHeader:
    """Read a whole entry as `KVStore.read_into` does, into host memory in pieces: header, key,
    length, completeness and checksum. Raises `CorruptEntryError` (naming `path`) or `OSError`."""
    with open(path, "rb", buffering=0) as f:
        try:
            header, _ = read_header(f.fileno(), stem, None, layout)
            pieces = _Pieces(f.fileno(), header.nbytes)
            actual = checksum_of(pieces)  # read whole, to prove it complete, checksum or not
            check_complete(pieces.got, header)
            if header.checksum is not None:
                check_checksum(header, actual)
        except CorruptEntryError as exc:
            raise CorruptEntryError(exc.reason, path) from None
    return header


class _Pieces:
    """The data part of an open entry file read in pieces (each valid until the next one), and
    how many bytes came."""

    def __init__(self, fd: int, nbytes: int) -> None:
        self._fd, self._nbytes, self.got = fd, nbytes, 0

    def __iter__(self) -> Iterator[memoryview]:
        buf = bytearray(min(self._nbytes, STAGING_BYTES))
        while self.got < self._nbytes:
            n = os.preadv(self._fd, [memoryview(buf)[: self._nbytes - self.got]], HEADER_SIZE + self.got)
            if n <= 0:
                return
            self.got += n
            yield memoryview(buf)[:n]


class Reader:
    """The store's reads: headers loaded lazily and cached on the `Entry`, data read into any
    memory. A bad file is dropped (`Entries.drop`); a vanished one forgotten."""

    def __init__(self, entries: Entries, counters: Counters, open_file: OpenFile, checksum_mode: str,
                 rebuild_metadata: bool, spread: bool = False) -> None:
        self._entries = entries
        self._counters = counters
        self._open = open_file
        self._mode = checksum_mode
        self._rebuild = rebuild_metadata
        self._spread = spread  # summed reads over pygds's pool (`summed_io`)
        self._verified = VerifiedFiles(entries.layout.unique_paths, enabled=checksum_mode == "once")

    def load_header(self, entry: Entry) -> EntryHeader | None:
        """Read, validate and cache the header; rebuild a missing `.metadata` from it (in a store
        that writes them)."""
        entries = self._entries
        try:
            # O_NONBLOCK: a FIFO put at the name must not block the lookup (it is refused below)
            fd = os.open(entry.path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError:
            entries.forget(entry)
            return None
        except OSError as exc:
            entries.drop(entry, exc, None, "read_errors")
            return None
        st = None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise CorruptEntryError("not a regular file")
            header, raw = read_header(fd, entry.stem, entry.key_text, entries.layout, st.st_size)
        except CorruptEntryError as exc:
            entries.drop(entry, exc, st, "corrupt")
            return None
        except OSError as exc:
            entries.drop(entry, exc, st, "read_errors")
            return None
        finally:
            os.close(fd)
        entry.header, entry.digest = header, header_digest(raw)
        if not entry.has_metadata and self._rebuild:
            self._rebuild_metadata(entry, raw)
        entries.index.set_size(entry, st.st_size + (HEADER_SIZE if entry.has_metadata else 0), entry.has_metadata)
        return header

    def current_header(self, entry: Entry | None, check_file: bool = True) -> EntryHeader | None:
        """The entry's validated header; None (entry forgotten or dropped) when its file is gone
        or bad. A cached header costs one stat, unless `check_file` is off (a read follows, which
        finds a vanished file itself)."""
        if entry is None:
            return None
        if entry.header is None:
            return self.load_header(entry)
        if check_file and not os.path.exists(entry.path):
            self._entries.forget(entry)
            return None
        return entry.header

    def read_into(self, info: EntryInfo, dest: Any) -> EntryHeader:
        """See `KVStore.read_into`."""
        entries = self._entries
        view = pygds.as_buffer(dest, writable=True)
        stem = entries.layout.stem(info.key_text)
        entry = entries.index.get(stem)
        if entry is None or entry.path != info.path:
            entry = Entry(stem=stem, base=info.base, path=info.path, size=None, has_metadata=True)
        try:
            f = self._open(info.path, "r", info.header.nbytes)
        except FileNotFoundError:
            entries.forget(entry)
            raise EntryGoneError(f"{info.key_text} was removed from {info.path}") from None
        except IO_ERRORS as exc:
            entries.drop(entry, exc, None, "read_errors")
            raise CorruptEntryError(f"cannot open: {exc}", info.path) from None
        st = f.opened_stat
        with f:
            try:
                header, digest = self._checked_header(f.fd, entry, st.st_size, info.key_text)
            except CorruptEntryError as exc:
                entries.drop(entry, exc, st, "corrupt")
                raise CorruptEntryError(exc.reason, info.path) from None
            except OSError as exc:
                entries.drop(entry, exc, st, "read_errors")
                raise CorruptEntryError(f"cannot read header: {exc}", info.path) from None
            if header is not info.header and header != info.header:  # removed and put again:
                entries.forget(entry)  # the old header would misread it
                raise EntryGoneError(
                    f"{info.key_text} in {info.path} was replaced since lookup (header changed: "
                    f"{header} != {info.header})"
                )
            entry.header, entry.digest = header, digest
            if view.nbytes < header.nbytes:
                raise ValueError(
                    f"destination holds {view.nbytes} bytes but {info.path} has {header.nbytes}; "
                    "allocate it from the header lookup returned"
                )
            summed = header.checksum is not None and sums(self._mode, view.kind)
            verified = self._verified
            proved = summed and verified.proved(info.path, st)  # "once": likely no hash needed
            proving = summed and not proved and verified.pages_clean(f.fd)
            try:
                got, actual = read_data(f, view, header.nbytes, summed and not proved, self._spread)
                check_complete(got, header)
            except CorruptEntryError as exc:
                exc = CorruptEntryError(exc.reason, info.path)
                entries.drop(entry, exc, st, "corrupt")
                raise exc from None
            except IO_ERRORS as exc:
                entries.drop(entry, exc, st, "read_errors")
                raise CorruptEntryError(f"read failed: {exc}", info.path) from None
            after = verified.stat_after_read(f.fd) if summed else None
            proving = proving and verified.pages_clean(f.fd)
        if summed and verified.holds(info.path, st, after):
            self._counters.bump(checksum_skipped=1)
        elif summed:
            try:
                check_checksum(header, actual if actual is not None else checksum(view, got))
            except CorruptEntryError as exc:
                exc = CorruptEntryError(exc.reason, info.path)
                entries.drop(entry, exc, st, "corrupt")
                raise exc from None
            if proving:
                verified.verified(info.base, info.path, st, after)
        entries.index.get(stem, touch=True)
        return header

    def _checked_header(self, fd: int, entry: Entry, size: int, key_text: str) -> tuple[EntryHeader, int]:
        """The open file's header, checked, and its digest. Bytes equal to those the entry's header
        was checked from (same digest), in a file of that header's length, are that header
        without parsing them again; others are parsed and checked against the length and key."""
        raw = os.pread(fd, HEADER_SIZE, 0)
        digest = header_digest(raw)
        known = entry.header
        if known is not None and digest == entry.digest and size == HEADER_SIZE + known.nbytes:
            return known, digest
        header = unpack_header(raw, file_size=size)
        check_key(entry.stem, header, key_text, self._entries.layout)
        return header, digest

    def _rebuild_metadata(self, entry: Entry, raw: bytes) -> None:
        """Write the missing `.metadata` companion from the data file's own header bytes."""
        final = metadata_path(entry.path)
        if os.path.exists(final):
            entry.has_metadata = True
            return
        try:
            publish_bytes(final, raw)
        except OSError as exc:
            logger.debug("cannot rebuild %s: %s", final, exc)
            return
        entry.has_metadata = True
        logger.debug("rebuilt missing %s", final)
