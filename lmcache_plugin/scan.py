"""The start-up scan: directory listings into the index, and the listing `pygds cache` reads.

The scan needs directory listings only: it never opens a data file. It stats only temporary
files (for their age) and, when a capacity bound is set, the entries of the write path (for their
size). It runs in a background thread while the store serves requests. Before it starts, the index is
filled from each path's snapshot (`snapshot.py`), so that a restart serves at once; the scan then
confirms, corrects and completes what the snapshots said, and the snapshots are written again
when the scan found them out of date and at close (`Scanner.save`).

A large cache holds far more entries than a run looks up, so the scan's cost is what it pays per
name: it sorts each listing with a few C-speed string operations (`Scanner._sort_listings`) and
gives the index one shared `ScannedDir` per listing instead of an `Entry` per name.

`walk` and `sort_names` are the same listing and naming rules for readers that want every file
(`pygds cache`): data files, their `.metadata`, temporary files and everything else.
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import re
import stat
import string
import threading
import time
from dataclasses import dataclass, field
from itertools import compress, zip_longest
from typing import Callable, Iterable, Iterator, NamedTuple, Sequence

from . import snapshot
from .format import HEADER_SIZE
from .index import Entry, Index, ScannedDir
from .layout import METADATA_SUFFIX, Layout, is_tmp_name

logger = logging.getLogger(__name__)

_saves = threading.Lock()
"""Held while snapshots are written. The scan thread is a daemon, which an interpreter exit
would cut short in the middle of a write (its temporary file left behind): at exit
`_end_background_saves` waits for a write in progress and stops the scan thread's later ones."""
_exiting = False


@atexit.register
def _end_background_saves() -> None:
    global _exiting
    with _saves:
        _exiting = True

OnError = Callable[[str, OSError], None]
"""Called with a directory that could not be listed and the error."""


class Names(NamedTuple):
    """One listing's names sorted by what they are."""

    data: dict[str, tuple[str, Layout]]
    """data file name -> (its stem, the layout whose name it is)"""
    metadata: set[str]
    """data file names whose `.metadata` is listed (the data file itself may be missing)"""
    temps: list[str]
    """temporary names `<final>.tmp<8 hex>`"""
    others: list[str]
    """names no layout writes (`.metadata` names among them when only the suffix matches)"""


def sort_names(names: Iterable[str], layouts: Sequence[Layout]) -> Names:
    """Sort one listing: a name is a data file of the first layout whose canonical name it is."""
    sorted_ = Names({}, set(), [], [])
    cut = len(METADATA_SUFFIX)
    for name in names:
        if ".tmp" in name and is_tmp_name(name):
            sorted_.temps.append(name)
        elif name.endswith(METADATA_SUFFIX):
            sorted_.metadata.add(name[:-cut])
        else:
            for layout in layouts:
                stem = layout.stem_of_data_name(name)
                if stem is not None:
                    sorted_.data[name] = (stem, layout)
                    break
            else:
                sorted_.others.append(name)
    return sorted_


def list_fanout(directory: str, on_error: OnError) -> tuple[list[str], list[str]] | None:
    """(paths of the fan-out directories in `directory` (1 or 2 characters), the other names);
    None when it cannot be listed (`on_error` told)."""
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
        on_error(directory, exc)
        return None
    return subdirs, names


def list_level1(
    directory: str, on_error: OnError, stop: threading.Event | None = None
) -> list[tuple[str, list[str]]]:
    """(directory, names) of a first-level fan-out directory and each second-level one in it,
    all listed before any is sorted (faster than taking turns, with several workers)."""
    listed = list_fanout(directory, on_error)
    if listed is None:
        return []
    subdirs, names = listed
    listings = [(directory, names)]
    for sub in subdirs:
        if stop is not None and stop.is_set():
            break
        try:
            listings.append((sub, os.listdir(sub)))
        except OSError as exc:
            on_error(sub, exc)
    return listings


def walk(base: str, on_error: OnError) -> Iterator[tuple[str, list[str]]]:
    """(directory, names) of `base` and of every fan-out directory below it."""
    listed = list_fanout(base, on_error)
    if listed is None:
        return
    subdirs, names = listed
    yield base, names
    for directory in subdirs:
        yield from list_level1(directory, on_error)


@dataclass
class ScanStats:
    """What the start-up scan found and how long it took."""

    entries: int = 0
    """entries the scan found and indexed, or confirmed where a snapshot had named them"""
    snapshot_entries: int = 0
    """entries the snapshots named, indexed before the scan started"""
    snapshot_dropped: int = 0
    """of those, entries the scan did not find on disk (dropped)"""
    snapshot_seconds: float = 0.0
    directories: int = 0
    stale_tmp_removed: int = 0
    errors: int = 0
    seconds: float = 0.0
    done: bool = False
    paths: list[str] = field(default_factory=list)


class Scanner:
    """Scans every configured path in a background thread and feeds the index.

    `stat_bases` are the paths whose entries are stat'ed for their size (the capacity-bounded
    write path); elsewhere, and for a snapshot's entries until the scan lists them, sizes stay
    unknown until an entry is read.

    With `snapshots`, each path's snapshot is loaded before the scan and written after it (when
    it was out of date) and by `save`.

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
        snapshots: bool = True,
    ) -> None:
        self.layout = layout
        self.index = index
        self.tmp_max_age_s = tmp_max_age_s
        self.stat_bases = set(stat_bases)
        self.threads = max(1, threads)
        self.snapshots = snapshots
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
            if self.snapshots:
                self.load_snapshots()
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

    def close(self) -> None:
        """Stop a running scan, then write the snapshots (with `snapshots`): the index now
        holds every entry this store put."""
        self.stop()
        if self.snapshots:
            self.save()

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
            complete = not self._stop.is_set() and self.stats.errors == 0
            self.stats.snapshot_dropped = self.index.end_scan(complete)
            self.stats.seconds = time.perf_counter() - start
            self.stats.done = True
            self._done.set()
        logger.info(
            "scanned %d path(s): %d entries (%d named by snapshots, %d of those gone), %d stale "
            "temporary files removed, in %.2f s",
            len(self.layout.unique_paths),
            self.stats.entries,
            self.stats.snapshot_entries,
            self.stats.snapshot_dropped,
            self.stats.stale_tmp_removed,
            self.stats.seconds,
        )
        stats = self.stats
        if self.snapshots and complete and (stats.entries != stats.snapshot_entries or stats.snapshot_dropped):
            self.save()

    def save(self) -> None:
        """Write each path's snapshot of the index as it is now (never raises: a path that
        refuses only means a slower next start). Once the interpreter exits, a daemon thread's
        save (the scan thread's) is skipped: the exit would cut it short."""
        with _saves:
            if _exiting and threading.current_thread().daemon:
                return
            try:
                items = self.index.items()
                for base in self.layout.unique_paths:
                    snapshot.write(base, self.layout, snapshot.groups_of(items, base))
            except Exception:
                logger.exception("writing the index snapshots of %s failed", self.layout.unique_paths)

    def load_snapshots(self) -> int:
        """Index what each path's snapshot names, checked as listed names are (`start` does this
        before the scan); returns how many entries were added."""
        start = time.perf_counter()
        added = 0
        try:
            stems: list[str] = []
            places: list[ScannedDir] = []
            for base in self.layout.unique_paths:
                snap = snapshot.read(base, self.layout)
                if snap is not None:
                    self._add_listed_names(base, snap, stems, places)
            # One dict of every path's names (a name two snapshots hold takes the later place,
            # until the scan lists it).
            added = self.index.add_snapshot(dict(zip(stems, places)))
        except Exception:  # a snapshot is a hint: the scan fills the index anyway
            logger.exception("loading the index snapshots of %s failed", self.layout.unique_paths)
        self.stats.snapshot_entries += added
        self.stats.snapshot_seconds += time.perf_counter() - start
        if added:
            logger.info("indexed %d entries from snapshots in %.2f s; scanning to confirm them",
                        added, self.stats.snapshot_seconds)
        return added

    def _add_listed_names(
        self, base: str, snap: snapshot.Snapshot, stems: list[str], places: list[ScannedDir]
    ) -> None:
        """Append the checked names of `snap` to `stems`, each one's `ScannedDir` to `places`.
        A restart of a large cache waits for this: a few operations per group, and the
        per-name work in C (one replace and one split, one check of each part of the names)."""
        names = snap.stems()
        where: list[ScannedDir] = []
        suffix = self.layout.data_suffix
        prefix = os.path.join(base, "")  # + a relative directory: os.path.join's path
        for directory, meta, count in zip(snap.directories, snap.has_metadata, snap.counts):
            where += [ScannedDir(base, prefix + directory, suffix, meta)] * count
        if "" in names or not all(map(_plain_stems, (snap.prefix, snap.middles, snap.suffix))):
            named = list(map(self._named, names))
            names, where = list(compress(names, named)), list(compress(where, named))
        stems += names
        places += where

    def _named(self, stem: str) -> bool:
        """Whether a snapshot's `stem` is one the scan would index if it listed its data file."""
        return self.layout.stem_of_data_name(stem + self.layout.data_suffix) == stem

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

    def _subdirs(self, base: str) -> list[str]:
        listed = list_fanout(base, self._listing_failed)
        return [] if listed is None else listed[0]

    def _scan_level1(self, base: str, directory: str) -> bool:
        """Index a first-level fan-out directory and the second-level ones in it; True when
        listing them waited on the disk."""
        wall, cpu = time.perf_counter(), time.thread_time()
        listings = list_level1(directory, self._listing_failed, self._stop)
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
        found = sort_names(names, (self.layout,))
        stale = sum(self._remove_if_stale(os.path.join(directory, name), now) for name in found.temps)
        if not found.data:
            return stale
        suffix = self.layout.data_suffix
        if base not in self.stat_bases:
            with_meta = ScannedDir(base, directory, suffix, True)
            without = ScannedDir(base, directory, suffix, False)
            listed.update(
                {stem: with_meta if name in found.metadata else without for name, (stem, _) in found.data.items()}
            )
            return stale
        for name, (stem, _) in found.data.items():
            path = os.path.join(directory, name)
            has_meta = name in found.metadata
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
