"""What the `pygds` command prints: readable tables by default, JSON for scripts, human sizes.

Reports go to stdout (JSON with `--json`, which is then the only thing on stdout); logs, progress
and errors go to stderr.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
from typing import Any, Iterable, Sequence, TextIO

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgtp]?)(?:i?b)?\s*$", re.IGNORECASE)
_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|h|d)?\s*$", re.IGNORECASE)
_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_size(text: str) -> int:
    """"32M", "1G", "4096", "1.5GiB", "64k" -> bytes (binary units: K = 1024).

    The one size parser of the project: the plugin's settings and the benchmarks read sizes here.
    """
    match = _SIZE.match(str(text))
    if not match:
        raise ValueError(f"invalid size {text!r}; use a number with an optional K, M, G, T or P suffix "
                         "(binary units), e.g. 32M or 1G")
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


def parse_duration(text: str) -> float:
    """"90", "90s", "30m", "1h", "2d", "500ms" -> seconds (a bare number is seconds)."""
    match = _DURATION.match(str(text))
    if not match:
        raise ValueError(f"invalid duration {text!r}; use a number with an optional ms, s, m, h or d suffix, "
                         "e.g. 30m or 1h")
    return float(match.group(1)) * _SECONDS[(match.group(2) or "s").lower()]


def format_duration(seconds: float) -> str:
    """Seconds -> text that `parse_duration` reads back: 3600 -> "1h", 90 -> "90s", 0.5 -> "500ms"."""
    for unit in ("d", "h", "m", "s", "ms"):
        count = seconds / _SECONDS[unit]
        if count >= 1 and count == int(count):
            return f"{int(count)}{unit}"
    return f"{seconds:.6f}".rstrip("0").rstrip(".") + "s" if seconds else "0s"


def size_arg(text: str) -> int:
    """argparse type for sizes (a bad value is a usage error, exit code 2)."""
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def positive_size_arg(text: str) -> int:
    value = size_arg(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"size {text!r} must be greater than zero")
    return value


def duration_arg(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def positive_int_arg(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} must be at least 1")
    return value


def human_bytes(n: int | float | None) -> str:
    """1536 -> "1.5 KiB"; None -> "-"."""
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def count(n: int, one: str, many: str | None = None) -> str:
    """3, "entry", "entries" -> "3 entries"; 1 -> "1 entry"."""
    return f"{n} {one if n == 1 else (many or one + 's')}"


def human_age(seconds: float | None) -> str:
    """Seconds -> "42s", "5m", "3.2h", "4.0d"."""
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def table(rows: Iterable[Sequence[Any]], headers: Sequence[str]) -> str:
    """A plain left-aligned text table (numbers right-aligned)."""
    text_rows = [["" if v is None else str(v) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in text_rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    numeric = [all(_looks_numeric(r[i]) for r in text_rows) and bool(text_rows) for i in range(len(headers))]

    def fmt(row: Sequence[str]) -> str:
        cells = [c.rjust(w) if num else c.ljust(w) for c, w, num in zip(row, widths, numeric)]
        return "  ".join(cells).rstrip()

    lines = [fmt(list(headers)), fmt(["-" * w for w in widths])]
    lines += [fmt(row) for row in text_rows]
    return "\n".join(lines)


def _looks_numeric(cell: str) -> bool:
    head = cell.split(maxsplit=1)[0] if cell.strip() else ""
    try:
        float(head)
    except ValueError:
        return False
    return True


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_json_safe(v) for v in value]
    return value


def print_json(data: Any, stream: TextIO | None = None) -> None:
    """Strict JSON (no NaN/Infinity; unknown objects as strings) on stdout."""
    out = sys.stdout if stream is None else stream
    out.write(json.dumps(_json_safe(data), indent=2, sort_keys=False, allow_nan=False, default=str) + "\n")
    out.flush()


def say(text: str = "", stream: TextIO | None = None) -> None:
    """One block of the human-readable report on stdout."""
    out = sys.stdout if stream is None else stream
    out.write(text + "\n")
