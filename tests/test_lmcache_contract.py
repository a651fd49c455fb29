"""LMCache 0.5.6's contract for storage plugins, checked on the plugin with LMCache's own code.

The checks follow LMCache's own storage-backend tests (its source package,
`tests/v1/storage_backend/`): `test_storage_plugin.py` (a plugin is a `StoragePluginInterface`
loaded by `CreateStorageBackends` and driven through `StorageManager`), `test_path_sharder.py`
(the write path of a destination), `test_local_disk_backend.py` (batched gets: all missing, hits
and misses mixed, empty); and what a get may return: a memory object or None, never an exception.
"""

from __future__ import annotations

import pytest
import torch
from lmcache.v1.event_manager import EventManager
from lmcache.v1.memory_management import MemoryFormat
from lmcache.v1.storage_backend.abstract_backend import AllocatorBackendInterface, StoragePluginInterface
from lmcache.v1.storage_backend.path_sharder import PathSharder
from lmcache.v1.storage_backend.storage_manager import StorageManager
from lmcache_env import (
    create_backends,
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

BUF = {"cufile_buffer_size": 4}


def release(objs):
    for o in objs:
        if o is not None:
            o.ref_count_down()


# ---------------------------------------------------------------------------------------------
# the plugin interface


def test_the_plugin_is_a_storage_plugin_that_allocates():
    assert issubclass(GdsPluginBackend, StoragePluginInterface)
    assert issubclass(GdsPluginBackend, AllocatorBackendInterface)


def test_loaded_and_driven_through_lmcaches_storage_manager(tmp_path):
    """LMCache's test_storage_plugin: loaded by name, then contains, get, batched_contains and
    remove called through `StorageManager` reach it; the interface's constructor keeps what
    LMCache's launcher passes."""
    config = make_config(extra_config=plugin_extra(str(tmp_path / "c"), **BUF))
    manager = StorageManager(config, make_metadata(), EventManager())
    try:
        gds = manager.storage_backends["gds"]
        assert isinstance(gds, StoragePluginInterface) and isinstance(gds, AllocatorBackendInterface)
        assert gds.config is config and gds.loop is manager.loop
        assert gds.local_cpu_backend is manager.storage_backends["LocalCPUBackend"] and gds.dst_device == "cpu"
        keys = [make_key(h) for h in (12345, 12346)]
        assert not manager.contains(keys[0])
        obj = random_obj(manager.allocator_backend, 1)
        data = obj_bytes(obj)
        manager.batched_put(keys[:1], [obj])
        assert gds.store.flush(timeout=30)
        assert manager.contains(keys[0]) == "gds"
        got = manager.get(keys[0])
        assert got is not None and obj_bytes(got) == data
        release([got])
        hits, _ = manager.batched_contains(keys)
        assert hits == 1
        assert manager.remove(keys[0]) >= 1 and not gds.contains(keys[0])
    finally:
        manager.close()


@pytest.mark.parametrize("dst_device", ["cpu", "cpu:1", "cpu:5", "xpu:1", "xpu:2", "cuda:2", "cuda:5", "cuda"])
def test_write_path_is_lmcaches_path_sharder(tmp_path, loop, dst_device):
    """LMCache's PathSharder picks `paths[N % n]` for any "type:N" destination."""
    csv = ",".join(str(tmp_path / f"p{i}") for i in range(3))
    gds = launch_plugins(make_config(extra_config=plugin_extra(csv, **BUF)), make_metadata(), loop,
                         dst_device=dst_device)["gds"]
    try:
        assert gds.store.write_path == PathSharder(csv, strategy="by_gpu", dst_device=dst_device).selected
    finally:
        gds.close()


# ---------------------------------------------------------------------------------------------
# batched gets


@pytest.fixture
def gds(tmp_path, loop):
    backend = launch_plugins(make_config(extra_config=plugin_extra(str(tmp_path / "c"), **BUF)),
                             make_metadata(), loop, dst_device="cuda:0")["gds"]
    yield backend
    backend.close()


def put(backend, keys, seed=0):
    objs = [random_obj(backend, seed + i) for i in range(len(keys))]
    data = [obj_bytes(o) for o in objs]
    futures = backend.batched_submit_put_task(keys, objs)
    release(objs)
    assert [f.result(timeout=30) for f in futures] == [True] * len(keys)
    return data


def test_batched_get_keeps_each_result_in_its_position(gds):
    """hit, miss, hit, miss, hit: each position holds its own key's bytes or None."""
    hits = [make_key(h) for h in (41000001, 41000003, 41000005)]
    data = put(gds, hits)
    keys = [hits[0], make_key(41000002), hits[1], make_key(41000004), hits[2]]
    got = gds.batched_get_blocking(keys)
    try:
        assert [o is None for o in got] == [False, True, False, True, False]
        assert [obj_bytes(got[i]) for i in (0, 2, 4)] == data
    finally:
        release(got)


def test_batched_get_of_only_misses_and_of_nothing(gds):
    assert gds.batched_get_blocking([make_key(h) for h in (42000001, 42000002)]) == [None, None]
    assert gds.batched_get_blocking([]) == []
    assert gds.get_memory_allocator().total_allocated_size == 0


# ---------------------------------------------------------------------------------------------
# memory formats LMCache stores: served, or a miss, never an exception


@pytest.mark.parametrize("fmt", [MemoryFormat.BINARY, MemoryFormat.UNDEFINED])
def test_binary_and_undefined_entries_are_served_or_missed_by_every_get(tmp_path, loop, fmt):
    """LMCache stores memory objects of any format; its CPU allocator refuses BINARY and
    UNDEFINED (ValueError). A CPU destination misses them in every get; a destination with the
    plugin's own buffer serves them."""
    path = str(tmp_path / "c")
    writer = launch_plugins(make_config(extra_config=plugin_extra(path, **BUF)), make_metadata(), loop,
                            dst_device="cuda:0")["gds"]
    key, other = make_key(43000001), make_key(43000002)
    try:
        obj = writer.allocate(torch.Size([3000]), torch.uint8, fmt=fmt)
        obj.raw_tensor.view(torch.uint8)[:3000] = torch.randint(0, 256, (3000,), dtype=torch.uint8)
        data = obj_bytes(obj)
        normal = random_obj(writer, 7)
        normal_data = obj_bytes(normal)
        futures = writer.batched_submit_put_task([key, other], [obj, normal])
        release([obj, normal])
        assert [f.result(30) for f in futures] == [True, True]
        served = writer.get_blocking(key)
        assert served.get_memory_format() == fmt and obj_bytes(served) == data
        release([served])
    finally:
        writer.close()

    backends = create_backends(make_config(extra_config=plugin_extra(path, **BUF)), make_metadata(), loop)
    cpu_reader = backends["gds"]
    try:
        assert cpu_reader.get_allocator_backend() is backends["LocalCPUBackend"]
        assert cpu_reader.get_blocking(key) is None
        got = cpu_reader.batched_get_blocking([other, key, other])
        assert got[1] is None and obj_bytes(got[0]) == obj_bytes(got[2]) == normal_data
        release(got)
        assert cpu_reader.get_non_blocking(key) is None
        assert run(loop, cpu_reader.batched_get_non_blocking("r", [key, other])) == []
        prefix = run(loop, cpu_reader.batched_get_non_blocking("r", [other, key]))
        assert [obj_bytes(o) for o in prefix] == [normal_data]
        release(prefix)
    finally:
        for name in ("gds", "LocalCPUBackend"):
            backends[name].close()
