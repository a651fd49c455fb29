"""The in-memory index of entries and the start-up scan that fills it.

The index maps a file-name stem (see `layout.Layout.stem`) to an `Entry`, in least-recently-used
order, and keeps per-path byte totals for the capacity bound. Headers are parsed lazily, on an
entry's first lookup, so the scan needs directory listings only: it never opens a data file.
It stats only temporary files (for their age) and, when a capacity bound is set, the entries of
the write path (for their size). It runs in a background thread while the store serves requests.

A large cache holds far more entries than a run looks up, so the scan's cost is what it pays per
name: it sorts each listing with a few C-speed string operations (`Scanner._sort_listings`) and
stores one shared `ScannedDir` per listing instead of an `Entry` per name; the index makes an
entry's `Entry` on its first lookup."""

from __future__ import annotations

import logging
import os
import queue
import re
import stat
import string
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from itertools import chain, zip_longest
from typing import Iterable, NamedTuple

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


class ScannedDir(NamedTuple):
    """What the entries one scan listing found share, instead of an `Entry` each: most scanned
    entries are never looked up, so each gets its `Entry` only when one is asked for."""

    base: str
    directory: str
    suffix: str
    has_metadata: bool

    def entry(self, stem: str) -> Entry:
        """The `Entry` of one stem listed here (size unknown)."""
        path = os.path.join(self.directory, stem + self.suffix)
        return Entry(stem, self.base, path, None, self.has_metadata)


class Index:
    """Thread-safe stem -> Entry map in LRU order with per-base byte totals.

    Scanned entries sit in `_scanned` (a plain dict in scan order), all older than the entries in
    `_entries` (put or looked up with `touch`, in LRU order). A scanned entry may still be a
    `ScannedDir`: its `Entry` is made on first access and stored in its place, so every caller
    gets that same object from then on; a touch moves it to `_entries`.
    Entries removed while a scan runs leave a tombstone so the scan cannot bring them back.
    """

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._entries: OrderedDict[str, Entry] = OrderedDict()
        self._scanned: dict[str, Entry | ScannedDir] = {}
        self._used: dict[str, int] = {}
        self._scanning = False
        self._tombstones: set[str] = set()

    def __len__(self) -> int:
        return len(self._entries) + len(self._scanned)

    def get(self, stem: str, *, touch: bool = False) -> Entry | None:
        """The entry for `stem`; `touch` marks it most recently used."""
        with self.lock:
            if touch:
                return self._promote(stem)
            entry = self._entries.get(stem)
            if entry is not None:
                return entry
            found = self._scanned.get(stem)
            if isinstance(found, ScannedDir):
                found = self._scanned[stem] = found.entry(stem)
            return found

    def add(self, entry: Entry, *, replace: bool = False) -> Entry:
        """Insert as most recently used; an existing entry wins unless `replace`."""
        with self.lock:
            old = self._promote(entry.stem)
            if old is not None and not replace:
                return old
            if old is not None:
                entry.pins = old.pins
                self._account(old, -1)
            self._entries[entry.stem] = entry  # a promoted stem already sits at the end
            self._account(entry, +1)
            self._tombstones.discard(entry.stem)
            return entry

    def add_scanned(self, entries: Iterable[Entry]) -> int:
        """Insert scan results as least recently used, skipping known and removed stems."""
        added = 0
        with self.lock:
            for entry in entries:
                stem = entry.stem
                if stem in self._scanned or stem in self._entries or stem in self._tombstones:
                    continue
                self._scanned[stem] = entry
                self._account(entry, +1)
                added += 1
        return added

    def add_listed(self, listed: dict[str, ScannedDir]) -> int:
        """`add_scanned` for stems found by listings, sizes unknown, without an `Entry` each
        (the scan of a large cache is mostly this call)."""
        with self.lock:
            stems = listed.keys()  # isdisjoint of two views or a set goes over the smaller
            if not (
                stems.isdisjoint(self._scanned.keys())
                and stems.isdisjoint(self._entries.keys())
                and stems.isdisjoint(self._tombstones)
            ):
                listed = {
                    stem: where
                    for stem, where in listed.items()
                    if stem not in self._scanned
                    and stem not in self._entries
                    and stem not in self._tombstones
                }
            self._scanned.update(listed)
            return len(listed)

    def pop(self, stem: str) -> Entry | None:
        """Remove and return the entry (a tombstone while a scan runs)."""
        with self.lock:
            entry = self._entries.pop(stem, None)
            if entry is None:
                found = self._scanned.pop(stem, None)
                entry = found.entry(stem) if isinstance(found, ScannedDir) else found
            if entry is not None:
                self._account(entry, -1)
            if self._scanning:
                self._tombstones.add(stem)
            return entry

    def set_size(self, entry: Entry, size: int | None, has_metadata: bool | None = None) -> None:
        """Update an indexed entry's size (and metadata flag) keeping totals right."""
        with self.lock:
            stem = entry.stem
            indexed = self._entries.get(stem) is entry or self._scanned.get(stem) is entry
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
        stems: list[str] = []
        freed = 0
        with self.lock:
            for stem, found in chain(self._scanned.items(), self._entries.items()):
                if freed >= nbytes:
                    break
                if found.base != base or stem in skip:
                    continue
                if isinstance(found, Entry):
                    if found.pins > 0:
                        continue
                    freed += found.size or 0
                stems.append(stem)
            return [entry for entry in map(self.pop, stems) if entry is not None]

    def snapshot(self) -> list[Entry]:
        """All entries, least recently used first."""
        with self.lock:
            listed = [s for s, found in self._scanned.items() if isinstance(found, ScannedDir)]
            for stem in listed:
                self._scanned[stem] = self._scanned[stem].entry(stem)  # type: ignore[union-attr]
            return [*self._scanned.values(), *self._entries.values()]  # type: ignore[list-item]

    def begin_scan(self) -> None:
        with self.lock:
            self._scanning = True

    def end_scan(self) -> None:
        with self.lock:
            self._scanning = False
            self._tombstones.clear()

    def _promote(self, stem: str) -> Entry | None:
        """The entry for `stem`, made most recently used (a scanned one moves to `_entries`)."""
        entry = self._entries.get(stem)
        if entry is not None:
            self._entries.move_to_end(stem)
            return entry
        found = self._scanned.pop(stem, None)
        if found is None:
            return None
        entry = found.entry(stem) if isinstance(found, ScannedDir) else found
        self._entries[stem] = entry
        return entry

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

    The scan thread lists alone while listings come from memory (more threads would only
    contend for the GIL); when a listing waits on the disk, it starts another worker, up to
    `threads`, so that the disk sees several requests at once.
    """

    def __init__(
        self,
        layout: Layout,
        index: Index,
        *,
        tmp_max_age_s: float = 3600.0,
        stat_bases: Iterable[str] = (),
        threads: int = 8,
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
        self._workers: list[threading.Thread] = []
        self._workers_lock = threading.Lock()
        # Listings are searched backwards for each name's suffix (see `_sort_listings`); a data
        # suffix that ends the metadata suffix too would match metadata names as data names.
        self._whole_listings = not layout.metadata_suffix.endswith(layout.data_suffix)
        self._data_re = re.compile("/" + re.escape(layout.data_suffix[::-1]) + "([^/]+)")
        self._meta_re = re.compile("/" + re.escape(layout.metadata_suffix[::-1]) + "([^/]*)")

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
        """Scan all paths now, in the calling thread (and the workers it starts)."""
        start = time.perf_counter()
        self.index.begin_scan()
        try:
            todo: queue.SimpleQueue[tuple[str, str]] = queue.SimpleQueue()
            per_base = [[(b, d) for d in self._subdirs(b)] for b in self.layout.unique_paths]
            for items in zip_longest(*per_base):  # the paths in turn: each device gets requests
                for item in items:
                    if item is not None:
                        todo.put(item)
            self._work(todo)
            joined = 0
            while True:  # a worker may start another until the last one ends
                with self._workers_lock:
                    if joined == len(self._workers):
                        break
                    worker = self._workers[joined]
                worker.join()
                joined += 1
        except Exception:  # a scan must never take the store down
            self._stopped_early()
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

    def _work(self, todo: queue.SimpleQueue[tuple[str, str]]) -> None:
        """Scan first-level directories until none are left; start another worker each time
        listing one took more than twice the CPU time it used (it waited on the disk)."""
        try:
            while not self._stop.is_set():
                try:
                    base, directory = todo.get_nowait()
                except queue.Empty:
                    return
                if self._scan_level1(base, directory) and len(self._workers) + 1 < self.threads:
                    self._add_worker(todo)
        except Exception:  # a scan must never take the store down
            self._stopped_early()

    def _stopped_early(self) -> None:
        self._stop.set()
        self._count(errors=1)
        logger.exception("the start-up scan of %s stopped early", self.layout.unique_paths)

    def _add_worker(self, todo: queue.SimpleQueue[tuple[str, str]]) -> None:
        with self._workers_lock:
            if len(self._workers) + 1 >= self.threads:
                return
            worker = threading.Thread(
                target=self._work, args=(todo,), name="kvstore-scan-worker", daemon=True
            )
            self._workers.append(worker)
            worker.start()

    def _subdirs(self, directory: str) -> list[str]:
        """Fan-out directories (1 or 2 characters) of `directory`."""
        try:
            with os.scandir(directory) as it:
                return [
                    e.path
                    for e in it
                    if 1 <= len(e.name) <= 2 and e.is_dir(follow_symlinks=False)
                ]
        except OSError as exc:
            self._listing_failed(directory, exc)
            return []

    def _scan_level1(self, base: str, directory: str) -> bool:
        """Index a first-level fan-out directory and the second-level ones in it; True when
        listing them waited on the disk."""
        wall, cpu = time.perf_counter(), time.thread_time()
        listings = self._list_level1(directory)
        waited = time.perf_counter() - wall > 2 * (time.thread_time() - cpu)
        now = time.time()
        stale = 0
        sized: list[Entry] = []
        listed = None
        if self._whole_listings and base not in self.stat_bases:
            listed = self._sort_listings(base, listings)
        if listed is None:
            listed = {}
            for where, names in listings:
                stale += self._sort_names(base, where, names, now, sized, listed)
        added = self.index.add_scanned(sized) if sized else 0
        added += self.index.add_listed(listed) if listed else 0
        self._count(entries=added, directories=len(listings), stale=stale)
        return waited

    def _list_level1(self, directory: str) -> list[tuple[str, list[str]]]:
        """(directory, names) of a first-level directory and each fan-out directory in it, all
        listed before any is sorted (faster than taking turns, with several workers)."""
        subdirs: list[str] = []
        names: list[str] = []
        try:
            with os.scandir(directory) as it:
                for e in it:
                    if 1 <= len(e.name) <= 2 and e.is_dir(follow_symlinks=False):
                        subdirs.append(e.path)
                    else:
                        names.append(e.name)
        except OSError as exc:
            self._listing_failed(directory, exc)
            return []
        listings = [(directory, names)]
        for sub in subdirs:
            if self._stop.is_set():
                break
            try:
                listings.append((sub, os.listdir(sub)))
            except OSError as exc:
                self._listing_failed(sub, exc)
        return listings

    def _sort_listings(
        self, base: str, listings: list[tuple[str, list[str]]]
    ) -> dict[str, ScannedDir] | None:
        """The data stems of the listings, each with its `ScannedDir`, found at C speed; None
        when a listing needs `_sort_names` (a ".tmp" in it or a stem that is not plain).

        Each listing's names are joined by "/" (which no name holds) and reversed, so that a
        suffix starts each match and the regular expression searches for it as a literal.
        """
        suffix = self.layout.data_suffix
        data_of = self._data_re.findall
        metas_of = self._meta_re.findall
        listed: dict[str, ScannedDir] = {}
        found_stems: list[str] = []
        for directory, names in listings:
            joined = "/".join(names)
            if ".tmp" in joined:
                return None
            backwards = "/" + joined[::-1]
            found = data_of(backwards)
            if not found:
                continue
            stems = "/".join(found)[::-1]
            found_stems.append(stems)
            metas = set(metas_of(backwards))
            with_meta = ScannedDir(base, directory, suffix, True)
            if metas.issuperset(found):
                listed.update(dict.fromkeys(stems.split("/"), with_meta))
            else:
                without = ScannedDir(base, directory, suffix, False)
                listed.update({s[::-1]: with_meta if s in metas else without for s in found})
        return listed if _plain_stems("/".join(found_stems)) else None

    def _sort_names(
        self,
        base: str,
        directory: str,
        names: list[str],
        now: float,
        sized: list[Entry],
        listed: dict[str, ScannedDir],
    ) -> int:
        """Name by name: entries go to `sized` (in a `stat_bases` path) or `listed`, stale
        temporary files are removed (returns how many)."""
        data: list[str] = []
        metas: set[str] = set()
        stale = 0
        meta_suffix = self.layout.metadata_suffix
        meta_cut = len(meta_suffix)
        for name in names:
            if ".tmp" in name and is_tmp_name(name):
                stale += self._remove_if_stale(os.path.join(directory, name), now)
            elif name.endswith(meta_suffix):
                # only ever looked up with validated data stems: no need to validate it
                metas.add(name[:-meta_cut])
            else:
                stem = self.layout.stem_of_data_name(name)
                if stem is not None:
                    data.append(stem)
        if not data:
            return stale
        suffix = self.layout.data_suffix
        if base not in self.stat_bases:
            with_meta = ScannedDir(base, directory, suffix, True)
            without = ScannedDir(base, directory, suffix, False)
            listed.update({stem: with_meta if stem in metas else without for stem in data})
            return stale
        for stem in data:
            path = os.path.join(directory, stem + suffix)
            has_meta = stem in metas
            try:
                size = os.lstat(path).st_size + (HEADER_SIZE if has_meta else 0)
            except OSError:
                continue
            sized.append(Entry(stem=stem, base=base, path=path, size=size, has_metadata=has_meta))
        return stale

    def _remove_if_stale(self, path: str, now: float) -> int:
        try:
            st = os.lstat(path)
            age = now - st.st_mtime
            if age <= self.tmp_max_age_s or not stat.S_ISREG(st.st_mode):
                return 0
            os.unlink(path)
        except FileNotFoundError:
            return 0
        except OSError as exc:
            logger.debug("cannot remove stale temporary file %s: %s", path, exc)
            return 0
        logger.debug("removed stale temporary file %s (%.0f s old)", path, age)
        return 1

    def _listing_failed(self, directory: str, exc: OSError) -> None:
        """Count and log a directory that cannot be listed (one that vanished is no error)."""
        if isinstance(exc, FileNotFoundError):
            return
        self._count(errors=1)
        logger.warning("cannot list cache directory %s: %s", directory, exc)

    def _count(self, entries: int = 0, directories: int = 0, stale: int = 0, errors: int = 0) -> None:
        with self._count_lock:
            self.stats.entries += entries
            self.stats.directories += directories
            self.stats.stale_tmp_removed += stale
            self.stats.errors += errors


_UNRESERVED = (string.ascii_letters + string.digits + "_.~-").encode()
_ODD_ESCAPE_RE = re.compile(rb"%(?![01][0-9A-F]|2[0-9A-CF]|3[A-F]|40|5[B-E]|60|7[BCDF])")
"""A "%" that does not start the escape `quote` makes of a reserved ASCII character."""


def _plain_stems(text: str) -> bool:
    """True when every "/"-separated stem in `text` is what `quote(key, safe="")` makes of an
    ASCII key: unreserved characters and the escapes of reserved ASCII ones. Such a stem passes
    `Layout.stem_of_data_name` as it is; others (bounded or non-ASCII keys, foreign names) need
    its checks."""
    if not text.isascii():
        return False
    raw = text.encode("ascii")
    rest = raw.translate(None, _UNRESERVED)
    return len(rest) == rest.count(b"%") + rest.count(b"/") and _ODD_ESCAPE_RE.search(raw) is None
