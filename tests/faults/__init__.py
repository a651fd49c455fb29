"""Fault injection (an `LD_PRELOAD` shim, built by `build.py`) and what the reliability tests
share: entry data derived from the key alone (so any process can verify any entry), a check that
a cache tree holds only complete entries, and the figures the tests report for RELIABILITY.md.

Figures go to stdout as `RELIABILITY {json}` lines (see them with `pytest -s`) and, when
`PYGDS_RELIABILITY_FIGURES` names a file, are appended to it as JSON lines.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import numpy as np

from lmcache_plugin.format import EntryHeader

FIGURES_ENV = "PYGDS_RELIABILITY_FIGURES"
DATA_SUFFIX = ".kvcache.safetensors"
META_SUFFIX = DATA_SUFFIX + ".metadata"


def _seed(key: str) -> int:
    return int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest(), "little")


def entry_size(key: str, large: int = 4 << 20) -> int:
    """A size derived from the key: 1 in 64 empty, 1 in 8 large (1 MiB to `large`), else up to
    192 KiB."""
    s = _seed(key)
    kind, r = s % 64, s >> 6
    if kind == 0:
        return 0
    if kind < 8:
        return (1 << 20) + r % max(1, large - (1 << 20))
    return 1 + r % (192 << 10)


def entry_data(key: str, size: int | None = None) -> bytes:
    """The bytes stored under `key`: pseudo-random, from the key alone."""
    n = entry_size(key) if size is None else size
    return np.random.default_rng(_seed(key)).bytes(n)


def u8_header(n: int) -> EntryHeader:
    return EntryHeader.single((n,), "U8", 1)


def files_under(root: str | os.PathLike) -> list[str]:
    """Every file (or link) below `root`, relative, sorted."""
    root = Path(root)
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir() or p.is_symlink())


def incomplete(root: str | os.PathLike, *, allow_missing_metadata: bool = False) -> list[str]:
    """What makes `root` more than a set of complete entries: temporary files, data files without
    `.metadata` (unless allowed: a killed writer may leave one, a reader rebuilds it), `.metadata`
    without data."""
    names = files_under(root)
    problems = [f"temporary file {n}" for n in names if ".tmp" in Path(n).name]
    data = {n for n in names if n.endswith(DATA_SUFFIX)}
    meta = {n for n in names if n.endswith(META_SUFFIX)}
    if not allow_missing_metadata:
        problems += [f"data without metadata {n}" for n in sorted(data) if n + ".metadata" not in meta]
    problems += [f"metadata without data {n}" for n in sorted(meta) if n[: -len(".metadata")] not in data]
    return problems


def record(test: str, **figures: object) -> None:
    """Report a test's figures (stdout, and the figures file when one is named)."""
    line = json.dumps({"test": test, **figures, "at": time.strftime("%Y-%m-%dT%H:%M:%S")}, sort_keys=True)
    print(f"RELIABILITY {line}", flush=True)
    target = os.environ.get(FIGURES_ENV)
    if target:
        with open(target, "a", encoding="utf-8") as f:
            f.write(line + "\n")
