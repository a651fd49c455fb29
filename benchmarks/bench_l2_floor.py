"""The MP-mode L2 adapter's loads against the least any pure-Python adapter must do per key.

`fs_native` (LMCache's C++ adapter) loads with native threads that never take the GIL; a Python
adapter pays the interpreter for every key. This measures how far our `GdsL2Adapter` is from that
floor, on the same files, in the same process, in rotating rounds (`benchmarks/common.py`):

  GdsL2Adapter  `submit_load_task` of every key (its I/O threads, as LMCache's controllers drive
                it: lookup, header and key checks, checksum), waiting on its load event fd
  python floor  as many plain Python threads as the adapter has I/O threads, each key one
                `os.open`, one `os.preadv` of header and data into the key's L1 object, `os.close`,
                and the two hashes every checked load needs (header digest, data checksum): no
                lookup, no parsing, no check

Both move the same bytes into the same L1 arena (4096-aligned, as `lmcache server` allocates it).
The files are written by the adapter (buffered below 1 MiB, as by default), so both read from the
page cache, as `fs_native` does in `bench_l2.py`'s defaults pair. Bytes are checked before timing.
No goal: it says which part of the gap to `fs_native` a Python adapter cannot close.

    python benchmarks/bench_l2_floor.py [--data-size-kb 256] [--keys 256] [--runs 7] [--dir D] [--json FILE]
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import os
import select
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch
import xxhash
from lmcache.cli.commands.bench.l2_adapter_bench.data import (
    create_l1_memory_desc,
    make_aligned_tensor,
    make_memory_objects,
)
from lmcache.v1.distributed.api import ObjectKey
from lmcache.v1.distributed.l2_adapters import create_l2_adapter
from lmcache.v1.distributed.l2_adapters.plugin_l2_adapter import PluginL2AdapterConfig
from lmcache.v1.platform import consume_fd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks.common import Case, Contender, emit, machine, rate_table, rounds  # noqa: E402
from lmcache_plugin.format import HEADER_SIZE, checksum_of, unpack_header  # noqa: E402

TIMEOUT_S = 300.0
PATHS = 4


def wait_result(adapter, task_id: int) -> list[int]:
    """The loaded keys' indexes, once the load task is done (as LMCache waits: on the event fd)."""
    poller = select.poll()
    poller.register(adapter.get_load_event_fd(), select.POLLIN)
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        bitmap = adapter.query_load_result(task_id)
        if bitmap is not None:
            return bitmap.get_indices_list()
        if poller.poll(200):
            consume_fd(adapter.get_load_event_fd())
    raise TimeoutError("the load task did not finish")


def wait_stored(adapter, task_id: int) -> None:
    poller = select.poll()
    poller.register(adapter.get_store_event_fd(), select.POLLIN)
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        done = dict(adapter.pop_completed_store_tasks())
        if task_id in done:
            if done[task_id] < 0:
                raise RuntimeError("the store task failed")
            return
        if poller.poll(200):
            consume_fd(adapter.get_store_event_fd())
    raise TimeoutError("the store task did not finish")


class Floor:
    """`threads` plain Python threads loading `files[i]` into `views[i]` (see the module doc)."""

    def __init__(self, files: list[str], views: list[memoryview], threads: int) -> None:
        self.files, self.views, self.threads = files, views, threads
        self.headers = [bytearray(HEADER_SIZE) for _ in range(threads)]

    def run(self) -> None:
        counter = iter(range(len(self.files)))
        lock = threading.Lock()

        def work(header: bytearray) -> None:
            while True:
                with lock:
                    i = next(counter, None)
                if i is None:
                    return
                fd = os.open(self.files[i], os.O_RDONLY | os.O_CLOEXEC)
                try:
                    got = os.preadv(fd, [header, self.views[i]], 0)
                finally:
                    os.close(fd)
                if got != HEADER_SIZE + len(self.views[i]):
                    raise RuntimeError(f"{self.files[i]}: short read ({got} bytes)")
                xxhash.xxh3_128_intdigest(header)
                xxhash.xxh3_64_intdigest(self.views[i])

        workers = [threading.Thread(target=work, args=(h,)) for h in self.headers]
        for w in workers:
            w.start()
        for w in workers:
            w.join()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-size-kb", type=int, default=256)
    parser.add_argument("--keys", type=int, default=256)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--dir", default=None, help="where the cache directories go (default: a temp dir)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    logging.getLogger("lmcache").setLevel(logging.WARNING)
    size, n = args.data_size_kb << 10, args.keys
    base = tempfile.mkdtemp(prefix="bench-l2-floor-", dir=args.dir)
    info = machine(base)
    arena = make_aligned_tensor(2 * n * size, 4096)
    sources = make_memory_objects(arena, n, size, 0)
    dests = make_memory_objects(arena, n, size, n * size)
    for obj in sources:
        obj.raw_data.copy_(torch.randint(0, 256, (size,), dtype=torch.uint8))
    keys = [ObjectKey(os.urandom(16), "bench/model", ObjectKey.ComputeKVRank(1, 0, 1, 0)) for _ in range(n)]
    paths = [os.path.join(base, f"path{i}") for i in range(PATHS)]
    cfg = PluginL2AdapterConfig.from_dict({"module_path": "lmcache_plugin.l2_adapter", "class_name": "GdsL2Adapter",
                                           "adapter_params": {"paths": paths}})
    adapter = create_l2_adapter(cfg, l1_memory_desc=create_l1_memory_desc(arena, align_bytes=4096))
    try:
        wait_stored(adapter, adapter.submit_store_task(keys, sources))
        files = sorted(str(p) for p in Path(base).rglob("*.kvcache.safetensors"))
        if len(files) != n:
            raise RuntimeError(f"{len(files)} data files for {n} keys")
        views = [memoryview((ctypes.c_char * size).from_address(obj.data_ptr)).cast("B") for obj in dests]
        floor = Floor(files, views, adapter.config.io_threads)

        def ours() -> None:
            if len(wait_result(adapter, adapter.submit_load_task(keys, dests))) != n:
                raise RuntimeError("GdsL2Adapter missed keys")

        # bytes checked before timing: ours against the sources, the floor against each header's checksum
        ours()
        for src, dst in zip(sources, dests):
            if not torch.equal(src.raw_data, dst.raw_data):
                raise RuntimeError("GdsL2Adapter loaded wrong bytes")
        floor.run()
        for path, view in zip(files, views):
            with open(path, "rb") as fh:
                header = unpack_header(fh.read(HEADER_SIZE))
            if checksum_of([view]) != header.checksum:
                raise RuntimeError(f"the floor read wrong bytes from {path}")
        times = rounds([Contender("GdsL2Adapter", ours), Contender("python floor", floor.run, baseline=True)],
                       args.runs)
    finally:
        adapter.close()
        shutil.rmtree(base, ignore_errors=True)
    case = Case(f"load {n} x {args.data_size_kb} KiB", n * size, times, "GdsL2Adapter", ["python floor"])
    per_key = {name: statistics.median(secs) / n * 1e6 for name, secs in times.items()}
    body = (rate_table([case]) + "\n\n" + "\n".join(f"- {name}: {us:.1f} µs per key (wall)"
                                                     for name, us in per_key.items()))
    emit(f"GdsL2Adapter loads against the pure-Python floor ({adapter.config.io_threads} threads each)",
         info, body,
         {"case": case.as_dict(), "us_per_key": per_key}, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
