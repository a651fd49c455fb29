"""pygds against KvikIO, side by side on one CUDA driver: who moves bytes faster.

Both libraries run on their default engine choice (pygds `auto`, KvikIO's compat mode `AUTO`), with
the same pool: 4 threads and 4 MiB tasks on both sides (`--threads`, `--task-size`). Cases: host
and device memory, reads (file in the page cache) and buffered overwrites, requests from 4 KiB to
64 MiB. Both get the very same buffer object (a numpy array over page-aligned touched memory, or a
`pygds.DeviceBuffer`, which KvikIO takes through `__cuda_array_interface__`) and the same file;
before the timing each contender's run is checked byte for byte (a wrong byte ends the script).
Rounds rotate their order; the ratio is the paired median (`benchmarks/common.py`). Goal: pygds
>= 1.0x KvikIO in every case.

Without a GPU this runs on the CUDA driver stand-in of `tests/standin` (device memory is host
memory the host cannot touch; the real libcufile runs in compatibility mode): the script compiles
the stand-in into a temporary folder and runs itself again under it. On a GPU machine pass
`--no-standin`. KvikIO is not installed by this script; install it with

    pip install 'kvikio-cu13==26.10.*'

    python benchmarks/bench_kvikio.py [--quick] [--runs 7] [--json out.json] [--no-standin]
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout, no install needed

from benchmarks.common import (  # noqa: E402
    MiB,
    Case,
    Contender,
    emit,
    fmt_rate,
    machine,
    parse_size,
    random_buffer,
    rate_table,
    rounds,
    run_under_standin,
    touched_buffer,
    warm_page_cache,
    write_file,
)

CHILD_FLAG = "PYGDS_BENCH_KVIKIO_CHILD"
INSTALL = "pip install 'kvikio-cu13==26.10.*'"
GOAL = 1.0
SUBJECT, BASELINE = "pygds", "KvikIO"
DEFAULTS = {"sizes": "4K,64K,1M,8M,64M", "volume": "256M", "max_calls": 2048, "runs": 7}
QUICK = {"sizes": "4K,1M,64M", "volume": "64M", "max_calls": 256, "runs": 3}


class WrongBytes(RuntimeError):
    """A contender's run left other bytes than the file (read) or the buffer (write) holds."""


@dataclass
class Memory:
    """One buffer both libraries get as it is, and how the script fills and reads it back."""

    name: str
    obj: object
    put: Callable[[bytes], None]  # bytes into the buffer at offset 0
    get: Callable[[int], bytes]  # the first n bytes of the buffer
    close: Callable[[], None] = lambda: None


def host_memory(nbytes: int) -> Memory:
    import numpy as np

    array = np.frombuffer(touched_buffer(nbytes), dtype=np.uint8)

    def put(data: bytes) -> None:
        array[:len(data)] = np.frombuffer(data, dtype=np.uint8)

    return Memory("host", array, put, lambda n: array[:n].tobytes())


def device_memory(nbytes: int) -> Memory:
    from pygds.memory import DeviceBuffer

    buf = DeviceBuffer(nbytes)
    buf.copy_from_host(bytes(nbytes))  # touched once, like the host buffer

    def get(n: int) -> bytes:
        out = bytearray(n)
        buf.copy_to_host(out)
        return bytes(out)

    return Memory("device", buf, buf.copy_from_host, get, buf.close)


def size_label(nbytes: int) -> str:
    return f"{nbytes // MiB} MiB" if nbytes >= MiB else f"{nbytes >> 10} KiB"


def requests(size: int, volume: int, max_calls: int) -> list[int]:
    """File offsets of one run: consecutive requests from the file's start, at most `max_calls`
    of them and at most `volume` bytes (the file's size) in all."""
    return [i * size for i in range(min(max_calls, max(1, volume // size)))]


def runner(call: Callable[..., int], buf: object, size: int, offsets: list[int], who: str) -> Callable[[], None]:
    """One run: every request in turn, each checked for a short transfer."""
    def run() -> None:
        for offset in offsets:
            done = call(buf, size, offset)
            if done != size:
                raise RuntimeError(f"{who}: moved {done} of {size} bytes at file offset {offset}")
    return run


def pread(path: str, size: int, offset: int) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, size, offset)
    finally:
        os.close(fd)


def check(who: str, op: str, mem: Memory, size: int, offsets: list[int], run: Callable[[], None],
          path: str) -> None:
    """Run once, untimed, and compare bytes: the read buffer against the file at the last
    request; for writes, the file at the first and last requests against the buffer."""
    what = f"{who}: {op} of {size_label(size)} requests into {mem.name} memory"
    if op == "read":
        mem.put(b"\xa5" * size)
        run()
        if mem.get(size) != pread(path, size, offsets[-1]):
            raise WrongBytes(f"{what}: the buffer does not hold the file's bytes at offset {offsets[-1]}")
        return
    pattern = os.urandom(size)
    mem.put(pattern)
    fd = os.open(path, os.O_WRONLY)
    try:
        for offset in {offsets[0], offsets[-1]}:
            os.pwrite(fd, bytes(size), offset)
    finally:
        os.close(fd)
    run()
    for offset in (offsets[0], offsets[-1]):
        if pread(path, size, offset) != pattern:
            raise WrongBytes(f"{what}: the file at offset {offset} does not hold the buffer's bytes")


def kvikio_engine(kvikio) -> str:
    mode = kvikio.defaults.get("compat_mode")
    preferred = kvikio.defaults.is_compat_mode_preferred()
    way = "POSIX threads and bounce buffers (no cuFile)" if preferred else "cuFile"
    if kvikio.defaults.get("auto_direct_io_write"):
        way += "; aligned writes with O_DIRECT (auto_direct_io_write)"
    return f"kvikio {kvikio.__version__}, compat_mode {getattr(mode, 'name', mode)}: {way}"


def measure(args: argparse.Namespace, where: str) -> int:
    try:
        import kvikio
        import kvikio.defaults
    except ImportError as exc:
        sys.stderr.write(f"KvikIO cannot be imported ({exc}); install it: {INSTALL}\n")
        return 3
    import pygds

    pygds.set_num_threads(args.threads)
    pygds.set_task_size(args.task_size)
    kvikio.defaults.set({"num_threads": args.threads, "task_size": args.task_size})
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    volume = parse_size(args.volume)
    bad = [s for s in sizes if s <= 0 or volume % s]
    if bad:
        raise SystemExit(f"--volume {args.volume} must be a multiple of every request size; "
                         f"{', '.join(map(size_label, bad))} is not a divisor")

    workdir = tempfile.mkdtemp(prefix="pygds-bench-kvikio-", dir=args.dir)
    paths = {"read": os.path.join(workdir, "read.bin"), "write": os.path.join(workdir, "write.bin")}
    source = random_buffer(min(volume, 64 * MiB))
    for path in paths.values():
        write_file(path, volume, source)
    warm_page_cache(paths["read"])
    info = machine(workdir)
    info["driver"] = where
    info["pool, both sides"] = f"{args.threads} threads, {size_label(args.task_size)} tasks"
    info["KvikIO"] = kvikio_engine(kvikio)
    cases: list[Case] = []
    rows: list[tuple[str, str, int, str, Case]] = []
    try:
        for mem_name in args.memory.split(","):
            mem = (host_memory if mem_name == "host" else device_memory)(max(sizes))
            for op in args.ops.split(","):
                path = paths[op]
                mode = "r" if op == "read" else "r+"
                with pygds.File(path, mode) as f, kvikio.CuFile(path, mode) as k:
                    info[f"pygds engine, {mem_name} {op}"] = f.engine
                    info["pygds engine, why"] = f.engine_reason
                    for size in sizes:
                        offsets = requests(size, volume, args.max_calls)
                        ours = runner(getattr(f, op), mem.obj, size, offsets, SUBJECT)
                        theirs = runner(getattr(k, op), mem.obj, size, offsets, BASELINE)
                        check(SUBJECT, op, mem, size, offsets, ours, path)
                        check(BASELINE, op, mem, size, offsets, theirs, path)
                        between = os.sync if op == "write" else None  # no run pays for another's dirty pages
                        times = rounds([Contender(SUBJECT, ours, between=between),
                                        Contender(BASELINE, theirs, baseline=True, between=between)], args.runs)
                        case = Case(f"{mem_name} {op} {size_label(size)}", len(offsets) * size, times,
                                    SUBJECT, [BASELINE], GOAL, [f"{len(offsets)} requests per run"])
                        cases.append(case)
                        rows.append((mem_name, op, size, f.engine, case))
            mem.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    body = (f"{summary_table(rows)}\n\nEvery run and round:\n\n{rate_table(cases)}\n")
    emit(f"pygds vs KvikIO on {where}", info, body, {"goal": GOAL, "cases": [c.as_dict() for c in cases]},
         args.json)
    return 0 if all(c.met() for c in cases) else 1


def summary_table(rows: list[tuple[str, str, int, str, Case]]) -> str:
    lines = ["| memory | op | request | requests/run | pygds engine | pygds | KvikIO | pygds / KvikIO (paired) "
             f"| goal >= {GOAL:.1f}x |", "|---|---|---|---|---|---|---|---|---|"]
    for mem, op, size, engine, case in rows:
        lines.append(f"| {mem} | {op} | {size_label(size)} | {case.nbytes // size} | {engine} | "
                     f"{fmt_rate(case.median_rate(SUBJECT))} | {fmt_rate(case.median_rate(BASELINE))} | "
                     f"{case.ratio():.2f}x ({case.paired_ratio():.2f}x) | {'met' if case.met() else 'MISSED'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true",
                   help=f"a smoke run: sizes {QUICK['sizes']}, {QUICK['volume']} per run at most "
                        f"{QUICK['max_calls']} requests, {QUICK['runs']} rounds (options given still win)")
    p.add_argument("--sizes", help=f"request sizes (default {DEFAULTS['sizes']})")
    p.add_argument("--volume", help=f"file size and most bytes one run moves (default {DEFAULTS['volume']})")
    p.add_argument("--max-calls", type=int, help=f"most requests per run (default {DEFAULTS['max_calls']})")
    p.add_argument("--runs", type=int, help=f"timed rounds per case (default {DEFAULTS['runs']})")
    p.add_argument("--memory", default="host,device", help="host, device or both (default host,device)")
    p.add_argument("--ops", default="read,write", help="read, write or both (default read,write)")
    p.add_argument("--threads", type=int, default=4, help="pool threads, both libraries (default 4)")
    p.add_argument("--task-size", type=parse_size, default=4 * MiB, help="task size, both libraries (default 4M)")
    p.add_argument("--dir", default=tempfile.gettempdir(), help="where the data files go")
    p.add_argument("--no-standin", action="store_true",
                   help="use the machine's own CUDA driver (a GPU machine) instead of the stand-in")
    p.add_argument("--json", help="also write the figures as JSON to this path")
    args = p.parse_args(argv)
    for key, value in (QUICK if args.quick else DEFAULTS).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    for name, allowed in (("memory", {"host", "device"}), ("ops", {"read", "write"})):
        given = getattr(args, name).split(",")
        if not given or not set(given) <= allowed:
            p.error(f"--{name} {getattr(args, name)!r}: use {' or '.join(sorted(allowed))}, comma-separated")
    if args.no_standin:
        return measure(args, "the machine's CUDA driver")
    if os.environ.get(CHILD_FLAG):
        return measure(args, "the CUDA driver stand-in (no GPU)")
    return run_under_standin(__file__, argv, CHILD_FLAG)


if __name__ == "__main__":
    sys.exit(main())
