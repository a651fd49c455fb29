"""KVStore with engine "cufile" on the real libcufile (stand-in CUDA driver on CI, a GPU elsewhere).

engine="cufile" (not "auto") makes pygds.File raise instead of falling back, so every put and
read here went through cuFile; device buffers are CUDA memory POSIX could not address directly.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from pygds.memory import DeviceBuffer

from lmcache_plugin.format import HEADER_SIZE, EntryHeader, pack_header
from lmcache_plugin.store import KVStore, StoreOptions


def rand(n: int, seed: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def device_with(data: bytes) -> DeviceBuffer:
    buf = DeviceBuffer(max(len(data), 1))
    buf.copy_from_host(bytearray(data))
    return buf


def device_bytes(buf: DeviceBuffer, n: int) -> bytes:
    out = bytearray(n)
    buf.copy_to_host(out, n)
    return bytes(out)


def u8(n: int) -> EntryHeader:
    return EntryHeader.single((n,), "U8", 1)


SIZES = [1, 4096, 65536 + 3, 1 << 20, (3 << 20) + 5]


@pytest.mark.parametrize("direct", [False, True], ids=["buffered", "O_DIRECT"])
def test_device_memory_round_trip_and_restart(tmp_path, direct):
    paths = [str(tmp_path / "a"), str(tmp_path / "b")]
    opts = dict(paths=paths, engine="cufile", direct_io=direct)
    store = KVStore(StoreOptions(device_id=1, **opts))
    blobs = {}
    for i, size in enumerate(SIZES):
        key, chunk_hash = f"m@1@0@{i:x}@bfloat16", 31337 + i
        blobs[key] = (chunk_hash, rand(size, i))
        assert store.put(key, chunk_hash, device_with(blobs[key][1]), u8(size))
        path = store.layout.data_path(paths[1], key, chunk_hash)
        # device memory under checksum "auto": the header names the key and carries no checksum
        named = EntryHeader.single((size,), "U8", 1, {"lmcache_version": "1", "key": key})
        assert Path(path).read_bytes() == pack_header(named) + blobs[key][1]
        dst = DeviceBuffer(size)
        assert store.get_into(key, chunk_hash, dst)
        assert device_bytes(dst, size) == blobs[key][1]
    store.close()

    again = KVStore(StoreOptions(device_id=0, **opts))
    try:
        assert again.wait_for_scan(30) and sorted(again.keys()) == sorted(blobs)
        for key, (chunk_hash, data) in blobs.items():
            dst = DeviceBuffer(len(data))
            assert again.get_into(key, chunk_hash, dst)
            assert device_bytes(dst, len(data)) == data
        assert again.stats().bytes_read == sum(len(d) for _, d in blobs.values())
    finally:
        again.close()


def test_host_buffers_and_submitted_puts(tmp_path):
    store = KVStore(StoreOptions(paths=[str(tmp_path)], engine="cufile", io_threads=2))
    try:
        futures = [
            store.submit_put(f"h@1@0@{i:x}@half", 900 + i, rand(200_000 + i, i), u8(200_000 + i))
            for i in range(8)
        ]
        assert all(f.result(60) for f in futures)
        for i in range(8):
            out = bytearray(200_000 + i)
            assert store.get_into(f"h@1@0@{i:x}@half", 900 + i, out) and bytes(out) == rand(200_000 + i, i)
    finally:
        store.close()


def test_truncated_entry_is_not_served_through_cufile(tmp_path):
    store = KVStore(StoreOptions(paths=[str(tmp_path)], engine="cufile"))
    try:
        data = rand(1 << 20, 5)
        assert store.put("t@1", 4444, device_with(data), u8(len(data)))
        info = store.lookup("t@1", 4444)
        Path(info.path).write_bytes(Path(info.path).read_bytes()[: HEADER_SIZE + 1000])
        dst = DeviceBuffer(len(data))
        assert not store.get_into("t@1", 4444, dst)
        assert store.stats().corrupt == 1 and store.lookup("t@1", 4444) is None
    finally:
        store.close()


def test_the_driver_stays_open_for_the_store(tmp_path):
    """The store holds a driver reference: files opened per put and per read do not reopen it
    (cuFileDriverOpen takes a large part of a second)."""
    log = os.environ.get("CUFILE_LOGFILE_PATH")
    if not log:
        pytest.skip("needs CUFILE_LOGFILE_PATH (the stand-in fixture sets it)")

    def opens() -> int:
        path = Path(log)
        return path.read_text(errors="replace").count("running in compatible mode") if path.exists() else 0

    before = opens()
    with KVStore(StoreOptions(paths=[str(tmp_path)], engine="cufile")) as store:
        for i in range(5):
            data = rand(10_000, i)
            assert store.put(f"d@1@0@{i:x}@half", 7000 + i, device_with(data), u8(len(data)))
            dst = DeviceBuffer(len(data))
            assert store.get_into(f"d@1@0@{i:x}@half", 7000 + i, dst) and device_bytes(dst, len(data)) == data
    assert opens() - before <= 1
