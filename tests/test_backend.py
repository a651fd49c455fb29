"""The plugin loaded by LMCache 0.5.6's own loader, on CPU: real configs (YAML file and
environment), real keys and memory objects with random data, byte-exact round trips, path
affinity, restart, shared paths, start-up errors as LMCache reports them, and close."""

from __future__ import annotations

import glob
import json
import logging
import os

import pytest
import torch
import yaml
from lmcache_env import (
    CHUNK,
    capture_logs,
    close_all,
    config_from_env,
    create_backends,
    launch_plugins,
    make_config,
    make_key,
    make_metadata,
    obj_bytes,
    patched_environ,
    plugin_extra,
    random_obj,
    registration,
    run,
)
from lmcache_env import loop, no_lmcache_environment  # noqa: F401 - fixtures, used by name

from lmcache_plugin.backend import GdsPluginBackend
from lmcache_plugin.config import check_config

BUF = {"cufile_buffer_size": 4}  # MiB: plenty for 2 KiB chunks


def put_all(backend, keys, seed=0):
    """Store random chunks under `keys`; returns their bytes. Frees the objects as LMCache does."""
    objs = [random_obj(backend, seed + i) for i in range(len(keys))]
    data = [obj_bytes(o) for o in objs]
    futures = backend.batched_submit_put_task(keys, objs)
    for o in objs:
        o.ref_count_down()
    assert [f.result(timeout=30) for f in futures] == [True] * len(keys)
    return data


def assert_served(backend, keys, data):
    got = backend.batched_get_blocking(keys)
    try:
        assert [o is not None and obj_bytes(o) == d for o, d in zip(got, data)] == [True] * len(keys)
    finally:
        for o in got:
            if o is not None:
                o.ref_count_down()


def data_files(path):
    return sorted(glob.glob(os.path.join(path, "**", "*.kvcache.safetensors"), recursive=True))


# ---------------------------------------------------------------------------------------------
# loaded by LMCache from a YAML file and from the environment


def test_loaded_from_yaml_file_by_create_storage_backends(tmp_path, loop):
    cache = tmp_path / "cache"
    f = tmp_path / "gds.yaml"
    f.write_text(yaml.safe_dump({
        "chunk_size": CHUNK, "local_cpu": False, "max_local_cpu_size": 0.02, "cufile_buffer_size": 4,
        "storage_plugins": ["gds"], "extra_config": plugin_extra(str(cache))}))
    env = {"LMCACHE_CONFIG_FILE": str(f)}
    with patched_environ(env):
        backends = create_backends(config_from_env(env), make_metadata(), loop)
    try:
        assert list(backends) == ["LocalCPUBackend", "gds"]
        gds = backends["gds"]
        assert isinstance(gds, GdsPluginBackend)
        assert gds.settings.buffer_size_mib == 4  # read, though a CPU destination needs no buffer of its own:
        cpu = backends["LocalCPUBackend"]  # it allocates from LMCache's CPU backend, as LocalDiskBackend does
        assert gds.get_allocator_backend() is cpu and gds.get_memory_allocator() is cpu.get_memory_allocator()
        keys = [make_key(h) for h in (123456789, -42, 7, 10**18 + 3)]
        data = put_all(gds, keys)
        assert all(gds.contains(k) for k in keys)
        assert_served(gds, keys, data)
        one = gds.get_blocking(keys[1])
        assert obj_bytes(one) == data[1] and one.get_shape() == torch.Size([2, 2, CHUNK, 16])
        one.ref_count_down()
    finally:
        close_all(backends)
    assert len(data_files(str(cache))) == 4


def test_storage_manager_hands_cpu_chunks_over_without_a_copy(tmp_path):
    """On a CPU destination the plugin allocates from LMCache's LocalCPUBackend, as LocalDiskBackend
    does: StorageManager.batched_put copies chunks only into an allocator backend other than its
    own, so ours get LMCache's chunks as they are; gets land in LocalCPUBackend memory too."""
    from lmcache.v1.event_manager import EventManager
    from lmcache.v1.memory_management import MemoryFormat
    from lmcache.v1.storage_backend.storage_manager import StorageManager

    config = make_config(extra_config=plugin_extra(str(tmp_path / "c"), **BUF))
    manager = StorageManager(config, make_metadata(), EventManager())
    try:
        gds, cpu = manager.storage_backends["gds"], manager.storage_backends["LocalCPUBackend"]
        assert gds.get_allocator_backend() is cpu is manager.allocator_backend
        assert gds.get_memory_allocator() is cpu.get_memory_allocator() and gds._buffer is None
        shape = torch.Size([2, 2, 4096, 64])  # 2 MiB of bf16
        obj = manager.allocate(shape, torch.bfloat16, fmt=MemoryFormat.KV_2LTD)
        obj.raw_tensor.view(torch.uint8)[:obj.get_size()] = torch.randint(0, 256, (obj.get_size(),),
                                                                           dtype=torch.uint8)
        data, key = obj_bytes(obj), make_key(31337)
        manager.batched_put([key], [obj])
        assert gds.store.flush(timeout=30) and gds.contains(key)
        (path,) = data_files(str(tmp_path / "c"))
        assert open(path, "rb").read()[4096:] == data
        got = gds.get_blocking(key)
        try:
            assert obj_bytes(got) == data and got.get_shape() == shape
            assert cpu.get_memory_allocator().memcheck()
        finally:
            got.ref_count_down()
    finally:
        manager.close()


def test_loaded_from_environment_only(tmp_path, loop):
    env = {"LMCACHE_CHUNK_SIZE": str(CHUNK), "LMCACHE_LOCAL_CPU": "False", "LMCACHE_MAX_LOCAL_CPU_SIZE": "0.02",
           "LMCACHE_CUFILE_BUFFER_SIZE": "2", "LMCACHE_STORAGE_PLUGINS": "gds",
           "LMCACHE_EXTRA_CONFIG": json.dumps({**plugin_extra(str(tmp_path / "env")), "use_cufile": False})}
    with patched_environ(env):
        backends = create_backends(config_from_env(env), make_metadata(), loop)
    try:
        gds = backends["gds"]
        assert gds.settings.buffer_size_mib == 2 and gds.settings.engine == "posix"
        keys = [make_key(h) for h in range(100, 105)]
        assert_served(gds, keys, put_all(gds, keys))
    finally:
        close_all(backends)


def test_documented_extra_config_variable_fails_loudly_and_the_fix_works(tmp_path, loop):
    """LMCACHE_EXTRA_CONFIG='{"use_cufile": false}' replaces the file's extra_config, dropping
    the registration: LMCache warns and runs without the plugin; check_config names the fix."""
    f = tmp_path / "gds.yaml"
    f.write_text(yaml.safe_dump({"chunk_size": CHUNK, "max_local_cpu_size": 0.02, "storage_plugins": ["gds"],
                                 "extra_config": plugin_extra(str(tmp_path / "c"), **BUF)}))
    env = {"LMCACHE_CONFIG_FILE": str(f), "LMCACHE_EXTRA_CONFIG": '{"use_cufile": false}'}
    with patched_environ(env), capture_logs() as logs:
        backends = create_backends(config_from_env(env), make_metadata(), loop)
    close_all(backends)
    assert "gds" not in backends
    assert any("Backend gds missing module_path or class_name" in m for m in logs.messages())
    problems = check_config(f, env)
    assert any("registration" in p and "include" in p for p in problems)
    # the fix named in the message: repeat the registration in the variable
    env["LMCACHE_EXTRA_CONFIG"] = json.dumps({**registration(), "use_cufile": False})
    assert not any("registration" in p for p in check_config(f, env))
    with patched_environ(env):
        backends = create_backends(config_from_env(env), make_metadata(), loop)
    try:
        gds = backends["gds"]
        # use_cufile from the variable, path and buffer size from the file LMCache no longer shows
        assert gds.settings.engine == "posix" and gds.settings.buffer_size_mib == 4
        assert gds.store.write_path == str(tmp_path / "c")
    finally:
        close_all(backends)


@pytest.mark.parametrize("key,value,words", [
    ("disk_io_threads", "many", "whole number"),
    ("cufile_buffer_size", -3, "at least 1"),
    ("engine", "nvme", "allowed"),
    ("gds_path", " , ", "empty"),
])
def test_bad_value_shows_in_lmcaches_failed_to_create_backend_line(tmp_path, loop, key, value, words):
    extra = plugin_extra(str(tmp_path / "c"), **BUF)
    extra[f"storage_plugin.gds.{key}"] = value
    with capture_logs() as logs:
        backends = create_backends(make_config(extra_config=extra), make_metadata(), loop)
    close_all(backends)
    assert "gds" not in backends
    failed = [m for m in logs.messages(logging.ERROR) if m.startswith("Failed to create backend gds")]
    assert len(failed) == 1
    assert f"{key}={value!r}" in failed[0]
    assert "Fix:" in failed[0] and words in failed[0]
    ours = [r for r in logs.records if r.name.startswith("lmcache_plugin") and r.levelno == logging.ERROR]
    assert len(ours) == 1 and "Fix:" in ours[0].getMessage()


def test_unwritable_path_fails_with_the_fix(tmp_path, loop):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with capture_logs() as logs:
        backends = create_backends(make_config(extra_config=plugin_extra(str(blocker / "c"), **BUF)),
                                   make_metadata(), loop)
    close_all(backends)
    failed = [m for m in logs.messages(logging.ERROR) if m.startswith("Failed to create backend gds")]
    assert failed and "cannot be created or written" in failed[0] and "Fix:" in failed[0]


def test_hipfile_where_it_cannot_run_is_a_clear_error(tmp_path, loop):
    """No AMD GPU here: a GPU worker asking for hipFile fails at start-up with the reason and the fix."""
    extra = {**plugin_extra(str(tmp_path / "c"), **BUF), "use_hipfile": True}
    with capture_logs() as logs:
        backends = launch_plugins(make_config(extra_config=extra), make_metadata(), loop, dst_device="cuda:0")
    close_all(backends)
    failed = [m for m in logs.messages(logging.ERROR) if m.startswith("Failed to create backend gds")]
    assert failed and "hipFile" in failed[0] and "not usable here" in failed[0] and "Fix:" in failed[0]


# ---------------------------------------------------------------------------------------------
# multi-path: affinity, start-up scan, shared paths


@pytest.mark.parametrize("npaths", [1, 2, 4])
def test_affinity_follows_dst_device(tmp_path, loop, npaths):
    """LMCache passes "cuda:<index>" on a GPU worker; the index picks paths[index % n]. (Without
    CUDA the buffer is host memory, with a warning; the affinity is the same.)"""
    paths = [str(tmp_path / f"nvme{i}") for i in range(npaths)]
    for device in range(6):
        config = make_config(extra_config=plugin_extra(",".join(paths), **BUF))
        with capture_logs() as logs:
            gds = launch_plugins(config, make_metadata(), loop, dst_device=f"cuda:{device}")["gds"]
        try:
            assert gds.device_id == device and gds.store.write_path == paths[device % npaths]
            assert any("torch has no CUDA" in m for m in logs.messages(logging.WARNING))
            put_all(gds, [make_key(1000 + device)], seed=device)
        finally:
            gds.close()
    for i, path in enumerate(paths):
        expected = [d for d in range(6) if d % npaths == i]
        assert len(data_files(path)) == len(expected)


def test_affinity_override_on_a_cpu_destination(tmp_path, loop):
    paths = ",".join(str(tmp_path / f"p{i}") for i in range(4))
    gds = launch_plugins(make_config(extra_config=plugin_extra(paths, device_id=6, **BUF)),
                         make_metadata(), loop, dst_device="cpu")["gds"]
    try:
        assert gds.store.write_path == str(tmp_path / "p2")
    finally:
        gds.close()


def test_a_relative_path_stays_the_same_directory_after_chdir(tmp_path, loop, monkeypatch):
    """A relative gds_path names the directory it named at start-up, whatever the working
    directory later; `~` is the home directory."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    gds = launch_plugins(make_config(extra_config=plugin_extra("rel/cache,~/cache", device_id=0, **BUF)),
                         make_metadata(), loop)["gds"]
    try:
        assert gds.store.paths == (str(tmp_path / "rel" / "cache"), str(tmp_path / "home" / "cache"))
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        monkeypatch.chdir(elsewhere)
        keys = [make_key(h) for h in (2468, 13579)]
        data = put_all(gds, keys)
        assert len(data_files(str(tmp_path / "rel" / "cache"))) == 2 and not os.listdir(elsewhere)
        assert_served(gds, keys, data)
    finally:
        gds.close()
    assert not (tmp_path / "~").exists()


def two_workers(tmp_path, loop, npaths=2):
    paths = ",".join(str(tmp_path / f"nvme{i}") for i in range(npaths))
    config = make_config(extra_config=plugin_extra(paths, **BUF))
    return [launch_plugins(config, make_metadata(), loop, dst_device=f"cuda:{d}")["gds"] for d in range(2)]


def test_restart_finds_entries_of_every_path(tmp_path, loop):
    workers = two_workers(tmp_path, loop)
    keys0 = [make_key(h) for h in (11, 1234, 98765)]
    keys1 = [make_key(h) for h in (-5, 424242)]
    data0, data1 = put_all(workers[0], keys0, 0), put_all(workers[1], keys1, 10)
    for w in workers:
        w.close()
    assert len(data_files(str(tmp_path / "nvme0"))) == 3 and len(data_files(str(tmp_path / "nvme1"))) == 2
    restarted = two_workers(tmp_path, loop)[0]  # device 0 only writes to nvme0, but reads all
    try:
        assert restarted.store.wait_for_scan(30)
        assert restarted.stats()["scan_entries"] == 5
        assert all(restarted.contains(k) for k in keys0 + keys1)
        assert_served(restarted, keys0 + keys1, data0 + data1)
    finally:
        restarted.close()


def test_a_miss_written_later_on_another_path_is_served(tmp_path, loop):
    first, second = two_workers(tmp_path, loop)
    try:
        first.store.wait_for_scan(30)
        key = make_key(555)
        assert first.get_blocking(key) is None
        data = put_all(second, [key], seed=3)  # another instance, another path, after start-up
        obj = first.get_blocking(key)  # not in first's index: found on disk
        assert obj is not None and obj_bytes(obj) == data[0]
        obj.ref_count_down()
        other = make_key(556)
        data = put_all(second, [other], seed=4)
        assert first.contains(other)
        assert_served(first, [other], data)
    finally:
        first.close()
        second.close()


def test_a_chunk_another_instance_removed_is_stored_again(tmp_path, loop):
    """A puts k, B indexes it (contains), A removes it: B's put of k writes it again, since the
    index alone does not prove that the file is still there."""
    path = str(tmp_path / "c")
    config = make_config(extra_config=plugin_extra(path, **BUF))
    a, b = (launch_plugins(config, make_metadata(), loop, dst_device="cuda:0")["gds"] for _ in range(2))
    try:
        key = make_key(515151)
        put_all(a, [key])
        assert b.contains(key)
        assert a.remove(key) and data_files(path) == []
        obj = random_obj(b, 9)
        data = obj_bytes(obj)
        future = b.submit_put_task(key, obj)
        obj.ref_count_down()
        assert future is not None and future.result(timeout=30) is True
        (file,) = data_files(path)
        with open(file, "rb") as f:
            assert f.read()[4096:] == data
        assert_served(a, [key], [data])
    finally:
        a.close()
        b.close()


def test_scheduler_role_starts_on_a_cpu_destination(tmp_path, loop):
    """LMCache gives the scheduler no CPU backend and dst_device "cpu"; contains() must work."""
    workers = two_workers(tmp_path, loop)
    keys = [make_key(h) for h in (31, 32)]
    put_all(workers[0], keys)
    for w in workers:
        w.close()
    config = make_config(extra_config=plugin_extra(f"{tmp_path}/nvme0,{tmp_path}/nvme1", **BUF))
    backends = create_backends(config, make_metadata(role="scheduler"), loop)
    try:
        assert list(backends) == ["gds"]
        scheduler = backends["gds"]
        assert scheduler.dst_device == "cpu" and scheduler.engine == "posix"
        assert scheduler.batched_contains(keys + [make_key(33)]) == 2
        assert run(loop, scheduler.batched_async_contains("req", keys)) == 2
    finally:
        close_all(backends)


# ---------------------------------------------------------------------------------------------
# close


def test_close_drains_every_submitted_write(tmp_path, loop):
    gds = launch_plugins(make_config(extra_config=plugin_extra(str(tmp_path / "c"), disk_io_threads=2, **BUF)),
                         make_metadata(), loop)["gds"]
    keys = [make_key(5000 + i) for i in range(40)]
    objs = [random_obj(gds, i) for i in range(40)]
    data = [obj_bytes(o) for o in objs]
    done = []
    gds.batched_submit_put_task(keys, objs, on_complete_callback=done.append)
    for o in objs:
        o.ref_count_down()
    gds.close()  # at once: nothing may be lost
    assert sorted(done, key=lambda k: k.chunk_hash) == keys
    files = data_files(str(tmp_path / "c"))
    assert len(files) == 40 and all(os.path.exists(p + ".metadata") for p in files)
    assert gds.get_memory_allocator().total_allocated_size == 0  # every held object released
    gds.close()  # twice is harmless
    reopened = launch_plugins(make_config(extra_config=plugin_extra(str(tmp_path / "c"), **BUF)),
                              make_metadata(), loop)["gds"]
    try:
        assert_served(reopened, keys, data)
    finally:
        reopened.close()


# ---------------------------------------------------------------------------------------------
# the examples

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")


@pytest.mark.parametrize("name", ["gds-backend.yaml", "gds-multipath.yaml"])
def test_example_yaml_is_clean_and_loads(tmp_path, loop, name):
    with open(os.path.join(EXAMPLES, name)) as f:
        text = f.read().replace("/mnt/", f"{tmp_path}/mnt/")
    f = tmp_path / name
    f.write_text(text.replace("max_local_cpu_size: 5", "max_local_cpu_size: 0.02")
                 .replace("cufile_buffer_size: 8192", "cufile_buffer_size: 4"))
    assert check_config(f, {"LMCACHE_CONFIG_FILE": str(f)}) == []
    env = {"LMCACHE_CONFIG_FILE": str(f)}
    with patched_environ(env), capture_logs() as logs:
        backends = create_backends(config_from_env(env), make_metadata(), loop)
    try:
        gds = backends["gds"]
        assert gds.settings.paths[0].startswith(f"{tmp_path}/mnt/") and gds.settings.buffer_size_mib == 4
        assert not [m for m in logs.messages(logging.WARNING) if "gds" in m.lower() and "plugin" in m.lower()]
        keys = [make_key(h) for h in (61, 62)]
        assert_served(gds, keys, put_all(gds, keys))
    finally:
        close_all(backends)


def test_drive_backend_example(tmp_path, capsys, monkeypatch):
    import runpy

    monkeypatch.setattr("sys.argv", ["drive_backend.py", "--path", f"{tmp_path}/a,{tmp_path}/b", "--chunks", "3",
                                     "--tokens", "16", "--device", "cpu"])
    runpy.run_path(os.path.join(EXAMPLES, "drive_backend.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "stored 3/3 chunks" in out and "loaded 3/3 chunks byte-exact" in out
    assert len(data_files(str(tmp_path / "a"))) == 3
