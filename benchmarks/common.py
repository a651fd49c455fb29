"""Shared helpers of the pygds benchmarks: the machine's description, interleaved timing rounds,
medians, `dd` runs and the report (a Markdown table on stdout, optionally JSON).

The rules every benchmark here follows (see BENCHMARKS.md): all contenders run in the same process
run, on the same files and warm buffers, in rounds whose order rotates, and the figure reported is
the median of the rounds.
"""
from __future__ import annotations

import json
import mmap
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from pygds import fsinfo
from pygds.cli.output import parse_size  # noqa: F401  (the benchmarks' size parser)

MiB = 1 << 20
GiB = 1 << 30
ALIGNMENT = 4096


# -- the machine ----------------------------------------------------------------------------------
def _first(path: str, pattern: str) -> str:
    try:
        with open(path) as fh:
            for line in fh:
                found = re.match(pattern, line)
                if found:
                    return found.group(1).strip()
    except OSError:
        pass
    return "unknown"


def mount_of(path: str) -> tuple[str, str, str]:
    """(device, mount point, file system type) of the mount holding `path` (`pygds.fsinfo`)."""
    try:
        mount = fsinfo.mount_of(path)
    except OSError:
        return ("unknown", "/", "unknown")
    return (mount.source, mount.mount_point, mount.fs_type)


def machine(path: str) -> dict[str, object]:
    """What BENCHMARKS.md records about the machine a run used."""
    mem_kb = _first("/proc/meminfo", r"MemTotal:\s+(\d+)")
    dev, mnt, fstype = mount_of(path)
    return {
        "nproc": os.cpu_count(),
        "cpu": _first("/proc/cpuinfo", r"model name\s*:\s*(.*)"),
        "memory_gib": round(int(mem_kb) / (1 << 20), 1) if mem_kb.isdigit() else "unknown",
        "kernel": platform.release(),
        "disk": f"{dev} ({fstype}) mounted at {mnt}",
        "python": platform.python_version(),
        "loadavg_at_start": _first("/proc/loadavg", r"(\S+ \S+ \S+)"),
    }


# -- memory and the page cache ----------------------------------------------------------------------
def touched_buffer(nbytes: int, fill: bytes = b"\x5a") -> mmap.mmap:
    """Page-aligned anonymous memory, every page written once, so no contender pays first touch."""
    buf = mmap.mmap(-1, nbytes)
    pattern = (fill * (MiB // len(fill) + 1))[:MiB]
    for start in range(0, nbytes, MiB):
        n = min(MiB, nbytes - start)
        buf[start:start + n] = pattern[:n]
    return buf


def random_buffer(nbytes: int) -> mmap.mmap:
    """Page-aligned memory holding random bytes (fully touched)."""
    buf = mmap.mmap(-1, nbytes)
    for start in range(0, nbytes, 8 * MiB):
        n = min(8 * MiB, nbytes - start)
        buf[start:start + n] = os.urandom(n)
    return buf


def write_file(path: str, nbytes: int, source: mmap.mmap) -> None:
    """Write `nbytes` to `path` from `source` (repeated), then fsync: the benchmark's data file."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(source)
        done = 0
        while done < nbytes:
            n = min(len(view), nbytes - done)
            done += os.pwrite(fd, view[:n], done)
        os.fsync(fd)
    finally:
        os.close(fd)


def drop_caches() -> bool:
    """Drop the page cache (root only); False where it cannot."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as fh:
            fh.write("3\n")
        return True
    except OSError:
        return False


def warm_page_cache(path: str) -> None:
    """Read the whole file once so that buffered reads come from the page cache."""
    fd = os.open(path, os.O_RDONLY)
    try:
        buf = bytearray(8 * MiB)
        offset = 0
        while True:
            got = os.preadv(fd, [buf], offset)
            if got <= 0:
                break
            offset += got
    finally:
        os.close(fd)


# -- timing ---------------------------------------------------------------------------------------------
def seconds(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


@dataclass
class Contender:
    """One way of doing the work: `run()` does it once; it returns seconds when it times itself
    (e.g. `dd`, which reports its own time), else None and the wall clock is used."""

    name: str
    run: Callable[[], float | None]
    baseline: bool = False
    between: Callable[[], object] | None = None  # untimed, before each timed run (e.g. os.sync)


def rounds(contenders: list[Contender], runs: int, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds per run of each contender: `warmup` untimed rounds, then `runs` timed rounds whose
    order rotates, so a drift in the machine's speed spreads over every contender alike."""
    times: dict[str, list[float]] = {c.name: [] for c in contenders}
    for r in range(warmup + runs):
        shift = r % len(contenders)
        for c in contenders[shift:] + contenders[:shift]:
            if c.between is not None:
                c.between()
            start = time.perf_counter()
            reported = c.run()
            took = time.perf_counter() - start if reported is None else reported
            if r >= warmup:
                times[c.name].append(took)
    return times


def run_dd(args: list[str]) -> float:
    """Run `dd` with `args`; the seconds it reports for its own copy."""
    done = subprocess.run(["dd", *args], capture_output=True, text=True, env={**os.environ, "LC_ALL": "C"},
                          check=False)
    if done.returncode != 0:
        raise RuntimeError(f"dd {' '.join(args)} failed: {done.stderr.strip()}")
    found = re.search(r"copied, ([0-9.e+-]+) s", done.stderr)
    if not found:
        raise RuntimeError(f"cannot read dd's time from: {done.stderr.strip()}")
    return float(found.group(1))


# -- the report -----------------------------------------------------------------------------------------
def rate(nbytes: float, secs: float) -> float:
    """MiB/s."""
    return nbytes / secs / MiB if secs > 0 else float("inf")


def fmt_rate(mib_s: float) -> str:
    return f"{mib_s / 1024:.2f} GiB/s" if mib_s >= 1024 else f"{mib_s:.0f} MiB/s"


@dataclass
class Case:
    """One measured case: its contenders' times, how many bytes one run moves, and its goal."""

    name: str
    nbytes: int
    times: dict[str, list[float]]
    subject: str  # the contender the goal is about (pygds)
    baselines: list[str]
    goal: float | None = None  # minimum subject/best-baseline throughput ratio; None: report only
    notes: list[str] = field(default_factory=list)

    def median_rate(self, name: str) -> float:
        return rate(self.nbytes, statistics.median(self.times[name]))

    def best_baseline(self) -> str:
        return max(self.baselines, key=self.median_rate)

    def ratio(self) -> float:
        return self.median_rate(self.subject) / self.median_rate(self.best_baseline())

    def paired_ratio(self) -> float:
        """Median over rounds of subject/best-baseline throughput within the same round: slow drifts
        of a shared machine cancel out, so it shows how much of `ratio()` is noise."""
        best = self.times[self.best_baseline()]
        return statistics.median(b / s for s, b in zip(self.times[self.subject], best))

    def met(self) -> bool | None:
        return None if self.goal is None else self.ratio() >= self.goal

    def as_dict(self) -> dict[str, object]:
        out = asdict(self)
        out["median_mib_s"] = {n: round(self.median_rate(n), 1) for n in self.times}
        out["best_baseline"] = self.best_baseline()
        out["ratio"] = round(self.ratio(), 3)
        out["paired_ratio"] = round(self.paired_ratio(), 3)
        out["met"] = self.met()
        return out


def rate_table(cases: list[Case]) -> str:
    """A Markdown table: per case, every contender's median throughput and min-max, the ratio."""
    lines = ["| case | contender | median | min .. max | runs | pygds / best baseline (paired) | goal |",
             "|---|---|---|---|---|---|---|"]
    for case in cases:
        for name, secs in case.times.items():
            lo, hi = rate(case.nbytes, max(secs)), rate(case.nbytes, min(secs))
            if name == case.subject:
                verdict = "" if case.goal is None else (
                    f">= {case.goal:.2f}x: {'met' if case.met() else 'MISSED'}")
                ratio = f"{case.ratio():.3f}x ({case.paired_ratio():.3f}x) vs {case.best_baseline()}"
            else:
                verdict, ratio = "", ""
            lines.append(f"| {case.name} | {name} | {fmt_rate(case.median_rate(name))} | "
                         f"{fmt_rate(lo)} .. {fmt_rate(hi)} | {len(secs)} | {ratio} | {verdict} |")
    return "\n".join(lines)


def per_call(times: dict[str, list[float]], calls: int, baseline: str,
             goal: float | None = None) -> tuple[dict[str, dict[str, object]], str]:
    """Per-call figures of small requests: median µs per call, the overhead over `baseline`, the
    time ratio (and its paired median over rounds) and, with `goal` (a maximum time ratio), the
    verdict. Returns the figures and a Markdown table."""
    base_us = statistics.median(times[baseline]) / calls * 1e6
    figures: dict[str, dict[str, object]] = {}
    lines = ["| contender | µs per call | overhead per call | time vs bare (paired) |"
             + (f" goal <= {goal:.1f}x |" if goal else ""),
             "|---|---|---|---|" + ("---|" if goal else "")]
    for name, secs in times.items():
        us = statistics.median(secs) / calls * 1e6
        row: dict[str, object] = {"us_per_call": round(us, 3)}
        if name == baseline:
            lines.append(f"| {name} | {us:.2f} |  |  |" + ("  |" if goal else ""))
        else:
            ratio = us / base_us
            paired = statistics.median(t / b for t, b in zip(secs, times[baseline]))
            row.update(overhead_us=round(us - base_us, 3), ratio=round(ratio, 3), paired_ratio=round(paired, 3))
            cell = f"| {name} | {us:.2f} | +{us - base_us:.2f} µs | {ratio:.2f}x ({paired:.2f}x) |"
            if goal:
                row["met"] = ratio <= goal
                cell += f" {'met' if ratio <= goal else 'MISSED'} |"
            lines.append(cell)
        figures[name] = row
    return figures, "\n".join(lines)


def machine_lines(info: dict[str, object]) -> str:
    return "\n".join(f"- {k}: {v}" for k, v in info.items())


def emit(title: str, info: dict[str, object], body: str, payload: dict[str, object], json_path: str | None) -> None:
    """Print the Markdown report; write `payload` (plus the machine) as JSON when asked."""
    sys.stdout.write(f"## {title}\n\nMachine:\n{machine_lines(info)}\n\n{body}\n")
    sys.stdout.flush()
    if json_path:
        with open(json_path, "w") as fh:
            json.dump({"title": title, "machine": info, **payload}, fh, indent=2)
            fh.write("\n")


def run_under_standin(script: str, argv: list[str], child_flag: str) -> int:
    """Build the CUDA driver stand-in (tests/standin), run `script` again under its environment
    with `child_flag` set, clean up; the child's exit code (libcufile's log shown when it failed)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from standin.build import build_standin

    root = tempfile.mkdtemp(prefix="pygds-bench-standin-")
    try:
        standin = build_standin(Path(root))
        env = standin.env()
        env[child_flag] = "stand-in"
        done = subprocess.run([sys.executable, script, *argv], env=env, check=False)
        if done.returncode not in (0, 1):
            sys.stderr.write(f"--- cufile.log\n{standin.log_text()}\n")
        return done.returncode
    finally:
        shutil.rmtree(root, ignore_errors=True)
