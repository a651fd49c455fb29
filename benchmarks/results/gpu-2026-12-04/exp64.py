"""Where do 64 MiB reads lose to KvikIO? Rotated rounds of several contenders, medians (GiB/s)."""
import os, sys, time, statistics, tempfile, threading, json
from concurrent.futures import ThreadPoolExecutor
sys.path.insert(0, os.getcwd())
import numpy as np
import pygds
from pygds.memory import DeviceBuffer
import kvikio, kvikio.defaults

MiB = 1 << 20
N = 64 * MiB
VOL = 1024 * MiB
REQ = 8
ROUNDS = int(os.environ.get("ROUNDS", "9"))
d = tempfile.mkdtemp(dir=os.environ.get("DIR", "/tmp"))
path = os.path.join(d, "r.bin")
blk = np.random.default_rng(0).integers(0, 256, 64 * MiB, dtype=np.uint8).tobytes()
with open(path, "wb") as f:
    for _ in range(VOL // len(blk)):
        f.write(blk)
with open(path, "rb") as f:
    while f.read(64 * MiB):
        pass
host = np.frombuffer(bytearray(N), dtype=np.uint8)
host[:] = 1
dev = DeviceBuffer(N)
dev.copy_from_host(bytes(N))
offsets = [(i * N) % VOL for i in range(REQ)]
fd = os.open(path, os.O_RDONLY)
pf = pygds.File(path, "r")
kf = kvikio.CuFile(path, "r")
ex4 = ThreadPoolExecutor(4)
list(ex4.map(lambda _: None, range(8)))
mv = memoryview(host)


def py4(buf_mv):
    q = N // 4
    futs = [ex4.submit(os.preadv, fd, [buf_mv[i * q:(i + 1) * q]], off_base + i * q) for i in range(4)]
    return futs


def run(name):
    global off_base
    if name.startswith("pygds"):
        _, mem, thr, ts = name.split(":")
        pygds.set_num_threads(int(thr)); pygds.set_task_size(int(ts) * MiB)
        obj = host if mem == "host" else dev
        for off in offsets:
            pf.read(obj, N, file_offset=off)
    elif name.startswith("kvikio"):
        _, mem, thr, ts = name.split(":")
        kvikio.defaults.set({"num_threads": int(thr), "task_size": int(ts) * MiB})
        obj = host if mem == "host" else dev
        for off in offsets:
            kf.pread(obj, N, off).get()
    elif name == "python4:host":
        for off in offsets:
            off_base = off
            for fu in py4(mv):
                fu.result()
    elif name == "python1:host":
        for off in offsets:
            os.preadv(fd, [mv], off)


names = ["pygds:host:4:4", "pygds:host:4:16", "pygds:host:8:4", "pygds:host:4:8", "kvikio:host:4:4",
         "kvikio:host:4:16", "python4:host", "python1:host",
         "pygds:device:4:4", "pygds:device:4:16", "pygds:device:8:4", "kvikio:device:4:4"]
times = {n: [] for n in names}
for n in names:
    run(n)  # warm-up
for r in range(ROUNDS):
    order = names[r % len(names):] + names[:r % len(names)]
    for n in order:
        t = time.perf_counter(); run(n); times[n].append(time.perf_counter() - t)
print(f"64 MiB reads, {REQ} per run, {ROUNDS} rounds, nproc {os.cpu_count()}, load {os.getloadavg()}")
out = {}
for n in names:
    rates = [REQ * N / t / 2**30 for t in times[n]]
    out[n] = statistics.median(rates)
    print(f"{n:22s} {statistics.median(rates):6.2f} GiB/s  [{min(rates):.2f}-{max(rates):.2f}]")

import torch
t = torch.empty(4096, dtype=torch.uint8, device="cuda")
import timeit
from pygds.memory import as_buffer
for expr in ["t.layout is torch.strided", "t.is_contiguous()", "t.is_conj()", "t.is_neg()", "t.is_cuda",
             "t.data_ptr()", "t.nbytes", "t.get_device()", "as_buffer(t)", "as_buffer(dev)"]:
    k = 100000
    print(f"{expr:30s} {timeit.timeit(expr, globals=globals(), number=k) / k * 1e6:.3f} us")
