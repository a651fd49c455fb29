"""`GdsL2Adapter` (LMCache MP-mode L2) built by LMCache's own plugin factory on memory objects
carved from an L1 arena as LMCache's `bench l2` carves them: every interface method, concurrent
submits, LMCache's L2 eviction controller, a full disk, corrupt entries, capacity eviction, a
restart, bad `adapter_params`, and the MP key texts (`l2_names.py`)."""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import xxhash
from faults import incomplete, u8_header
from hypothesis import given, settings
from hypothesis import strategies as st
from lmcache.cli.commands.bench.l2_adapter_bench.data import (
    create_l1_memory_desc,
    make_aligned_tensor,
    make_memory_objects,
)
from lmcache.utils import CacheEngineKey
from lmcache.v1.distributed.api import ObjectKey
from lmcache.v1.distributed.config import EvictionConfig
from lmcache.v1.distributed.internal_api import L2AdapterListener
from lmcache.v1.distributed.l2_adapters import create_l2_adapter
from lmcache.v1.distributed.l2_adapters.plugin_l2_adapter import PluginL2AdapterConfig
from lmcache.v1.memory_management import MemoryFormat, MemoryObjMetadata, TensorMemoryObj
from lmcache.v1.distributed.storage_controllers.eviction_controller import (
    L2AdapterEvictionState,
    L2EvictionController,
)
from lmcache.v1.platform import consume_fd

from lmcache_plugin.entries import Entries
from lmcache_plugin.index import Index
from lmcache_plugin.l2_adapter import GdsL2Adapter, GdsL2AdapterConfig, L2ParamError, _mp
from lmcache_plugin.l2_names import MpKey, mp_key_text, parse_mp_key_text
from lmcache_plugin.store import KVStore, StoreOptions

SIZE = 64 << 10
ENTRY = SIZE + 4096  # disk bytes of one entry: its data file (header + data), no .metadata
RANK = ObjectKey.ComputeKVRank(1, 0, 1, 0)
TIMEOUT_S = 60.0


# -- helpers --------------------------------------------------------------------------------------
@pytest.fixture
def arena():
    """An L1 arena (4096-aligned, as `lmcache server` allocates it) and its `L1MemoryDesc`."""
    buf = make_aligned_tensor(16 << 20, 4096)
    return buf, create_l1_memory_desc(buf, align_bytes=4096)


def objects(buf: torch.Tensor, n: int, slot: int, *, random: bool = True) -> list:
    """`n` memory objects of SIZE bytes at `slot * n * SIZE` in the arena, filled with random bytes."""
    objs = make_memory_objects(buf, n, SIZE, slot * n * SIZE)
    if random:
        for obj in objs:
            obj.raw_data.copy_(torch.frombuffer(bytearray(os.urandom(SIZE)), dtype=torch.uint8))
    return objs


def keys(n: int, model: str = "org/model") -> list[ObjectKey]:
    return [ObjectKey(os.urandom(16), model, RANK) for _ in range(n)]


def make(paths: list[Path], desc, **params) -> GdsL2Adapter:
    """The adapter as LMCache's plugin factory builds it from the `--l2-adapter` JSON."""
    cfg = PluginL2AdapterConfig.from_dict({
        "module_path": "lmcache_plugin.l2_adapter", "class_name": "GdsL2Adapter",
        "adapter_params": {"paths": [str(p) for p in paths], **params}})
    adapter = create_l2_adapter(cfg, l1_memory_desc=desc)
    assert type(adapter) is GdsL2Adapter
    return adapter


def wait_fd(fd: int, timeout_s: float) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    if poller.poll(timeout_s * 1000):
        consume_fd(fd)
        return True
    return False


class Driver:
    """Submits and waits as LMCache's controllers do: on the event fds, results taken once."""

    def __init__(self, adapter: GdsL2Adapter) -> None:
        self.a = adapter
        self.stored: dict[int, int] = {}
        self.lock = threading.Lock()

    def store(self, ks: list[ObjectKey], objs: list) -> int:
        """The task's `L2StoreResult` (-1: failed, else bytes written)."""
        tid = self.a.submit_store_task(ks, objs)
        deadline = time.monotonic() + TIMEOUT_S
        while time.monotonic() < deadline:
            with self.lock:
                self.stored.update(self.a.pop_completed_store_tasks())
                if tid in self.stored:
                    return int(self.stored.pop(tid))
            wait_fd(self.a.get_store_event_fd(), 0.2)
        raise TimeoutError("store task did not complete")

    def _bits(self, tid: int, query, fd: int, n: int) -> list[bool]:
        deadline = time.monotonic() + TIMEOUT_S
        while time.monotonic() < deadline:
            bitmap = query(tid)
            if bitmap is not None:
                assert query(tid) is None  # a result is returned once
                hits = set(bitmap.get_indices_list())
                return [i in hits for i in range(n)]
            wait_fd(fd, 0.2)
        raise TimeoutError("task did not complete")

    def lookup(self, ks: list[ObjectKey]) -> list[bool]:
        tid = self.a.submit_lookup_and_lock_task(ks, {})
        return self._bits(tid, self.a.query_lookup_and_lock_result, self.a.get_lookup_and_lock_event_fd(), len(ks))

    def load(self, ks: list[ObjectKey], objs: list) -> list[bool]:
        tid = self.a.submit_load_task(ks, objs)
        return self._bits(tid, self.a.query_load_result, self.a.get_load_event_fd(), len(ks))


def data_files(root: Path) -> list[Path]:
    return sorted(root.rglob("*.kvcache.safetensors"))


def all_files(roots: list[Path]) -> list[Path]:
    return sorted(f for root in roots for f in root.rglob("*") if f.is_file())


def file_of(root: Path, key: ObjectKey) -> Path:
    (found,) = [p for p in data_files(root) if key.chunk_hash.hex() in p.name]
    return found


class Recorder(L2AdapterListener):
    def __init__(self) -> None:
        self.stored: list[ObjectKey] = []

    def on_l2_keys_stored(self, keys, sizes):
        self.stored.extend(keys)

    def on_l2_keys_accessed(self, keys):
        pass

    def on_l2_keys_deleted(self, keys):
        pass


# -- key texts ------------------------------------------------------------------------------------
_no_at = st.text(st.characters(blacklist_characters="@", blacklist_categories=("Cs",)), min_size=1, max_size=40)
_salt = st.text(st.characters(blacklist_characters="@/\\\x00", blacklist_categories=("Cs",)), max_size=128)
_mp_keys = st.builds(MpKey, st.binary(min_size=1, max_size=32), _no_at,
                     st.integers(-(1 << 40), 1 << 40), st.integers(0, 1 << 20), _salt)
# In-process models may hold anything, "@" included: also pieces of MP key texts.
_models = st.one_of(st.text(max_size=40), _mp_keys.map(mp_key_text), st.sampled_from(["m@mp", "m@mp@0x00000001", "a@1@2"]))


@settings(max_examples=300, deadline=None)
@given(key=_mp_keys)
def test_mp_key_texts_round_trip_and_are_no_in_process_key(key: MpKey) -> None:
    text = mp_key_text(key)
    assert parse_mp_key_text(text) == key
    assert ObjectKey(*parse_mp_key_text(text)) == ObjectKey(*key)
    with pytest.raises(ValueError):  # what LMCache's GdsBackend scan skips
        CacheEngineKey.from_string(text)


@settings(max_examples=300, deadline=None)
@given(model=_models, ws=st.integers(-5, 1 << 20), worker=st.integers(-5, 1 << 20),
       chunk=st.integers(-(1 << 64), 1 << 64), dtype=st.sampled_from([torch.bfloat16, torch.float16, torch.uint8]),
       tags=st.dictionaries(st.text(max_size=8), st.text(max_size=20), max_size=2),
       layered=st.booleans())
def test_in_process_key_texts_never_parse_as_mp_keys(model, ws, worker, chunk, dtype, tags, layered) -> None:
    key = CacheEngineKey(model, ws, worker, chunk, dtype, {f"lmcache.tag.{k}": v for k, v in tags.items()})
    texts = [key.to_string()] + ([key.split_layers(2)[1].to_string()] if layered else [])
    for text in texts:
        assert parse_mp_key_text(text) is None


def test_bad_key_fields_are_refused() -> None:
    with pytest.raises(ValueError, match="model_name"):
        mp_key_text(MpKey(b"\x01", "a@b", 0))
    with pytest.raises(ValueError, match="cache_salt"):
        mp_key_text(MpKey(b"\x01", "m", 0, 0, "x/y"))
    assert parse_mp_key_text("m@mp@0x1@g0@01") is None  # not the canonical "0x00000001"


# -- adapter_params --------------------------------------------------------------------------------
@pytest.mark.parametrize("params, key, value, fix", [
    ({"bogus": 1}, "bogus", 1, "remove it or use one of paths"),
    ({"paths": 7}, "paths", 7, '"paths": ['),
    ({"paths": []}, "paths", [], '"paths": ['),
    ({"max_capacity_gb": -1}, "max_capacity_gb", -1, "give the bound in GiB"),
    ({"max_capacity_gb": float("inf")}, "max_capacity_gb", float("inf"), "give the bound in GiB"),
    ({"max_capacity_gb": 1e-300}, "max_capacity_gb", 1e-300, "give the bound in GiB"),
    ({"engine": "gpu"}, "engine", "gpu", "auto, posix, cufile"),
    ({"direct_io": "yes"}, "direct_io", "yes", "true or false"),
    ({"io_threads": 0}, "io_threads", 0, "use e.g. 8"),
    ({"direct_io_min_kb": -1}, "direct_io_min_kb", -1, "0 to send every entry through O_DIRECT"),
    ({"checksum": "md5"}, "checksum", "md5", "auto, once, always, off"),
])
def test_bad_params_name_key_value_and_fix(tmp_path: Path, params, key, value, fix) -> None:
    full = {"paths": [str(tmp_path / "a")], **params}
    with pytest.raises(L2ParamError) as info:
        GdsL2Adapter(full)
    text = str(info.value)
    assert f"adapter_params.{key} = {value!r}" in text and "fix:" in text and fix in text


def test_duplicate_and_unwritable_paths_are_refused(tmp_path: Path) -> None:
    with pytest.raises(L2ParamError, match="listed twice"):
        GdsL2AdapterConfig.from_dict({"paths": [str(tmp_path / "a"), str(tmp_path / "b" / ".." / "a")]})
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(L2ParamError, match=r"paths = '.*file/l2': cannot write there \(Not a directory\); fix:"):
        GdsL2Adapter({"paths": [str(blocker / "l2")]})


def test_engine_choice_is_reported_and_cufile_without_gds_is_refused(tmp_path: Path, arena) -> None:
    _, desc = arena
    adapter = make([tmp_path / "a"], desc)
    try:
        status = adapter.report_status()
        assert status["engine"] == "posix" and status["engine_reason"] and not status["l1_registered"]
    finally:
        adapter.close()
    with pytest.raises(L2ParamError, match="adapter_params.engine = 'cufile': cuFile cannot register"):
        make([tmp_path / "b"], desc, engine="cufile")


# -- the interface ----------------------------------------------------------------------------------
def test_every_method_through_lmcache_factory(tmp_path: Path, arena) -> None:
    buf, desc = arena
    paths = [tmp_path / "p0", tmp_path / "p1", tmp_path / "p2"]
    adapter = make(paths, desc)
    drv = Driver(adapter)
    try:
        fds = {adapter.get_store_event_fd(), adapter.get_lookup_and_lock_event_fd(), adapter.get_load_event_fd()}
        assert len(fds) == 3
        ks, src = keys(24), objects(buf, 24, 0)
        assert drv.store(ks, src) == 24 * SIZE
        assert all(data_files(p) for p in paths)  # spread over every path
        for p in paths:  # one fan-out level, by the hash's first byte, all 256 made at start
            assert sorted(d.name for d in p.iterdir() if d.is_dir()) == [f"{i:02x}" for i in range(256)]
        assert all(file_of(p, k).parent.name == k.chunk_hash[:1].hex() for k in ks
                   for p in paths if any(k.chunk_hash.hex() in f.name for f in data_files(p)))
        assert all_files(paths) == sorted(f for p in paths for f in data_files(p))  # one file per entry
        missing = keys(1)
        assert drv.lookup(ks + missing) == [True] * 24 + [False]
        assert adapter.report_status()["locked_keys"] == 24
        dst = objects(buf, 24, 1, random=False)
        assert drv.load(ks, dst) == [True] * 24
        assert all(torch.equal(s.raw_data, d.raw_data) for s, d in zip(src, dst))
        adapter.submit_unlock(ks + missing)
        assert adapter.report_status()["locked_keys"] == 0
        usage = adapter.get_usage()
        assert usage.total_bytes_used == 24 * ENTRY and usage.total_capacity_bytes == 0
        assert usage.bytes_by_cache_salt == {"": 24 * ENTRY}
        assert drv.store(ks[:4], src[:4]) == 0  # already stored: success, nothing written
        assert adapter.get_usage().total_bytes_used == 24 * ENTRY
        assert drv.store([], []) == 0 and drv.load([], []) == [] and drv.lookup([]) == []
        with pytest.raises(ValueError, match="one object per key"):
            adapter.submit_store_task(ks[:2], src[:1])
        adapter.delete(ks[:4])
        assert drv.lookup(ks[:4]) == [False] * 4
        assert adapter.get_usage().total_bytes_used == 20 * ENTRY
        status = adapter.report_status()
        assert status["is_healthy"] and sum(p["entries"] for p in status["paths"]) == 20
    finally:
        adapter.close()
    assert not adapter.report_status()["is_healthy"]


def test_concurrent_submits(tmp_path: Path, arena) -> None:
    buf, desc = arena
    adapter = make([tmp_path / "a", tmp_path / "b"], desc, io_threads=4)
    drv = Driver(adapter)
    groups = [(keys(8), objects(buf, 8, g)) for g in range(6)]
    results: list = []
    try:
        def store(g):
            results.append(drv.store(*groups[g]))

        threads = [threading.Thread(target=store, args=(g,)) for g in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(TIMEOUT_S)
        assert results == [8 * SIZE] * 6
        loaded: dict[int, list] = {}

        def load(g):
            ks, src = groups[g]
            dst = objects(buf, 8, 6 + g, random=False)
            loaded[g] = [drv.load(ks, dst), all(torch.equal(s.raw_data, d.raw_data) for s, d in zip(src, dst))]

        threads = [threading.Thread(target=load, args=(g,)) for g in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(TIMEOUT_S)
        assert all(loaded[g] == [[True] * 8, True] for g in range(6))
    finally:
        adapter.close()


def test_lock_holds_entries_against_delete_and_eviction(tmp_path: Path, arena) -> None:
    buf, desc = arena
    adapter = make([tmp_path / "a"], desc, max_capacity_gb=3 * ENTRY / (1 << 30))
    drv = Driver(adapter)
    try:
        ks, src = keys(3), objects(buf, 3, 0)
        assert drv.store(ks, src) == 3 * SIZE
        assert drv.lookup(ks[:1]) == [True]
        adapter.delete(ks)  # LMCache's eviction: the locked key stays
        assert drv.lookup(ks) == [True, False, False]
        more, more_src = keys(2), objects(buf, 2, 2)
        for k, o in zip(more, more_src):  # the capacity bound evicts, never the locked entries
            assert drv.store([k], [o]) == SIZE
        assert drv.load(ks[:1], objects(buf, 1, 10, random=False)) == [True]
        adapter.submit_unlock(ks[:1] * 2)  # locked twice (two lookups)
        adapter.submit_unlock(keys(2))  # never locked: ignored
        adapter.delete(ks[:1])
        assert drv.lookup(ks[:1]) == [False]
    finally:
        adapter.close()


def slowed(monkeypatch, cls, name: str, seconds: float) -> None:
    """Make `cls.name` (a real method, still run) take `seconds` longer: it widens a race window
    to one a test hits every time."""
    real = getattr(cls, name)

    def slow(self, *args, **kwargs):
        time.sleep(seconds)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(cls, name, slow)


def test_a_locked_key_loads_while_a_store_of_it_runs(tmp_path: Path, arena, monkeypatch) -> None:
    """LMCache stores a key again whenever it is computed again: a store of a key already there
    takes no claim, so a load of the locked key meanwhile is served, not missed."""
    buf, desc = arena
    adapter = make([tmp_path / "a"], desc)
    drv = Driver(adapter)
    try:
        ks, src = keys(1), objects(buf, 1, 0)
        assert drv.store(ks, src) == SIZE
        assert drv.lookup(ks) == [True]
        slowed(monkeypatch, Entries, "on_disk", 0.5)  # as a slow stat on a network file system
        again = threading.Thread(target=drv.store, args=(ks, src))
        again.start()
        time.sleep(0.1)
        dst = objects(buf, 1, 1, random=False)
        assert drv.load(ks, dst) == [True]
        again.join()
        assert torch.equal(dst[0].raw_data, src[0].raw_data)
        adapter.submit_unlock(ks)
    finally:
        adapter.close()


def test_lookup_and_lock_racing_a_delete_never_reports_a_deleted_key_locked(tmp_path: Path, arena,
                                                                           monkeypatch) -> None:
    buf, desc = arena
    root = tmp_path / "a"
    adapter = make([root], desc)
    drv = Driver(adapter)
    try:
        ks, src = keys(1), objects(buf, 1, 0)
        assert drv.store(ks, src) == SIZE
        slowed(monkeypatch, Index, "pin", 0.3)  # between finding the entry and pinning it
        found: list = []
        lock = threading.Thread(target=lambda: found.append(drv.lookup(ks)))
        lock.start()
        time.sleep(0.1)
        adapter.delete(ks)  # not locked yet: LMCache's eviction may take it
        lock.join()
        assert found == [[False]] and not data_files(root) and adapter.report_status()["locked_keys"] == 0
    finally:
        adapter.close()


def test_corrupt_short_and_wrong_size_entries_are_misses(tmp_path: Path, arena) -> None:
    buf, desc = arena
    root = tmp_path / "a"
    adapter = make([root], desc)
    drv = Driver(adapter)
    try:
        ks, src = keys(3), objects(buf, 3, 0)
        assert drv.store(ks, src) == 3 * SIZE
        with open(file_of(root, ks[0]), "r+b") as f:  # one flipped bit in the data
            f.seek(4096 + 1000)
            byte = f.read(1)[0]
            f.seek(4096 + 1000)
            f.write(bytes([byte ^ 1]))
        os.truncate(file_of(root, ks[1]), 4096 + SIZE - 1)
        dst = objects(buf, 3, 1, random=False)
        assert drv.load(ks, dst) == [False, False, True]
        assert torch.equal(dst[2].raw_data, src[2].raw_data)
        short_key, short = keys(1), make_memory_objects(buf, 1, SIZE // 2, 8 << 20)
        assert drv.store(short_key, short) == SIZE // 2
        assert drv.load(short_key, objects(buf, 1, 2, random=False)) == [False]  # never a partial fill
        assert drv.load(ks[2:], make_memory_objects(buf, 1, SIZE // 2, 9 << 20)) == [False]
        assert drv.lookup(ks) == [False, False, True]
        adapter.submit_unlock(ks[2:])
        os.unlink(file_of(root, ks[2]))  # removed behind the adapter's back (another server)
        assert drv.load(ks[2:], objects(buf, 1, 3, random=False)) == [False]
        assert adapter.get_usage().total_bytes_used == SIZE // 2 + ENTRY - SIZE  # the short entry's alone
    finally:
        adapter.close()


def test_a_key_stored_again_at_another_size_is_replaced(tmp_path: Path, arena) -> None:
    """An entry of another size under a key would make every load of the new object miss, and the
    key would never be stored again: the store replaces it (a locked one fails the store)."""
    buf, desc = arena
    adapter = make([tmp_path / "a"], desc)
    drv = Driver(adapter)
    try:
        (key,) = keys(1)
        assert drv.store([key], make_memory_objects(buf, 1, SIZE // 2, 8 << 20)) == SIZE // 2
        (new,) = objects(buf, 1, 0)
        assert drv.store([key], [new]) == SIZE
        (dst,) = objects(buf, 1, 1, random=False)
        assert drv.load([key], [dst]) == [True] and torch.equal(dst.raw_data, new.raw_data)
        assert drv.lookup([key]) == [True]  # locked now: another size cannot replace it
        assert drv.store([key], make_memory_objects(buf, 1, SIZE // 2, 9 << 20)) == -1
        adapter.submit_unlock([key])
    finally:
        adapter.close()


def test_capacity_bound_evicts_lru_and_reports_deletions(tmp_path: Path, arena) -> None:
    buf, desc = arena
    root = tmp_path / "a"
    adapter = make([root], desc, max_capacity_gb=3 * ENTRY / (1 << 30))
    drv = Driver(adapter)
    try:
        ks, src = keys(5), objects(buf, 5, 0)
        for k, o in zip(ks, src):
            assert drv.store([k], [o]) == SIZE
        assert drv.lookup(ks) == [False, False, True, True, True]
        adapter.submit_unlock(ks)
        assert len(data_files(root)) == 3
        usage = adapter.get_usage()
        assert usage.total_bytes_used == 3 * ENTRY and usage.total_capacity_bytes == 3 * ENTRY
    finally:
        adapter.close()


def test_lmcache_l2_eviction_controller_deletes_through_the_adapter(tmp_path: Path, arena) -> None:
    buf, desc = arena
    root = tmp_path / "a"
    adapter = make([root], desc, max_capacity_gb=4 * ENTRY / (1 << 30))
    drv = Driver(adapter)
    state = L2AdapterEvictionState(0, adapter, EvictionConfig("LRU", trigger_watermark=0.5, eviction_ratio=0.5))
    controller = L2EvictionController([state])
    try:
        ks, src = keys(3), objects(buf, 3, 0)
        assert drv.store(ks, src) == 3 * SIZE
        assert drv.lookup(ks[:1]) == [True]  # locked: never deleted
        controller.start()
        deadline = time.monotonic() + TIMEOUT_S
        while adapter.get_usage().usage_fraction >= 0.5 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert adapter.get_usage().total_bytes_used == ENTRY
        assert [p.name for p in data_files(root)] == [file_of(root, ks[0]).name]
    finally:
        controller.stop()
        adapter.close()


def test_usage_counts_a_key_once_and_forgets_a_dropped_entry(tmp_path: Path, arena) -> None:
    """LMCache's view of the bytes held (its L2 eviction works from it): a key twice in one task
    is one entry; an entry dropped as damaged is no longer held."""
    buf, desc = arena
    root = tmp_path / "a"
    adapter = make([root], desc)
    drv = Driver(adapter)
    try:
        (k,), (a, b) = keys(1), objects(buf, 2, 0)
        b.raw_data.copy_(a.raw_data)
        assert drv.store([k, k], [a, b]) >= SIZE
        assert adapter.get_usage().total_bytes_used == ENTRY
        adapter.delete([k])
        assert adapter.get_usage().total_bytes_used == 0
        ks, src = keys(2), objects(buf, 2, 1)
        assert drv.store(ks, src) == 2 * SIZE
        with open(file_of(root, ks[0]), "r+b") as f:  # one data byte flipped
            f.seek(4096 + 7)
            byte = f.read(1)
            f.seek(4096 + 7)
            f.write(bytes([byte[0] ^ 1]))
        assert drv.load(ks, objects(buf, 2, 2, random=False)) == [False, True]
        assert adapter.get_usage().total_bytes_used == ENTRY
    finally:
        adapter.close()


def test_an_entry_of_another_size_or_dtype_is_never_served(tmp_path: Path, arena) -> None:
    """The header records the stored object's dtypes and shapes: an fp16 entry is not loaded
    into a bf16 object of the same size (a server with another KV dtype on the same paths), and
    one of another size in the key's own path does not hide the right one in another path."""
    buf, desc = arena
    p0, p1 = tmp_path / "p0", tmp_path / "p1"
    while True:  # a key whose home among [p0, p1] is p0
        (k,) = keys(1)
        if xxhash.xxh3_64_intdigest(mp_key_text(_mp(k)).encode()) % 2 == 0:
            break
    (full,) = objects(buf, 1, 0)
    (half,) = make_memory_objects(buf, 1, SIZE // 2, 2 * SIZE)
    for root, obj in ((p1, full), (p0, half)):
        alone = make([root], desc)
        try:
            assert Driver(alone).store([k], [obj]) == obj.get_size()
        finally:
            alone.close()
    adapter = make([p0, p1], desc)
    drv = Driver(adapter)
    try:
        (dst,) = objects(buf, 1, 3, random=False)
        assert drv.load([k], [dst]) == [True] and torch.equal(dst.raw_data, full.raw_data)
        (j,) = keys(1)
        fp16, bf16 = (typed(buf, offset, SIZE // 2, dtype) for offset, dtype in
                      ((4 * SIZE, torch.float16), (5 * SIZE, torch.bfloat16)))
        assert drv.store([j], [fp16]) == SIZE
        assert drv.load([j], [bf16]) == [False]
        assert drv.store([j], [bf16]) == SIZE  # a store of the other dtype replaces it
        assert drv.load([j], [typed(buf, 6 * SIZE, SIZE // 2, torch.bfloat16)]) == [True]
    finally:
        adapter.close()


def typed(buf: torch.Tensor, offset: int, n: int, dtype: torch.dtype):
    """A memory object of `n` values of `dtype` at `offset` in the arena, filled with random bytes."""
    size = n * dtype.itemsize
    raw = buf.view(-1)[offset:offset + size]
    raw.copy_(torch.frombuffer(bytearray(os.urandom(size)), dtype=torch.uint8))
    meta = MemoryObjMetadata(shape=torch.Size([n]), dtype=dtype, address=offset, phy_size=size,
                             fmt=MemoryFormat.KV_2LTD, ref_count=1)
    return TensorMemoryObj(raw_data=raw, metadata=meta, parent_allocator=None)


class Held(L2AdapterListener):
    """What LMCache's eviction policy believes the adapter holds: key -> bytes."""

    def __init__(self) -> None:
        self.held: dict[ObjectKey, int] = {}

    def on_l2_keys_stored(self, keys, sizes):
        self.held.update(zip(keys, sizes))

    def on_l2_keys_accessed(self, keys):
        pass

    def on_l2_keys_deleted(self, keys):
        for key in keys:
            self.held.pop(key, None)


def test_an_entry_evicted_before_its_task_ended_is_reported_deleted(tmp_path: Path, arena, monkeypatch) -> None:
    """A task's entries are reported when the task ends; one that a later task's capacity
    eviction took meanwhile must be reported deleted too, or LMCache counts bytes that are gone."""
    buf, desc = arena
    root = tmp_path / "a"
    adapter = make([root], desc, max_capacity_gb=2 * ENTRY / (1 << 30), io_threads=2)
    held = Held()
    adapter.register_listener(held)
    drv = Driver(adapter)
    (k1, k2, k3), (o1, o2, o3) = keys(3), objects(buf, 3, 0)
    real = GdsL2Adapter._finish_store
    finishing = threading.Event()

    def first_task_finishes_late(self, task):
        if k1 in task.keys:
            finishing.set()
            time.sleep(0.5)  # both entries are on disk; another task runs now
        return real(self, task)

    monkeypatch.setattr(GdsL2Adapter, "_finish_store", first_task_finishes_late)
    try:
        adapter._scan_thread.join(TIMEOUT_S)  # the start-up accounting (it would report k1 itself) is over
        first = threading.Thread(target=drv.store, args=([k1, k2], [o1, o2]))
        first.start()
        assert finishing.wait(TIMEOUT_S)
        assert drv.store([k3], [o3]) == SIZE
        first.join()
        on_disk = {k for k in (k1, k2, k3) if any(k.chunk_hash.hex() in p.name for p in data_files(root))}
        assert len(on_disk) == 2 and set(held.held) == on_disk
        assert adapter.get_usage().total_bytes_used == 2 * ENTRY
    finally:
        adapter.close()


class Failing(L2AdapterListener):
    """A listener that fails on every call."""

    def on_l2_keys_stored(self, keys, sizes):
        raise RuntimeError("listener failed")

    def on_l2_keys_accessed(self, keys):
        raise RuntimeError("listener failed")

    def on_l2_keys_deleted(self, keys):
        raise RuntimeError("listener failed")


def test_a_failing_listener_never_loses_a_result_and_a_closed_adapter_says_so(tmp_path: Path, arena) -> None:
    buf, desc = arena
    adapter = make([tmp_path / "a"], desc)
    adapter.register_listener(Failing())
    drv = Driver(adapter)
    try:
        ks, src = keys(2), objects(buf, 2, 0)
        assert drv.store(ks, src) == 2 * SIZE
        assert drv.load(ks, objects(buf, 2, 1, random=False)) == [True, True]
    finally:
        adapter.close()
    for call in (lambda: adapter.submit_store_task(ks, src), lambda: adapter.submit_load_task(ks, src),
                 lambda: adapter.submit_lookup_and_lock_task(ks, {}), lambda: adapter.delete(ks)):
        with pytest.raises(RuntimeError, match=r"after close\(\).* is closed"):
            call()
    adapter.submit_unlock(ks)  # never raises
    assert len(data_files(tmp_path / "a")) == 2


def test_restart_finds_and_counts_every_entry(tmp_path: Path, arena) -> None:
    buf, desc = arena
    paths = [tmp_path / "a", tmp_path / "b"]
    adapter = make(paths, desc)
    ks, src = keys(6, model="org/m"), objects(buf, 6, 0)
    try:
        assert Driver(adapter).store(ks, src) == 6 * SIZE
    finally:
        adapter.close()
    with KVStore(StoreOptions(paths=[str(paths[0])], scan=False)) as store:  # an in-process entry
        store.put("org/m@1@0@abc@bfloat16", 0xABC, bytearray(64), u8_header(64))
    adapter = make(paths, desc)
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while adapter.get_usage().total_bytes_used < 6 * ENTRY and time.monotonic() < deadline:
            time.sleep(0.1)
        assert adapter.get_usage().total_bytes_used == 6 * ENTRY  # ours only
        recorder = Recorder()
        adapter.register_listener(recorder)  # LMCache's eviction policy learns the entries held
        assert sorted(recorder.stored, key=lambda k: k.chunk_hash) == sorted(ks, key=lambda k: k.chunk_hash)
        dst = objects(buf, 6, 1, random=False)
        assert Driver(adapter).load(ks, dst) == [True] * 6
        assert all(torch.equal(s.raw_data, d.raw_data) for s, d in zip(src, dst))
        assert len([f for f in all_files(paths) if f.name.endswith(".metadata")]) == 1  # the in-process one
    finally:
        adapter.close()


DISK_FULL = r"""
import json, os, sys
from lmcache.cli.commands.bench.l2_adapter_bench.data import create_l1_memory_desc, make_aligned_tensor, make_memory_objects
from lmcache.v1.distributed.api import ObjectKey
from lmcache_plugin.l2_adapter import GdsL2Adapter
import test_l2_adapter as t
root = sys.argv[1]
buf = make_aligned_tensor(4 << 20, 4096)
adapter = GdsL2Adapter({"paths": [root]}, l1_memory_desc=create_l1_memory_desc(buf, align_bytes=4096))
drv = t.Driver(adapter)
ks = t.keys(4)
result = drv.store(ks, make_memory_objects(buf, 4, t.SIZE, 0))
hits = drv.lookup(ks)
usage = adapter.get_usage().total_bytes_used
adapter.close()
print("RESULT " + json.dumps({"store": result, "hits": hits, "usage": usage}))
"""


def test_disk_full_fails_the_store_task_and_leaves_nothing(tmp_path: Path) -> None:
    from faults.build import build_fault_shim
    from standin.build import CompilerMissing

    try:
        shim = build_fault_shim(tmp_path / "shim")
    except CompilerMissing as exc:
        pytest.skip(str(exc))
    root = tmp_path / "full"
    env = shim.env(root, errno="ENOSPC", ops="write")
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, "-c", DISK_FULL, str(root)], check=False, capture_output=True, text=True,
                          env=env, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.split("RESULT ", 1)[1])
    assert result == {"store": -1, "hits": [False] * 4, "usage": 0}
    assert "No space left on device" in done.stderr
    assert incomplete(root) == [] and data_files(root) == []
