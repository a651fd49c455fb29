"""Keeping the index true to the disk: finding entries on disk, forgetting vanished ones,
dropping bad ones and putting back ones that could not be deleted.

Paths are shared with other writers (other stores, `pygds cache evict`, a user's `mv`), so the
index only says where to look. A bad file is remembered by its path and identity (device, inode,
size, mtime, ctime: `verified.identity`) so that probes skip it until it changes (a new put
replaces it; a repair in place moves its ctime), but only on local disk file systems
(`verified.local_devices`). On FUSE and network file systems the `fstat` of an open file can
describe another file: bindfs (libfuse's path API) answers it for whatever is at the name now,
and one kernel inode per name shares its page cache among every file ever there, so a read of a
good file just put at the name can return the bytes of the bad one another process still reads.
Remembering that identity would hide the good file from every later probe; there a bad file is
checked again by each probe, and only its first drop warns. A put, though, treats a file it
remembers as bad as absent on any file system and writes the key anew: at worst that replaces a
good file with the same key's bytes.
"""

from __future__ import annotations

import logging
import os
import stat

from .claims import Claims
from .counters import Counters
from .format import HEADER_SIZE
from .index import Entry, Index
from .layout import Layout, metadata_path
from .verified import identity, local_devices

logger = logging.getLogger(__name__)

Identity = tuple[str, tuple[int, int, int, int, int]]


def stat_by_open(path: str) -> os.stat_result:
    """`fstat` of `path` opened read-only. Unlike `os.stat`, an open is not answered from a
    network or FUSE file system's attribute cache, which can report a file that another machine
    removed as present for up to a second. O_NONBLOCK: a FIFO at the name must not block."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        return os.fstat(fd)
    finally:
        os.close(fd)


def _identity(path: str, st: os.stat_result) -> Identity:
    return (path, identity(st))


class Entries:
    """The index with its upkeep against the disk."""

    def __init__(self, index: Index, layout: Layout, claims: Claims, counters: Counters) -> None:
        self.index = index
        self.layout = layout
        self._claims = claims
        self._counters = counters
        self._bad: dict[str, Identity] = {}
        self._local = local_devices(layout.unique_paths)  # where a bad file's identity can be trusted

    def find(self, key_text: str, chunk_hash: int | str, *, touch: bool) -> Entry | None:
        """Index first, then disk; None while the stem is being written or deleted."""
        stem = self.layout.stem(key_text)
        if self._claims.is_busy(stem):
            return None
        entry = self.index.get(stem, touch=touch)
        if entry is None:
            entry = self.probe(key_text, chunk_hash, stem)
        if entry is not None and entry.key_text is None:
            entry.key_text = key_text
        return entry

    def probe(self, key_text: str, chunk_hash: int | str, stem: str, *, for_put: bool = False) -> Entry | None:
        """Look for the entry's data file in every path; index and return it when found. A file
        remembered as bad is skipped on a local disk file system, and `for_put` anywhere."""
        for base, path in self.layout.candidate_paths(key_text, chunk_hash):
            try:
                st = stat_by_open(path)
            except OSError:
                continue
            if not stat.S_ISREG(st.st_mode) or (self._known_bad(stem, path, st)
                                                and (for_put or self._local.get(base) == st.st_dev)):
                continue
            has_meta = os.path.exists(metadata_path(path))
            entry = Entry(
                stem=stem,
                base=base,
                path=path,
                size=st.st_size + (HEADER_SIZE if has_meta else 0),
                has_metadata=has_meta,
                key_text=key_text,
            )
            return self.index.add(entry)
        return None

    def on_disk(self, key_text: str, chunk_hash: int | str, stem: str) -> bool:
        """True when the key's data file is on disk, in any path, and not one remembered as bad
        (a put asks: it then writes the key anew). An indexed entry whose file another process
        removed is forgotten."""
        entry = self.index.get(stem)
        if entry is not None:
            try:
                st = stat_by_open(entry.path)
                if stat.S_ISREG(st.st_mode) and not self._known_bad(stem, entry.path, st):
                    return True
                self.forget(entry)  # a FIFO, socket or directory at the name, or a bad file, is no entry
            except (FileNotFoundError, NotADirectoryError):
                self.forget(entry)
            except OSError:
                return True  # cannot tell; what is there stays
        return self.probe(key_text, chunk_hash, stem, for_put=True) is not None

    def _known_bad(self, stem: str, path: str, st: os.stat_result) -> bool:
        return self._bad.get(stem) == _identity(path, st)

    def drop(self, entry: Entry, exc: BaseException, st: os.stat_result | None, counter: str) -> None:
        """Forget a bad entry (index and, on a local disk file system, future probes of the same
        file, `st` being the `fstat` of the file found bad), one warning per file. Without `st`
        (the file could not be opened) nothing is remembered: a `stat` now could describe a good
        file another store has just put there, and probes skip files they cannot open anyway."""
        if self.index.get(entry.stem) is entry:
            self.index.pop(entry.stem)
        again = False
        if st is not None:
            bad = _identity(entry.path, st)
            again = self._bad.get(entry.stem) == bad
            self._bad[entry.stem] = bad
        self._counters.bump(**{counter: 1})
        (logger.debug if again else logger.warning)("dropping KV cache entry %s: %s", entry.path, exc)

    def forget(self, entry: Entry) -> None:
        """The entry's file vanished: drop it from the index quietly."""
        if self.index.get(entry.stem) is entry:
            self.index.pop(entry.stem)

    def keep(self, entry: Entry) -> int:
        """An entry whose data file could not be deleted stays indexed (is put back), with its
        `.metadata` flag and size as they are now on disk; returns the bytes freed anyway."""
        has_metadata = os.path.exists(metadata_path(entry.path))
        before = size = entry.size
        if size is not None and entry.has_metadata and not has_metadata:
            size -= HEADER_SIZE
        entry = self.index.add(entry)
        self.index.set_size(entry, size, has_metadata)
        return (before or 0) - (size or 0)

    def cleared(self, stem: str) -> None:
        """A new file under `stem` (a put) or none at all (a removal): probes may find it again."""
        self._bad.pop(stem, None)
