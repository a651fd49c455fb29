"""The store's counters, their snapshot, and their publication for `pygds cache stats`.

A store with `stats_interval_s` publishes its counters every so often (and at close) to
`<write path>/.pygds-stats/<host>-<pid>.json` through the one publish step (`publish.py`), so a
reader never sees half a record; `read_published` reads them back for `pygds cache stats`.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

from .publish import publish_bytes

logger = logging.getLogger(__name__)

STATS_DIR = ".pygds-stats"
"""Directory in each write path where stores publish their counters (ignored by every scan)."""

COUNTERS = (
    "hits", "misses", "puts", "put_skipped", "put_refused", "put_errors", "read_errors",
    "corrupt", "checksum_skipped", "bytes_read", "bytes_written", "evictions", "evicted_bytes", "removed",
)
_MAX_REFUSAL_REASONS = 1000
"""Distinct refusal reasons remembered for warn-once; later new ones are logged at debug."""


@dataclass(frozen=True)
class StoreStats:
    """A snapshot of the store's counters."""

    hits: int
    misses: int
    puts: int
    put_skipped: int
    put_refused: int
    put_errors: int
    read_errors: int
    corrupt: int
    checksum_skipped: int
    """Reads that did not hash a file this process had verified before (checksum "once",
    `verified.py`)."""
    bytes_read: int
    bytes_written: int
    evictions: int
    evicted_bytes: int
    removed: int
    entries: int
    used_bytes: int
    capacity_bytes: int | None
    pending_puts: int
    scan_done: bool
    scan_entries: int
    scan_snapshot_entries: int
    """Entries the index snapshots named at start (indexed before the scan confirmed them)."""
    scan_snapshot_dropped: int
    """Of those, entries the scan did not find on disk."""
    scan_seconds: float
    scan_stale_tmp_removed: int
    scan_errors: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class Counters:
    """The `COUNTERS`, thread-safe (a leaf lock: nothing else is taken while it is held)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(COUNTERS, 0)
        self._refusals: set[str] = set()

    def bump(self, **deltas: int) -> None:
        with self._lock:
            for name, delta in deltas.items():
                self._counts[name] += delta

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def refused(self, why: str) -> None:
        """Count a refused put; warn once per distinct reason."""
        with self._lock:
            self._counts["put_refused"] += 1
            first = why not in self._refusals
            if first and len(self._refusals) < _MAX_REFUSAL_REASONS:
                self._refusals.add(why)
        (logger.warning if first else logger.debug)("put refused: %s", why)


def stats_file(write_path: str) -> str:
    """Where a store of this process writing to `write_path` publishes its counters."""
    return os.path.join(write_path, STATS_DIR, f"{socket.gethostname()}-{os.getpid()}.json")


def publish_record(path: str, record: dict[str, Any]) -> None:
    """Publish `record` (JSON-able) to `path`, with host, pid and time."""
    record = {"host": socket.gethostname(), "pid": os.getpid(), "updated": time.time(), **record}
    publish_bytes(path, json.dumps(record).encode(), make_dirs=True)


class StatsPublisher:
    """Publishes `record()` to `path` every `interval_s` in a daemon thread, and once more at
    `stop`."""

    def __init__(self, path: str, record: Callable[[], dict[str, Any]], interval_s: float) -> None:
        self.path = path
        self._record = record
        self._interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="kvstore-stats", daemon=True)
        self._thread.start()

    def publish(self) -> None:
        """Write the record now."""
        publish_record(self.path, self._record())

    def _loop(self) -> None:
        while not self._stop.wait(self._interval_s):
            try:
                self.publish()
            except OSError as exc:
                logger.debug("could not publish KV store counters: %s", exc)

    def stop(self) -> None:
        """End the thread and publish the final counters (a failure is one warning)."""
        self._stop.set()
        self._thread.join()
        try:
            self.publish()
        except OSError as exc:
            logger.warning("could not publish the KV store's final counters to %s: %s", self.path, exc)


def read_published(paths: Sequence[str]) -> list[dict[str, Any]]:
    """The counters running (or finished) stores published under each path's `STATS_DIR`."""
    records = []
    for base in paths:
        folder = os.path.join(base, STATS_DIR)
        try:
            names = sorted(n for n in os.listdir(folder) if n.endswith(".json"))
        except OSError:
            continue
        for name in names:
            try:
                with open(os.path.join(folder, name), encoding="utf-8") as f:
                    record = json.load(f)
            except (OSError, ValueError):
                continue
            if isinstance(record, dict):
                records.append(record)
    return records
