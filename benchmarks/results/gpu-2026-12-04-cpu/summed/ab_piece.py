import os, sys, time, statistics, tempfile
sys.path.insert(0, os.getcwd())
from concurrent.futures import ThreadPoolExecutor
import torch
from lmcache_plugin.store import KVStore, StoreOptions
from lmcache_plugin.format import EntryHeader
from lmcache_plugin import summed_io
from pygds import pool
CH=32<<20; N=int(os.environ.get("N",16)); T=int(os.environ.get("T",4))
d=tempfile.mkdtemp()
src=[torch.randint(0,255,(CH,),dtype=torch.uint8) for _ in range(N)]
dst=[torch.empty(CH,dtype=torch.uint8) for _ in range(N)]
hdr=EntryHeader.single((CH,),"U8",1)
stores={m: KVStore(StoreOptions(paths=[f"{d}/{m}"],engine="posix",checksum=m, io_threads=0)) for m in ("auto","off")}
keys=[(f"m@1@0@{i:x}@bf16",i) for i in range(N)]
variants={"whole": ("auto", 1<<40, False), "1M": ("auto", 1<<20, False), "spread": ("auto", 1<<20, True), "off": ("off", 1<<20, False)}
res={k: [] for k in variants}; pres={k: [] for k in variants}
with ThreadPoolExecutor(T, initializer=pool.mark_io_thread) as ex:
    for r in range(int(os.environ.get("R",9))):
        for name,(mode,piece,spread) in variants.items():
            summed_io.PIECE_BYTES=piece; s=stores[mode]; s._spread = s._reader._spread = spread
            for k in keys: s.remove(*k)
            t=time.perf_counter(); assert all(ex.map(lambda i: s.put(*keys[i], src[i], hdr), range(N))); pres[name].append(N*CH/(time.perf_counter()-t)/2**30)
            t=time.perf_counter(); assert all(ex.map(lambda i: s.get_into(*keys[i], dst[i]), range(N))); res[name].append(N*CH/(time.perf_counter()-t)/2**30)
            assert torch.equal(dst[3], src[3])
print(f"cpus {os.cpu_count()} threads {T} chunks {N} spare_cores {summed_io.spare_cores(T)}")
for k in variants:
    print(f"{k:6s} put {statistics.median(pres[k]):6.2f} get {statistics.median(res[k]):6.2f}  get ratio to whole {statistics.median([a/b for a,b in zip(res[k],res['whole'])]):.2f}  put ratio {statistics.median([a/b for a,b in zip(pres[k],pres['whole'])]):.2f}")
