"""What the KV store's entry checksums (XXH3-64) cost per GiB, writing and verifying, on host
memory and on device memory.

Host memory: the hash alone (`format.checksum_of`, the call the store makes), and `KVStore.put` /
`get_into` of 32 MiB chunks with `checksum="auto"` against `checksum="off"` (page cache warm, so
the checksum's share is as large as it can be). Device memory: `put` from and `get_into` a
`DeviceBuffer` with `checksum="always"` (a host copy of each chunk in 16 MiB pieces, then the
hash) against `"auto"` (no checksum for device memory). Without a GPU the device cases run on the
CUDA driver stand-in of `tests/standin`, whose device memory is host memory and whose
device-to-host copy is a `memcpy`: they measure the staging copy and the hash, not a PCIe copy.

    python benchmarks/bench_checksum.py [--total 512M] [--runs 9] [--dir /tmp] [--json out.json]
        [--no-standin]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout, no install needed

from benchmarks.common import GiB, MiB, Contender, machine, machine_lines, parse_size, random_buffer, rounds  # noqa: E402

CHUNK = 32 * MiB
CHILD_FLAG = "PYGDS_BENCH_CHECKSUM_CHILD"


def per_gib(times: dict[str, list[float]], nbytes: int) -> dict[str, float]:
    """Median milliseconds per GiB of each contender."""
    return {name: statistics.median(secs) * 1000 * GiB / nbytes for name, secs in times.items()}


def paired_cost(summed: list[float], plain: list[float], nbytes: int) -> tuple[float, float, float]:
    """Milliseconds per GiB the checksum adds: the median, min and max over rounds of the
    difference within each round (both ran in the same round, so a shared machine's drifts
    cancel out)."""
    diffs = [(s - p) * 1000 * GiB / nbytes for s, p in zip(summed, plain)]
    return statistics.median(diffs), min(diffs), max(diffs)


def store_cases(args: argparse.Namespace, device: bool) -> list[dict[str, object]]:
    """Timed puts and gets of `args.total` bytes in 32 MiB chunks: checksummed against not."""
    from lmcache_plugin.format import EntryHeader
    from lmcache_plugin.store import KVStore, StoreOptions

    count = max(1, args.total // CHUNK)
    source = random_buffer(CHUNK)
    header = EntryHeader.single((CHUNK,), "U8", 1)
    with_sum, without = ("always", "auto") if device else ("auto", "off")
    if device:
        from pygds.memory import DeviceBuffer

        data = DeviceBuffer(CHUNK)
        data.copy_from_host(source)
        dests = [DeviceBuffer(CHUNK) for _ in range(2)]
    else:
        data = source
        dests = [bytearray(CHUNK) for _ in range(2)]
    root = tempfile.mkdtemp(prefix="pygds-bench-checksum-", dir=args.dir)
    try:
        stores = {mode: KVStore(StoreOptions(paths=[root], engine="posix", io_threads=0, scan=False,
                                             checksum=mode)) for mode in (with_sum, without)}
        turn = [0]

        def put_all(mode: str) -> None:
            turn[0] += 1
            for i in range(count):
                assert stores[mode].put(f"bench@{turn[0]}@{i}", i + 1000, data, header)

        def clear() -> None:
            for s in stores.values():
                s.clear()

        puts = rounds([Contender(f"put {m}", lambda m=m: put_all(m), between=clear) for m in stores], args.runs)
        clear()
        for i in range(count):  # entries with a checksum, read by both stores
            assert stores[with_sum].put(f"bench@read@{i}", i + 1000, data, header)

        def get_all(mode: str, dest: object) -> None:
            for i in range(count):
                assert stores[mode].get_into(f"bench@read@{i}", i + 1000, dest)

        gets = rounds([Contender(f"get {m}", lambda m=m, d=d: get_all(m, d))
                       for m, d in zip(stores, dests)], args.runs)
        for s in stores.values():
            s.close()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    nbytes = count * CHUNK
    memory = "device (stand-in)" if device and os.environ.get(CHILD_FLAG) == "stand-in" else (
        "device" if device else "host")
    cases = []
    for what, times in (("write (put)", puts), ("verify (get_into)", gets)):
        ms = per_gib(times, nbytes)
        summed, plain = (ms[n] for n in times)
        cost, low, high = paired_cost(*times.values(), nbytes)
        cases.append({"memory": memory, "case": what, "checksum": with_sum, "baseline": without,
                      "ms_per_gib": round(summed, 1), "baseline_ms_per_gib": round(plain, 1),
                      "cost_ms_per_gib": round(cost, 1), "cost_min_max": [round(low, 1), round(high, 1)],
                      "cost_percent": round(100 * cost / plain, 1), "runs": args.runs,
                      "bytes_per_run": nbytes})
    return cases


def hash_case(args: argparse.Namespace) -> dict[str, object]:
    """The hash alone over host memory: what `checksum="auto"` adds to a host put or get."""
    from lmcache_plugin.format import checksum_of

    buf = random_buffer(CHUNK)
    count = max(1, args.total // CHUNK)
    view = memoryview(buf)

    def hash_all() -> None:
        for _ in range(count):
            checksum_of([view])

    times = rounds([Contender("xxh3_64", hash_all)], args.runs)
    ms = per_gib(times, count * CHUNK)["xxh3_64"]
    secs = [t * 1000 * GiB / (count * CHUNK) for t in times["xxh3_64"]]
    return {"memory": "host", "case": "hash alone (checksum_of)", "checksum": "xxh3_64",
            "ms_per_gib": round(ms, 1), "cost_min_max": [round(min(secs), 1), round(max(secs), 1)],
            "gib_per_s": round(1000 / ms, 2), "runs": args.runs}


def table(rows: list[dict[str, object]]) -> str:
    lines = ["| memory | case | with checksum (median) | without (median) | checksum's cost per GiB: "
             "median (min .. max) over rounds | cost |", "|---|---|---|---|---|---|"]
    for r in rows:
        low, high = r["cost_min_max"]
        if "baseline" in r:
            lines.append(f"| {r['memory']} | {r['case']} | {r['checksum']}: {r['ms_per_gib']} ms/GiB | "
                         f"{r['baseline']}: {r['baseline_ms_per_gib']} ms/GiB | {r['cost_ms_per_gib']} ms "
                         f"({low} .. {high}) | {r['cost_percent']}% |")
        else:
            lines.append(f"| {r['memory']} | {r['case']} | {r['ms_per_gib']} ms/GiB ({r['gib_per_s']} GiB/s) "
                         f"|  | {r['ms_per_gib']} ms ({low} .. {high}) |  |")
    return "\n".join(lines)


def device_rows(args: argparse.Namespace, argv: list[str]) -> list[dict[str, object]]:
    """The device cases: here on a GPU machine, else in a subprocess on the CUDA stand-in."""
    if args.no_standin:
        return store_cases(args, device=True)
    sys.path.insert(0, str(REPO / "tests"))
    from standin.build import build_standin

    root = tempfile.mkdtemp(prefix="pygds-bench-standin-")
    try:
        env = build_standin(Path(root)).env()
        env[CHILD_FLAG] = "stand-in"
        out = Path(root) / "device.json"
        subprocess.run([sys.executable, __file__, *argv, "--device-json", str(out)], env=env, check=True)
        return json.loads(out.read_text())
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--total", type=parse_size, default=512 * MiB, help="bytes per run (32 MiB chunks)")
    p.add_argument("--runs", type=int, default=9)
    p.add_argument("--dir", default=None, help="where the entries go (a disk file system)")
    p.add_argument("--json", default=None)
    p.add_argument("--no-standin", action="store_true", help="device cases on the real GPU")
    p.add_argument("--device-json", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.device_json:  # the stand-in child: device cases only
        Path(args.device_json).write_text(json.dumps(store_cases(args, device=True)))
        return 0
    info = machine(args.dir or tempfile.gettempdir())
    rows = [hash_case(args), *store_cases(args, device=False), *device_rows(args, argv)]
    sys.stdout.write(f"## Entry checksums\n\nMachine:\n{machine_lines(info)}\n\n{table(rows)}\n")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": info, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
