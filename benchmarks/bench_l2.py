"""LMCache MP-mode L2: our `GdsL2Adapter` against LMCache's `fs_native` in `lmcache bench l2`.

Both contenders run in the same invocation of this script, with the same `lmcache bench l2`
arguments (verification on: `--no-skip-verify`), an L1 arena aligned to 4096 bytes as
`lmcache server` allocates it, and fresh directories for every run (the FS adapters never
overwrite a file, so a reused directory inflates store figures). Ours spreads keys over 4
directories; `fs_native` takes one directory, the first of the same 4 (all on one file system).
Two pairs:

- defaults: each adapter as shipped. `fs_native` is buffered (its loads come from the page
  cache); ours is buffered below 1 MiB per entry and O_DIRECT from there (`direct_io_min_kb`).
  Goals: store >= 2x, load >= 1.0x.
- O_DIRECT on both sides (ours with `direct_io_min_kb` 0). Goals: store and load >= 1.0x.
- cold (root only): defaults again, but as an L2 is read after a restart, or once the entries are
  older than what the page cache holds: `--only store`, then `sync; echo 3 > drop_caches`, then
  `--only load` on the same directories (LMCache's bench runs the same keys in both). LMCache
  verifies bytes only within one run, so here every key must succeed (ours still checks each
  entry's key and checksum); the warm pairs verify every byte. Same goals as the defaults.

Each run is a separate `lmcache bench l2` process; the order of the contenders alternates between
runs; the table shows the median over `--runs` of each run's average MiB/s ("MB/s" in LMCache's
output is MiB/s of requested bytes). A run whose keys did not all succeed, or whose verification
did not pass, counts as a failure. The command lines are printed with the table.

    python benchmarks/bench_l2.py [--data-size-kb 256] [--num-keys 32] [--in-flight 4]
                                  [--rounds 5] [--runs 1] [--cold] [--modes M,...] [--dir D] [--json FILE]

Exit status 0 when every goal was met, 1 when one was missed, 2 on a failed run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
from typing import Any

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from benchmarks.common import drop_caches  # noqa: E402
OPS = ("store", "load", "lookup")
GOALS = {"defaults": {"store": 2.0, "load": 1.0}, "odirect": {"store": 1.0, "load": 1.0},
         "cold": {"store": 2.0, "load": 1.0}}


def adapter_json(contender: str, mode: str, dirs: list[str]) -> str:
    """The `--l2-adapter` JSON of one contender in one mode."""
    direct = mode == "odirect"
    if contender == "fs_native":
        spec: dict[str, Any] = {"type": "fs_native", "base_path": dirs[0]}
        if direct:
            spec["use_odirect"] = True
    else:
        params: dict[str, Any] = {"paths": dirs}
        if direct:
            params.update(direct_io=True, direct_io_min_kb=0)
        spec = {"type": "plugin", "module_path": "lmcache_plugin.l2_adapter", "class_name": "GdsL2Adapter",
                "adapter_params": params}
    return json.dumps(spec, separators=(",", ":"))


def command(spec: str, args: argparse.Namespace, output: str, only: str | None = None) -> list[str]:
    cmd = ["lmcache", "bench", "l2", "--l2-adapter", spec, "--num-keys", str(args.num_keys),
           "--in-flight", str(args.in_flight), "--data-size-kb", str(args.data_size_kb),
           "--rounds", str(args.rounds), "--warmup-rounds", "1", "--lookup-max-hit-rate", "1.0",
           "--l1-align-bytes", "4096", "--no-skip-verify", "--format", "json", "--output", output]
    return cmd + (["--only", only] if only else [])


def run_once(contender: str, mode: str, args: argparse.Namespace, root: str) -> tuple[dict[str, float], str]:
    """One `lmcache bench l2` run on fresh directories (the cold pair: a store run, the page cache
    dropped, a load run): MiB/s (lookup: keys/s) per operation."""
    shutil.rmtree(root, ignore_errors=True)
    dirs = [os.path.join(root, f"path{i}") for i in range(4)]
    for d in dirs:
        os.makedirs(d)
    spec = adapter_json(contender, "defaults" if mode == "cold" else mode, dirs)
    figures: dict[str, float] = {}
    shown = []
    for only in ("store", "load") if mode == "cold" else (None,):
        if only == "load" and not drop_caches():
            raise RuntimeError("the cold pair drops the page cache: run as root (or leave out --cold)")
        output = os.path.join(root, f"result-{only}.json")
        cmd = command(spec, args, output, only)
        shown.append(" ".join(shlex.quote(c) for c in cmd))
        figures.update(_run(cmd, output, contender, mode, args, verify=only is None))
    shutil.rmtree(root, ignore_errors=True)
    return figures, "`, then `".join(shown)


def _run(cmd: list[str], output: str, contender: str, mode: str, args: argparse.Namespace,
         verify: bool) -> dict[str, float]:
    env = dict(os.environ, LMCACHE_DISABLE_BANNER="1", PYTHONWARNINGS="ignore", LMCACHE_TRACK_USAGE="false",
               PYTHONPATH=os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")])))
    done = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env, cwd=REPO, timeout=1800)
    total = args.rounds * args.in_flight * args.num_keys
    verified = f"All {args.in_flight * args.num_keys} keys data verified OK" in done.stdout
    if done.returncode != 0 or (verify and not verified):
        shown = " ".join(shlex.quote(c) for c in cmd)
        raise RuntimeError(f"{contender} ({mode}) failed or did not verify:\n{shown}\n{done.stdout[-3000:]}"
                           f"\n{done.stderr[-3000:]}")
    with open(output, encoding="utf-8") as fh:
        metrics = json.load(fh)["metrics"]
    figures = {}
    for op in metrics.values():
        if not isinstance(op, dict) or "operation" not in op:
            continue
        name = op["operation"].lower()
        if name != "lookup" and op["total_success"] != total:
            raise RuntimeError(f"{contender} ({mode}) {name}: {op['total_success']} of {total} keys succeeded")
        figures[name] = op["ops_per_sec_avg"] if name == "lookup" else op["throughput_avg_mbps"]
    return figures


def _figure(value: float) -> str:
    return "" if math.isnan(value) else f"{value:.0f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-size-kb", type=int, default=256)
    parser.add_argument("--num-keys", type=int, default=32)
    parser.add_argument("--in-flight", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=1, help="runs per contender and mode (median shown)")
    parser.add_argument("--dir", default=None, help="where the fresh directories go (default: a temp dir)")
    parser.add_argument("--json", default=None, help="also write the figures here")
    parser.add_argument("--cold", action="store_true", help="add the cold pair (root: drops the page cache)")
    parser.add_argument("--modes", default=None,
                        help=f"comma-separated pairs to run, of {', '.join(GOALS)} (default: all but cold, "
                             "cold too with --cold)")
    args = parser.parse_args()
    modes = [m for m in GOALS if m != "cold" or args.cold]
    if args.modes is not None:
        modes = [m.strip() for m in args.modes.split(",") if m.strip()]
        unknown = [m for m in modes if m not in GOALS]
        if unknown or not modes:
            parser.error(f"--modes {args.modes!r}: use one or more of {', '.join(GOALS)}")
    base = tempfile.mkdtemp(prefix="bench-l2-", dir=args.dir)
    results: dict[str, dict[str, dict[str, float]]] = {}
    commands: dict[str, str] = {}
    try:
        for mode in modes:
            runs: dict[str, list[dict[str, float]]] = {"fs_native": [], "GdsL2Adapter": []}
            for r in range(args.runs):
                order = list(runs) if r % 2 == 0 else list(reversed(runs))
                for contender in order:
                    figures, shown = run_once(contender, mode, args, os.path.join(base, "run"))
                    runs[contender].append(figures)
                    commands[f"{contender} ({mode})"] = shown
            results[mode] = {c: {op: statistics.median(f.get(op, math.nan) for f in fs) for op in OPS}
                             for c, fs in runs.items()}
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        print(f"benchmark run failed: {exc}", file=sys.stderr)
        return 2
    finally:
        shutil.rmtree(base, ignore_errors=True)
    met = True
    print(f"`lmcache bench l2`, {args.num_keys} keys x {args.in_flight} in flight x {args.data_size_kb} KiB, "
          f"{args.rounds} rounds + 1 warm-up, verification on; median of {args.runs} run(s); MiB/s (lookup: keys/s)\n")
    print("| pair | adapter | store | load | lookup | store ratio (goal) | load ratio (goal) |")
    print("|---|---|---|---|---|---|---|")
    for mode, pair in results.items():
        theirs, ours = pair["fs_native"], pair["GdsL2Adapter"]
        cells = []
        for op in ("store", "load"):
            ratio = ours[op] / theirs[op] if theirs[op] else float("inf")
            ok = ratio >= GOALS[mode][op]
            met = met and ok
            cells.append(f"{ratio:.2f}x (>= {GOALS[mode][op]}x) {'met' if ok else 'MISSED'}")
        for name, f in (("fs_native", theirs), ("GdsL2Adapter", ours)):
            ratios = cells if name == "GdsL2Adapter" else ["", ""]
            print(f"| {mode} | {name} | {f['store']:.0f} | {f['load']:.0f} | {_figure(f['lookup'])} | "
                  f"{ratios[0]} | {ratios[1]} |")
    print("\nCommand lines (directories are fresh for every run):\n")
    for name, shown in commands.items():
        print(f"- {name}: `{shown}`")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"args": vars(args), "results": results, "commands": commands}, fh, indent=1)
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
