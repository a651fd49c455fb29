"""`pygds bench`: a gdsio-class benchmark of pygds, with a raw POSIX baseline measured in the same run.

Each phase (write, read, or a mixed read/write ratio) moves `--total` bytes in `--block-size`
requests spread over `--files` files on one or more `--path`s, from `--threads` workers each
keeping `--qd` requests in flight. By default the same phase is also run with a plain
`os.preadv`/`os.pwritev` loop (threads x qd workers, host memory, the same files, block size and
O_DIRECT setting), so the ratio shows what pygds adds or costs.

The two contenders meet the same conditions, or the ratio measures the conditions instead: every
write run starts from freshly created empty files (the previous run's files are deleted first),
reads and mixed runs use the same fully written files, and every run follows an `os.sync()`. A
phase runs `--rounds` rounds; the order of the contenders alternates from round to round, figures
are medians over the rounds, and the ratio is the median of each round's pygds / baseline ratio,
so a drift in the machine's speed cancels out. Files live in a temporary folder under each path
and are removed at the end.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import math
import mmap
import os
import random
import shutil
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from .. import cuda, fsinfo, memory, pool
from ..engines import registry
from ..file import File
from . import CommandError, UsageError
from .output import human_bytes, positive_int_arg, positive_size_arg, print_json, say, table
from .progress import Progress

ALIGNMENT = 4096
DROP_CACHES = "/proc/sys/vm/drop_caches"
_PREP_CHUNK = 8 << 20


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "bench", help="measure read/write throughput, IOPS and latency against a raw POSIX baseline",
        description="Benchmark pygds like gdsio: GiB/s, IOPS and latency percentiles, with a raw POSIX "
                    "baseline (os.preadv/os.pwritev, same files, block size and concurrency) measured in the "
                    "same run. Without --read/--write/--mixed a write phase then a read phase run. Sizes take "
                    "K/M/G suffixes (binary).",
        epilog="Exit status: 0 done, 1 the benchmark could not run (e.g. --mem gpu without a GPU, an engine "
               "that cannot open, --direct where O_DIRECT fails), 2 bad arguments.")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--read", action="store_true", help="only reads (the files are written first, unmeasured)")
    mode.add_argument("--write", action="store_true", help="only writes")
    mode.add_argument("--mixed", type=float, metavar="RATIO",
                      help="random mix of reads and writes; RATIO is the fraction of reads (0..1)")
    p.add_argument("--block-size", "-b", type=positive_size_arg, default=32 << 20, metavar="SIZE",
                   help="bytes per request (default 32M, one 256-token Llama-3.1-8B KV chunk)")
    p.add_argument("--total", "-s", type=positive_size_arg, default=1 << 30, metavar="SIZE",
                   help="bytes moved per phase, over all files (default 1G)")
    p.add_argument("--files", type=positive_int_arg, default=1, metavar="N", help="number of files (default 1)")
    p.add_argument("--threads", "-t", type=positive_int_arg, default=4, metavar="N",
                   help="worker threads (default 4)")
    p.add_argument("--qd", type=positive_int_arg, default=1, metavar="N",
                   help="requests each worker keeps in flight (queue/batch depth, default 1)")
    p.add_argument("--engine", choices=registry.ENGINES, default="auto", help="pygds engine (default auto)")
    p.add_argument("--mem", choices=("gpu", "pinned", "host"), default="host",
                   help="where pygds's buffers live (default host; gpu and pinned need CUDA)")
    p.add_argument("--direct", action="store_true", help="open files with O_DIRECT (block size multiple of 4K)")
    p.add_argument("--path", "-d", action="append", metavar="DIR",
                   help="directory for the test files; repeat to spread files over several (default: the "
                        "system temporary directory)")
    p.add_argument("--rounds", type=positive_int_arg, default=3, metavar="N",
                   help="timed rounds per phase; contenders alternate which goes first, figures are medians "
                        "(default 3)")
    p.add_argument("--no-baseline", action="store_true", help="skip the raw POSIX baseline")
    p.add_argument("--drop-caches", action="store_true",
                   help=f"sync and write 3 to {DROP_CACHES} before every measured run (needs root)")
    p.add_argument("--seed", type=int, default=0, help="seed of the mixed-mode read/write sequence")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="force the progress bar on or off (default: on when stderr is a terminal)")
    p.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    p.set_defaults(func=run, parser=p)
    return p


@dataclass(frozen=True)
class Op:
    file: int
    offset: int
    read: bool


@dataclass
class Measurement:
    """One timed run of one contender."""

    phase: str
    impl: str
    round: int
    bytes: int
    ops: int
    seconds: float
    file_bytes_at_start: int  # the files' total size when the run began: 0 for every write run
    latencies: list[float] = field(repr=False, default_factory=list)

    @property
    def gib_per_s(self) -> float:
        return self.bytes / max(self.seconds, 1e-9) / (1 << 30)

    def as_dict(self) -> dict[str, Any]:
        return {"phase": self.phase, "impl": self.impl, "round": self.round, "seconds": round(self.seconds, 6),
                "gib_per_s": self.gib_per_s, "file_bytes_at_start": self.file_bytes_at_start}


def _summary(runs: list[Measurement]) -> dict[str, Any]:
    """One contender's runs of one phase: medians over the runs, latency percentiles over all requests."""
    lat = sorted(x for m in runs for x in m.latencies)
    rates = sorted(m.gib_per_s for m in runs)
    seconds = statistics.median(m.seconds for m in runs)
    first = runs[0]
    return {
        "phase": first.phase, "impl": first.impl, "runs": len(runs), "bytes": first.bytes, "ops": first.ops,
        "seconds": round(seconds, 6), "gib_per_s": statistics.median(rates),
        "gib_per_s_range": [rates[0], rates[-1]], "iops": first.ops / max(seconds, 1e-9),
        "latency_ms": {"p50": _percentile(lat, 50) * 1e3, "p90": _percentile(lat, 90) * 1e3,
                       "p99": _percentile(lat, 99) * 1e3, "max": (lat[-1] if lat else 0.0) * 1e3},
    }


def _percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (0.0 when empty)."""
    if not sorted_values:
        return 0.0
    rank = max(math.ceil(q / 100 * len(sorted_values)), 1)
    return sorted_values[rank - 1]


def _phases(args: argparse.Namespace) -> list[str]:
    if args.read:
        return ["read"]
    if args.write:
        return ["write"]
    if args.mixed is not None:
        return ["mixed"]
    return ["write", "read"]


def _validate(args: argparse.Namespace) -> None:
    if args.mixed is not None and not 0.0 <= args.mixed <= 1.0:
        raise UsageError(f"--mixed {args.mixed}: the read fraction must be between 0 and 1")
    if args.direct and args.block_size % ALIGNMENT:
        raise UsageError(f"--block-size {args.block_size} is not a multiple of {ALIGNMENT}, which O_DIRECT "
                         "needs; use e.g. 4K, 1M or 32M")
    if args.total < args.block_size * args.files:
        raise UsageError(f"--total {human_bytes(args.total)} is less than one block of "
                         f"{human_bytes(args.block_size)} per file for {args.files} file(s); raise --total or "
                         "lower --block-size / --files")
    for path in args.path or []:
        if not os.path.isdir(path):
            raise UsageError(f"--path {path}: no such directory")


def _check_environment(args: argparse.Namespace, paths: list[str]) -> None:
    if args.mem in ("gpu", "pinned"):
        if not memory.cuda_available():
            raise CommandError(f"--mem {args.mem} needs a usable CUDA driver and device, and none is usable "
                               f"here ({cuda.check_driver().reason}); use --mem host")
    if args.direct:
        for path in paths:
            ok, detail = fsinfo.probe_o_direct(path)
            if not ok:
                raise CommandError(f"--direct: O_DIRECT does not work in {path} "
                                   f"({fsinfo.fs_type(path)}: {detail}); drop --direct or use a path on a "
                                   "file system with O_DIRECT (ext4, xfs)")
    if args.drop_caches and not os.access(DROP_CACHES, os.W_OK):
        raise CommandError(f"--drop-caches needs write access to {DROP_CACHES} (run as root, outside a "
                           "read-only /proc); drop the option to measure with a warm page cache")


class _Buffers:
    """One request-sized buffer per in-flight request, in the memory kind asked for."""

    def __init__(self, kind: str, count: int, size: int, seed: int) -> None:
        self.items: list[Any] = []
        pattern = random.Random(seed).randbytes(min(size, 1 << 20))
        try:
            for _ in range(count):
                if kind == "gpu":
                    buf: Any = memory.DeviceBuffer(size)
                    host = _host_buffer(size, pattern)
                    buf.copy_from_host(host)
                    host.close()
                elif kind == "pinned":
                    buf = memory.PinnedBuffer(size)
                    _fill(buf.buffer, pattern)
                else:
                    buf = _host_buffer(size, pattern)
                self.items.append(buf)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for buf in self.items:
            buf.close()
        self.items.clear()


def _fill(target: Any, pattern: bytes) -> None:
    view = memoryview(target).cast("B")
    for start in range(0, len(view), len(pattern)):
        chunk = pattern[: len(view) - start]
        view[start:start + len(chunk)] = chunk


def _host_buffer(size: int, pattern: bytes) -> mmap.mmap:
    buf = mmap.mmap(-1, size)  # page-aligned, so O_DIRECT works on it
    _fill(buf, pattern)
    return buf


def _ops(phase: str, files: int, per_file: int, block: int, ratio: float | None, seed: int) -> list[Op]:
    rng = random.Random(seed)
    ops = []
    for index in range(per_file // block):
        for f in range(files):
            if phase == "mixed":
                is_read = rng.random() < (ratio or 0.0)
            else:
                is_read = phase == "read"
            ops.append(Op(f, index * block, is_read))
    return ops


def _run_workers(n: int, work: Callable[[int], list[float]]) -> tuple[float, list[float]]:
    """Run `work(i)` on `n` threads started together; (wall seconds, all latencies)."""
    barrier = threading.Barrier(n + 1)
    results: list[list[float]] = [[] for _ in range(n)]
    errors: list[BaseException] = []

    def body(i: int) -> None:
        barrier.wait()
        try:
            results[i] = work(i)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            errors.append(exc)

    threads = [threading.Thread(target=body, args=(i,), name=f"pygds-bench-{i}", daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise errors[0]
    return elapsed, [x for r in results for x in r]


def _check_count(done: int, want: int, op: Op, name: str) -> None:
    if done != want:
        raise CommandError(f"{'read' if op.read else 'write'} of {want} bytes at offset {op.offset} of {name} "
                           f"moved {done}; was the file changed during the benchmark?")


def _measure_pygds(phase: str, ops: list[Op], names: list[str], args: argparse.Namespace,
                   buffers: _Buffers, progress: Progress) -> tuple[float, list[float], str]:
    mode = "r" if phase == "read" else "r+"  # writes go into files that exist: see _fresh_files
    opened = [File(name, mode, engine=args.engine, direct=args.direct) for name in names]
    block = args.block_size
    try:
        def work(w: int) -> list[float]:
            mine = ops[w::args.threads]
            slots = buffers.items[w * args.qd:(w + 1) * args.qd]
            lat: list[float] = []
            if args.qd == 1:
                for op in mine:
                    f = opened[op.file]
                    t0 = time.perf_counter()
                    done = f.read(slots[0], block, op.offset) if op.read else f.write(slots[0], block, op.offset)
                    lat.append(time.perf_counter() - t0)
                    _check_count(done, block, op, f.path)
                    progress.update(block)
                return lat
            pending: collections.deque = collections.deque()
            for n, op in enumerate(mine):
                if len(pending) == args.qd:
                    _collect(pending, lat, block, progress)
                f, buf = opened[op.file], slots[n % args.qd]
                fut = f.pread(buf, block, op.offset) if op.read else f.pwrite(buf, block, op.offset)
                pending.append((fut, time.perf_counter(), op, f.path))
            while pending:
                _collect(pending, lat, block, progress)
            return lat

        seconds, latencies = _run_workers(args.threads, work)
        engine = opened[0].engine
    finally:
        for f in opened:
            f.close()
    return seconds, latencies, engine


def _collect(pending: collections.deque, lat: list[float], block: int, progress: Progress) -> None:
    fut, t0, op, name = pending.popleft()
    done = fut.result()
    lat.append(time.perf_counter() - t0)
    _check_count(done, block, op, name)
    progress.update(block)


def _measure_baseline(phase: str, ops: list[Op], names: list[str], args: argparse.Namespace,
                      progress: Progress) -> tuple[float, list[float]]:
    flags = {"read": os.O_RDONLY, "write": os.O_WRONLY, "mixed": os.O_RDWR}[phase]
    if args.direct:
        flags |= os.O_DIRECT
    fds = [os.open(name, flags | os.O_CLOEXEC) for name in names]
    workers = args.threads * args.qd
    block = args.block_size
    pattern = random.Random(args.seed + 1).randbytes(min(block, 1 << 20))
    buffers = [_host_buffer(block, pattern) for _ in range(workers)]
    try:
        def work(w: int) -> list[float]:
            buf, lat = buffers[w], []
            for op in ops[w::workers]:
                t0 = time.perf_counter()
                if op.read:
                    done = os.preadv(fds[op.file], [buf], op.offset)
                else:
                    done = os.pwritev(fds[op.file], [buf], op.offset)
                lat.append(time.perf_counter() - t0)
                _check_count(done, block, op, names[op.file])
                progress.update(block)
            return lat

        seconds, latencies = _run_workers(workers, work)
    finally:
        for fd in fds:
            os.close(fd)
        for buf in buffers:
            buf.close()
    return seconds, latencies


def _prepare_files(names: list[str], per_file: int) -> None:
    """Write every file in full with plain POSIX (not measured), so reads find data."""
    chunk = random.Random(1).randbytes(min(_PREP_CHUNK, per_file))
    for name in names:
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            for offset in range(0, per_file, len(chunk)):
                os.pwrite(fd, chunk[: per_file - offset], offset)
            os.fsync(fd)
        finally:
            os.close(fd)


def _fresh_files(names: list[str]) -> None:
    """Delete the files and create them again, empty (not measured): every write run, whichever
    contender it is, allocates its blocks anew instead of one of them overwriting the other's."""
    for name in names:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)
        os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644))


def _drop_caches() -> None:
    with open(DROP_CACHES, "w") as f:
        f.write("3\n")


def _order(impls: list[str], round_: int) -> list[str]:
    """The contenders of round `round_`, rotated so that each goes first equally often."""
    shift = round_ % len(impls)
    return impls[shift:] + impls[:shift]


def _bench(args: argparse.Namespace, paths: list[str], dirs: list[str]) -> dict[str, Any]:
    phases = _phases(args)
    per_file = (args.total // args.files) // args.block_size * args.block_size
    names = [os.path.join(dirs[i % len(dirs)], f"file-{i}.dat") for i in range(args.files)]
    impls = ["pygds"] if args.no_baseline else ["pygds", "posix-baseline"]
    choice = registry.choose_engine(args.engine)
    runs: list[Measurement] = []
    engine_used = None
    buffers = _Buffers(args.mem, args.threads * args.qd, args.block_size, args.seed)
    old_threads = pool.num_threads()
    pool.set_num_threads(max(old_threads, args.threads * args.qd))
    full = False  # whether every file holds per_file bytes
    try:
        total = per_file * args.files * len(phases) * len(impls) * args.rounds
        with Progress(total, "bench", flag=args.progress) as progress:
            for phase in phases:
                if phase != "write" and not full:
                    progress.set_label("preparing files")
                    _prepare_files(names, per_file)
                ops = _ops(phase, args.files, per_file, args.block_size, args.mixed, args.seed)
                for round_ in range(args.rounds):
                    for impl in _order(impls, round_):
                        if phase == "write":
                            _fresh_files(names)
                        os.sync()  # no dirty pages of the previous run flushing during this one
                        if args.drop_caches:
                            _drop_caches()
                        at_start = sum(os.stat(name).st_size for name in names)
                        progress.set_label(f"{phase} {impl} (round {round_ + 1}/{args.rounds})")
                        if impl == "pygds":
                            seconds, latencies, engine_used = _measure_pygds(phase, ops, names, args, buffers,
                                                                             progress)
                        else:
                            seconds, latencies = _measure_baseline(phase, ops, names, args, progress)
                        runs.append(Measurement(phase, impl, round_, args.block_size * len(ops), len(ops),
                                                seconds, at_start, latencies))
                full = True
    finally:
        pool.set_num_threads(old_threads)
        buffers.close()
    fell_back = args.engine == "auto" and engine_used != choice.name
    return {
        "config": {"phases": phases, "read_fraction": args.mixed, "block_size": args.block_size,
                   "total": per_file * args.files, "files": args.files, "threads": args.threads, "qd": args.qd,
                   "mem": args.mem, "direct": args.direct, "drop_caches": args.drop_caches, "rounds": args.rounds,
                   "baseline_workers": None if args.no_baseline else args.threads * args.qd,
                   "pool_threads": max(old_threads, args.threads * args.qd), "task_size": pool.task_size()},
        "paths": [{"path": p, "fs_type": fsinfo.fs_type(p), "mount_point": fsinfo.mount_of(p).mount_point}
                  for p in paths],
        "engine": {"requested": args.engine, "used": engine_used,
                   "reason": (f"{choice.reason}; opening the file fell back to {engine_used}" if fell_back
                              else choice.reason)},
        "results": [_summary([m for m in runs if (m.phase, m.impl) == (phase, impl)])
                    for phase in phases for impl in impls],
        "runs": [m.as_dict() for m in runs],
        **_ratios(runs),
    }


def _ratios(runs: list[Measurement]) -> dict[str, dict[str, Any]]:
    """Per phase, pygds GiB/s over baseline GiB/s within each round, and their median ("ratios")."""
    by = {(m.phase, m.impl, m.round): m for m in runs}
    per_round: dict[str, list[float]] = {}
    for (phase, impl, round_), m in by.items():
        base = by.get((phase, "posix-baseline", round_))
        if impl == "pygds" and base is not None:
            per_round.setdefault(phase, []).append(m.gib_per_s / base.gib_per_s)
    return {"ratios": {phase: round(statistics.median(r), 3) for phase, r in per_round.items()},
            "ratio_rounds": {phase: [round(x, 3) for x in r] for phase, r in per_round.items()}}


def _print(report: dict[str, Any]) -> None:
    cfg, eng = report["config"], report["engine"]
    where = ", ".join(f"{p['path']} ({p['fs_type']})" for p in report["paths"])
    say(f"pygds bench: {human_bytes(cfg['total'])} per run in {human_bytes(cfg['block_size'])} blocks, "
        f"{cfg['files']} file(s), {cfg['threads']} thread(s) x qd {cfg['qd']}, {cfg['mem']} memory"
        f"{', O_DIRECT' if cfg['direct'] else ''} on {where}; {cfg['rounds']} round(s) per phase, writes into "
        "fresh files")
    say(f"engine: {eng['used']} (asked {eng['requested']}: {eng['reason']})")
    rows = []
    for r in report["results"]:
        lat = r["latency_ms"]
        low, high = r["gib_per_s_range"]
        rows.append((r["phase"], r["impl"], f"{r['gib_per_s']:.3f}", f"{low:.3f}..{high:.3f}", f"{r['iops']:.0f}",
                     f"{lat['p50']:.3f}", f"{lat['p90']:.3f}", f"{lat['p99']:.3f}", f"{lat['max']:.3f}"))
    say(table(rows, ("phase", "impl", "GiB/s", "min..max", "IOPS", "p50 ms", "p90 ms", "p99 ms", "max ms")))
    for phase, ratio in report["ratios"].items():
        each = report["ratio_rounds"][phase]
        say(f"{phase}: pygds / POSIX baseline = {ratio:.2f}x (median of {len(each)} paired round(s): "
            f"{min(each):.2f}x .. {max(each):.2f}x)")
    if not cfg["drop_caches"]:
        say("(page cache not dropped: reads may come from memory; --drop-caches as root measures the device)")


def run(args: argparse.Namespace) -> int:
    _validate(args)
    paths = [os.path.abspath(p) for p in (args.path or [tempfile.gettempdir()])]
    _check_environment(args, paths)
    dirs: list[str] = []
    try:
        for path in paths:
            dirs.append(tempfile.mkdtemp(prefix="pygds-bench-", dir=path))
        report = _bench(args, paths, dirs)
    finally:
        for d in dirs:
            shutil.rmtree(d, ignore_errors=True)
    if args.json:
        print_json(report)
    else:
        _print(report)
    return 0
