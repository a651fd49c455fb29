"""Warm get of 32 MiB chunks from the page cache on 4 caller threads: read whole then hash, vs
block reads on pygds's pool with the caller hashing in order (xxh3 streaming)."""
import os, sys, time, statistics, tempfile, threading
from concurrent.futures import ThreadPoolExecutor
import xxhash, torch
sys.path.insert(0, os.getcwd())
from pygds import pool

CH = 32 << 20; N = int(sys.argv[1]) if len(sys.argv) > 1 else 8; BLK = 4 << 20
d = tempfile.mkdtemp(dir=os.environ.get("PIPE_DIR", "/tmp"))
src = torch.randint(0, 255, (CH,), dtype=torch.uint8)
paths = []
for i in range(N):
    p = f"{d}/c{i}"; open(p, "wb").write(src.numpy().tobytes()); paths.append(p)
dst = [torch.empty(CH, dtype=torch.uint8) for _ in range(N)]
want = xxhash.xxh3_64(src.numpy()).intdigest()

def mv(t): return memoryview(t.numpy())

def read_only(i):
    fd = os.open(paths[i], os.O_RDONLY); os.preadv(fd, [mv(dst[i])], 0); os.close(fd)

def whole(i):
    fd = os.open(paths[i], os.O_RDONLY); os.preadv(fd, [mv(dst[i])], 0); os.close(fd)
    assert xxhash.xxh3_64(mv(dst[i])).intdigest() == want

def fused(i):
    fd = os.open(paths[i], os.O_RDONLY); m = mv(dst[i]); h = xxhash.xxh3_64()
    for off in range(0, CH, 1 << 20):
        os.preadv(fd, [m[off:off + (1 << 20)]], off); h.update(m[off:off + (1 << 20)])
    os.close(fd); assert h.intdigest() == want

def piped(i):
    fd = os.open(paths[i], os.O_RDONLY); m = mv(dst[i]); h = xxhash.xxh3_64()
    futs = [pool.submit(os.preadv, fd, [m[off:off + BLK]], off) for off in range(BLK, CH, BLK)]
    os.preadv(fd, [m[:BLK]], 0); h.update(m[:BLK])
    for k, f in enumerate(futs):
        f.result(); off = (k + 1) * BLK; h.update(m[off:off + BLK])
    os.close(fd); assert h.intdigest() == want

def piped1(i):  # pool reads 1 MiB pieces ahead, caller hashes each in order
    fd = os.open(paths[i], os.O_RDONLY); m = mv(dst[i]); h = xxhash.xxh3_64(); P = 1 << 20
    futs = [pool.submit(os.preadv, fd, [m[off:off + P]], off) for off in range(P, CH, P)]
    os.preadv(fd, [m[:P]], 0); h.update(m[:P])
    for k, f in enumerate(futs):
        f.result(); off = (k + 1) * P; h.update(m[off:off + P])
    os.close(fd); assert h.intdigest() == want

def blocks(i):  # per-block digests hashed where read (a format change)
    fd = os.open(paths[i], os.O_RDONLY); m = mv(dst[i])
    def rb(off):
        os.preadv(fd, [m[off:off + BLK]], off); return xxhash.xxh3_64_intdigest(m[off:off + BLK])
    futs = [pool.submit(rb, off) for off in range(BLK, CH, BLK)]
    ds = [rb(0)] + [f.result() for f in futs]
    os.close(fd)

def run(fn, threads=4):
    with ThreadPoolExecutor(threads, initializer=pool.mark_io_thread) as ex:
        t = time.perf_counter(); list(ex.map(fn, range(N))); return N * CH / (time.perf_counter() - t) / 2**30

fns = {"read_only": read_only, "whole": whole, "fused1M": fused, "piped4M": piped, "piped1M": piped1, "blocks4M": blocks}
T = int(os.environ.get("T", 4))
res = {k: [] for k in fns}
for r in range(int(os.environ.get("ROUNDS", 7))):
    for k, f in fns.items():
        res[k].append(run(f, T))
print(f"cpus {os.cpu_count()} callers {T} chunks {N} pool threads {pool.num_threads()}")
for k, v in res.items():
    print(f"{k:10s} {statistics.median(v):6.2f} GiB/s  [{min(v):.2f}-{max(v):.2f}]")
