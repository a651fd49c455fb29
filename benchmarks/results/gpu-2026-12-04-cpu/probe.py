"""Where the L2 adapter's 256 KiB loads lose time on a many-core machine: thread scaling of ours
and of the pure-Python floor, a profile of the single-threaded path, primitive costs, hash speed."""
import cProfile, io, os, pstats, statistics, sys, tempfile, threading, time, ctypes
sys.path.insert(0, os.path.join(os.getcwd(), "benchmarks"))
import torch, xxhash
from lmcache.cli.commands.bench.l2_adapter_bench.data import create_l1_memory_desc, make_aligned_tensor, make_memory_objects
from lmcache.v1.distributed.api import ObjectKey
from lmcache.v1.distributed.l2_adapters import create_l2_adapter
from lmcache.v1.distributed.l2_adapters.plugin_l2_adapter import PluginL2AdapterConfig
import logging; logging.getLogger("lmcache").setLevel(logging.WARNING)
from bench_l2_floor import Floor, wait_result, wait_stored
import pygds
from lmcache_plugin import l2_adapter as L2
from pathlib import Path

def p(*a): print(*a, flush=True)
p("nproc", os.cpu_count(), "python", sys.version.split()[0], "switchinterval", sys.getswitchinterval())
buf = bytearray(os.urandom(32 << 20)); mv = memoryview(buf)
t = time.perf_counter(); [xxhash.xxh3_64_intdigest(mv) for _ in range(10)]; dt = (time.perf_counter() - t) / 10
p(f"xxh3_64 32 MiB one thread: {32 / 1024 / dt:.1f} GiB/s")
for n in (4, 8):
    bufs = [bytearray(32 << 20) for _ in range(n)]
    def h(b): [xxhash.xxh3_64_intdigest(b) for _ in range(5)]
    ts = [threading.Thread(target=h, args=(b,)) for b in bufs]
    t = time.perf_counter(); [x.start() for x in ts]; [x.join() for x in ts]; dt = time.perf_counter() - t
    p(f"xxh3_64 32 MiB x5 on {n} threads: {n * 5 * 32 / 1024 / dt:.1f} GiB/s aggregate")

def scaling(SIZE, N):
    base = tempfile.mkdtemp(prefix="probe-", dir=os.environ.get("PROBE_DIR"))
    paths = [os.path.join(base, f"path{i}") for i in range(4)]
    arena = make_aligned_tensor(2 * N * SIZE, 4096)
    src = make_memory_objects(arena, N, SIZE, 0); dst = make_memory_objects(arena, N, SIZE, N * SIZE)
    for o in src: o.raw_data.copy_(torch.randint(0, 256, (SIZE,), dtype=torch.uint8))
    keys = [ObjectKey(os.urandom(16), "bench/model", ObjectKey.ComputeKVRank(1, 0, 1, 0)) for _ in range(N)]
    desc = create_l1_memory_desc(arena, align_bytes=4096)
    def adapter(threads):
        cfg = PluginL2AdapterConfig.from_dict({"module_path": "lmcache_plugin.l2_adapter", "class_name": "GdsL2Adapter",
                                               "adapter_params": {"paths": paths, "io_threads": threads}})
        a = create_l2_adapter(cfg, l1_memory_desc=desc)
        a._scan_thread.join()
        return a
    a = adapter(8); wait_stored(a, a.submit_store_task(keys, src)); a.close()
    files = sorted(str(x) for x in Path(base).rglob("*.kvcache.safetensors"))
    views = [memoryview((ctypes.c_char * SIZE).from_address(o.data_ptr)).cast("B") for o in dst]
    def med(fn, k=5):
        fn(); xs = []
        for _ in range(k):
            t = time.perf_counter(); fn(); xs.append(time.perf_counter() - t)
        return statistics.median(xs) / N * 1e6
    p(f"-- {SIZE >> 10} KiB x {N}")
    for threads in (1, 2, 4, 8, 16):
        a = adapter(threads)
        ours = med(lambda: wait_result(a, a.submit_load_task(keys, dst)))
        a.close()
        floor = med(Floor(files, views, threads).run)
        p(f"threads {threads:2d}: ours {ours:7.1f} us/key, floor {floor:7.1f} us/key")
    return adapter, keys, dst, files, med

scaling(4 << 20, 48)
SIZE, N = 256 << 10, 256
adapter, keys, dst, files, med = scaling(SIZE, N)
a = adapter(1)
def serial():
    for k, o in zip(keys, dst):
        assert a._read(k, o)
p(f"ours serial _read in the main thread: {med(serial):.1f} us/key")
pr = cProfile.Profile(); pr.enable(); serial(); pr.disable()
s = io.StringIO(); pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(22); p(s.getvalue()[:6000])
# primitives
def per(fn, n=2000):
    t = time.perf_counter()
    for _ in range(n): fn()
    return (time.perf_counter() - t) / n * 1e6
f0, o0, k0 = files[0], dst[0], keys[0]
p(f"os.open+close {per(lambda: os.close(os.open(f0, os.O_RDONLY))):.2f} us")
p(f"os.stat {per(lambda: os.stat(f0)):.2f} us")
p(f"pygds.File posix open+close {per(lambda: pygds.File(f0, 'r', engine='posix').close()):.2f} us")
p(f"obj.data_ptr {per(lambda: o0.data_ptr):.2f} us; get_size {per(lambda: o0.get_size()):.2f} us")
p(f"_header_for {per(lambda: L2._header_for(o0, SIZE)):.2f} us; _where {per(lambda: a._where(k0)):.2f} us")
p(f"pygds.Pointer {per(lambda: pygds.Pointer(o0.data_ptr, SIZE, kind='host')):.2f} us")
st = a._stores[0]
text, fan, order = a._where(k0); st = a._stores[order[0]]
p(f"store.lookup {per(lambda: st.lookup(text, fan)):.2f} us")
info = st.lookup(text, fan); ptr = pygds.Pointer(o0.data_ptr, SIZE, kind='host')
p(f"store.read_into {per(lambda: st.read_into(info, ptr), 500):.2f} us")
a.close()
