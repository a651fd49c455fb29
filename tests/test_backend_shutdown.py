"""Shutdown and memory pressure on a CPU destination, through LMCache 0.5.6's own objects: the
plugin allocates from LMCache's LocalCPUBackend there, so LMCache closing (and freeing) that
backend, or its pool being too small for an entry, must cost neither a chunk nor a hang."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading

import pytest
import torch
from lmcache.v1.event_manager import EventManager
from lmcache.v1.memory_management import MemoryFormat
from lmcache.v1.storage_backend.storage_manager import StorageManager
from lmcache_env import (
    capture_logs,
    create_backends,
    event_loop,
    make_config,
    make_key,
    make_metadata,
    obj_bytes,
    plugin_extra,
)
from lmcache_env import loop, no_lmcache_environment  # noqa: F401 - fixtures, used by name

from lmcache_plugin.format import EntryHeader
from lmcache_plugin.store import KVStore, StoreOptions

CHUNKS = 80
SHAPE = torch.Size([2, 2, 1024, 64])  # 512 KiB of bf16 per chunk: 40 MiB in all
TESTS = os.path.dirname(os.path.abspath(__file__))


def chunk_bytes(seed: int, size: int) -> torch.Tensor:
    """`size` random bytes, the same in every process for one seed."""
    return torch.randint(0, 256, (size,), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def fill(obj, seed: int) -> bytes:
    """`chunk_bytes(seed)` into a memory object; returns them."""
    raw = obj.raw_tensor.reshape(-1).view(torch.uint8)[:obj.get_size()]
    raw.copy_(chunk_bytes(seed, obj.get_size()))
    return raw.numpy().tobytes()


def shutdown_config(path: str, **scoped):
    return make_config(max_local_cpu_size=0.05, extra_config=plugin_extra(path, **scoped))


def in_child(call: str):
    """Evaluate `call` (on this module, named `t`) in a fresh Python process, so that a write
    from freed memory crashes that process, not the test run; returns its JSON result."""
    script = ("import json, os, sys; sys.path.insert(0, sys.argv[1]); import test_backend_shutdown as t; "
              f"print(json.dumps({call}), flush=True); os._exit(0)")  # os._exit: skip LMCache's atexit hooks
    env = {k: v for k, v in os.environ.items() if not k.startswith("LMCACHE_")}
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(TESTS), env.get("PYTHONPATH", "")])
    out = subprocess.run([sys.executable, "-c", script, TESTS], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"{call} exited with status {out.returncode}:\n{out.stderr[-3000:]}"
    return json.loads(out.stdout.strip().splitlines()[-1])


def put_then_close_storage_manager(path: str) -> list[str]:
    """CHUNKS chunks through `StorageManager.batched_put`, batch after batch as vLLM stores them,
    none waited for, then `close()` at once; returns the backends in the order LMCache closes them."""
    manager = StorageManager(shutdown_config(path, disk_io_threads=2), make_metadata(), EventManager())
    order = list(manager.storage_backends)
    try:
        for start in range(0, CHUNKS, 20):
            objs = [manager.allocate(SHAPE, torch.bfloat16, fmt=MemoryFormat.KV_2LTD) for _ in range(20)]
            for i, obj in enumerate(objs):
                fill(obj, start + i)
            manager.batched_put([make_key(7_000_000 + start + i) for i in range(20)], objs)
    finally:
        manager.close()
    return order


def put_then_close_in_order(path: str, cpu_first: bool) -> bool:
    """40 chunks submitted to the plugin, then LocalCPUBackend and plugin closed in the given
    order at once; returns whether the plugin then refuses work as closed."""
    with event_loop() as lp:
        backends = create_backends(shutdown_config(path, disk_io_threads=1), make_metadata(), lp)
        cpu, gds = backends["LocalCPUBackend"], backends["gds"]
        objs = [cpu.allocate(SHAPE, torch.bfloat16) for _ in range(40)]
        for i, obj in enumerate(objs):
            fill(obj, i)
        gds.batched_submit_put_task([make_key(8_000_000 + i) for i in range(40)], objs)
        for o in objs:
            o.ref_count_down()
        for backend in ((cpu, gds) if cpu_first else (gds, cpu)):
            backend.close()
        try:
            gds.contains(make_key(8_000_000))
        except RuntimeError as exc:
            return "closed" in str(exc)
        return False


def test_storage_manager_close_right_after_batched_put_loses_nothing(tmp_path):
    """`StorageManager.close()` closes the LocalCPUBackend first, which frees the pool the queued
    writes read from: after a restart every chunk submitted is served byte-exact."""
    path = str(tmp_path / "c")
    assert in_child(f"t.put_then_close_storage_manager({path!r})") == ["LocalCPUBackend", "gds"]
    reopened = StorageManager(shutdown_config(path), make_metadata(), EventManager())
    try:
        wrong = []
        for i in range(CHUNKS):
            obj = reopened.get(make_key(7_000_000 + i))
            if obj is None or obj_bytes(obj) != chunk_bytes(i, obj.get_size()).numpy().tobytes():
                wrong.append(i)
            if obj is not None:
                obj.ref_count_down()
        assert wrong == []
    finally:
        reopened.close()


@pytest.mark.parametrize("cpu_first", [True, False], ids=["cpu-backend-first", "plugin-first"])
def test_any_close_order_loses_nothing(tmp_path, cpu_first):
    """Whichever closes first, every chunk is on disk byte-exact, and the plugin does not outlive
    the memory it allocated from."""
    path = str(tmp_path / "c")
    assert in_child(f"t.put_then_close_in_order({path!r}, {cpu_first})") is True
    wrong = []
    with KVStore(StoreOptions(paths=[path], engine="posix")) as store:
        for i in range(40):
            key = make_key(8_000_000 + i)
            info = store.lookup(key.to_string(), key.chunk_hash)
            if info is None:
                wrong.append(i)
                continue
            out = torch.empty(info.header.nbytes, dtype=torch.uint8)
            store.read_into(info, out)
            if not torch.equal(out, chunk_bytes(i, info.header.nbytes)):
                wrong.append(i)
    assert wrong == []


def run_guarded(fn, timeout: float = 60.0):
    """fn() on a thread; fails the test (rather than hanging it) when it does not return."""
    result: list = []
    thread = threading.Thread(target=lambda: result.append(fn()), daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"still running after {timeout:.0f} s"
    return result[0]


def test_an_entry_larger_than_lmcaches_cpu_memory_is_a_bounded_miss(tmp_path, loop):
    """LocalCPUBackend's own busy loop waits forever for memory nothing frees; the plugin tries
    `max_alloc_attempts` times `allocation_attempt_delay_secs` apart, then misses with one warning."""
    path = str(tmp_path / "c")
    big_key, small_key = make_key(9_000_001), make_key(9_000_002)
    big = torch.randint(0, 256, (24 << 20,), dtype=torch.uint8)  # 24 MiB: more than the 20 MiB pool
    small = torch.randint(0, 256, (4096,), dtype=torch.uint8)
    with KVStore(StoreOptions(paths=[path], engine="posix")) as store:  # another instance wrote them
        for key, data in ((big_key, big), (small_key, small)):
            assert store.put(key.to_string(), key.chunk_hash, data, EntryHeader.single(data.shape, torch.uint8, 1))
    extra = plugin_extra(path, max_alloc_attempts=3, allocation_attempt_delay_secs=0.05)
    backends = create_backends(make_config(max_local_cpu_size=0.02, extra_config=extra), make_metadata(), loop)
    gds = backends["gds"]
    try:
        with capture_logs("lmcache_plugin") as logs:
            assert run_guarded(lambda: gds.get_blocking(big_key)) is None
            got = run_guarded(lambda: gds.batched_get_blocking([big_key, small_key, big_key]))
        warnings = logs.messages(logging.WARNING)
        assert len(warnings) == 1 and "max_local_cpu_size" in warnings[0]
        assert got[0] is None and got[2] is None
        assert got[1].raw_tensor.reshape(-1)[:4096].numpy().tobytes() == small.numpy().tobytes()
        got[1].ref_count_down()
        assert gds.stats()["alloc_failures"] == 3
    finally:
        for name in ("gds", "LocalCPUBackend"):
            backends[name].close()


def test_a_read_the_closing_pool_refuses_still_completes_and_leaks_nothing(tmp_path, loop):
    """`close()` shuts the read pool down while a get may be between allocating and submitting:
    the refused read runs inline instead of raising and losing its memory object."""
    backends = create_backends(make_config(extra_config=plugin_extra(str(tmp_path / "c"))), make_metadata(), loop)
    gds, cpu = backends["gds"], backends["LocalCPUBackend"]
    try:
        key = make_key(9_100_001)
        obj = cpu.allocate(SHAPE, torch.bfloat16)
        data = fill(obj, 1)
        assert gds.submit_put_task(key, obj).result(30)
        obj.ref_count_down()
        gds._read_pool.shutdown(wait=True)  # the moment inside close() before the pool is dropped
        (got,) = gds.batched_get_blocking([key])
        assert got is not None and obj_bytes(got) == data
        got.ref_count_down()
        assert cpu.get_memory_allocator().memcheck()
        assert cpu.get_memory_allocator().pin_allocator.total_allocated_size == 0
    finally:
        for name in ("gds", "LocalCPUBackend"):
            backends[name].close()
