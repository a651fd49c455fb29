"""Start-up scan: our KVStore's listing-only scan vs LMCache 0.5.6 GdsBackend's `_scan_metadata`.

Generates `--entries` entries spread evenly over `--paths` cache directories in LMCache's own
layout and format: `<path>/<h[:2]>/<h[2:4]>/<quoted key>.kvcache.safetensors` (a 4 KiB header
from LMCache's `pack_metadata`, then 64 bytes of data) plus its `.metadata` companion (the same
header). Hashes are random signed 64-bit integers like vLLM's; hashes of fewer than 4 digits are
left out because GdsBackend's scan never finds them (it wants 2-character directory levels),
and both scanners must find every entry.

Ours: the time from `KVStore(...)` until `wait_for_scan()` returns (the index holds all entries).
Theirs: GdsBackend's constructor asserts a CUDA device and opens cuFile, so the object is made
with `GdsBackend.__new__` and given exactly the attributes its scan reads: `gds_paths`,
`data_suffix`, `_use_noatime`, `hot_lock`, `hot_cache`, `metadata_dirs`; `_scan_metadata()` then
runs on an asyncio loop in its own thread, as the constructor schedules it. Both runs check that
all entries were found. Cold = after `sync; echo 3 > /proc/sys/vm/drop_caches` (root only);
warm = right after another scan of the same files. Orders alternate; tables show medians.

    python benchmarks/bench_scan.py [--entries N] [--paths P] [--runs R] [--dir D] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections import OrderedDict
from typing import Any, Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("LMCACHE_LOG_LEVEL", "WARNING")

import torch  # noqa: E402
from lmcache.utils import CacheEngineKey  # noqa: E402
from lmcache.v1.memory_management import MemoryFormat  # noqa: E402
from lmcache.v1.storage_backend import gds_backend  # noqa: E402
from lmcache.v1.storage_backend.gds_backend import GdsBackend, pack_metadata  # noqa: E402

from benchmarks.bench_plugin import Loop  # noqa: E402
from benchmarks.common import drop_caches, machine  # noqa: E402
from lmcache_plugin.layout import Layout, metadata_path  # noqa: E402
from lmcache_plugin.store import KVStore, StoreOptions  # noqa: E402

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
DATA_SHAPE = (2, 2, 1, 8)  # 64 bytes of bf16: the data part only has to exist
GOAL = 10.0
OURS, THEIRS = "KVStore scan (ours)", "GdsBackend._scan_metadata"


# -- the entries ----------------------------------------------------------------------------
def make_hashes(n: int, seed: int = 3) -> list[int]:
    """n distinct signed 64-bit hashes of at least 4 decimal digits (see the module docstring)."""
    rng = random.Random(seed)
    out: set[int] = set()
    while len(out) < n:
        h = rng.getrandbits(64) - (1 << 63)
        if len(str(h)) >= 4:
            out.add(h)
    return sorted(out, key=lambda _: rng.random())


def generate(paths: list[str], n: int) -> float:
    """Write n entries (data file + .metadata) round-robin over `paths`; returns seconds.

    Plain os calls in one thread: the kernel's file creation is nearly all the cost (about 80 us
    per entry here, so 1,000,000 entries take under two minutes), and two processes, even on
    disjoint directories, were three times slower on this 2-CPU VM."""
    header = pack_metadata(torch.empty(DATA_SHAPE, dtype=torch.bfloat16, device="meta"),
                           MemoryFormat.KV_2LTD, lmcache_version="1")
    data = header + bytes(2 * torch.Size(DATA_SHAPE).numel())
    layouts = [Layout(p) for p in paths]
    hashes = make_hashes(n)
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC
    made: set[str] = set()
    start = time.perf_counter()
    for i, chunk_hash in enumerate(hashes):
        layout = layouts[i % len(paths)]
        key = CacheEngineKey(MODEL, 1, 0, chunk_hash, torch.bfloat16).to_string()
        path = layout.data_path(layout.write_path, key, chunk_hash)
        parent = os.path.dirname(path)
        if parent not in made:
            os.makedirs(parent, exist_ok=True)
            made.add(parent)
        for name, payload in ((path, data), (metadata_path(path), header)):
            fd = os.open(name, flags, 0o644)
            try:
                os.write(fd, payload)
            finally:
                os.close(fd)
    return time.perf_counter() - start


# -- the two scanners -------------------------------------------------------------------------
def scan_ours(paths: list[str]) -> tuple[float, int]:
    """KVStore with its defaults (no capacity bound: listing only, no stat, no header read) but
    no index snapshot: the scan alone is measured."""
    start = time.perf_counter()
    store = KVStore(StoreOptions(paths=paths, device_id=0, engine="posix", index_snapshot=False))
    try:
        if not store.wait_for_scan(timeout=3600):
            raise RuntimeError("our scan did not finish within an hour")
        elapsed = time.perf_counter() - start
        return elapsed, store.stats().entries
    finally:
        store.close()


def lmcache_scanner(paths: list[str]) -> GdsBackend:
    """A GdsBackend holding exactly what `_scan_metadata` and `_scan_metadata_subdir` read
    (its constructor asserts a CUDA device and opens cuFile, neither of which the scan uses)."""
    backend = GdsBackend.__new__(GdsBackend)
    backend.gds_paths = list(paths)
    backend.data_suffix = gds_backend._DATA_FILE_SUFFIX
    backend._use_noatime = True
    backend.hot_lock = threading.Lock()
    backend.hot_cache = OrderedDict()
    backend.metadata_dirs = set()
    return backend


def scan_theirs(paths: list[str], loop: Loop) -> tuple[float, int]:
    backend = lmcache_scanner(paths)
    start = time.perf_counter()
    asyncio.run_coroutine_threadsafe(backend._scan_metadata(), loop.loop).result()
    return time.perf_counter() - start, len(backend.hot_cache)


# -- the measurement --------------------------------------------------------------------------
def run_bench(entries: int, npaths: int, runs: int, directory: str, cold: bool) -> dict[str, Any]:
    root = tempfile.mkdtemp(prefix="bench_scan.", dir=directory)
    loop = Loop()
    try:
        paths = [os.path.join(root, f"nvme{i}") for i in range(npaths)]
        facts = {**machine(root), "bench_dir": root}
        gen_s = generate(paths, entries)
        scanners: dict[str, Callable[[], tuple[float, int]]] = {
            OURS: lambda: scan_ours(paths), THEIRS: lambda: scan_theirs(paths, loop)}
        cold = cold and drop_caches()
        modes = ["cold", "warm"] if cold else ["warm"]
        samples: dict[str, dict[str, list[float]]] = {m: {name: [] for name in scanners} for m in modes}
        for name, scan in scanners.items():  # warm-up, and the check that both find everything
            _, found = scan()
            if found != entries:
                raise RuntimeError(f"{name} found {found} of {entries} entries")
        for r in range(runs):
            order = list(scanners) if r % 2 == 0 else list(scanners)[::-1]
            for mode in modes:
                for name in order:
                    if mode == "cold":
                        drop_caches()
                    else:
                        scanners[name]()  # the same files just listed: dentries and inodes cached
                    seconds, found = scanners[name]()
                    if found != entries:
                        raise RuntimeError(f"{name} found {found} of {entries} entries ({mode})")
                    samples[mode][name].append(seconds)
        facts["loadavg_end"] = os.getloadavg()
        medians = {m: {name: statistics.median(v) for name, v in rows.items()} for m, rows in samples.items()}
        return {"goal": GOAL, "facts": facts, "entries": entries, "paths": npaths, "runs": runs,
                "generate_seconds": gen_s, "samples": samples, "medians": medians,
                "speedup": {m: medians[m][THEIRS] / medians[m][OURS] for m in medians}}
    finally:
        loop.stop()
        shutil.rmtree(root, ignore_errors=True)


def report(result: dict[str, Any], out: Callable[[str], None] = print) -> None:
    f = result["facts"]
    out(f"{result['entries']} entries over {result['paths']} paths, {result['runs']} runs; seconds as median "
        f"[min-max]; generated in {result['generate_seconds']:.1f} s")
    out(f"{f['bench_dir']} on {f['disk']}; {f['nproc']} CPUs, {f['cpu']}, {f['memory_gib']} GiB, kernel "
        f"{f['kernel']}; load average {f['loadavg_at_start'].split()[0]} -> {f['loadavg_end'][0]:.1f}")
    for mode, rows in result["samples"].items():
        for name, values in rows.items():
            out(f"{mode:5} {name:28} {statistics.median(values):8.3f} s [{min(values):.3f}-{max(values):.3f}]")
        out(f"{mode:5} {'speedup (theirs / ours)':28} {result['speedup'][mode]:8.1f}x")
    met = all(v >= GOAL for v in result["speedup"].values())
    out(f"goal: ours >= {GOAL:.0f}x faster in every mode: {'met' if met else 'NOT met'}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--entries", type=int, default=200_000, help="entries to generate (default 200000)")
    p.add_argument("--paths", type=int, default=4, help="cache paths to spread them over (default 4)")
    p.add_argument("--runs", type=int, default=3, help="measured runs per scanner and mode (default 3)")
    p.add_argument("--dir", default=tempfile.gettempdir(), help="directory to generate in (default: the temp dir)")
    p.add_argument("--no-cold", action="store_true", help="skip the cold-cache scans")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    result = run_bench(args.entries, args.paths, args.runs, os.path.abspath(args.dir), not args.no_cold)
    report(result)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
