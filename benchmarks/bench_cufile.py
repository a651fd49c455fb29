"""The cuFile engine's own cost: pygds `File.read` against bare ctypes `cuFileRead` calls.

Both contenders use the same registered device buffer, the same file and the same cuFile handle
(the one the pygds `File` registered), so the difference is what the binding adds per call:
4 KiB reads (goal: pygds takes at most 1.2x the bare call's time), given a `BufferView`, the
`DeviceBuffer` itself, and a torch tensor (against bare calls into the tensor's own memory), and
32 MiB reads, which pygds splits over its thread pool, against one bare call each (goal: at least
1.0x the bare throughput).

Without a GPU this runs on the CUDA driver stand-in of `tests/standin` (the real libcufile in
compatibility mode): the script compiles the stand-in into a temporary folder and runs itself
again in a subprocess under its environment. On a GPU machine pass `--no-standin`.

    python benchmarks/bench_cufile.py [--runs 15] [--json out.json] [--no-standin]
"""
from __future__ import annotations

import argparse
import ctypes
import os
import shutil
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # run from a checkout, no install needed

from benchmarks.common import (  # noqa: E402
    MiB, Case, Contender, emit, machine, per_call, rate_table, rounds, run_under_standin)

CHILD_FLAG = "PYGDS_BENCH_CUFILE_CHILD"


def measure(args: argparse.Namespace, where: str) -> int:
    import pygds
    from pygds import _cufile_abi as abi
    from pygds import pool
    from pygds._lib import cufile
    from pygds.memory import DeviceBuffer

    block, small = 32 * MiB, 4096
    file_size = 2 * block
    workdir = tempfile.mkdtemp(prefix="pygds-bench-cufile-", dir=args.dir)
    path = os.path.join(workdir, "data.bin")
    with open(path, "wb") as fh:  # written here, so the page cache holds it (warm reads)
        for _ in range(file_size // (8 * MiB)):
            fh.write(os.urandom(8 * MiB))
    info = machine(workdir)
    lib = cufile()
    info["libcufile"] = f"{lib.path} (version {lib.version})"
    info["driver"] = where
    info["pygds pool"] = f"{pool.num_threads()} threads, {pool.task_size() // MiB} MiB tasks"
    cases: list[Case] = []
    try:
        with pygds.Driver() as driver, DeviceBuffer(block) as dev, driver.register(dev), \
                pygds.File(path, "r", engine="cufile") as f:
            if f.engine != "cufile":
                raise RuntimeError(f"the file opened on {f.engine}, not cuFile")
            handle = f._handle.handle  # the very handle pygds registered: both contenders share it
            bare = ctypes.CDLL(lib.path, use_errno=True).cuFileRead
            bare.restype, bare.argtypes = abi.PROTOTYPES["cuFileRead"]
            base, view = dev.ptr, dev.view
            span = file_size // small
            calls = args.small_calls

            def bare_small() -> None:
                for i in range(calls):
                    if bare(handle, base, small, (i % span) * small, 0) != small:
                        raise RuntimeError("short bare cuFileRead")

            def pygds_small(buf: object):
                def run() -> None:
                    read = f.read
                    for i in range(calls):
                        if read(buf, small, (i % span) * small) != small:
                            raise RuntimeError("short File.read")
                return run

            times = rounds([Contender("bare cuFileRead", bare_small, baseline=True),
                            Contender("File.read(DeviceBuffer)", pygds_small(dev)),
                            Contender("File.read(BufferView)", pygds_small(view))], args.runs)
            small_figures, small_table = per_call(times, calls, "bare cuFileRead", goal=1.2)
            small_table = (f"4 KiB reads into the registered buffer (page cache warm), {calls} calls per run, "
                           f"median of {args.runs} runs.\n\n{small_table}")
            tensor = torch_tensor(dev)
            if tensor is not None:  # its own bare baseline: on a CPU-only torch the tensor is host memory
                tensor_base = tensor.data_ptr()

                def bare_tensor() -> None:
                    for i in range(calls):
                        if bare(handle, tensor_base, small, (i % span) * small, 0) != small:
                            raise RuntimeError("short bare cuFileRead")

                where_t = "device memory (the registered buffer)" if tensor.is_cuda else "host memory"
                times = rounds([Contender("bare cuFileRead", bare_tensor, baseline=True),
                                Contender("File.read(torch tensor)", pygds_small(tensor))], args.runs)
                figures, table = per_call(times, calls, "bare cuFileRead", goal=1.2)
                small_figures["torch"] = figures
                small_table += (f"\n\n4 KiB reads into a torch tensor in {where_t}, each call through "
                                f"`as_buffer` (nothing cached per tensor), against bare calls into the same "
                                f"memory.\n\n{table}")

            reps = args.large_reads

            def bare_large() -> None:
                for i in range(reps):
                    if bare(handle, base, block, (i % 2) * block, 0) != block:
                        raise RuntimeError("short bare cuFileRead")

            def pygds_large() -> None:
                for i in range(reps):
                    if f.read(dev, block, (i % 2) * block) != block:
                        raise RuntimeError("short File.read")

            times = rounds([Contender("bare cuFileRead (one call)", bare_large, baseline=True),
                            Contender("File.read (split over threads)", pygds_large)], args.runs)
            cases.append(Case("32 MiB reads into the registered buffer", reps * block, times,
                              "File.read (split over threads)", ["bare cuFileRead (one call)"], 1.0))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    body = small_table + "\n\n" + rate_table(cases)
    small_met = all(row.get("met", True) for row in _rows(small_figures))
    emit(f"cuFile engine on {where}: pygds vs bare ctypes cuFileRead", info, body,
         {"small_reads": small_figures, "cases": [c.as_dict() for c in cases]}, args.json)
    return 0 if small_met and all(c.met() for c in cases) else 1


def torch_tensor(dev: object) -> object | None:
    """A uint8 torch tensor for the torch row: over `dev` where torch has CUDA, else a CPU tensor
    (torch's CPU builds cannot hold device memory); None without torch."""
    try:
        import torch
    except ImportError:
        return None
    if torch.cuda.is_available():
        return torch.as_tensor(dev, device="cuda")
    tensor = torch.empty(4096, dtype=torch.uint8)
    tensor.fill_(0)  # touched once, like the device buffer
    return tensor


def _rows(small: dict) -> list[dict]:
    """Every contender's row of `per_call` figures, the torch table's included."""
    rows = [row for name, row in small.items() if name != "torch"]
    return rows + list(small.get("torch", {}).values())


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dir", default=tempfile.gettempdir(), help="where the data file goes")
    p.add_argument("--runs", type=int, default=15, help="timed rounds per case (default 15); medians are reported")
    p.add_argument("--small-calls", type=int, default=20000, help="4 KiB reads per run (default 20000)")
    p.add_argument("--large-reads", type=int, default=8, help="32 MiB reads per run (default 8)")
    p.add_argument("--no-standin", action="store_true",
                   help="use the machine's own CUDA driver (a GPU machine) instead of the stand-in")
    p.add_argument("--json", help="also write the figures as JSON to this path")
    args = p.parse_args(argv)
    if args.no_standin:
        return measure(args, "the machine's CUDA driver")
    if os.environ.get(CHILD_FLAG):
        return measure(args, "the CUDA driver stand-in (libcufile compatibility mode, no GPU)")
    return run_under_standin(__file__, argv, CHILD_FLAG)


if __name__ == "__main__":
    sys.exit(main())
