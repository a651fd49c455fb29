"""pygds's POSIX engine against a plain `os.preadv`/`os.pwritev` loop and `dd`.

32 MiB blocks (one 256-token KV chunk of Llama-3.1-8B) between one file and host memory: reads
with the page cache warm and with O_DIRECT, buffered overwrites of the cached file and O_DIRECT
writes. Every contender moves the same file in the same process run, from or into the same
touched, page-aligned buffer (`dd` uses its own), in rounds of rotating order; figures are medians.
The goal is pygds >= 0.95x the best baseline. Then the per-call cost of a 4 KiB `File.read`
against one bare `os.preadv` (reported, no goal).

    python benchmarks/bench_posix.py [--dir DIR] [--file-size 1G] [--runs 15] [--json out.json]
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from a checkout, no install needed

import pygds  # noqa: E402
from pygds import pool  # noqa: E402
from pygds.memory import as_buffer  # noqa: E402

from benchmarks.common import (  # noqa: E402
    ALIGNMENT,
    MiB,
    Case,
    Contender,
    drop_caches,
    emit,
    machine,
    parse_size,
    per_call,
    random_buffer,
    rate_table,
    rounds,
    run_dd,
    touched_buffer,
    warm_page_cache,
    write_file,
)

CASES = ("read", "read-direct", "write", "write-direct", "small")


def block_loop(fd: int, call, buf: memoryview, nbytes: int) -> None:
    """What a user writes: one preadv/pwritev per block, straight through the file."""
    block = len(buf)
    for offset in range(0, nbytes, block):
        if call(fd, [buf], offset) != block:
            raise RuntimeError(f"short transfer at offset {offset}")


def pygds_loop(f: pygds.File, buf: object, block: int, nbytes: int, *, write: bool) -> None:
    op = f.write if write else f.read
    for offset in range(0, nbytes, block):
        if op(buf, block, offset) != block:
            raise RuntimeError(f"short transfer at offset {offset}")


def large_cases(path: str, nbytes: int, block: int, runs: int, which: set[str]) -> list[Case]:
    count = nbytes // block
    buf = touched_buffer(block)
    view = memoryview(buf)
    cases = []
    fd = os.open(path, os.O_RDWR)
    dfd = os.open(path, os.O_RDWR | os.O_DIRECT)
    f = pygds.File(path, "r+", engine="posix")
    fdirect = pygds.File(path, "r+", engine="posix", direct=True)
    try:
        if "read" in which:
            warm_page_cache(path)
            times = rounds([
                Contender("pygds File.read", lambda: pygds_loop(f, buf, block, nbytes, write=False)),
                Contender("os.preadv loop", lambda: block_loop(fd, os.preadv, view, nbytes), baseline=True),
                Contender("dd", lambda: run_dd([f"if={path}", "of=/dev/null", f"bs={block}", f"count={count}"]),
                          baseline=True),
            ], runs)
            cases.append(Case("read, page cache warm", nbytes, times, "pygds File.read",
                              ["os.preadv loop", "dd"], 0.95))
        if "read-direct" in which:
            times = rounds([
                Contender("pygds File.read", lambda: pygds_loop(fdirect, buf, block, nbytes, write=False)),
                Contender("os.preadv loop", lambda: block_loop(dfd, os.preadv, view, nbytes), baseline=True),
                Contender("dd", lambda: run_dd([f"if={path}", "of=/dev/null", f"bs={block}", f"count={count}",
                                                "iflag=direct"]), baseline=True),
            ], runs)
            cases.append(Case("read, O_DIRECT", nbytes, times, "pygds File.read", ["os.preadv loop", "dd"], 0.95))
        if "write" in which:
            # overwrites of the cached file; os.sync between runs so no run inherits another's dirty pages
            warm_page_cache(path)
            times = rounds([
                Contender("pygds File.write", lambda: pygds_loop(f, buf, block, nbytes, write=True), between=os.sync),
                Contender("os.pwritev loop", lambda: block_loop(fd, os.pwritev, view, nbytes), baseline=True,
                          between=os.sync),
                Contender("dd", lambda: run_dd(["if=/dev/zero", f"of={path}", f"bs={block}", f"count={count}",
                                                "conv=notrunc"]), baseline=True, between=os.sync),
            ], runs)
            cases.append(Case("write, page cache warm", nbytes, times, "pygds File.write",
                              ["os.pwritev loop", "dd"], 0.95))
            os.sync()
        if "write-direct" in which:
            times = rounds([
                Contender("pygds File.write", lambda: pygds_loop(fdirect, buf, block, nbytes, write=True)),
                Contender("os.pwritev loop", lambda: block_loop(dfd, os.pwritev, view, nbytes), baseline=True),
                Contender("dd", lambda: run_dd(["if=/dev/zero", f"of={path}", f"bs={block}", f"count={count}",
                                                "conv=notrunc", "oflag=direct"]), baseline=True),
            ], runs)
            cases.append(Case("write, O_DIRECT", nbytes, times, "pygds File.write", ["os.pwritev loop", "dd"], 0.95))
    finally:
        f.close()
        fdirect.close()
        os.close(fd)
        os.close(dfd)
        view.release()
        buf.close()
    return cases


def small_reads(path: str, calls: int, runs: int) -> tuple[dict[str, dict[str, object]], str]:
    """Microseconds per 4 KiB read (page cache warm): bare os.preadv, File.read with a bytearray and
    with a ready `BufferView`."""
    size = 4096
    span = 64 * MiB // size  # offsets cycle over the file's first 64 MiB, all cached
    warm_page_cache(path)
    ba = bytearray(size)
    mv = memoryview(ba)
    bv = as_buffer(ba)
    fd = os.open(path, os.O_RDONLY)
    f = pygds.File(path, "r", engine="posix")

    def bare() -> None:
        for i in range(calls):
            os.preadv(fd, [mv], (i % span) * size)

    def with_bytearray() -> None:
        for i in range(calls):
            f.read(ba, size, (i % span) * size)

    def with_view() -> None:
        for i in range(calls):
            f.read(bv, size, (i % span) * size)

    try:
        times = rounds([Contender("os.preadv", bare), Contender("File.read(bytearray)", with_bytearray),
                        Contender("File.read(BufferView)", with_view)], runs)
    finally:
        f.close()
        os.close(fd)
    figures, table = per_call(times, calls, "os.preadv")
    return figures, (f"4 KiB reads, page cache warm, {calls} calls per run, median of {runs} runs "
                     f"(reported, no goal).\n\n{table}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dir", default=tempfile.gettempdir(),
                   help="where the data file goes (a real disk file system: O_DIRECT must work there)")
    p.add_argument("--file-size", type=parse_size, default=parse_size("1G"), help="bytes per run (default 1G)")
    p.add_argument("--block", type=parse_size, default=32 * MiB, help="bytes per request (default 32M)")
    p.add_argument("--runs", type=int, default=15, help="timed rounds per case (default 15); medians are reported")
    p.add_argument("--small-calls", type=int, default=20000, help="4 KiB calls per run (default 20000)")
    p.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {','.join(CASES)}")
    p.add_argument("--json", help="also write the figures as JSON to this path")
    args = p.parse_args(argv)
    which = set(args.cases.split(","))
    if which - set(CASES):
        p.error(f"unknown cases {sorted(which - set(CASES))}; choose from {', '.join(CASES)}")
    if args.block % ALIGNMENT or args.file_size % args.block:
        p.error("--block must be a multiple of 4096 and --file-size a multiple of --block")

    workdir = tempfile.mkdtemp(prefix="pygds-bench-posix-", dir=args.dir)
    path = os.path.join(workdir, "data.bin")
    try:
        os.close(os.open(path, os.O_RDWR | os.O_CREAT | os.O_DIRECT, 0o644))
    except OSError as exc:
        shutil.rmtree(workdir, ignore_errors=True)
        p.error(f"O_DIRECT does not work in {args.dir} ({exc.strerror}); pass --dir on a disk file system")
    info = machine(workdir)
    info["pygds pool"] = f"{pool.num_threads()} threads, {pool.task_size() // MiB} MiB tasks"
    try:
        source = random_buffer(args.block)
        write_file(path, args.file_size, source)
        source.close()
        info["page cache dropped before the run"] = drop_caches()
        cases = large_cases(path, args.file_size, args.block, args.runs, which)
        body = f"{args.file_size // MiB} MiB per run in {args.block // MiB} MiB blocks, {args.runs} runs.\n\n"
        body += rate_table(cases) if cases else ""
        payload: dict[str, object] = {"cases": [c.as_dict() for c in cases]}
        if "small" in which:
            figures, table = small_reads(path, args.small_calls, args.runs)
            body += "\n\n" + table
            payload["small_reads"] = figures
        emit("POSIX engine: pygds vs os.preadv/os.pwritev loop vs dd", info, body, payload, args.json)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if all(c.met() is not False for c in cases) else 1


if __name__ == "__main__":
    sys.exit(main())
