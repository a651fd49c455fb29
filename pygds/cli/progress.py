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

    `unit` "bytes" shows sizes and a rate; anything else shows counts.
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
        self._last_draw = 0.0
        self._closed = False

    def update(self, n: int = 1) -> None:
        with self._lock:
            self.done += n
            if not self.enabled:
                return
            now = time.monotonic()
            if now - self._last_draw >= self._interval or self.done >= self.total:
                self._last_draw = now
                self._draw(now)

    def set_label(self, label: str) -> None:
        with self._lock:
            self.label = label

    def _draw(self, now: float) -> None:
        fraction = min(self.done / self.total, 1.0) if self.total else 1.0
        filled = int(fraction * _WIDTH)
        bar = "#" * filled + "-" * (_WIDTH - filled)
        elapsed = max(now - self._start, 1e-9)
        if self.unit == "bytes":
            amount = f"{human_bytes(self.done)} / {human_bytes(self.total)}  {human_bytes(self.done / elapsed)}/s"
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
