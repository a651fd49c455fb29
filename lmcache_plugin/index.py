"""The in-memory index of entries and the start-up scan that fills it.

The index maps a file-name stem (see `layout.Layout.stem`) to an `Entry`, in least-recently-used
order, and keeps per-path byte totals for the capacity bound. Headers are parsed lazily, on an
entry's first lookup, so the scan needs directory listings only: it never opens a data file.
It stats only temporary files (for their age) and, when a capacity bound is set, the entries of
the write path (for their size). It runs in a background thread while the store serves requests.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterable

from .format import HEADER_SIZE, EntryHeader
from .layout import Layout, is_tmp_name

logger = logging.getLogger(__name__)


@dataclass
class Entry:
    """One indexed entry. `size` is its bytes on disk (data + metadata) when known."""

    stem: str
    base: str
    path: str
    size: int | None
    has_metadata: bool
    header: EntryHeader | None = None
    pins: int = 0
    key_text: str | None = None


class Index:
    """Thread-safe stem -> Entry map in LRU order with per-base byte totals.

    Entries removed while a scan runs leave a tombstone so the scan cannot bring them back.
    """

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._entries: OrderedDict[str, Entry] = OrderedDict()
        self._used: dict[str, int] = {}
        self._scanning = False
        self._tombstones: set[str] = set()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, stem: str, *, touch: bool = False) -> Entry | None:
        """The entry for `stem`; `touch` marks it most recently used."""
        with self.lock:
            entry = self._entries.get(stem)
            if entry is not None and touch:
                self._entries.move_to_end(stem)
            return entry

    def add(self, entry: Entry, *, replace: bool = False) -> Entry:
        """Insert as most recently used; an existing entry wins unless `replace`."""
        with self.lock:
            old = self._entries.get(entry.stem)
            if old is not None and not replace:
                self._entries.move_to_end(entry.stem)
                return old
            if old is not None:
                entry.pins = old.pins
                self._account(old, -1)
            self._entries[entry.stem] = entry
            self._entries.move_to_end(entry.stem)
            self._account(entry, +1)
            self._tombstones.discard(entry.stem)
            return entry

    def add_scanned(self, entries: Iterable[Entry]) -> int:
        """Insert scan results as least recently used, skipping known and removed stems."""
        added = 0
        with self.lock:
            for entry in entries:
                if entry.stem in self._entries or entry.stem in self._tombstones:
                    continue
                self._entries[entry.stem] = entry
                self._entries.move_to_end(entry.stem, last=False)
                self._account(entry, +1)
                added += 1
        return added

    def pop(self, stem: str) -> Entry | None:
        """Remove and return the entry (a tombstone while a scan runs)."""
        with self.lock:
            entry = self._entries.pop(stem, None)
            if entry is not None:
                self._account(entry, -1)
            if self._scanning:
                self._tombstones.add(stem)
            return entry

    def set_size(self, entry: Entry, size: int | None, has_metadata: bool | None = None) -> None:
        """Update an indexed entry's size (and metadata flag) keeping totals right."""
        with self.lock:
            indexed = self._entries.get(entry.stem) is entry
            if indexed:
                self._account(entry, -1)
            entry.size = size
            if has_metadata is not None:
                entry.has_metadata = has_metadata
            if indexed:
                self._account(entry, +1)

    def used_bytes(self, base: str) -> int:
        """Known bytes of the entries indexed under `base`."""
        with self.lock:
            return self._used.get(base, 0)

    def take_lru(self, base: str, nbytes: int, skip: set[str]) -> list[Entry]:
        """Pop least recently used unpinned entries of `base` until `nbytes` are freed.

        Returns the popped entries (possibly freeing less than asked when too few are left).
        """
        victims: list[Entry] = []
        freed = 0
        with self.lock:
            for stem, entry in self._entries.items():
                if freed >= nbytes:
                    break
                if entry.base != base or entry.pins > 0 or stem in skip:
                    continue
                victims.append(entry)
                freed += entry.size or 0
            for entry in victims:
                self.pop(entry.stem)
        return victims

    def snapshot(self) -> list[Entry]:
        """All entries, least recently used first."""
        with self.lock:
            return list(self._entries.values())

    def begin_scan(self) -> None:
        with self.lock:
            self._scanning = True

    def end_scan(self) -> None:
        with self.lock:
            self._scanning = False
            self._tombstones.clear()

    def _account(self, entry: Entry, sign: int) -> None:
        if entry.size:
            self._used[entry.base] = self._used.get(entry.base, 0) + sign * entry.size


@dataclass
class ScanStats:
    """What the start-up scan found and how long it took."""

    entries: int = 0
    directories: int = 0
    stale_tmp_removed: int = 0
    errors: int = 0
    seconds: float = 0.0
    done: bool = False
    paths: list[str] = field(default_factory=list)


class Scanner:
    """Scans every configured path in a background thread and feeds the index.

    `stat_bases` are the paths whose entries are stat'ed for their size (the capacity-bounded
    write path); elsewhere sizes stay unknown until an entry is read.
    """

    def __init__(
        self,
        layout: Layout,
        index: Index,
        *,
        tmp_max_age_s: float = 3600.0,
        stat_bases: Iterable[str] = (),
        threads: int = 2,
    ) -> None:
        self.layout = layout
        self.index = index
        self.tmp_max_age_s = tmp_max_age_s
        self.stat_bases = set(stat_bases)
        self.threads = max(1, threads)
        self.stats = ScanStats(paths=list(layout.unique_paths))
        self._done = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._count_lock = threading.Lock()

    def start(self) -> None:
        """Start the scan thread (once)."""
        if self._thread is None:
            self.index.begin_scan()
            self._thread = threading.Thread(target=self.run, name="kvstore-scan", daemon=True)
            self._thread.start()

    def skip(self) -> None:
        """Record that no scan will run (the store was asked not to scan)."""
        self.stats.done = True
        self._done.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the scan to finish; True when it has."""
        return self._done.wait(timeout)

    def stop(self) -> None:
        """Ask a running scan to stop early and wait for it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def run(self) -> None:
        """Scan all paths now, in the calling thread."""
        start = time.perf_counter()
        self.index.begin_scan()
        try:
            level1: list[tuple[str, str]] = []
            for base in self.layout.unique_paths:
                level1.extend((base, d) for d in self._subdirs(base))
            with ThreadPoolExecutor(self.threads, thread_name_prefix="kvstore-scan") as pool:
                for _ in pool.map(lambda item: self._scan_dir(item[0], item[1], 1), level1):
                    pass
        except Exception:  # a scan must never take the store down
            self.stats.errors += 1
            logger.exception("the start-up scan of %s stopped early", self.layout.unique_paths)
        finally:
            self.index.end_scan()
            self.stats.seconds = time.perf_counter() - start
            self.stats.done = True
            self._done.set()
        logger.info(
            "scanned %d path(s): %d entries, %d stale temporary files removed, in %.2f s",
            len(self.layout.unique_paths),
            self.stats.entries,
            self.stats.stale_tmp_removed,
            self.stats.seconds,
        )

    def _subdirs(self, directory: str) -> list[str]:
        """Fan-out directories (1 or 2 characters) of `directory`."""
        try:
            with os.scandir(directory) as it:
                return [
                    e.path
                    for e in it
                    if 1 <= len(e.name) <= 2 and e.is_dir(follow_symlinks=False)
                ]
        except FileNotFoundError:
            return []
        except OSError as exc:
            self._count(errors=1)
            logger.warning("cannot list cache directory %s: %s", directory, exc)
            return []

    def _scan_dir(self, base: str, directory: str, depth: int) -> None:
        if self._stop.is_set():
            return
        data: dict[str, os.DirEntry[str]] = {}
        metas: set[str] = set()
        subdirs: list[str] = []
        stale = 0
        now = time.time()
        meta_suffix = self.layout.metadata_suffix
        meta_cut = len(meta_suffix)
        try:
            with os.scandir(directory) as it:
                for e in it:
                    name = e.name
                    if depth == 1 and 1 <= len(name) <= 2 and e.is_dir(follow_symlinks=False):
                        subdirs.append(e.path)
                        continue
                    if ".tmp" in name and is_tmp_name(name):
                        stale += self._remove_if_stale(e, now)
                        continue
                    if name.endswith(meta_suffix):
                        # only ever looked up with validated data stems: no need to validate it
                        metas.add(name[:-meta_cut])
                        continue
                    stem = self.layout.stem_of_data_name(name)
                    if stem is not None:
                        data[stem] = e
        except FileNotFoundError:
            return
        except OSError as exc:
            self._count(errors=1)
            logger.warning("cannot list cache directory %s: %s", directory, exc)
            return
        stat_sizes = base in self.stat_bases
        entries = []
        for stem, e in data.items():
            has_meta = stem in metas
            size = None
            if stat_sizes:
                try:
                    size = e.stat(follow_symlinks=False).st_size + (HEADER_SIZE if has_meta else 0)
                except OSError:
                    continue
            entries.append(Entry(stem=stem, base=base, path=e.path, size=size, has_metadata=has_meta))
        added = self.index.add_scanned(entries)
        self._count(entries=added, directories=1, stale=stale)
        for sub in subdirs:
            self._scan_dir(base, sub, depth + 1)

    def _remove_if_stale(self, e: os.DirEntry[str], now: float) -> int:
        try:
            age = now - e.stat(follow_symlinks=False).st_mtime
            if age <= self.tmp_max_age_s or not e.is_file(follow_symlinks=False):
                return 0
            os.unlink(e.path)
        except FileNotFoundError:
            return 0
        except OSError as exc:
            logger.debug("cannot remove stale temporary file %s: %s", e.path, exc)
            return 0
        logger.debug("removed stale temporary file %s (%.0f s old)", e.path, age)
        return 1

    def _count(self, entries: int = 0, directories: int = 0, stale: int = 0, errors: int = 0) -> None:
        with self._count_lock:
            self.stats.entries += entries
            self.stats.directories += directories
            self.stats.stale_tmp_removed += stale
            self.stats.errors += errors
