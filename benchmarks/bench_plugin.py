"""Store/load throughput of the gds plugin vs LMCache's LocalDiskBackend, on CPU.

Both contenders run in this one process, in the same directory's file system, on the same
chunks: one 256-token Llama-3.1-8B KV chunk (32 layers x 2 x 256 tokens x 8 kv heads x 128,
bf16 = 32 MiB). Our plugin is loaded by LMCache's own plugin loader with `dst_device="cpu"` (POSIX
engine on host memory) and a `LocalCPUBackend`; LocalDiskBackend is built as `CreateStorageBackends` builds it, over a
`LocalCPUBackend` staging pool. Each contender gets its memory objects from its own allocator
backend, as LMCache's `StorageManager` hands them over.

Measured per run and contender, on fresh keys:
  put             submit all chunks -> every completion callback has fired (data in the page
                  cache, entry visible to `contains`)
  put_in_lmcache  the same plus, for a contender whose allocator backend is not LMCache's
                  LocalCPUBackend, the copy LMCache's StorageManager makes of each chunk into
                  that allocator first (on a CPU destination neither backend needs it)
  get_warm        `batched_get_blocking` of all chunks, files still in the page cache
  get_cold        the same after `sync; echo 3 > /proc/sys/vm/drop_caches` (root only)
then the entries are removed. Fairness: one unmeasured round per contender first; sources are
filled by copying the same data into each contender's own (warmed) memory; right before every
put the same amount is written to and deleted from the page cache (see `prime_page_cache`);
the order is shuffled every run. Every get is checked byte for byte, outside the timing. A
"plain POSIX ceiling" row does the bare syscalls on 4 threads: what any backend must at least do.
`--variant` adds contenders with other settings. Tables show the median [min-max] of the runs
and the median of per-run ratios to LocalDiskBackend.

    python benchmarks/bench_plugin.py [--chunks N] [--runs R] [--dir D] [--json FILE]
        [--variant plugin:use_direct_io=true] [--variant localdisk:use_odirect=true] [--no-cold]
"""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
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
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("LMCACHE_LOG_LEVEL", "WARNING")

import torch  # noqa: E402
from lmcache.utils import CacheEngineKey, start_loop_in_thread_with_exceptions  # noqa: E402
from lmcache.v1.config import LMCacheEngineConfig  # noqa: E402
from lmcache.v1.memory_management import MemoryFormat, MemoryObj  # noqa: E402
from lmcache.v1.metadata import LMCacheMetadata  # noqa: E402
from lmcache.v1.storage_backend import storage_plugin_launcher  # noqa: E402
from lmcache.v1.storage_backend.local_cpu_backend import LocalCPUBackend  # noqa: E402
from lmcache.v1.storage_backend.local_disk_backend import LocalDiskBackend  # noqa: E402

from benchmarks.common import drop_caches, machine  # noqa: E402

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
LAYERS, TOKENS, KV_HEADS, HEAD_DIM = 32, 256, 8, 128
DTYPE = torch.bfloat16
SHAPE = torch.Size([2, LAYERS, TOKENS, KV_HEADS * HEAD_DIM])  # KV_2LTD, as LMCache allocates it
CHUNK_BYTES = SHAPE.numel() * DTYPE.itemsize  # 32 MiB
MIB, GIB = 1 << 20, 1 << 30
GOAL = 1.5
BASELINE = "LocalDiskBackend"
CEILING = "plain POSIX ceiling"


# -- machine facts ----------------------------------------------------------------------------
def machine_facts(directory: str) -> dict[str, Any]:
    """`benchmarks.common.machine` plus the bench directory and the torch and LMCache versions."""
    import lmcache

    return {**machine(directory), "bench_dir": directory, "torch": torch.__version__,
            "lmcache": getattr(lmcache, "__version__", "?")}


# -- LMCache objects, built as LMCache builds them ----------------------------------------------
def metadata() -> LMCacheMetadata:
    return LMCacheMetadata(model_name=MODEL, world_size=1, local_world_size=1, worker_id=0, local_worker_id=0,
                           kv_dtype=DTYPE, kv_shape=(LAYERS, 2, TOKENS, KV_HEADS, HEAD_DIM), chunk_size=TOKENS)


def make_keys(run: int, n: int, salt: int) -> list[CacheEngineKey]:
    """Fresh keys per run: long signed hashes like vLLM's (both contenders skip stored keys)."""
    return [CacheEngineKey(MODEL, 1, 0, (salt * 1_000_003 + run * 10_007 + i) * 2_654_435_761 - (1 << 62), DTYPE)
            for i in range(n)]


class Loop:
    """LMCache's asyncio loop in its own thread, as `StorageManager` runs it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=start_loop_in_thread_with_exceptions, args=(self.loop,),
                                       daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)
        self.loop.close()


class Contender:
    """One backend under test: where its memory objects come from, put, get, remove."""

    name: str
    engine: str
    copied_by_lmcache = False
    """LMCache's StorageManager copies each chunk into this backend's own allocator before the
    put (`allocate_and_copy_objects`), because its allocator backend is not LocalCPUBackend."""
    backend: Any
    allocator: Any  # the allocator backend handing out memory objects for puts and gets

    def sources(self, master: torch.Tensor, n: int) -> list[MemoryObj]:
        """n memory objects from this contender's allocator, filled by copying the same data."""
        objs = []
        for i in range(n):
            obj = self.allocator.allocate(SHAPE, DTYPE, fmt=MemoryFormat.KV_2LTD)
            if obj is None:
                raise RuntimeError(f"{self.name}: allocation {i + 1} of {n} failed; the pool is too small")
            obj.tensor.copy_(master[i])
            objs.append(obj)
        return objs

    def put(self, keys: list[CacheEngineKey], objs: list[MemoryObj], timeout: float = 300) -> float:
        """Submit all, drop our references (as StorageManager does), wait for every callback."""
        done = threading.Event()
        left = [len(keys)]
        lock = threading.Lock()

        def on_complete(_key: CacheEngineKey) -> None:
            with lock:
                left[0] -= 1
                if left[0] == 0:
                    done.set()

        start = time.perf_counter()
        self.backend.batched_submit_put_task(keys, objs, on_complete_callback=on_complete)
        for obj in objs:
            obj.ref_count_down()
        if not done.wait(timeout):
            faulthandler.dump_traceback(all_threads=True)
            raise RuntimeError(f"{self.name}: {left[0]} of {len(keys)} puts did not complete in {timeout} s")
        elapsed = time.perf_counter() - start
        missing = [k for k in keys if not self.backend.contains(k)]
        if missing:
            raise RuntimeError(f"{self.name}: {len(missing)} stored chunks are not visible")
        return elapsed

    def get(self, keys: list[CacheEngineKey], master: torch.Tensor) -> float:
        start = time.perf_counter()
        objs = self.backend.batched_get_blocking(keys)
        elapsed = time.perf_counter() - start
        try:
            for i, obj in enumerate(objs):
                if obj is None:
                    raise RuntimeError(f"{self.name}: chunk {i} was not loaded")
                if not torch.equal(obj.tensor.view(torch.int16), master[i].view(torch.int16)):  # NaN-safe
                    raise RuntimeError(f"{self.name}: chunk {i} came back with different bytes")
        finally:
            for obj in objs:
                if obj is not None:
                    obj.ref_count_down()
        return elapsed

    def remove(self, keys: list[CacheEngineKey]) -> None:
        for key in keys:
            self.backend.remove(key)

    def close(self) -> None:
        self.backend.close()


class Plugin(Contender):
    """Our backend, loaded by LMCache's own `storage_plugin_launcher` with dst_device="cpu" and a
    LocalCPUBackend, as `CreateStorageBackends` loads it.

    `options`: plugin-scoped settings (`storage_plugin.gds.<key>`), e.g. use_direct_io=true.
    """

    def __init__(self, directory: str, loop: Loop, n: int, options: dict[str, str]) -> None:
        self.name = "gds plugin" + (f" [{_label(options)}]" if options else "")
        buffer_mib = n * CHUNK_BYTES // MIB + 64  # the N chunks a get allocates
        scoped = {"gds_path": directory, "cufile_buffer_size": buffer_mib, "engine": "posix", **options}
        extra = {"storage_plugin.gds.module_path": "lmcache_plugin.backend",
                 "storage_plugin.gds.class_name": "GdsPluginBackend",
                 **{f"storage_plugin.gds.{k}": v for k, v in scoped.items()}}
        config = LMCacheEngineConfig.from_defaults(chunk_size=TOKENS, local_cpu=False,
                                                   max_local_cpu_size=(2 * n * CHUNK_BYTES + 256 * MIB) / GIB,
                                                   storage_plugins=["gds"], extra_config=extra)
        meta = metadata()
        self.cpu = LocalCPUBackend(config, meta, dst_device="cpu")
        backends: OrderedDict[str, Any] = OrderedDict()
        storage_plugin_launcher(config, meta, loop.loop, self.cpu, "cpu", backends)
        if not backends:
            raise RuntimeError("LMCache did not load the gds plugin (see the log above)")
        self.backend = next(iter(backends.values()))
        self.allocator = self.backend.get_allocator_backend()
        self.copied_by_lmcache = self.allocator is not self.cpu
        self.engine = f"pygds {self.backend.engine}, {self.backend.settings.io_threads} I/O threads" + (
            ", O_DIRECT" if self.backend.settings.direct_io else "")

    def close(self) -> None:
        self.backend.close()
        self.cpu.close()


class LocalDisk(Contender):
    """LMCache's LocalDiskBackend over a LocalCPUBackend staging pool, as CreateStorageBackends
    builds them (4 disk I/O threads, its default). `options` go to `extra_config`."""

    def __init__(self, directory: str, loop: Loop, n: int, rounds: int, options: dict[str, str]) -> None:
        self.name = BASELINE + (f" [{_label(options)}]" if options else "")
        cpu_gb = (2 * n * CHUNK_BYTES + 256 * MIB) / GIB
        # LocalDiskBackend.remove() deletes the file but never lowers `current_cache_size` (0.5.6),
        # so the quota must hold every round's chunks or later puts are dropped for "insufficient
        # evictable disk cache space". Only the accounting grows; the files are deleted.
        disk_gb = ((rounds + 1) * n * CHUNK_BYTES + 256 * MIB) / GIB
        config = LMCacheEngineConfig.from_defaults(chunk_size=TOKENS, local_cpu=False, max_local_cpu_size=cpu_gb,
                                                   local_disk=directory, max_local_disk_size=disk_gb,
                                                   extra_config=dict(options))
        meta = metadata()
        self.cpu = LocalCPUBackend(config, meta, dst_device="cpu")
        self.backend = LocalDiskBackend(config, loop.loop, self.cpu, dst_device="cpu", metadata=meta)
        self.allocator = self.backend.get_allocator_backend()
        self.engine = f"python open/write/readinto, {self.backend.disk_worker.executor.max_workers} I/O threads" + (
            ", O_DIRECT" if self.backend.use_odirect else "")

    def close(self) -> None:
        self.backend.close()
        self.cpu.close()


class PlainPosix(Contender):
    """The ceiling: os.pwrite / os.preadv of whole chunks on 4 threads, one file per chunk, no
    framework, from LMCache memory objects in a buffer warmed like the others'. Both backends
    do at least this work, so neither can beat it by much."""

    name = CEILING

    def __init__(self, directory: str, n: int) -> None:
        from lmcache.v1.memory_allocators.tensor_memory_allocator import TensorMemoryAllocator

        os.makedirs(directory, exist_ok=True)
        self.directory = directory
        self.allocator = TensorMemoryAllocator(torch.empty(2 * n * CHUNK_BYTES + 64 * MIB, dtype=torch.uint8),
                                               align_bytes=4096)
        self.pool = ThreadPoolExecutor(4, thread_name_prefix="plain-io")
        self.files: dict[CacheEngineKey, str] = {}
        self.engine = "os.pwrite/os.preadv, 4 threads, no header, no rename"

    def _path(self, key: CacheEngineKey) -> str:
        return os.path.join(self.directory, f"{key.chunk_hash}.bin")

    def put(self, keys: list[CacheEngineKey], objs: list[MemoryObj], timeout: float = 300) -> float:
        def write(key: CacheEngineKey, obj: MemoryObj) -> None:
            fd = os.open(self._path(key), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.pwrite(fd, obj.byte_array, 0)
            finally:
                os.close(fd)
            self.files[key] = self._path(key)

        start = time.perf_counter()
        list(self.pool.map(write, keys, objs, timeout=timeout))
        elapsed = time.perf_counter() - start
        for obj in objs:
            obj.ref_count_down()
        return elapsed

    def get(self, keys: list[CacheEngineKey], master: torch.Tensor) -> float:
        def read(key: CacheEngineKey, obj: MemoryObj) -> MemoryObj:
            fd = os.open(self.files[key], os.O_RDONLY)
            try:
                os.preadv(fd, [obj.byte_array], 0)
            finally:
                os.close(fd)
            return obj

        start = time.perf_counter()
        objs = [self.allocator.allocate(SHAPE, DTYPE, fmt=MemoryFormat.KV_2LTD) for _ in keys]
        list(self.pool.map(read, keys, objs))
        elapsed = time.perf_counter() - start
        try:
            for i, obj in enumerate(objs):
                if not torch.equal(obj.tensor.view(torch.int16), master[i].view(torch.int16)):
                    raise RuntimeError(f"{self.name}: chunk {i} came back with different bytes")
        finally:
            for obj in objs:
                obj.ref_count_down()
        return elapsed

    def remove(self, keys: list[CacheEngineKey]) -> None:
        for key in keys:
            os.unlink(self.files.pop(key))

    def close(self) -> None:
        self.pool.shutdown()


def prime_page_cache(directory: str, master: torch.Tensor) -> None:
    """Write and delete as many bytes as a round puts (4 threads), unmeasured.

    On these VMs memory idle for a second or more has gone back to the host, and buffered
    writes into it run at 0.7-1.5 GiB/s instead of 4-6; right after this every contender's put
    finds the same just-freed page-cache memory."""
    flat = master.view(torch.uint8).reshape(len(master), -1).numpy()

    def write(i: int) -> None:
        path = os.path.join(directory, f"prime.{i}")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.pwrite(fd, flat[i], 0)
        finally:
            os.close(fd)
            os.unlink(path)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(write, range(len(master))))


def _label(options: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in options.items())


def parse_variant(text: str) -> tuple[str, dict[str, str]]:
    """"plugin:key=value,key=value" or "localdisk:key=value" -> (kind, options)."""
    kind, _, rest = text.partition(":")
    if kind not in ("plugin", "localdisk") or not rest:
        raise argparse.ArgumentTypeError(f"variant {text!r}: write plugin:KEY=VALUE[,KEY=VALUE] or "
                                         "localdisk:KEY=VALUE[,...], e.g. plugin:use_direct_io=true")
    options = {}
    for item in rest.split(","):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise argparse.ArgumentTypeError(f"variant {text!r}: {item!r} is not KEY=VALUE")
        options[key.strip()] = value.strip()
    return kind, options


# -- the measurement --------------------------------------------------------------------------
def one_round(c: Contender, keys: list[CacheEngineKey], master: torch.Tensor, cold: bool, root: str
              ) -> dict[str, float]:
    """put, warm get, (cold get), remove: GiB/s of each."""
    nbytes = len(keys) * CHUNK_BYTES / GIB
    start = time.perf_counter()
    objs = c.sources(master, len(keys))
    copy_s = time.perf_counter() - start
    prime_page_cache(root, master)
    put_s = c.put(keys, objs)
    out = {"put": nbytes / put_s,
           "put_in_lmcache": nbytes / (put_s + copy_s if c.copied_by_lmcache else put_s),
           "get_warm": nbytes / c.get(keys, master)}
    if cold:
        drop_caches()
        out["get_cold"] = nbytes / c.get(keys, master)
    c.remove(keys)
    return out


def run_bench(chunks: int, runs: int, directory: str, cold: bool,
              variants: list[tuple[str, dict[str, str]]] = (), ceiling: bool = True) -> dict[str, Any]:
    root = tempfile.mkdtemp(prefix="bench_plugin.", dir=directory)
    loop = Loop()
    contenders: list[Contender] = []
    try:
        facts = machine_facts(root)
        gen = torch.Generator().manual_seed(1234)
        master = torch.randint(-32768, 32767, (chunks, *SHAPE), dtype=torch.int16, generator=gen).view(DTYPE)
        for i, (kind, options) in enumerate([("plugin", {}), ("localdisk", {}), *variants]):
            where = os.path.join(root, f"{kind}{i}")
            contenders.append(Plugin(where, loop, chunks, options) if kind == "plugin"
                              else LocalDisk(where, loop, chunks, runs + 1, options))
        if ceiling:
            contenders.append(PlainPosix(os.path.join(root, "plain"), chunks))
        cold = cold and drop_caches()
        for salt, c in enumerate(contenders):  # warm-up: allocator memory, page cache, code paths
            one_round(c, make_keys(-1, chunks, salt), master, False, root)
        samples: dict[str, list[dict[str, float]]] = {c.name: [] for c in contenders}
        shuffle = random.Random(7).shuffle
        for r in range(runs):
            order = list(contenders)
            shuffle(order)  # a fresh order each run: no contender always follows the same one
            for c in order:
                samples[c.name].append(one_round(c, make_keys(r, chunks, contenders.index(c)), master, cold, root))
        facts["loadavg_end"] = os.getloadavg()
        return {"goal": GOAL, "facts": facts, "chunks": chunks, "chunk_bytes": CHUNK_BYTES, "runs": runs,
                "cold": cold, "engines": {c.name: c.engine for c in contenders}, "samples": samples,
                **summarize(samples)}
    finally:
        for c in contenders:
            c.close()
        loop.stop()
        shutil.rmtree(root, ignore_errors=True)


def summarize(samples: dict[str, list[dict[str, float]]]) -> dict[str, Any]:
    """Per contender and measure: median, min, max, and the median of the per-run ratios to
    LocalDiskBackend (each run's pair measured minutes apart at most, so the machine's drift
    cancels better than in a ratio of medians)."""
    base = samples[BASELINE]
    out: dict[str, Any] = {"medians": {}, "min": {}, "max": {}, "paired_ratio": {}}
    for name, rows in samples.items():
        for key, fn in (("medians", statistics.median), ("min", min), ("max", max)):
            out[key][name] = {m: fn(r[m] for r in rows) for m in rows[0]}
        out["paired_ratio"][name] = {m: statistics.median(r[m] / b[m] for r, b in zip(rows, base))
                                     for m in rows[0]}
    return out


def report(result: dict[str, Any], out: Callable[[str], None] = print) -> None:
    """The table (median, min-max, paired ratio to LocalDiskBackend) and the verdict."""
    med, lo, hi, ratio = result["medians"], result["min"], result["max"], result["paired_ratio"]
    f = result["facts"]
    width = max(len(n) for n in med) + 2
    out(f"{result['chunks']} x {result['chunk_bytes'] // MIB} MiB chunks, {result['runs']} runs; GiB/s as median "
        f"[min-max] (median per-run ratio to {BASELINE})")
    out(f"{f['bench_dir']} on {f['disk']}; {f['nproc']} CPUs, {f['cpu']}, {f['memory_gib']} GiB, kernel "
        f"{f['kernel']}; load average {f['loadavg_at_start'].split()[0]} -> {f['loadavg_end'][0]:.1f}")
    measures = list(med[BASELINE])
    out(f"{'':{width}}" + "".join(f"{m:>27}" for m in measures))
    for name in med:
        out(f"{name:{width}}" + "".join(
            f"{med[name][m]:6.2f} [{lo[name][m]:5.2f}-{hi[name][m]:5.2f}] ({ratio[name][m]:4.2f}x)" for m in measures))
    ours = ratio["gds plugin"]
    verdict = all(ours[m] >= GOAL for m in measures)
    out(f"goal: gds plugin (default settings) >= {GOAL}x {BASELINE} in every column: "
        f"{'met' if verdict else 'NOT met'}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--chunks", type=int, default=32, help="chunks per run (32 MiB each; default 32 = 1 GiB)")
    p.add_argument("--runs", type=int, default=9, help="measured runs per contender (default 9; puts are noisy on VMs)")
    p.add_argument("--dir", default=tempfile.gettempdir(), help="directory to write in (default: the temp dir)")
    p.add_argument("--no-cold", action="store_true", help="skip the cold-cache gets")
    p.add_argument("--variant", action="append", default=[], type=parse_variant, metavar="KIND:K=V[,K=V]",
                   help="an extra contender: plugin:<plugin-scoped settings> or localdisk:<extra_config>, "
                        "e.g. plugin:use_direct_io=true (repeatable)")
    p.add_argument("--no-ceiling", action="store_true", help="skip the plain POSIX ceiling row")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    result = run_bench(args.chunks, args.runs, os.path.abspath(args.dir), not args.no_cold, args.variant,
                       not args.no_ceiling)
    report(result)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
