"""A small progress bar on stderr for long work (bench, demo, cache verify), no dependencies.

Drawn only when stderr is a terminal, unless forced with `--progress` or `PYGDS_PROGRESS=1`
(`--no-progress` / `PYGDS_PROGRESS=0` turn it off), so logs and pipes stay clean.
"""
from __future__ import annotations

import os
import sys
import threading
import time
from typing import TextIO

from .output import human_bytes

PROGRESS_ENV = "PYGDS_PROGRESS"
_WIDTH = 28


def wanted(flag: bool | None, stream: TextIO) -> bool:
    """Whether to draw: the explicit flag, else `PYGDS_PROGRESS`, else whether `stream` is a TTY."""
    if flag is not None:
        return flag
    env = os.environ.get(PROGRESS_ENV, "").strip().lower()
    if env in ("1", "true", "yes", "on"):
        return True
    if env in ("0", "false", "no", "off"):
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


class Progress:
    """Thread-safe counter towards `total` that redraws one stderr line at most every `interval` s.

    `unit` "bytes" shows sizes and the rate of the current step (since the bar was made or since
    the last `set_label`), so a bar over several phases never shows a blend of them. The clock
    stops when `total` is reached: the last line's rate and `elapsed()` agree with a summary
    computed from `elapsed()`.
    """

    def __init__(self, total: int, label: str = "", *, unit: str = "bytes", flag: bool | None = None,
                 stream: TextIO | None = None, interval: float = 0.1) -> None:
        self.stream = sys.stderr if stream is None else stream
        self.enabled = wanted(flag, self.stream)
        self.total = max(int(total), 0)
        self.label = label
        self.unit = unit
        self.done = 0
        self._interval = interval
        self._lock = threading.Lock()
        self._start = time.monotonic()
        self._step_start = self._start
        self._step_done = 0
        self._finished: float | None = None
        self._last_draw = 0.0
        self._closed = False

    def update(self, n: int = 1) -> None:
        with self._lock:
            self.done += n
            now = time.monotonic()
            if self._finished is None and self.done >= self.total:
                self._finished = now
            if not self.enabled:
                return
            if now - self._last_draw >= self._interval or self.done >= self.total:
                self._last_draw = now
                self._draw(now)

    def set_label(self, label: str) -> None:
        """Start a new step: the label changes and the rate shown counts from here."""
        with self._lock:
            self.label = label
            self._step_start = time.monotonic()
            self._step_done = self.done

    def elapsed(self) -> float:
        """Seconds from the start of the bar to `total` being reached (or to now, before that)."""
        with self._lock:
            return self._end(time.monotonic()) - self._start

    def _end(self, now: float) -> float:
        return now if self._finished is None else self._finished

    def _rate(self, now: float) -> str:
        elapsed = max(self._end(now) - self._step_start, 1e-9)
        return f"{human_bytes((self.done - self._step_done) / elapsed)}/s"

    def _draw(self, now: float) -> None:
        fraction = min(self.done / self.total, 1.0) if self.total else 1.0
        filled = int(fraction * _WIDTH)
        bar = "#" * filled + "-" * (_WIDTH - filled)
        if self.unit == "bytes":
            amount = f"{human_bytes(self.done)} / {human_bytes(self.total)}  {self._rate(now)}"
        else:
            amount = f"{self.done}/{self.total} {self.unit}"
        self.stream.write(f"\r{self.label} [{bar}] {fraction * 100:5.1f}%  {amount}\033[K")
        self.stream.flush()

    def close(self) -> None:
        """Draw the final state and end the line (once)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self.enabled:
                self._draw(time.monotonic())
                self.stream.write("\n")
                self.stream.flush()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
