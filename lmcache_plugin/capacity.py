"""The optional bound on the bytes of the write path, and eviction to keep it.

The bound (`capacity_bytes`, `capacity_fraction` of the file system) covers the entries this
store knows in its write path plus the puts reserving room now; a put that would pass it first
evicts least-recently-used unpinned entries of that path. Entries in other paths belong to the
workers writing there and are never evicted here. Entries the start-up scan has not reached yet
(those an index snapshot named included: it records no sizes), and entries other processes add,
count from when this store first sees them, and only those counted are evicted.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Callable

from .claims import Claims
from .counters import Counters
from .index import Entry, Index
from .publish import delete_entry_files

logger = logging.getLogger(__name__)


def capacity_of(capacity_bytes: int | None, capacity_fraction: float | None, write_path: str) -> int | None:
    """The smaller of the two bounds on `write_path`, or None when neither is set."""
    bounds = []
    if capacity_bytes is not None:
        bounds.append(capacity_bytes)
    if capacity_fraction is not None:
        st = os.statvfs(write_path)
        bounds.append(int(st.f_blocks * st.f_frsize * capacity_fraction))
    return min(bounds) if bounds else None


class Capacity:
    """Room reserved by puts in flight, and eviction when a put needs more (one lock, taken
    before the claims' and the index's)."""

    def __init__(
        self,
        bound: int | None,
        base: str,
        index: Index,
        claims: Claims,
        counters: Counters,
        keep: Callable[[Entry], int],
    ) -> None:
        self.bound = bound
        self._base = base
        self._index = index
        self._claims = claims
        self._counters = counters
        self._keep = keep
        self._lock = threading.Lock()
        self._reserved = 0
        self._undeletable: set[str] = set()  # stems eviction could not delete, warned about once

    def reserve(self, need: int, key_text: str) -> bool:
        """Make room for `need` bytes in the write path (evicting LRU entries) and hold it;
        False (counted, warned once per reason) when there is no room."""
        with self._lock:
            cap = self.bound
            if cap is None:
                self._reserved += need
                return True
            if need > cap:
                self._counters.refused(
                    f"an entry of {need} bytes is larger than the capacity of {cap} bytes of "
                    f"{self._base}; raise capacity_bytes"
                )
                return False
            over = self._index.used_bytes(self._base) + self._reserved + need - cap
            if over > 0:
                self._evict(over)
            if self._index.used_bytes(self._base) + self._reserved + need > cap:
                logger.debug("no room for %s in %s", key_text, self._base)
                self._counters.refused(f"{self._base} is full of pinned, in-flight or undeletable entries")
                return False
            self._reserved += need
            return True

    def settle(self, need: int, entry: Entry | None) -> None:
        """Give back a reservation; the published `entry` (None when the put failed) is indexed
        in the same step, so its bytes count instead."""
        with self._lock:
            self._reserved -= need
            if entry is not None:
                self._index.add(entry, replace=True)

    def _evict(self, nbytes: int) -> None:
        """Delete least-recently-used unpinned entries worth `nbytes` (lock held). An entry whose
        files cannot be deleted stays indexed, and the next one is taken instead."""
        base = self._base
        freed = evicted = 0
        failed: dict[str, OSError] = {}
        want = nbytes
        while want > 0:
            victims = self._claims.claim_victims(
                lambda busy: self._index.take_lru(base, want, skip=busy | failed.keys())
            )
            want = 0
            for entry, busy in victims:
                try:
                    size = entry.size or 0
                    _, error = delete_entry_files(entry.path)
                    if error is None:
                        freed += size
                        evicted += 1
                    else:
                        kept_free = self._keep(entry)
                        freed += kept_free
                        want += size - kept_free
                        failed[entry.stem] = error
                finally:
                    self._claims.release(entry.stem, busy)
        if evicted or freed:
            self._counters.bump(evictions=evicted, evicted_bytes=freed)
            logger.debug("evicted %d entries (%d bytes) from %s", evicted, freed, base)
        if failed:
            new = failed.keys() - self._undeletable
            self._undeletable.update(new)
            (logger.warning if new else logger.debug)(
                "cannot evict %d entries from %s (%s); they stay in the cache and count against "
                "its capacity", len(failed), base, next(iter(failed.values()))
            )
