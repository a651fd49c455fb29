"""The lookup hot path: our plugin's `contains()` vs LMCache 0.5.6 GdsBackend's, in one run.

Generates `--entries` entries over `--paths` cache directories in LMCache's own layout and format
(`bench_scan.generate`). Ours is loaded by LMCache's own `storage_plugin_launcher`
(`dst_device="cpu"`, POSIX engine); GdsBackend is made as `bench_scan.lmcache_scanner` makes it
(its constructor needs a CUDA device and cuFile, its scan and lookups do not).

Measured, rounds in rotating order, medians reported:
  serve      time to serve after a restart: from the constructor until every key answered
             `contains()` True, page cache dropped first where this process may (root). Ours
             restarts after a close, so it loads the index snapshots its close wrote and answers
             at once while its scan confirms them; a second row waits for that scan too, a third
             starts without snapshots (removed first: the first start on a cache, scan only; keys
             the scan has not reached yet are found on disk). GdsBackend scans, then answers.
  warm       `contains()` per key, every key once, all indexed.
  batched    per key, prefixes of `--batch` keys, all hits: ours `batched_async_contains` (the
             coroutine driven directly: no event-loop hop in the figure); GdsBackend has none,
             so its `batched_contains` (LMCache's loop over `contains`).

    python benchmarks/bench_lookup.py [--entries N] [--paths P] [--runs R] [--dir D | --keep D]
        [--batch B] [--no-cold] [--json FILE]

`--keep D` generates into D once and reuses it in later runs with the same `--entries` and
`--paths` (1,000,000 entries take minutes to write); D is left in place.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections import OrderedDict
from typing import Any, Callable, Coroutine

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("LMCACHE_LOG_LEVEL", "WARNING")

import torch  # noqa: E402
from lmcache.utils import CacheEngineKey  # noqa: E402
from lmcache.v1.config import LMCacheEngineConfig  # noqa: E402
from lmcache.v1.metadata import LMCacheMetadata  # noqa: E402
from lmcache.v1.storage_backend import storage_plugin_launcher  # noqa: E402

from benchmarks.bench_plugin import Loop  # noqa: E402
from benchmarks.bench_scan import MODEL, generate, lmcache_scanner, make_hashes  # noqa: E402
from benchmarks.common import drop_caches, machine  # noqa: E402
from lmcache_plugin.snapshot import SNAPSHOT_DIR  # noqa: E402

OURS, OURS_WAITING, OURS_SCAN, THEIRS = (
    "gds plugin", "gds plugin, after its scan", "gds plugin, no snapshot", "GdsBackend")
WARM_GOAL = 2.0  # ours per key <= 2x theirs
SERVE_GOAL = 10.0  # theirs / ours at 100,000 entries (20x at 1,000,000)


def keys_of(n: int) -> list[CacheEngineKey]:
    """The keys `bench_scan.generate(paths, n)` wrote, in its order."""
    return [CacheEngineKey(MODEL, 1, 0, h, torch.bfloat16) for h in make_hashes(n)]


def load_plugin(paths: list[str], loop: Loop) -> Any:
    """Our backend through LMCache's own plugin loader, as `CreateStorageBackends` loads it."""
    scoped = {"gds_path": ",".join(paths), "engine": "posix", "cufile_buffer_size": 8}
    extra = {"storage_plugin.gds.module_path": "lmcache_plugin.backend",
             "storage_plugin.gds.class_name": "GdsPluginBackend",
             **{f"storage_plugin.gds.{k}": v for k, v in scoped.items()}}
    config = LMCacheEngineConfig.from_defaults(chunk_size=256, local_cpu=False, max_local_cpu_size=0.1,
                                               storage_plugins=["gds"], extra_config=extra)
    meta = LMCacheMetadata(model_name=MODEL, world_size=1, local_world_size=1, worker_id=0, local_worker_id=0,
                           kv_dtype=torch.bfloat16, kv_shape=(32, 2, 256, 8, 128), chunk_size=256)
    backends: OrderedDict[str, Any] = OrderedDict()
    storage_plugin_launcher(config, meta, loop.loop, None, "cpu", backends)
    if not backends:
        raise RuntimeError("LMCache did not load the gds plugin (see the log above)")
    return next(iter(backends.values()))


def answer_all(contains: Callable[[CacheEngineKey], bool], keys: list[CacheEngineKey], name: str) -> None:
    missing = sum(not contains(k) for k in keys)
    if missing:
        raise RuntimeError(f"{name}: {missing} of {len(keys)} keys not found")


def drive(coro: Coroutine[Any, Any, int]) -> int:
    """Run a coroutine that never waits, without an event loop."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    raise RuntimeError("the coroutine waited")


def serve_ours(paths: list[str], keys: list[CacheEngineKey], loop: Loop, wait: bool) -> tuple[float, Any]:
    start = time.perf_counter()
    backend = load_plugin(paths, loop)
    if wait and not backend.store.wait_for_scan(timeout=3600):
        raise RuntimeError("our scan did not finish within an hour")
    answer_all(backend.contains, keys, OURS)
    return time.perf_counter() - start, backend


def remove_snapshots(paths: list[str]) -> None:
    for path in paths:
        shutil.rmtree(os.path.join(path, SNAPSHOT_DIR), ignore_errors=True)


def serve_theirs(paths: list[str], keys: list[CacheEngineKey], loop: Loop) -> tuple[float, Any]:
    """GdsBackend's scan, then every key's `contains()` on the backend that scanned."""
    start = time.perf_counter()
    backend = lmcache_scanner(paths)
    asyncio.run_coroutine_threadsafe(backend._scan_metadata(), loop.loop).result()
    answer_all(backend.contains, keys, THEIRS)
    return time.perf_counter() - start, backend


def per_key(fn: Callable[[], object], n: int) -> float:
    """Microseconds per key of one call of `fn` covering `n` keys."""
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) / n * 1e6


def generate_once(root: str, paths: list[str], entries: int) -> float | None:
    """Generate into `root` unless a finished generation of the same size is there (then None).
    The record is written last, so an interrupted generation is redone."""
    record = os.path.join(root, "generated.json")
    wanted = {"entries": entries, "paths": len(paths)}
    try:
        with open(record) as f:
            if json.load(f) == wanted:
                return None
    except (OSError, ValueError):
        pass
    for path in paths:
        shutil.rmtree(path, ignore_errors=True)
    seconds = generate(paths, entries)
    with open(record, "w") as f:
        json.dump(wanted, f)
    return seconds


def run_bench(entries: int, npaths: int, runs: int, directory: str, batch: int, cold: bool,
              keep: str | None = None) -> dict[str, Any]:
    root = keep or tempfile.mkdtemp(prefix="bench_lookup.", dir=directory)
    loop = Loop()
    try:
        paths = [os.path.join(root, f"nvme{i}") for i in range(npaths)]
        os.makedirs(root, exist_ok=True)
        facts = {**machine(root), "bench_dir": root}
        gen_s = generate_once(root, paths, entries) if keep else generate(paths, entries)
        keys = keys_of(entries)
        cold = cold and drop_caches()
        _, backend = serve_ours(paths, keys, loop, wait=True)
        backend.close()  # a clean shutdown: it writes the index snapshots each restart loads
        serve: dict[str, list[float]] = {OURS: [], OURS_WAITING: [], OURS_SCAN: [], THEIRS: []}
        warm: dict[str, list[float]] = {OURS: [], THEIRS: []}
        batched: dict[str, list[float]] = {OURS: [], THEIRS: []}
        for r in range(runs):
            order = list(serve)
            order = order[r % len(order):] + order[:r % len(order)]
            for name in order:
                if name == OURS_SCAN:
                    remove_snapshots(paths)  # its close writes them again
                if cold:
                    drop_caches()
                if name == THEIRS:
                    seconds, backend = serve_theirs(paths, keys, loop)
                else:
                    seconds, backend = serve_ours(paths, keys, loop, wait=name == OURS_WAITING)
                serve[name].append(seconds)
                if name in (OURS_WAITING, OURS_SCAN):
                    backend.close()
                    continue
                if name == OURS and not backend.store.wait_for_scan(timeout=3600):  # steady state:
                    raise RuntimeError("our scan did not finish within an hour")  # no scan beside
                answer_all(backend.contains, keys, name)  # every key once before the timing
                warm[name].append(per_key(lambda b=backend: answer_all(b.contains, keys, name), len(keys)))
                batches = [keys[i:i + batch] for i in range(0, len(keys), batch)]

                def prefixes(b: Any = backend, theirs: bool = name == THEIRS) -> None:
                    if theirs:  # it has no batched_async_contains: LMCache's default loop over contains
                        hits = sum(b.batched_contains(chunk) for chunk in batches)
                    else:
                        hits = sum(drive(b.batched_async_contains("bench", chunk)) for chunk in batches)
                    if hits != len(keys):
                        raise RuntimeError(f"{name}: batched lookups found {hits} of {len(keys)}")

                batched[name].append(per_key(prefixes, len(keys)))
                if name == OURS:
                    backend.close()
        facts["loadavg_end"] = os.getloadavg()
        med = {k: {n: statistics.median(v) for n, v in rows.items()}
               for k, rows in (("serve", serve), ("warm", warm), ("batched", batched))}
        return {"facts": facts, "entries": entries, "paths": npaths, "runs": runs, "batch": batch,
                "cold": cold, "generate_seconds": gen_s, "serve_s": serve, "warm_us": warm, "batched_us": batched,
                "medians": med,
                "ratios": {"serve_speedup": med["serve"][THEIRS] / med["serve"][OURS],
                           "serve_speedup_after_scan": med["serve"][THEIRS] / med["serve"][OURS_WAITING],
                           "serve_speedup_no_snapshot": med["serve"][THEIRS] / med["serve"][OURS_SCAN],
                           "warm_ours_over_theirs": med["warm"][OURS] / med["warm"][THEIRS],
                           "batched_over_single_ours": med["batched"][OURS] / med["warm"][OURS]}}
    finally:
        loop.stop()
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


def report(result: dict[str, Any], out: Callable[[str], None] = print) -> None:
    f = result["facts"]
    out(f"{result['entries']} entries over {result['paths']} paths, {result['runs']} runs, medians [min-max]; "
        f"page cache {'dropped' if result['cold'] else 'NOT dropped (needs root)'} before each serve")
    out(f"{f['bench_dir']} on {f['disk']}; {f['nproc']} CPUs, {f['cpu']}, kernel {f['kernel']}; "
        f"load average {f['loadavg_at_start'].split()[0]} -> {f['loadavg_end'][0]:.1f}")
    for title, rows, unit in (("serve", result["serve_s"], "s"), ("warm contains", result["warm_us"], "us/key"),
                              (f"batched ({result['batch']})", result["batched_us"], "us/key")):
        for name, values in rows.items():
            out(f"{title:16} {name:28} {statistics.median(values):9.3f} {unit} "
                f"[{min(values):.3f}-{max(values):.3f}]")
    r = result["ratios"]
    out(f"serve: GdsBackend / ours {r['serve_speedup']:.1f}x (after our scan: {r['serve_speedup_after_scan']:.1f}x; "
        f"no snapshot: {r['serve_speedup_no_snapshot']:.1f}x); goal >= {SERVE_GOAL:.0f}x at 100k, 20x at 1M")
    out(f"warm contains: ours / GdsBackend {r['warm_ours_over_theirs']:.2f}x (goal <= {WARM_GOAL:.0f}x); "
        f"batched / single, ours: {r['batched_over_single_ours']:.2f}x (goal <= 1x)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--entries", type=int, default=100_000, help="entries to generate (default 100000)")
    p.add_argument("--paths", type=int, default=4, help="cache paths to spread them over (default 4)")
    p.add_argument("--runs", type=int, default=3, help="measured runs per contender (default 3)")
    p.add_argument("--batch", type=int, default=512, help="keys per batched lookup (default 512: a 128k-token prompt)")
    p.add_argument("--dir", default=tempfile.gettempdir(), help="directory to generate in (default: the temp dir)")
    p.add_argument("--keep", metavar="D", help="generate into D once and reuse it (left in place)")
    p.add_argument("--no-cold", action="store_true", help="do not drop the page cache before each serve")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    result = run_bench(args.entries, args.paths, args.runs, os.path.abspath(args.dir), args.batch, not args.no_cold,
                       args.keep and os.path.abspath(args.keep))
    report(result)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
