"""The in-memory index of entries: stem -> `Entry` in least-recently-used order.

It keeps per-path byte totals for the capacity bound and the pins that keep entries from eviction.
The start-up scan (`scan.py`) fills it from directory listings alone: a large cache holds far more
entries than a run looks up, so a scanned entry is one shared `ScannedDir` per listing until its
first lookup makes its `Entry`, and headers are read lazily, on that lookup.

Every method takes the index's own lock, except `has`: a membership test of two dicts, atomic
under the GIL, so that `KVStore.contains` costs a dict lookup.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from itertools import chain
from typing import Iterable, NamedTuple

from .format import EntryHeader


@dataclass
class Entry:
    """One indexed entry. `size` is its bytes on disk (data + metadata) when known. `digest`
    (`format.header_digest`) identifies the exact header bytes `header` was checked from, so that
    a read finding the same bytes need not parse and check them again."""

    stem: str
    base: str
    path: str
    size: int | None
    has_metadata: bool
    header: EntryHeader | None = None
    pins: int = 0
    key_text: str | None = None
    digest: int | None = None


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
    Entries a snapshot named (`add_snapshot`) stay unconfirmed until the scan lists them; a
    complete scan drops those it did not find (`end_scan`).
    """

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self._entries: OrderedDict[str, Entry] = OrderedDict()
        self._scanned: dict[str, Entry | ScannedDir] = {}
        self._used: dict[str, int] = {}
        self._scanning = False
        self._tombstones: set[str] = set()
        self._unconfirmed: set[str] = set()

    def __len__(self) -> int:
        return len(self._entries) + len(self._scanned)

    def has(self, stem: str) -> bool:
        """Whether `stem` is indexed; no lock, no `Entry` made (the lookup hot path)."""
        return stem in self._entries or stem in self._scanned

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
            self._unconfirmed.discard(entry.stem)
            return entry

    def add_scanned(self, entries: Iterable[Entry]) -> int:
        """Insert scan results as least recently used, skipping known and removed stems. A
        snapshot's entry of the stem, still unconfirmed, takes the scan's facts (size, place): in
        place where a lookup has made its `Entry` since (whoever holds or pinned it keeps the one
        object). Returns how many were added or confirmed."""
        added = 0
        with self.lock:
            for entry in entries:
                stem = entry.stem
                if stem in self._unconfirmed:
                    self._unconfirmed.discard(stem)
                    added += 1
                    known = self._entries.get(stem) or self._scanned.get(stem)
                    if isinstance(known, Entry):
                        self._move(known, entry.base, entry.path, entry.has_metadata, entry.size)
                        continue
                    if known is not None:  # still the snapshot's listing
                        self._scanned[stem] = entry
                        self._account(entry, +1)
                        continue
                if self._known(stem):
                    continue
                self._scanned[stem] = entry
                self._account(entry, +1)
                added += 1
        return added

    def add_listed(self, listed: dict[str, ScannedDir]) -> int:
        """`add_scanned` for stems found by listings, sizes unknown, without an `Entry` each
        (the scan of a large cache is mostly this call)."""
        with self.lock:
            if listed.items() <= self._scanned.items():  # each indexed where listed: a snapshot's
                unconfirmed = len(self._unconfirmed)  # (the usual case), checked in C
                self._unconfirmed.difference_update(listed)
                return unconfirmed - len(self._unconfirmed)
            confirmed = self._confirm(listed) if self._unconfirmed else 0
            listed = self._unknown(listed)
            self._scanned.update(listed)
            return len(listed) + confirmed

    def add_snapshot(self, listed: dict[str, ScannedDir]) -> int:
        """Insert what a snapshot named, as least recently used, unconfirmed and of unknown size
        (known and removed stems skipped); returns how many were added."""
        with self.lock:
            before = len(self._scanned)
            listed = self._unknown(listed)
            self._scanned.update(listed)  # into an empty dict (a start's): a copy
            self._unconfirmed.update(listed)
            return len(self._scanned) - before

    def _confirm(self, listed: dict[str, ScannedDir]) -> int:
        """The scan listed these stems: a snapshot's entry of one elsewhere (another path or
        directory) takes the listed place, in place where a lookup has made its `Entry`; all are
        confirmed (returns how many)."""
        confirmed = self._unconfirmed.intersection(listed)
        self._unconfirmed.difference_update(confirmed)
        for stem in confirmed:
            where = listed[stem]
            known = self._entries.get(stem) or self._scanned.get(stem)
            if isinstance(known, Entry):
                path = os.path.join(where.directory, stem + where.suffix)
                if known.path != path:
                    self._move(known, where.base, path, where.has_metadata, None)
            elif known is not None and known != where:
                self._scanned[stem] = where
        return len(confirmed)

    def _move(self, known: Entry, base: str, path: str, has_metadata: bool, size: int | None) -> None:
        """Give an `Entry` a lookup made from a snapshot's listing what the scan found, in place:
        whoever holds or pinned it keeps the one object (lock held)."""
        self._account(known, -1)
        if known.path != path:
            known.base, known.path, known.header, known.digest = base, path, None, None
        known.size, known.has_metadata = size, has_metadata
        self._account(known, +1)

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
            indexed = self._indexed(entry)
            if indexed:
                self._account(entry, -1)
            entry.size = size
            if has_metadata is not None:
                entry.has_metadata = has_metadata
            if indexed:
                self._account(entry, +1)

    def pin(self, entry: Entry) -> bool:
        """Add one pin: eviction never takes a pinned entry. False (nothing pinned) when `entry` is
        no longer the indexed one: evicted or removed since it was found."""
        with self.lock:
            if not self._indexed(entry):
                return False
            entry.pins += 1
            return True

    def _indexed(self, entry: Entry) -> bool:
        """Whether `entry` is the very object indexed under its stem (lock held)."""
        return self._entries.get(entry.stem) is entry or self._scanned.get(entry.stem) is entry

    def pop_unpinned(self, stem: str) -> tuple[bool, Entry | None]:
        """`pop` unless the entry is pinned, as one step against `pin`: (False, the entry) when it
        is pinned and stays, else (True, the entry popped or None)."""
        with self.lock:
            entry = self.get(stem)
            if entry is not None and entry.pins > 0:
                return False, entry
            return True, self.pop(stem)

    def unpin(self, entry: Entry) -> bool:
        """Undo one `pin`; False when the entry has none."""
        with self.lock:
            if entry.pins <= 0:
                return False
            entry.pins -= 1
            return True

    def used_bytes(self, base: str) -> int:
        """Known bytes of the entries indexed under `base`."""
        with self.lock:
            return self._used.get(base, 0)

    def take_lru(self, base: str, nbytes: int, skip: set[str]) -> list[Entry]:
        """Pop least recently used unpinned entries of `base` of known size until `nbytes` are
        freed. An entry of unknown size (a snapshot's, until the scan lists it) is not counted
        toward capacity, so it is not taken either.

        Returns the popped entries (possibly freeing less than asked when too few are left).
        """
        stems: list[str] = []
        freed = 0
        with self.lock:
            for stem, found in chain(self._scanned.items(), self._entries.items()):
                if freed >= nbytes:
                    break
                if found.base != base or stem in skip or type(found) is not Entry or not found.size or found.pins > 0:
                    continue
                freed += found.size
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

    def end_scan(self, complete: bool = True) -> int:
        """The scan has ended. When it listed every directory (`complete`), a snapshot's entry
        it did not find is gone from disk and is dropped (one read or put since keeps it);
        returns how many were dropped."""
        dropped = 0
        with self.lock:
            if complete:
                for stem in self._unconfirmed:
                    found = self._scanned.pop(stem, None)
                    if found is not None:
                        dropped += 1
                        if isinstance(found, Entry):
                            self._account(found, -1)
            self._unconfirmed.clear()
            self._scanning = False
            self._tombstones.clear()
        return dropped

    def items(self) -> list[tuple[str, Entry | ScannedDir]]:
        """Every (stem, entry) pair, a scanned entry possibly still its `ScannedDir` (no `Entry`
        made: a snapshot of a large index is mostly these)."""
        with self.lock:
            return [*self._scanned.items(), *self._entries.items()]

    def _unknown(self, listed: dict[str, ScannedDir]) -> dict[str, ScannedDir]:
        """The part of `listed` neither indexed nor removed. A listing is usually all new (a scan
        without a snapshot) or all indexed (one confirming a snapshot): C-speed view checks
        find those two cases without a step per stem."""
        stems = listed.keys()
        if stems <= self._scanned.keys():
            return {}
        if stems.isdisjoint(self._scanned.keys()) and stems.isdisjoint(self._entries.keys()) and stems.isdisjoint(
            self._tombstones
        ):  # isdisjoint of two views or a view and a set goes over the smaller
            return listed
        return {stem: where for stem, where in listed.items() if not self._known(stem)}

    def _known(self, stem: str) -> bool:
        """Indexed or removed while the scan runs."""
        return stem in self._scanned or stem in self._entries or stem in self._tombstones

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
