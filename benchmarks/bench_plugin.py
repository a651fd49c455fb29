"""Store/load throughput of the gds plugin against LMCache's own disk backends.

Every contender runs in this one process, in the same directory's file system, on the same
chunks: one 256-token Llama-3.1-8B KV chunk (32 layers x 2 x 256 tokens x 8 kv heads x 128,
bf16 = 32 MiB). Our plugin is loaded by LMCache's own plugin loader next to a `LocalCPUBackend`,
as `CreateStorageBackends` loads it. Each contender gets its memory objects from its own
allocator backend, as LMCache's `StorageManager` hands them over.

`--device cpu` (the default): the plugin on a "cpu" destination (POSIX engine, host memory from
the LocalCPUBackend), twice: with its default settings (checksum "auto": an XXH3 checksum of
every chunk written on put and verified on get) and with `checksum: off`; against
LocalDiskBackend (`--baseline localdisk`), built as `CreateStorageBackends` builds it over a
LocalCPUBackend, and a "plain POSIX ceiling": the bare syscalls on 4 threads, what any backend
must at least do. Goal: the plugin >= 0.95x the ceiling and >= 1.0x LocalDiskBackend in put,
warm get and cold get.

`--device cuda`: the plugin on "cuda:0" with its default engine and its own GPU buffer, against
LMCache's GdsBackend (`--baseline gds`), built as `CreateStorageBackends` builds it (`gds_path`,
the buffer size, which LMCache 0.5.6 reads as `gds_buffer_size`, the same destination; it needs
`cufile-python` and an unversioned `libcufile.so`, which `gpu_check.py` provides). Both allocate
from their own GPU buffer, so LMCache copies every chunk into it first (`put_in_lmcache`). No
ceiling row: bare syscalls cannot reach device memory. Goal: the plugin >= 1.2x GdsBackend.

`--direct-io` runs every contender with O_DIRECT: the plugin's `use_direct_io`, LocalDiskBackend's
and GdsBackend's extra_config `use_odirect` / `use_direct_io`, the ceiling's open flag.

Measured per run and contender, on fresh keys:
  put             submit all chunks -> every completion callback has fired (data in the page
                  cache, entry visible to `contains`; GdsBackend writes its `.metadata` after)
  put_in_lmcache  the same plus, for a contender whose allocator backend is not LMCache's
                  LocalCPUBackend, the copy LMCache's StorageManager makes of each chunk into
                  that allocator first (on a CPU destination neither CPU backend needs it)
  get_warm        `batched_get_blocking` of all chunks, files still in the page cache
  get_cold        the same after `sync; echo 3 > /proc/sys/vm/drop_caches` (root only)
then the entries are removed. Fairness: one unmeasured round per contender first; sources are
filled by copying the same data into each contender's own (warmed) memory; right before every
put the same amount is written to and deleted from the page cache (see `prime_page_cache`);
the order is shuffled every run. Every get is checked byte for byte, outside the timing.
`--variant` adds contenders with other settings. Tables show the median [min-max] of the runs
and the medians of the per-run ratios to the baseline and to the ceiling. Exit code 0 when the
goal is met, 1 when it is not, 2 for a bad command line (e.g. `--device cuda` without CUDA).

    python benchmarks/bench_plugin.py [--device cpu|cuda] [--baseline localdisk|gds] [--direct-io]
        [--chunks N] [--runs R] [--dir D] [--json FILE] [--no-cold] [--no-ceiling]
        [--variant plugin:KEY=VALUE[,...]] [--variant localdisk:KEY=VALUE[,...]]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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
from typing import Any, Callable, ClassVar

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("LMCACHE_LOG_LEVEL", "WARNING")

import torch  # noqa: E402
from lmcache.utils import CacheEngineKey, start_loop_in_thread_with_exceptions  # noqa: E402
from lmcache.v1.config import LMCacheEngineConfig  # noqa: E402
from lmcache.v1.memory_management import MemoryFormat, MemoryObj  # noqa: E402
from lmcache.v1.metadata import LMCacheMetadata  # noqa: E402
from lmcache.v1.storage_backend import storage_plugin_launcher  # noqa: E402
from lmcache.v1.storage_backend.gds_backend import GdsBackend  # noqa: E402
from lmcache.v1.storage_backend.local_cpu_backend import LocalCPUBackend  # noqa: E402
from lmcache.v1.storage_backend.local_disk_backend import LocalDiskBackend  # noqa: E402

from benchmarks.common import drop_caches, machine  # noqa: E402

MODEL = "meta-llama/Llama-3.1-8B-Instruct"
LAYERS, TOKENS, KV_HEADS, HEAD_DIM = 32, 256, 8, 128
DTYPE = torch.bfloat16
SHAPE = torch.Size([2, LAYERS, TOKENS, KV_HEADS * HEAD_DIM])  # KV_2LTD, as LMCache allocates it
CHUNK_BYTES = SHAPE.numel() * DTYPE.itemsize  # 32 MiB
MIB, GIB = 1 << 20, 1 << 30
DESTINATIONS = {"cpu": "cpu", "cuda": "cuda:0"}  # --device -> LMCache's dst_device
SUBJECT = "gds plugin"
BASELINES = {"localdisk": "LocalDiskBackend", "gds": "GdsBackend"}
CEILING = "plain POSIX ceiling"
GOAL_MEASURES = ("put", "get_warm", "get_cold")


def goals(device: str, baseline: str, ceiling: bool) -> dict[str, float]:
    """The least paired ratio the plugin (default settings) must reach against each reference."""
    if device == "cuda" and baseline == "gds":
        return {BASELINES["gds"]: 1.2}
    out = {BASELINES[baseline]: 1.0}
    if ceiling:
        out[CEILING] = 0.95
    return out


# -- machine facts ----------------------------------------------------------------------------
def machine_facts(directory: str) -> dict[str, Any]:
    """`benchmarks.common.machine` plus the bench directory, the torch and LMCache versions and
    the GPU where CUDA is usable."""
    import lmcache

    facts = {**machine(directory), "bench_dir": directory, "torch": torch.__version__,
             "lmcache": getattr(lmcache, "__version__", "?")}
    if torch.cuda.is_available():
        facts["gpu"] = torch.cuda.get_device_name(0)
    return facts


# -- LMCache objects, built as LMCache builds them ----------------------------------------------
def metadata() -> LMCacheMetadata:
    return LMCacheMetadata(model_name=MODEL, world_size=1, local_world_size=1, worker_id=0, local_worker_id=0,
                           kv_dtype=DTYPE, kv_shape=(LAYERS, 2, TOKENS, KV_HEADS, HEAD_DIM), chunk_size=TOKENS)


def make_keys(run: int, n: int, salt: int) -> list[CacheEngineKey]:
    """Fresh keys per run: long signed hashes like vLLM's (both contenders skip stored keys)."""
    return [CacheEngineKey(MODEL, 1, 0, (salt * 1_000_003 + run * 10_007 + i) * 2_654_435_761 - (1 << 62), DTYPE)
            for i in range(n)]


def cpu_gib(n: int) -> float:
    """A LocalCPUBackend pool for the n source chunks of a put and the n of a get."""
    return (2 * n * CHUNK_BYTES + 256 * MIB) / GIB


def sync_device() -> None:
    """Wait for the GPU's queued copies (none without CUDA): no clock stops before the data is there."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def same_bytes(got: torch.Tensor, want: torch.Tensor) -> bool:
    """Bit-exact comparison (NaN-safe), wherever each tensor lives."""
    return torch.equal(got.view(torch.int16), want.to(got.device).view(torch.int16))


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
    allocate_options: ClassVar[dict[str, Any]] = {}

    def sources(self, master: torch.Tensor, n: int) -> list[MemoryObj]:
        """n memory objects from this contender's allocator, filled by copying the same data."""
        objs = []
        for i in range(n):
            obj = self.allocator.allocate(SHAPE, DTYPE, fmt=MemoryFormat.KV_2LTD, **self.allocate_options)
            if obj is None:
                raise RuntimeError(f"{self.name}: allocation {i + 1} of {n} failed; the pool is too small")
            obj.tensor.copy_(master[i])
            objs.append(obj)
        sync_device()
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
        sync_device()
        elapsed = time.perf_counter() - start
        try:
            for i, obj in enumerate(objs):
                if obj is None:
                    raise RuntimeError(f"{self.name}: chunk {i} was not loaded")
                if not same_bytes(obj.tensor, master[i]):
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
    """Our backend, loaded by LMCache's own `storage_plugin_launcher` with a LocalCPUBackend, as
    `CreateStorageBackends` loads it: on "cpu" with the POSIX engine (host memory from the
    LocalCPUBackend), on "cuda:0" with its default engine and its own GPU buffer.

    `options`: plugin-scoped settings (`storage_plugin.gds.<key>`), e.g. use_direct_io=true.
    """

    def __init__(self, directory: str, loop: Loop, n: int, options: dict[str, str], dst_device: str,
                 label: str = "") -> None:
        self.name = SUBJECT + (f" [{label}]" if label else "")
        buffer_mib = n * CHUNK_BYTES // MIB + 64  # the N chunks a get allocates
        scoped = {"gds_path": directory, "cufile_buffer_size": buffer_mib,
                  **({"engine": "posix"} if dst_device == "cpu" else {}), **options}
        extra = {"storage_plugin.gds.module_path": "lmcache_plugin.backend",
                 "storage_plugin.gds.class_name": "GdsPluginBackend",
                 **{f"storage_plugin.gds.{k}": v for k, v in scoped.items()}}
        config = LMCacheEngineConfig.from_defaults(chunk_size=TOKENS, local_cpu=False, max_local_cpu_size=cpu_gib(n),
                                                   storage_plugins=["gds"], extra_config=extra)
        meta = metadata()
        self.cpu = LocalCPUBackend(config, meta, dst_device=dst_device)
        backends: OrderedDict[str, Any] = OrderedDict()
        storage_plugin_launcher(config, meta, loop.loop, self.cpu, dst_device, backends)
        if not backends:
            raise RuntimeError("LMCache did not load the gds plugin (see the log above)")
        self.backend = next(iter(backends.values()))
        self.allocator = self.backend.get_allocator_backend()
        self.copied_by_lmcache = self.allocator is not self.cpu
        settings = self.backend.settings
        self.engine = f"pygds {self.backend.engine}, {settings.io_threads} I/O threads, checksum {settings.checksum}" + (
            ", O_DIRECT" if settings.direct_io else "")

    def close(self) -> None:
        self.backend.close()
        self.cpu.close()


class LocalDisk(Contender):
    """LMCache's LocalDiskBackend over a LocalCPUBackend staging pool, as CreateStorageBackends
    builds them (4 disk I/O threads, its default). `options` go to `extra_config`."""

    def __init__(self, directory: str, loop: Loop, n: int, rounds: int, options: dict[str, Any], dst_device: str,
                 label: str = "") -> None:
        self.name = BASELINES["localdisk"] + (f" [{label}]" if label else "")
        # LocalDiskBackend.remove() deletes the file but never lowers `current_cache_size` (0.5.6),
        # so the quota must hold every round's chunks or later puts are dropped for "insufficient
        # evictable disk cache space". Only the accounting grows; the files are deleted.
        disk_gb = ((rounds + 1) * n * CHUNK_BYTES + 256 * MIB) / GIB
        config = LMCacheEngineConfig.from_defaults(chunk_size=TOKENS, local_cpu=False, max_local_cpu_size=cpu_gib(n),
                                                   local_disk=directory, max_local_disk_size=disk_gb,
                                                   extra_config=dict(options))
        meta = metadata()
        self.cpu = LocalCPUBackend(config, meta, dst_device=dst_device)
        self.backend = LocalDiskBackend(config, loop.loop, self.cpu, dst_device=dst_device, metadata=meta)
        self.allocator = self.backend.get_allocator_backend()
        self.engine = f"python open/write/readinto, {self.backend.disk_worker.executor.max_workers} I/O threads" + (
            ", O_DIRECT" if self.backend.use_odirect else "")

    def close(self) -> None:
        self.backend.close()
        self.cpu.close()


class Gds(Contender):
    """LMCache's GdsBackend, built as CreateStorageBackends builds it: `GdsBackend(config,
    metadata, loop, dst_device)` with `gds_path` and the same buffer size as the plugin's
    (`gds_buffer_size`, the name LMCache 0.5.6 reads), its default 4 I/O threads. It allocates
    from its own cuFile-registered GPU buffer. `options` go to `extra_config`.

    GdsBackend 0.5.6 cannot remove entries (`remove` raises NotImplementedError): the bench
    waits for its `.metadata` writes, forgets the keys and deletes the files itself."""

    copied_by_lmcache = True
    allocate_options: ClassVar[dict[str, Any]] = {"eviction": False}  # it logs a warning for every allocation asking for eviction

    def __init__(self, directory: str, loop: Loop, n: int, options: dict[str, Any], dst_device: str,
                 label: str = "") -> None:
        self.name = BASELINES["gds"] + (f" [{label}]" if label else "")
        self.loop = loop
        config = LMCacheEngineConfig.from_defaults(chunk_size=TOKENS, local_cpu=False, gds_path=directory,
                                                   gds_buffer_size=n * CHUNK_BYTES // MIB + 64,
                                                   extra_config=dict(options))
        self.backend = GdsBackend(config, metadata(), loop.loop, dst_device)
        self.allocator = self.backend.get_allocator_backend()
        pool = self.backend._thread_pool
        self.engine = (f"{'cufile-python' if self.backend.use_gds else 'POSIX fallback'}, "
                       f"{pool._max_workers if pool is not None else 0} I/O threads"
                       + (", O_DIRECT" if self.backend.use_direct_io else ""))

    def remove(self, keys: list[CacheEngineKey]) -> None:
        tasks = list(self.backend.save_metadata_tasks)

        async def drain() -> None:
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(drain(), self.loop.loop).result(timeout=60)
        for key in keys:
            path = self.backend._key_to_path(key)[0]
            with self.backend.hot_lock:
                self.backend.hot_cache.pop(key, None)
            for name in (path + ".metadata", path):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name)


class PlainPosix(Contender):
    """The ceiling: os.pwrite / os.preadv of whole chunks on 4 threads, one file per chunk, no
    framework, from LMCache memory objects in a buffer warmed like the others'. Both backends
    do at least this work, so neither can beat it by much. `direct`: open with O_DIRECT."""

    name = CEILING

    def __init__(self, directory: str, n: int, direct: bool = False) -> None:
        from lmcache.v1.memory_allocators.tensor_memory_allocator import TensorMemoryAllocator

        os.makedirs(directory, exist_ok=True)
        self.directory = directory
        self.flags = os.O_DIRECT if direct else 0
        size = 2 * n * CHUNK_BYTES + 64 * MIB
        raw = torch.empty(size + 4096, dtype=torch.uint8)
        start = -raw.data_ptr() % 4096  # the allocator aligns offsets; O_DIRECT needs aligned addresses
        self.allocator = TensorMemoryAllocator(raw[start:start + size], align_bytes=4096)
        self.pool = ThreadPoolExecutor(4, thread_name_prefix="plain-io")
        self.files: dict[CacheEngineKey, str] = {}
        self.engine = "os.pwrite/os.preadv, 4 threads, no header, no rename" + (", O_DIRECT" if direct else "")

    def _path(self, key: CacheEngineKey) -> str:
        return os.path.join(self.directory, f"{key.chunk_hash}.bin")

    def put(self, keys: list[CacheEngineKey], objs: list[MemoryObj], timeout: float = 300) -> float:
        def write(key: CacheEngineKey, obj: MemoryObj) -> None:
            fd = os.open(self._path(key), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | self.flags, 0o644)
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
            fd = os.open(self.files[key], os.O_RDONLY | self.flags)
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
                if not same_bytes(obj.tensor, master[i]):
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


def _label(options: dict[str, Any]) -> str:
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


DIRECT_OPTIONS = {"plugin": {"use_direct_io": "true"}, "localdisk": {"use_odirect": True},
                  "gds": {"use_direct_io": True}}
"""What each kind of contender is told for `--direct-io` (LocalDiskBackend tests its value for truth)."""


def contender_specs(device: str, baseline: str, variants: list[tuple[str, dict[str, str]]]
                    ) -> list[tuple[str, dict[str, str], str]]:
    """(kind, options, label) of every backend contender: the plugin with its defaults, on host
    memory also with `checksum: off` (its default "auto" checksums host memory only), the
    baseline, then the variants."""
    specs = [("plugin", {}, "")]
    if device == "cpu":
        specs.append(("plugin", {"checksum": "off"}, "checksum=off"))
    specs.append((baseline, {}, ""))
    specs += [(kind, options, _label(options)) for kind, options in variants]
    return specs


def build(kind: str, options: dict[str, Any], label: str, where: str, loop: Loop, chunks: int, runs: int,
          dst_device: str, direct_io: bool) -> Contender:
    if direct_io:
        options = {**DIRECT_OPTIONS[kind], **options}
    if kind == "plugin":
        return Plugin(where, loop, chunks, options, dst_device, label)
    if kind == "localdisk":
        return LocalDisk(where, loop, chunks, runs + 1, options, dst_device, label)
    return Gds(where, loop, chunks, options, dst_device, label)


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
              variants: list[tuple[str, dict[str, str]]] = (), ceiling: bool = True, device: str = "cpu",
              baseline: str = "localdisk", direct_io: bool = False) -> dict[str, Any]:
    root = tempfile.mkdtemp(prefix="bench_plugin.", dir=directory)
    loop = Loop()
    contenders: list[Contender] = []
    ceiling = ceiling and device == "cpu"  # bare syscalls cannot reach device memory
    try:
        facts = machine_facts(root)
        gen = torch.Generator().manual_seed(1234)
        master = torch.randint(-32768, 32767, (chunks, *SHAPE), dtype=torch.int16, generator=gen).view(DTYPE)
        for i, (kind, options, label) in enumerate(contender_specs(device, baseline, variants)):
            contenders.append(build(kind, options, label, os.path.join(root, f"{kind}{i}"), loop, chunks, runs,
                                    DESTINATIONS[device], direct_io))
        if ceiling:
            contenders.append(PlainPosix(os.path.join(root, "plain"), chunks, direct_io))
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
        references = [BASELINES[baseline]] + ([CEILING] if ceiling else [])
        result = {"device": device, "dst_device": DESTINATIONS[device], "baseline": BASELINES[baseline],
                  "direct_io": direct_io, "goals": goals(device, baseline, ceiling), "facts": facts,
                  "chunks": chunks, "chunk_bytes": CHUNK_BYTES, "runs": runs, "cold": cold,
                  "engines": {c.name: c.engine for c in contenders}, "samples": samples,
                  **summarize(samples, references)}
        result["verdicts"] = verdicts(result)
        return result
    finally:
        for c in contenders:
            c.close()
        loop.stop()
        shutil.rmtree(root, ignore_errors=True)


def summarize(samples: dict[str, list[dict[str, float]]], references: list[str]) -> dict[str, Any]:
    """Per contender and measure: median, min, max, and per reference (the baseline, the ceiling)
    the median of the per-run ratios to it (each run's pair measured minutes apart at most, so
    the machine's drift cancels better than in a ratio of medians)."""
    out: dict[str, Any] = {"medians": {}, "min": {}, "max": {}, "paired_ratio": {ref: {} for ref in references}}
    for name, rows in samples.items():
        for key, fn in (("medians", statistics.median), ("min", min), ("max", max)):
            out[key][name] = {m: fn(r[m] for r in rows) for m in rows[0]}
        for ref in references:
            out["paired_ratio"][ref][name] = {m: statistics.median(r[m] / b[m] for r, b in zip(rows, samples[ref]))
                                              for m in rows[0]}
    return out


def verdicts(result: dict[str, Any]) -> dict[str, bool]:
    """Per plugin contender: whether it reaches every goal in every measured goal column."""
    measures = [m for m in GOAL_MEASURES if m in result["medians"][SUBJECT]]
    return {name: all(result["paired_ratio"][ref][name][m] >= least
                      for ref, least in result["goals"].items() for m in measures)
            for name in result["medians"] if name.startswith(SUBJECT)}


def report(result: dict[str, Any], out: Callable[[str], None] = print) -> None:
    """The table (median, min-max, paired ratios to the baseline and the ceiling), the verdicts."""
    med, lo, hi, ratios = result["medians"], result["min"], result["max"], result["paired_ratio"]
    f = result["facts"]
    refs = list(ratios)
    width = max(len(n) for n in med) + 2
    out(f"{result['chunks']} x {result['chunk_bytes'] // MIB} MiB chunks, {result['runs']} runs, destination "
        f"{result['dst_device']}, {'O_DIRECT' if result['direct_io'] else 'buffered I/O'}, baseline "
        f"{result['baseline']}; GiB/s as median [min-max] (median per-run ratio to {' / to '.join(refs)})")
    out(f"{f['bench_dir']} on {f['disk']}; {f['nproc']} CPUs, {f['cpu']}, {f['memory_gib']} GiB, kernel "
        f"{f['kernel']}{', GPU ' + f['gpu'] if 'gpu' in f else ''}; load average "
        f"{f['loadavg_at_start'].split()[0]} -> {f['loadavg_end'][0]:.1f}")
    measures = list(med[result["baseline"]])
    cell = 22 + 7 * len(refs)
    out(f"{'':{width}}" + "".join(f"{m:>{cell}}" for m in measures))
    for name in med:
        out(f"{name:{width}}" + "".join(
            f"{med[name][m]:6.2f} [{lo[name][m]:5.2f}-{hi[name][m]:5.2f}] ("
            + "/".join(f"{ratios[ref][name][m]:4.2f}x" for ref in refs) + ")" for m in measures))
    for name, engine in result["engines"].items():
        out(f"  {name}: {engine}")
    goal = " and ".join(f">= {least}x {ref}" for ref, least in result["goals"].items())
    columns = ", ".join(m for m in GOAL_MEASURES if m in med[SUBJECT])
    for name, met in result["verdicts"].items():
        out(f"goal: {name}{' (default settings)' if name == SUBJECT else ''} {goal} in {columns}: "
            f"{'met' if met else 'NOT met'}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=sorted(DESTINATIONS), default="cpu",
                   help="LMCache's destination: cpu (host memory, the default) or cuda (cuda:0, needs torch with CUDA)")
    p.add_argument("--baseline", choices=sorted(BASELINES), default="localdisk",
                   help="LMCache backend to compare with: localdisk (LocalDiskBackend, the default) or gds "
                        "(GdsBackend; needs --device cuda, cufile-python and libcufile.so)")
    p.add_argument("--direct-io", action="store_true", help="every contender with O_DIRECT")
    p.add_argument("--chunks", type=int, default=32, help="chunks per run (32 MiB each; default 32 = 1 GiB)")
    p.add_argument("--runs", type=int, default=9, help="measured runs per contender (default 9; puts are noisy on VMs)")
    p.add_argument("--dir", default=tempfile.gettempdir(), help="directory to write in (default: the temp dir)")
    p.add_argument("--no-cold", action="store_true", help="skip the cold-cache gets")
    p.add_argument("--variant", action="append", default=[], type=parse_variant, metavar="KIND:K=V[,K=V]",
                   help="an extra contender: plugin:<plugin-scoped settings> or localdisk:<extra_config>, "
                        "e.g. plugin:io_threads=8 (repeatable)")
    p.add_argument("--no-ceiling", action="store_true", help="skip the plain POSIX ceiling row")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error(f"--device cuda: torch {torch.__version__} sees no usable CUDA device here "
                "(torch.cuda.is_available() is False); run it on a GPU machine with a CUDA build of torch, "
                "or use --device cpu")
    if args.baseline == "gds" and args.device != "cuda":
        p.error("--baseline gds needs --device cuda: LMCache's GdsBackend only serves CUDA destinations; "
                "use --baseline localdisk on CPU")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    result = run_bench(args.chunks, args.runs, os.path.abspath(args.dir), not args.no_cold, args.variant,
                       not args.no_ceiling, args.device, args.baseline, args.direct_io)
    report(result)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0 if result["verdicts"][SUBJECT] else 1


if __name__ == "__main__":
    sys.exit(main())
