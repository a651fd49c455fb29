"""De-duplication of work in flight: stems being written or deleted, and submitted puts.

A stem is claimed for "put" or "delete" while its files change. A second put of the same stem
waits for the first and then does nothing (the entry is there, or the first put failed and the
caller may try again); a delete waits for whatever runs and then claims the stem itself. Lookups
treat a claimed stem as absent: its files are half there.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from concurrent.futures import wait as wait_futures
from typing import Callable

from .index import Entry


class Busy:
    """A stem being written ("put") or deleted ("delete"); others wait on `done`."""

    __slots__ = ("op", "done")

    def __init__(self, op: str) -> None:
        self.op = op
        self.done = threading.Event()


class Claims:
    """The claimed stems, the count of submitted puts per stem, and their futures (one lock)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._busy: dict[str, Busy] = {}
        self._pending: dict[str, int] = {}
        self._futures: set[Future[bool]] = set()

    def claim(self, stem: str, op: str) -> Busy | None:
        """Mark `stem` busy for `op`. A put finding another put returns None once it is done."""
        while True:
            with self._lock:
                busy = self._busy.get(stem)
                if busy is None:
                    busy = self._busy[stem] = Busy(op)
                    return busy
            busy.done.wait()
            if op == "put" and busy.op == "put":
                return None

    def claim_victims(self, take: Callable[[set[str]], list[Entry]]) -> list[tuple[Entry, Busy]]:
        """Claim for deletion the entries `take(busy stems)` returns, in one step with taking
        them (so no put or delete can start on one in between)."""
        with self._lock:
            victims = take(set(self._busy))
            claimed = []
            for entry in victims:
                busy = self._busy[entry.stem] = Busy("delete")
                claimed.append((entry, busy))
            return claimed

    def release(self, stem: str, busy: Busy) -> None:
        with self._lock:
            if self._busy.get(stem) is busy:
                del self._busy[stem]
        busy.done.set()

    def is_busy(self, stem: str) -> bool:
        """Whether `stem` is claimed now (a dict membership test, atomic without the lock)."""
        return stem in self._busy

    def add_pending(self, stem: str) -> None:
        with self._lock:
            self._pending[stem] = self._pending.get(stem, 0) + 1

    def done_pending(self, stem: str) -> None:
        with self._lock:
            left = self._pending.get(stem, 1) - 1
            if left:
                self._pending[stem] = left
            else:
                self._pending.pop(stem, None)

    def is_pending(self, stem: str) -> bool:
        return stem in self._pending

    def pending_count(self) -> int:
        with self._lock:
            return sum(self._pending.values())

    def track(self, fut: Future[bool]) -> None:
        """Keep `fut` until it is done, for `wait`."""
        with self._lock:
            self._futures.add(fut)
        fut.add_done_callback(self._discard)

    def _discard(self, fut: Future[bool]) -> None:
        with self._lock:
            self._futures.discard(fut)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for every tracked future; False on timeout."""
        with self._lock:
            futures = list(self._futures)
        _, not_done = wait_futures(futures, timeout)
        return not not_done
