"""Parity with LMCache 0.5.6's GdsBackend, item by item, and what it gets wrong.

Each test names the item it proves. LMCache's own functions are used where the item is about
interoperating with it (header packing, path naming, its start-up scan).
"""

from __future__ import annotations

import asyncio
import glob
import inspect
import json
import logging
import os
import subprocess
import sys
import threading
import time
import types
import urllib.parse
from collections import OrderedDict

import pytest
import torch
from lmcache.v1.memory_management import MemoryFormat
from lmcache.v1.storage_backend.abstract_backend import AllocatorBackendInterface, StorageBackendInterface
from lmcache.v1.storage_backend.gds_backend import GdsBackend, pack_metadata, unpack_metadata
from lmcache_env import (
    CHUNK,
    capture_logs,
    chunk_shape,
    event_loop,
    launch_plugins,
    make_config,
    make_key,
    make_metadata,
    obj_bytes,
    plugin_extra,
    random_obj,
    run,
)
from lmcache_env import loop, no_lmcache_environment  # noqa: F401 - fixtures, used by name

from lmcache_plugin.backend import GdsPluginBackend
from lmcache_plugin.config import PluginSettings, plan_engine
from pygds import fsinfo

ENTRY = 4096 + 2 * 2 * CHUNK * 16 * 2 + 4096  # data file (header + 2 KiB) and its .metadata


@pytest.fixture
def start(tmp_path, loop):
    """start(**scoped settings) -> a plugin loaded by LMCache's launcher on `tmp_path/c`."""
    started = []

    def _start(paths=None, dst_device="cpu", **scoped):
        scoped.setdefault("cufile_buffer_size", 4)
        config = make_config(extra_config=plugin_extra(paths or str(tmp_path / "c"), **scoped))
        backend = launch_plugins(config, make_metadata(), loop, dst_device=dst_device)["gds"]
        started.append(backend)
        return backend

    yield _start
    for b in started:
        b.close()


def put(backend, keys, seed=0, callback=None):
    objs = [random_obj(backend, seed + i) for i in range(len(keys))]
    data = [obj_bytes(o) for o in objs]
    futures = backend.batched_submit_put_task(keys, objs, on_complete_callback=callback)
    for o in objs:
        o.ref_count_down()
    for f in futures:
        f.result(timeout=30)
    return data


def release(objs):
    for o in objs:
        if o is not None:
            o.ref_count_down()


def lmcache_paths(base, key, suffix=".kvcache.safetensors"):
    """LMCache's own `GdsBackend._key_to_path`, run on the two attributes it reads."""
    path, *_ = GdsBackend._key_to_path(types.SimpleNamespace(gds_path=base, data_suffix=suffix), key)
    return path


# ---------------------------------------------------------------------------------------------
# configuration (each key's spellings and bad values: tests/test_config.py)


def test_disk_io_threads_zero_disables_the_pool(start):
    b = start(disk_io_threads=0)
    assert b._read_pool is None and b.store._pool is None
    keys = [make_key(h) for h in (70001, 70002)]
    data = put(b, keys)
    got = b.batched_get_blocking(keys)
    assert [obj_bytes(o) for o in got] == data
    release(got)


def test_use_direct_io(start):
    b = start(use_direct_io="true")
    assert b.store.options.direct_io is True
    keys = [make_key(h) for h in (81234, 85678)]
    data = put(b, keys)
    got = b.batched_get_blocking(keys)
    assert [obj_bytes(o) for o in got] == data
    release(got)


def test_allocation_retries_apply_to_reads(start):
    b = start(cufile_buffer_size=1, max_alloc_attempts=100, allocation_attempt_delay_secs=0.02)
    key = make_key(90001)
    data = put(b, [key])
    hog = b.allocate(torch.Size([1 << 20]), torch.uint8, busy_loop=False)  # fills the buffer
    assert hog is not None
    assert b.get_non_blocking(key) is None  # busy_loop=False: one attempt, the buffer is full
    timer = threading.Timer(0.2, hog.ref_count_down)
    timer.start()
    obj = b.get_blocking(key)  # retries until the hog is freed
    timer.join()
    assert obj is not None and obj_bytes(obj) == data[0]
    obj.ref_count_down()


def test_a_full_buffer_warns_once_not_per_call(start):
    b = start(cufile_buffer_size=1, max_alloc_attempts=2, allocation_attempt_delay_secs=0)
    hog = b.allocate(torch.Size([1 << 20]), torch.uint8)
    with capture_logs("lmcache_plugin") as logs:
        for _ in range(5):
            assert b.allocate(chunk_shape(), torch.bfloat16) is None
    hog.ref_count_down()
    assert len(logs.messages(logging.WARNING)) == 1 and b.stats()["alloc_failures"] == 5


# ---------------------------------------------------------------------------------------------
# start-up


def test_tmpfs_and_overlay_use_posix_unless_cufile_is_asked_for():
    shm = "/dev/shm/pygds-plan-test"
    fstype = fsinfo.fs_type(shm)
    assert fstype == "tmpfs"  # the kernel's name, found by the real mount lookup
    auto = plan_engine(PluginSettings(paths=(shm,)), {shm: fstype}, device_memory=True)
    assert auto.engine == "posix" and not auto.warnings
    asked = plan_engine(PluginSettings(paths=(shm,), engine="cufile", engine_explicit=True),
                        {shm: fstype}, device_memory=True)
    assert asked.engine == "cufile" and asked.warnings
    over = plan_engine(PluginSettings(paths=("/x",)), {"/x": "overlay"}, device_memory=True)
    assert over.engine == "posix"


def test_weka_names_interoperate_with_lmcache(tmp_path):
    """On wekafs, data files are `<key>.weka1` (+ `.weka1.metadata`), as LMCache names them."""
    plan = plan_engine(PluginSettings(paths=(str(tmp_path),)), {str(tmp_path): "wekafs"}, device_memory=True)
    assert (plan.engine, plan.data_suffix) == ("cufile", ".weka1")
    from lmcache_plugin.store import KVStore, StoreOptions
    from lmcache_plugin.format import EntryHeader

    key = make_key(12345678)
    payload = torch.arange(256, dtype=torch.uint8)
    with KVStore(StoreOptions(paths=[str(tmp_path)], engine="posix", data_suffix=plan.data_suffix)) as store:
        assert store.put(key.to_string(), key.chunk_hash, payload, EntryHeader.single((256,), torch.uint8, 1))
    expected = lmcache_paths(str(tmp_path), key, suffix=".weka1")
    assert os.path.exists(expected) and os.path.exists(expected + ".metadata")


def test_scheduler_cpu_destination_where_lmcache_asserts(tmp_path, loop, start):
    config = make_config(gds_path=str(tmp_path / "builtin"))
    with pytest.raises(AssertionError):
        GdsBackend(config, make_metadata(role="scheduler"), loop, "cpu")
    b = start(dst_device="cpu")
    assert b.engine == "posix" and b._registered is None
    assert not b.contains(make_key(1))


def test_posix_mode_needs_neither_libcufile_nor_a_gpu(tmp_path):
    """A whole store/load cycle in POSIX mode never loads libcufile or libcuda."""
    script = f"""
import os, sys, torch
sys.path.insert(0, {os.path.dirname(__file__)!r})
from lmcache_env import *
with event_loop() as loop:
    b = launch_plugins(make_config(extra_config=plugin_extra({str(tmp_path / 'c')!r}, cufile_buffer_size=2)),
                       make_metadata(), loop, dst_device="cpu")["gds"]
    key = make_key(4242)
    obj = random_obj(b, 1)
    data = obj_bytes(obj)
    b.batched_submit_put_task([key], [obj])[0].result()
    obj.ref_count_down()
    got = b.get_blocking(key)
    assert obj_bytes(got) == data
    got.ref_count_down()
    b.close()
maps = open("/proc/self/maps").read()
print("libcufile" in maps, "libcuda" in maps, flush=True)
os._exit(0)  # skip LMCache's slow atexit hooks
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LMCACHE_")}
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(os.path.dirname(__file__)), env.get("PYTHONPATH", "")])
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split()[-2:] == ["False", "False"]


# ---------------------------------------------------------------------------------------------
# on-disk format, both generations, and publication order


def test_single_group_files_are_lmcaches_own(start, tmp_path):
    b = start()
    key = make_key(31415926)
    obj = random_obj(b, 5)
    tensor = obj.tensor.clone()
    put_data = obj_bytes(obj)
    b.batched_submit_put_task([key], [obj])[0].result()
    obj.ref_count_down()
    path = lmcache_paths(str(tmp_path / "c"), key)
    with open(path, "rb") as f:
        raw = f.read()
    assert raw[4096:] == put_data
    with open(path + ".metadata", "rb") as f:
        assert f.read() == raw[:4096]
    shape, dtype, nbytes, fmt, extra = unpack_metadata(raw[:4096])  # LMCache's own reader
    assert (shape, dtype, nbytes, fmt) == (tensor.shape, tensor.dtype, len(put_data), MemoryFormat.KV_2LTD)
    assert extra["lmcache_version"] == "1"
    lmcache_header = pack_metadata(tensor, fmt=MemoryFormat.KV_2LTD, lmcache_version="1")
    assert unpack_metadata(lmcache_header)[:4] == (shape, dtype, nbytes, fmt)


def test_lmcache_written_entries_are_served(start, tmp_path):
    base = str(tmp_path / "c")
    key = make_key(27182818)
    tensor = torch.randn(chunk_shape(), dtype=torch.float32).to(torch.bfloat16)
    path = lmcache_paths(base, key)
    os.makedirs(os.path.dirname(path))
    header = pack_metadata(tensor, fmt=MemoryFormat.KV_2LTD, lmcache_version="1")
    with open(path, "wb") as f:
        f.write(header + tensor.view(torch.uint8).numpy().tobytes())
    with open(path + ".metadata", "wb") as f:
        f.write(header)
    b = start()
    obj = b.get_blocking(key)
    assert obj is not None and torch.equal(obj.tensor, tensor) and obj.get_memory_format() == MemoryFormat.KV_2LTD
    obj.ref_count_down()


def test_lmcaches_scan_finds_our_entries(start, tmp_path):
    b = start()
    keys = [make_key(h) for h in (11112222, 33334444, 55556666)]
    put(b, keys)
    scanner = types.SimpleNamespace(data_suffix=".kvcache.safetensors", hot_lock=threading.Lock(),
                                    metadata_dirs=set(), hot_cache=OrderedDict(), _use_noatime=False)
    scanner._read_metadata = types.MethodType(GdsBackend._read_metadata, scanner)
    scanner._read_metadata_info = types.MethodType(GdsBackend._read_metadata_info, scanner)
    base = str(tmp_path / "c")
    for l1 in os.listdir(base):
        GdsBackend._scan_metadata_subdir(scanner, os.path.join(base, l1), l1)
    assert set(scanner.hot_cache) == set(keys)
    assert all(m.shape == chunk_shape() and m.dtype == torch.bfloat16 for m in scanner.hot_cache.values())


def test_multi_group_memory_objects_use_mains_header(start, tmp_path):
    b = start()
    shapes = [torch.Size([2, 2, CHUNK, 16]), torch.Size([1, 2, CHUNK, 8])]
    dtypes = [torch.bfloat16, torch.float32]
    obj = b.allocate(shapes, dtypes, fmt=MemoryFormat.KV_2LTD)
    raw = obj.raw_tensor.view(torch.uint8)[:obj.get_size()]
    raw.copy_(torch.randint(0, 256, raw.shape, dtype=torch.uint8))
    data = obj_bytes(obj)
    key = make_key(88889999)
    b.batched_submit_put_task([key], [obj])[0].result()
    obj.ref_count_down()
    with open(lmcache_paths(str(tmp_path / "c"), key) + ".metadata", "rb") as f:
        meta = json.loads(f.read()[8:].rstrip(b" "))["kvcache"]
    assert meta["shapes"] == [list(s) for s in shapes] and meta["dtypes"] == ["BF16", "F32"]
    assert meta["data_offsets"] == [0, len(data)] and meta["shape"] == list(shapes[0])
    got = b.get_blocking(key)
    assert got.get_shapes() == shapes and got.get_dtypes() == dtypes and obj_bytes(got) == data
    assert got.get_tensor(1).shape == shapes[1]
    assert got.get_tensor(1).view(torch.uint8).numpy().tobytes() == data[-2 * CHUNK * 8 * 4:]
    got.ref_count_down()


def test_callback_runs_after_data_and_metadata_are_in_place(start, tmp_path):
    b = start()
    seen = {}

    def callback(key):
        path = lmcache_paths(str(tmp_path / "c"), key)
        seen[key.chunk_hash] = (os.path.exists(path), os.path.exists(path + ".metadata"))

    put(b, [make_key(h) for h in (123401, 123402, 123403)], callback=callback)
    assert seen == {h: (True, True) for h in (123401, 123402, 123403)}


def test_missing_metadata_is_rebuilt(start, tmp_path):
    first = start()
    key = make_key(60606060)
    data = put(first, [key])
    first.close()
    meta = lmcache_paths(str(tmp_path / "c"), key) + ".metadata"
    os.unlink(meta)  # LMCache publishes data first: a crash can leave this
    second = start()
    second.store.wait_for_scan(30)
    assert second.contains(key)
    obj = second.get_blocking(key)
    assert obj_bytes(obj) == data[0]
    obj.ref_count_down()
    assert os.path.exists(meta)


def test_stale_temporary_files_are_cleaned_and_fresh_ones_kept(start, tmp_path):
    key = make_key(77778888)
    final = lmcache_paths(str(tmp_path / "c"), key)
    os.makedirs(os.path.dirname(final))
    stale = [final + ".tmp0badc0de", final + ".metadata.tmp0badc0de"]
    fresh = final + ".tmpfeedbeef"
    for p in stale + [fresh]:
        with open(p, "wb") as f:
            f.write(b"partial")
    old = time.time() - 7200
    for p in stale:
        os.utime(p, (old, old))
    b = start(tmp_max_age_secs=3600)
    b.store.wait_for_scan(30)
    assert [os.path.exists(p) for p in stale] == [False, False] and os.path.exists(fresh)
    assert not b.contains(key) and b.stats()["scan_stale_tmp_removed"] == 2


def test_long_keys_round_trip_without_oserror(start):
    b = start()
    key = make_key(12121212, model="org/" + "m" * 300, tags={"user": "x" * 100})
    assert len(urllib.parse.quote(key.to_string(), safe="")) > 255
    data = put(b, [key])
    obj = b.get_blocking(key)
    assert obj is not None and obj_bytes(obj) == data[0]
    obj.ref_count_down()


# ---------------------------------------------------------------------------------------------
# reads, writes and the interface


def test_header_is_checked_on_every_read(start, tmp_path):
    b = start()
    keys = [make_key(h) for h in (40000001, 40000002)]
    put(b, keys)
    assert b.contains(keys[0]) and b.contains(keys[1])
    truncated = lmcache_paths(str(tmp_path / "c"), keys[0])
    os.truncate(truncated, 4096 + 100)
    garbage = lmcache_paths(str(tmp_path / "c"), keys[1])
    with open(garbage, "r+b") as f:
        f.write(b"\xff" * 16)
    with capture_logs("lmcache_plugin") as logs:
        assert b.get_blocking(keys[0]) is None and b.get_blocking(keys[1]) is None
    assert not b.contains(keys[0]) or b.get_blocking(keys[0]) is None
    assert b.get_memory_allocator().total_allocated_size == 0
    assert b.stats()["corrupt"] >= 2 and len(logs.messages(logging.WARNING)) <= 2


def test_a_failed_read_fails_only_its_entry_and_leaks_nothing(start, tmp_path):
    b = start()
    keys = [make_key(h) for h in (50000001, 50000002, 50000003)]
    data = put(b, keys)
    os.truncate(lmcache_paths(str(tmp_path / "c"), keys[1]), 5000)
    got = b.batched_get_blocking(keys)
    assert got[1] is None and obj_bytes(got[0]) == data[0] and obj_bytes(got[2]) == data[2]
    release(got)
    assert b.get_memory_allocator().total_allocated_size == 0


def test_get_blocking_on_a_miss_looks_in_every_path(start, tmp_path):
    paths = f"{tmp_path}/a,{tmp_path}/b"
    reader = start(paths=paths, dst_device="cuda:0")
    reader.store.wait_for_scan(30)
    writer = start(paths=paths, dst_device="cuda:1")
    key = make_key(91919191)
    data = put(writer, [key])
    assert os.path.exists(lmcache_paths(f"{tmp_path}/b", key))
    obj = reader.get_blocking(key)  # LMCache's GdsBackend only probes disk in contains()
    assert obj is not None and obj_bytes(obj) == data[0]
    obj.ref_count_down()


def test_concurrent_puts_of_one_key_write_once(start):
    b = start()
    key = make_key(13131313)
    objs = [random_obj(b, i) for i in range(4)]
    barrier = threading.Barrier(4)

    def submit(obj):
        barrier.wait()
        futures = b.batched_submit_put_task([key], [obj])
        obj.ref_count_down()
        return futures

    threads = [threading.Thread(target=submit, args=(o,)) for o in objs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    b.store.flush(30)
    stats = b.stats()
    assert stats["puts"] == 1 and stats["bytes_written"] == objs[0].get_size()
    assert b.get_memory_allocator().total_allocated_size == 0


def test_remove_and_batched_remove_delete_files(start, tmp_path):
    b = start()
    keys = [make_key(h) for h in (20000001, 20000002, 20000003)]
    put(b, keys)
    assert b.remove(keys[0]) is True and b.remove(keys[0]) is False
    assert b.batched_remove(keys[1:]) == 2
    assert not any(b.contains(k) for k in keys)
    assert glob.glob(str(tmp_path / "c" / "**" / "*.kvcache.safetensors*"), recursive=True) == []


def test_pins_are_real_and_touch_cache_orders_eviction(start):
    b = start(gds_capacity_bytes=3 * ENTRY)
    a, bb, c, d, e = (make_key(h) for h in (30000001, 30000002, 30000003, 30000004, 30000005))
    for key in (a, bb, c):  # one after the other: a is the least recently used
        put(b, [key])
    assert b.pin(a) and b.store.is_pinned(a.to_string(), a.chunk_hash)
    put(b, [d])  # a is the least recently used but pinned: bb goes
    assert b.contains(a) and not b.contains(bb)
    assert b.unpin(a) and not b.unpin(a)
    # a lookup with pin=True, released as LMCache does, then touch_cache: a becomes the newest
    assert run(b.loop, b.batched_async_contains("req", [a], pin=True)) == 1
    assert b.unpin(a)
    b.touch_cache()
    put(b, [e])  # c is now the least recently used
    assert b.contains(a) and not b.contains(c) and b.contains(d) and b.contains(e)
    assert b.stats()["evictions"] == 2


def test_every_interface_method_is_implemented():
    """Every method whose LMCache default raises NotImplementedError is ours; the others
    (batched_contains, cancel_request) keep LMCache's working defaults."""
    checked = set()
    for iface in (StorageBackendInterface, AllocatorBackendInterface):
        for name, fn in inspect.getmembers(iface, inspect.isfunction):
            if name.startswith("_") or "raise NotImplementedError" not in inspect.getsource(fn):
                continue
            assert name in GdsPluginBackend.__dict__, name
            checked.add(name)
    assert {"get_non_blocking", "batched_get_non_blocking", "batched_async_contains", "touch_cache",
            "async_batched_submit_put_task", "calculate_chunk_budget", "remove"} <= checked
    assert "submit_put_task" in GdsPluginBackend.__dict__  # GdsBackend's single-key put


def test_every_interface_method_works(start, loop):
    b = start()
    k1, k2, k3 = (make_key(h) for h in (60000001, 60000002, 60000003))
    objs = [random_obj(b, i) for i in range(3)]
    data = [obj_bytes(o) for o in objs]
    assert b.submit_put_task(k1, objs[0]).result(30) is True
    assert b.submit_put_task(k1, objs[0]).result(30) is False  # on disk already: not written again
    assert b.stats()["puts"] == 1
    run(loop, b.async_batched_submit_put_task([k2, k3], objs[1:]))
    release(objs)
    assert not b.exists_in_put_tasks(k1)
    assert b.contains(k1, pin=True) and b.unpin(k1)
    assert b.batched_contains([k1, k2, make_key(1)]) == 2
    assert run(loop, b.batched_async_contains("r", [k1, k2, k3])) == 3
    future = b.get_non_blocking(k1)
    one = future.result(30)
    assert obj_bytes(one) == data[0]
    assert b.get_non_blocking(make_key(5)) is None
    got = run(loop, b.batched_get_non_blocking("r", [k1, k2, make_key(6), k3]))
    assert [obj_bytes(o) for o in got] == data[:2]  # the prefix up to the first miss
    release(got + [one])
    many = b.batched_allocate(chunk_shape(), torch.bfloat16, 3)
    assert len(many) == 3
    release(many)
    assert b.get_allocator_backend() is b and b.get_memory_allocator() is not None
    assert b.calculate_chunk_budget() == (4 << 20) // 4096
    # LMCache calls cancel_request when vLLM aborts a request: nothing the plugin holds belongs to
    # one request, so it keeps LMCache's no-op: an in-flight write, a pin and stored entries stay.
    pending = random_obj(b, 9)
    pending_data = obj_bytes(pending)
    k4 = make_key(60000004)
    future = b.submit_put_task(k4, pending)
    pending.ref_count_down()
    assert b.pin(k2)
    b.cancel_request("r")
    assert future.result(30) is True and b.store.is_pinned(k2.to_string(), k2.chunk_hash) and b.unpin(k2)
    kept = b.batched_get_blocking([k1, k2, k3, k4])
    assert [obj_bytes(o) for o in kept] == data + [pending_data]
    release(kept)
    b.touch_cache()
    assert b.clear() == 4 and not b.contains(k1)
    assert b.get_memory_allocator().total_allocated_size == 0
    assert b.initialize_allocator(b.config, b.metadata) is not None


def test_prefetch_runs_on_the_pool_without_blocking_the_loop(start, loop):
    b = start()
    keys = [make_key(71000000 + i) for i in range(8)]
    data = put(b, keys)

    async def prefetch_while_ticking():
        ticks = 0
        task = asyncio.ensure_future(b.batched_get_non_blocking("r", keys))
        while not task.done():
            ticks += 1
            await asyncio.sleep(0)
        return await task, ticks

    got, ticks = run(loop, prefetch_while_ticking())
    assert [obj_bytes(o) for o in got] == data and ticks > 0
    release(got)


# ---------------------------------------------------------------------------------------------
# observability


def test_no_warning_per_operation_and_counters(start):
    b = start()
    keys = [make_key(h) for h in range(99000000, 99000010)]
    with capture_logs("lmcache_plugin") as logs:
        put(b, keys)
        got = b.batched_get_blocking(keys + [make_key(1)])
        release(got)
        for k in keys:
            release([b.get_blocking(k)])
    assert logs.messages(logging.WARNING) == []
    s = b.stats()
    assert s["puts"] == 10 and s["hits"] == 20 and s["misses"] == 1
    assert s["bytes_written"] == 10 * 2048 and s["bytes_read"] == 20 * 2048
    assert s["scan_done"] and s["engine"] == "posix"
