"""KVStore on real files with random data: round trips, multi-path, corruption, capacity,
faults, concurrency (threads and processes) and a scan that does not block serving."""

from __future__ import annotations

import ctypes
import json
import logging
import mmap
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from lmcache_plugin.format import HEADER_SIZE, CorruptEntryError, EntryHeader, checksum_of, pack_header
from lmcache_plugin.layout import Layout, metadata_path
from lmcache_plugin.snapshot import SNAPSHOT_DIR
from lmcache_plugin.store import EntryGoneError, KVStore, StoreOptions

REPO = Path(__file__).resolve().parents[1]


def rand_bytes(n: int, seed: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def rand_tensor(shape, dtype, seed: int) -> torch.Tensor:
    if 0 in shape:
        return torch.empty(shape, dtype=dtype)
    raw = rand_bytes(int(np.prod(shape)) * torch.empty(0, dtype=dtype).element_size(), seed)
    flat = torch.tensor(np.frombuffer(raw, np.uint8).copy(), dtype=torch.uint8)
    return flat.view(dtype).reshape(shape)


def as_bytes(t: torch.Tensor) -> bytes:
    if t.numel() == 0:
        return b""
    return t.contiguous().view(torch.uint8).numpy().tobytes()


def key(i: int, model: str = "org/model") -> tuple[str, int]:
    chunk_hash = i * 7919 + 123457
    return f"{model}@1@0@{chunk_hash:x}@bfloat16", chunk_hash


def u8(n: int) -> EntryHeader:
    return EntryHeader.single((n,), "U8", 1)


def as_stored(header: EntryHeader, key_text: str, data: bytes) -> EntryHeader:
    """`header` as the store writes it for host data: naming the key, with the data's checksum."""
    extra = {**header.extra, "key": key_text, "checksum": checksum_of([data])}
    return EntryHeader(header.shapes, header.dtypes, header.nbytes, header.fmt, extra, header.multi_group)


def files_under(root) -> list[str]:
    """The entry files under `root` (the index snapshot, a hint about them, left out)."""
    return sorted(str(p.relative_to(root)) for p in Path(root).rglob("*")
                  if p.is_file() and SNAPSHOT_DIR not in p.relative_to(root).parts)


# -- round trips --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "dtype", [torch.bfloat16, torch.float16, torch.float32, torch.int64, torch.uint8, torch.float8_e4m3fn]
)
def test_tensor_round_trip_byte_exact(tmp_path, stores, dtype):
    store = stores([str(tmp_path)])
    for i, shape in enumerate([(2, 3, 16, 8), (1,), (0, 4), (256, 2, 33)]):
        k, h = key(i)
        t = rand_tensor(shape, dtype, seed=i)
        assert store.put(k, h, t, EntryHeader.for_tensor(t, 1))
        info = store.lookup(k, h)
        assert info.header == as_stored(EntryHeader.for_tensor(t, 1), k, as_bytes(t))
        assert info.size == HEADER_SIZE + t.nbytes
        out = torch.empty(shape, dtype=dtype)
        assert store.read_into(info, out) == info.header
        assert as_bytes(out) == as_bytes(t)


def test_bytes_and_numpy_round_trip_and_file_image(tmp_path, stores):
    store = stores([str(tmp_path)])
    data = rand_bytes(100_003, 1)
    for i, src in enumerate([data, bytearray(data), memoryview(data), np.frombuffer(data, np.uint8)]):
        k, h = key(i)
        assert store.put(k, h, src, u8(len(data)))
        out = np.zeros(len(data), np.uint8)
        assert store.get_into(k, h, out) and out.tobytes() == data
        out2 = bytearray(len(data) + 10)  # a larger destination gets the data at its start
        assert store.get_into(k, h, out2) and bytes(out2[: len(data)]) == data
        path = store.layout.data_path(str(tmp_path), k, h)
        header = pack_header(as_stored(u8(len(data)), k, data))
        assert Path(path).read_bytes() == header + data
        assert Path(metadata_path(path)).read_bytes() == header
    assert not [f for f in files_under(tmp_path) if ".tmp" in f]


def test_direct_io_round_trip(tmp_path, stores):
    probe = tmp_path / "probe"
    try:
        os.close(os.open(probe, os.O_CREAT | os.O_WRONLY | os.O_DIRECT, 0o644))
    except OSError as exc:
        pytest.skip(f"the temporary directory's file system refuses O_DIRECT: {exc}")
    store = stores([str(tmp_path / "c")], direct_io=True)
    for i, n in enumerate([1, 4096, 100_001, (2 << 20) + 3]):
        data = rand_bytes(n, i)
        assert store.put(*key(i), data, u8(n))
        out = bytearray(n)
        assert store.get_into(*key(i), out) and bytes(out) == data
        path = store.layout.data_path(str(tmp_path / "c"), *key(i))
        assert Path(path).read_bytes() == pack_header(as_stored(u8(n), key(i)[0], data)) + data


def cached_pages(path: str) -> int:
    """How many of the file's pages are in the page cache (`mincore` on a mapping of it)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    size = os.path.getsize(path)
    vec = (ctypes.c_ubyte * -(-size // mmap.PAGESIZE))()
    with open(path, "r+b") as f:
        mm = mmap.mmap(f.fileno(), size)
        try:
            start = (ctypes.c_ubyte * 1).from_buffer(mm)
            rc = libc.mincore(ctypes.addressof(start), size, vec)
            del start
        finally:
            mm.close()
    assert rc == 0, os.strerror(ctypes.get_errno())
    return sum(v & 1 for v in vec)


def drop_cached(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def test_direct_io_min_bytes_sends_small_entries_through_the_page_cache(tmp_path, stores):
    probe = tmp_path / "probe"
    try:
        os.close(os.open(probe, os.O_CREAT | os.O_WRONLY | os.O_DIRECT, 0o644))
    except OSError as exc:
        pytest.skip(f"the temporary directory's file system refuses O_DIRECT: {exc}")
    store = stores([str(tmp_path / "c")], direct_io=True, direct_io_min_bytes=64 << 10)
    sizes = {"small": 16 << 10, "large": 1 << 20}
    for i, n in enumerate(sizes.values()):
        assert store.put(*key(i), rand_bytes(n, i), u8(n))
    paths = {name: store.layout.data_path(str(tmp_path / "c"), *key(i)) for i, name in enumerate(sizes)}
    pages = {name: (HEADER_SIZE + n) // mmap.PAGESIZE for name, n in sizes.items()}
    assert cached_pages(paths["small"]) == pages["small"]  # written through the page cache
    assert cached_pages(paths["large"]) <= HEADER_SIZE // mmap.PAGESIZE  # only the buffered header
    for i, name in enumerate(sizes):
        drop_cached(paths[name])
        out = bytearray(sizes[name])
        assert store.get_into(*key(i), out) and bytes(out) == rand_bytes(sizes[name], i)
    assert cached_pages(paths["small"]) == pages["small"]  # read through the page cache
    assert cached_pages(paths["large"]) < pages["large"] // 4  # the header's read-ahead at most


def test_multi_group_entry_round_trip(tmp_path, stores):
    store = stores([str(tmp_path)])
    a, b = rand_tensor((4, 8), torch.bfloat16, 1), rand_tensor((3,), torch.int64, 2)
    header = EntryHeader.groups([a.shape, b.shape], [a.dtype, b.dtype], 1)
    blob = as_bytes(a) + as_bytes(b)
    k, h = key(5)
    assert store.put(k, h, blob, header)
    info = store.lookup(k, h)
    assert info.header.multi_group and info.header.nbytes == len(blob)
    out = bytearray(len(blob))
    store.read_into(info, out)
    assert bytes(out) == blob


def test_put_twice_and_concurrent_puts_write_once(tmp_path, stores):
    store = stores([str(tmp_path)])
    data = rand_bytes(1 << 20, 3)
    k, h = key(1)
    results: list[bool] = []
    barrier = threading.Barrier(8)

    def worker():
        barrier.wait()
        results.append(store.put(k, h, data, u8(len(data))))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [False] * 7 + [True]
    stats = store.stats()
    assert stats.puts == 1 and stats.put_skipped == 7 and stats.bytes_written == len(data)
    path = store.layout.data_path(str(tmp_path), k, h)
    inode = os.stat(path).st_ino
    assert not store.put(k, h, data, u8(len(data)))
    assert os.stat(path).st_ino == inode


# -- multi-path ---------------------------------------------------------------------------------
def test_writes_go_to_the_affinity_path_and_a_restart_finds_all(tmp_path, stores):
    paths = [str(tmp_path / f"nvme{i}") for i in range(3)]
    expected = {}
    for device in range(3):
        store = stores(",".join(paths), device_id=device)
        for i in range(device * 10, device * 10 + 10):
            k, h = key(i)
            expected[k] = (h, rand_bytes(5000 + i, i))
            assert store.put(k, h, expected[k][1], u8(len(expected[k][1])))
        store.close()
        for j, p in enumerate(paths):  # only the affinity path has this worker's entries
            names = files_under(p)
            assert len(names) == (20 if j <= device else 0)
    fresh = stores(paths, device_id=4)  # writes to nvme1, reads all
    assert fresh.write_path == paths[1]
    assert fresh.wait_for_scan(30)
    assert sorted(fresh.keys()) == sorted(expected)
    stats = fresh.stats()  # the snapshots the stores wrote at close named all, the scan confirmed all
    assert stats.scan_entries == 30 and stats.scan_snapshot_entries == 30 and stats.scan_snapshot_dropped == 0
    for k, (h, data) in expected.items():
        out = bytearray(len(data))
        assert fresh.get_into(k, h, out) and bytes(out) == data


def test_a_miss_is_found_on_another_path_written_after_start_up(tmp_path, stores):
    paths = [str(tmp_path / "a"), str(tmp_path / "b")]
    reader = stores(paths, device_id=0)
    assert reader.wait_for_scan(30)
    writer = stores(paths, device_id=1)
    k, h = key(9)
    data = rand_bytes(70_000, 9)
    assert not reader.contains(k, h)
    assert writer.put(k, h, data, u8(len(data)))
    assert reader.contains(k, h)
    out = bytearray(len(data))
    assert reader.get_into(k, h, out) and bytes(out) == data
    assert reader.lookup(k, h).base == paths[1]
    assert not reader.put(k, h, data, u8(len(data)))  # present on another path: not written twice
    assert files_under(paths[0]) == []


def test_missing_metadata_is_rebuilt_from_the_data_header(tmp_path, stores):
    store = stores([str(tmp_path)])
    k, h = key(2)
    data = rand_bytes(9000, 2)
    store.put(k, h, data, u8(len(data)))
    store.close()
    path = store.layout.data_path(str(tmp_path), k, h)
    header = Path(metadata_path(path)).read_bytes()
    os.unlink(metadata_path(path))
    again = stores([str(tmp_path)])
    assert again.wait_for_scan(30) and again.keys() == [k]
    assert again.lookup(k, h) is not None
    assert Path(metadata_path(path)).read_bytes() == header


def test_without_metadata_files_an_entry_is_its_data_file_alone(tmp_path, stores):
    """`metadata_file=False`: one file per entry, counted at its size, found by a restart's scan
    (capacity-bounded or not), read, evicted and removed, and no `.metadata` is ever rebuilt."""
    data = {i: rand_bytes(ENTRY, i) for i in range(5)}
    store = stores([str(tmp_path)], metadata_file=False, capacity_bytes=3 * (ENTRY + HEADER_SIZE))
    for i in range(3):
        assert store.put(*key(i), data[i], u8(ENTRY))
    paths = [store.layout.data_path(str(tmp_path), *key(i)) for i in range(5)]
    assert Path(paths[0]).read_bytes() == pack_header(as_stored(u8(ENTRY), key(0)[0], data[0])) + data[0]
    assert files_under(tmp_path) == sorted(str(Path(p).relative_to(tmp_path)) for p in paths[:3])
    stats = store.stats()
    assert stats.used_bytes == 3 * (ENTRY + HEADER_SIZE) and stats.evictions == 0
    store.close()
    for bound in (None, 3 * (ENTRY + HEADER_SIZE)):
        again = stores([str(tmp_path)], metadata_file=False, capacity_bytes=bound)
        assert again.wait_for_scan(30) and sorted(again.keys()) == sorted(key(i)[0] for i in range(3))
        for i in range(3):
            out = bytearray(ENTRY)
            assert again.get_into(*key(i), out) and bytes(out) == data[i]
        assert again.stats().used_bytes == 3 * (ENTRY + HEADER_SIZE)
        assert not any(os.path.exists(metadata_path(p)) for p in paths)
        again.close()
    again = stores([str(tmp_path)], metadata_file=False, capacity_bytes=3 * (ENTRY + HEADER_SIZE))
    assert again.wait_for_scan(30)
    assert again.lookup(*key(1))  # 1 and 2 are now more recently used than 0
    assert again.lookup(*key(2))
    assert again.put(*key(3), data[3], u8(ENTRY))  # evicts 0: the bound holds 3 single files
    assert not os.path.exists(paths[0]) and again.stats().evicted_bytes == ENTRY + HEADER_SIZE
    assert again.remove(*key(1)) and not os.path.exists(paths[1])
    assert sorted(again.keys()) == sorted(key(i)[0] for i in (2, 3))
    assert files_under(tmp_path) == sorted(str(Path(p).relative_to(tmp_path)) for p in (paths[2], paths[3]))


def test_a_store_without_metadata_files_reads_entries_that_have_them(tmp_path, stores):
    """An entry written with its `.metadata` counts both files and keeps them; a removal takes both."""
    writer = stores([str(tmp_path)])
    k, h = key(1)
    data = rand_bytes(ENTRY, 1)
    assert writer.put(k, h, data, u8(ENTRY))
    writer.close()
    store = stores([str(tmp_path)], metadata_file=False, capacity_bytes=10 * ON_DISK)
    assert store.wait_for_scan(30) and store.stats().used_bytes == ON_DISK
    out = bytearray(ENTRY)
    assert store.get_into(k, h, out) and bytes(out) == data
    path = store.layout.data_path(str(tmp_path), k, h)
    assert os.path.exists(metadata_path(path))
    assert store.remove(k, h) and files_under(tmp_path) == []


def test_long_key_uses_a_bounded_name_and_survives_restart(tmp_path, stores):
    store = stores([str(tmp_path)])
    k = "very/long-model-name-" * 20 + "@1@0@abc@bfloat16"
    data = rand_bytes(4096, 4)
    assert store.put(k, 0xABC, data, u8(len(data)))
    (name,) = [f for f in files_under(tmp_path) if f.endswith(".safetensors")]
    assert len(Path(name).name.encode()) <= 234 and "+" in name
    again = stores([str(tmp_path)])
    assert again.wait_for_scan(30) and again.keys() == [k]
    out = bytearray(len(data))
    assert again.get_into(k, 0xABC, out) and bytes(out) == data
    assert not again.contains(k[:-1] + "X", 0xABC)


# -- corruption ---------------------------------------------------------------------------------
def test_truncated_entry_is_dropped_with_one_warning_and_can_be_rewritten(tmp_path, stores, caplog):
    store = stores([str(tmp_path)])
    k, h = key(3)
    data = rand_bytes(50_000, 3)
    store.put(k, h, data, u8(len(data)))
    path = store.layout.data_path(str(tmp_path), k, h)
    os.truncate(path, HEADER_SIZE + len(data) - 1)
    caplog.set_level(logging.WARNING)
    out = bytearray(len(data))
    assert not store.get_into(k, h, out)  # the cached header does not save a bad file
    assert not store.get_into(k, h, out)
    assert not store.contains(k, h)
    assert len([r for r in caplog.records if r.levelno >= logging.WARNING]) == 1
    assert "file is" in caplog.records[0].getMessage()
    assert store.stats().corrupt == 1
    assert bytes(out) == bytes(len(data))  # nothing of the bad file reached the destination
    assert store.put(k, h, data, u8(len(data)))  # a corrupt file does not block a new put
    assert store.get_into(k, h, out) and bytes(out) == data


def test_a_bad_file_repaired_in_place_is_found_again(tmp_path, stores):
    """A dropped file is skipped until it changes. A repair that writes the good bytes back into
    the same inode and puts its size and mtime back as they were still moves its ctime, so the
    next lookup finds it."""
    store = stores([str(tmp_path)])
    k, h = key(5)
    data = rand_bytes(20_000, 5)
    assert store.put(k, h, data, u8(len(data)))
    path = store.layout.data_path(str(tmp_path), k, h)
    good = Path(path).read_bytes()
    st = os.stat(path)
    with open(path, "r+b") as f:
        f.seek(HEADER_SIZE + 7)
        f.write(bytes([good[HEADER_SIZE + 7] ^ 1]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    out = bytearray(len(data))
    assert not store.get_into(k, h, out) and not store.contains(k, h)
    with open(path, "r+b") as f:
        f.write(good)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # inode, size and mtime as when dropped
    assert store.contains(k, h)
    assert store.get_into(k, h, out) and bytes(out) == data


@pytest.mark.parametrize("damage", ["garbage header", "short file", "grown file", "empty file"])
def test_corrupt_files_are_never_served(tmp_path, stores, damage, caplog):
    store = stores([str(tmp_path)])
    k, h = key(4)
    data = rand_bytes(20_000, 4)
    store.put(k, h, data, u8(len(data)))
    store.close()
    path = store.layout.data_path(str(tmp_path), k, h)
    if damage == "garbage header":
        with open(path, "r+b") as f:
            f.write(os.urandom(64))
    elif damage == "short file":
        os.truncate(path, 5000)
    elif damage == "grown file":
        with open(path, "ab") as f:
            f.write(b"x")
    else:
        os.truncate(path, 0)
    again = stores([str(tmp_path)])
    assert again.wait_for_scan(30)
    caplog.set_level(logging.WARNING)
    assert again.lookup(k, h) is None
    assert again.lookup(k, h) is None
    assert len(caplog.records) == 1 and again.stats().corrupt == 1 and again.keys() == []


def test_entry_damaged_between_lookup_and_read(tmp_path, stores):
    store = stores([str(tmp_path)])
    k, h = key(6)
    data = rand_bytes(30_000, 6)
    store.put(k, h, data, u8(len(data)))
    info = store.lookup(k, h)
    os.truncate(info.path, HEADER_SIZE + 100)
    with pytest.raises(CorruptEntryError, match="file is"):
        store.read_into(info, bytearray(len(data)))
    assert store.lookup(k, h) is None
    k2, h2 = key(7)
    store.put(k2, h2, data, u8(len(data)))
    info = store.lookup(k2, h2)
    store.remove(k2, h2)
    with pytest.raises(EntryGoneError):
        store.read_into(info, bytearray(len(data)))
    assert store.put(k2, h2, data, u8(len(data)))
    with pytest.raises(ValueError, match="destination holds"):
        store.read_into(store.lookup(k2, h2), bytearray(10))
    assert store.get_into(k2, h2, bytearray(len(data)))  # a caller's mistake drops nothing


def test_a_reader_with_the_file_open_reads_the_whole_entry_after_removal(tmp_path, stores):
    """Removal unlinks; a read already holding the file keeps the complete old inode."""
    store = stores([str(tmp_path)])
    k, h = key(8)
    data = rand_bytes(3 << 20, 8)
    store.put(k, h, data, u8(len(data)))
    info = store.lookup(k, h)
    import pygds

    with pygds.File(info.path, "r", engine="posix") as f:
        assert store.remove(k, h)
        assert not os.path.exists(info.path) and not os.path.exists(metadata_path(info.path))
        out = bytearray(len(data))
        assert f.read(out, file_offset=HEADER_SIZE) == len(data) and bytes(out) == data
    assert store.lookup(k, h) is None


# -- remove, pin --------------------------------------------------------------------------------
def test_remove_deletes_files_in_every_path(tmp_path, stores):
    paths = [str(tmp_path / "a"), str(tmp_path / "b")]
    a, b = stores(paths, device_id=0), stores(paths, device_id=1)
    k, h = key(10)
    data = rand_bytes(1000, 10)
    assert a.put(k, h, data, u8(1000))
    # A copy in the other path too (as two workers racing once would leave).
    os.makedirs(os.path.dirname(b.layout.data_path(paths[1], k, h)), exist_ok=True)
    shutil.copy(a.layout.data_path(paths[0], k, h), b.layout.data_path(paths[1], k, h))
    assert a.pin(k, h)
    assert not a.remove(k, h, force=False)
    assert a.remove(k, h)
    assert files_under(tmp_path) == []
    assert not a.remove(k, h) and not a.contains(k, h) and a.stats().removed == 1


def test_pin_unpin_counts(tmp_path, stores):
    store = stores([str(tmp_path)])
    k, h = key(11)
    assert not store.pin(k, h) and not store.unpin(k, h)
    store.put(k, h, b"abc", u8(3))
    assert store.pin(k, h) and store.contains(k, h, pin=True)
    assert store.is_pinned(k, h)
    assert store.unpin(k, h) and store.unpin(k, h) and not store.unpin(k, h)
    assert not store.is_pinned(k, h)


def test_clear_removes_unpinned_entries(tmp_path, stores):
    store = stores([str(tmp_path)])
    for i in range(5):
        store.put(*key(i), b"x" * 10, u8(10))
    store.pin(*key(0))
    assert store.clear() == 4 and store.keys() == [key(0)[0]]


# -- capacity -----------------------------------------------------------------------------------
ENTRY = 64 * 1024
ON_DISK = ENTRY + 2 * HEADER_SIZE


def test_lru_eviction_respects_pins(tmp_path, stores):
    store = stores([str(tmp_path)], capacity_bytes=3 * ON_DISK)
    blobs = {i: rand_bytes(ENTRY, i) for i in range(6)}
    for i in range(3):
        assert store.put(*key(i), blobs[i], u8(ENTRY))
    assert store.lookup(*key(0))  # 0 becomes the most recently used
    assert store.pin(*key(1))
    assert store.put(*key(3), blobs[3], u8(ENTRY))  # evicts 2 (1 is pinned)
    assert sorted(store.keys()) == sorted(key(i)[0] for i in (0, 1, 3))
    assert not os.path.exists(store.layout.data_path(str(tmp_path), *key(2)))
    assert store.put(*key(4), blobs[4], u8(ENTRY))  # evicts 0
    assert sorted(store.keys()) == sorted(key(i)[0] for i in (1, 3, 4))
    stats = store.stats()
    assert stats.evictions == 2 and stats.evicted_bytes == 2 * ON_DISK and stats.used_bytes == 3 * ON_DISK
    assert len(files_under(tmp_path)) == 6
    for i in (1, 3, 4):
        out = bytearray(ENTRY)
        assert store.get_into(*key(i), out) and bytes(out) == blobs[i]


def test_capacity_refusals(tmp_path, stores, caplog):
    store = stores([str(tmp_path)], capacity_bytes=2 * ON_DISK)
    caplog.set_level(logging.WARNING)
    assert not store.put(*key(0), bytes(3 * ENTRY), u8(3 * ENTRY))
    assert "larger than the capacity" in caplog.text
    for i in (1, 2):
        store.put(*key(i), bytes(ENTRY), u8(ENTRY))
        store.pin(*key(i))
    assert not store.put(*key(3), bytes(ENTRY), u8(ENTRY))
    assert store.stats().put_refused == 2 and len(store.keys()) == 2


def test_capacity_counts_entries_found_by_the_scan(tmp_path, stores):
    store = stores([str(tmp_path)])
    for i in range(6):
        store.put(*key(i), bytes(ENTRY), u8(ENTRY))
    store.close()
    bounded = stores([str(tmp_path)], capacity_bytes=4 * ON_DISK)
    assert bounded.wait_for_scan(30) and bounded.stats().used_bytes == 6 * ON_DISK
    assert bounded.put(*key(10), bytes(ENTRY), u8(ENTRY))
    assert bounded.stats().used_bytes <= 4 * ON_DISK
    assert sum(os.path.getsize(tmp_path / f) for f in files_under(tmp_path)) <= 4 * ON_DISK


def test_capacity_fraction_of_the_file_system(tmp_path, stores):
    st = os.statvfs(tmp_path)
    total = st.f_blocks * st.f_frsize
    assert stores([str(tmp_path)], capacity_fraction=0.25).capacity_bytes == int(total * 0.25)
    both = stores([str(tmp_path)], capacity_fraction=0.25, capacity_bytes=10**6)
    assert both.capacity_bytes == 10**6
    assert stores([str(tmp_path)]).capacity_bytes is None


@pytest.fixture
def small_fs(tmp_path):
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        where = tmp_path / f"fs{len(mounted)}"
        where.mkdir()
        try:
            r = subprocess.run(
                ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                capture_output=True, text=True, timeout=30,
            )
        except FileNotFoundError:
            pytest.skip("no mount command to make a small tmpfs")
        if r.returncode:
            pytest.skip(f"cannot mount a small tmpfs here (needs root): {r.stderr.strip()}")
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], check=False, timeout=30)


def _fs_used(path: Path) -> int:
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def test_capacity_holds_under_four_concurrent_writers(small_fs, stores):
    fs = small_fs("16m")
    cap = 10 * ON_DISK
    store = stores([str(fs)], capacity_bytes=cap, io_threads=4)
    blobs = {i: rand_bytes(ENTRY, i) for i in range(120)}
    for i in (0, 1):
        store.put(*key(i), blobs[i], u8(ENTRY))
        store.pin(*key(i))
    peak = [0]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], _fs_used(fs))

    def writer(w: int):
        for i in range(2 + w, 120, 4):
            store.put(*key(i), blobs[i], u8(ENTRY))
            if i % 5 == 0:
                store.lookup(*key(i))

    sampler = threading.Thread(target=sample)
    sampler.start()
    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    sampler.join()
    stats = store.stats()
    assert peak[0] <= cap, f"file system held {peak[0]} bytes, capacity {cap}"
    assert _fs_used(fs) <= cap and stats.used_bytes <= cap
    assert stats.puts == 120 and stats.evictions >= 100
    assert {key(0)[0], key(1)[0]} <= set(store.keys())
    on_disk = [f for f in files_under(fs) if f.endswith(".safetensors")]
    assert len(on_disk) == len(store.keys()) == stats.entries
    for k in store.keys():
        i = next(j for j in blobs if key(j)[0] == k)
        out = bytearray(ENTRY)
        assert store.get_into(k, key(i)[1], out) and bytes(out) == blobs[i]


# -- faults -------------------------------------------------------------------------------------
def _assert_only_complete_entries(store: KVStore, root: Path) -> None:
    names = files_under(root)
    assert not [n for n in names if ".tmp" in n], names
    data = [n for n in names if n.endswith(".safetensors")]
    assert sorted(n + ".metadata" for n in data) == sorted(n for n in names if n.endswith(".metadata"))
    assert len(data) == len(store.keys())


def test_disk_full_fails_cleanly_and_later_puts_work(small_fs, stores, caplog):
    fs = small_fs("1m")
    store = stores([str(fs)])
    caplog.set_level(logging.WARNING)
    results = [store.put(*key(i), rand_bytes(300_000, i), u8(300_000)) for i in range(5)]
    assert results[:3] == [True] * 3 and results[3:] == [False, False]
    errors = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(errors) == 2 and all("No space left" in r.getMessage() for r in errors)
    assert store.stats().put_errors == 2
    _assert_only_complete_entries(store, fs)
    assert store.remove(*key(0))
    assert store.put(*key(3), rand_bytes(300_000, 3), u8(300_000))
    _assert_only_complete_entries(store, fs)
    out = bytearray(300_000)
    assert store.get_into(*key(3), out) and bytes(out) == rand_bytes(300_000, 3)


def _run_py(script: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO), PYGDS_ENGINE="posix")
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        env=env, capture_output=True, text=True, timeout=timeout,
    )


def test_file_size_limit_fails_cleanly_in_a_subprocess(tmp_path):
    """RLIMIT_FSIZE makes writes fail with EFBIG: the put fails, nothing is left behind."""
    script = """
        import json, logging, os, resource, signal, sys
        from lmcache_plugin.store import KVStore, StoreOptions
        from lmcache_plugin.format import EntryHeader
        logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))
        store = KVStore(StoreOptions(paths=[sys.argv[1]], engine="posix", io_threads=0))
        big = store.put("big@1", 1234, bytes(100_000), EntryHeader.single((100_000,), "U8", 1))
        small = store.put("small@1", 5678, b"s" * 1000, EntryHeader.single((1000,), "U8", 1))
        print(json.dumps({"big": big, "small": small, "keys": store.keys(), "stats": store.stats().as_dict()}))
    """
    r = _run_py(script, str(tmp_path))
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["big"] is False and out["small"] is True and out["keys"] == ["small@1"]
    assert out["stats"]["put_errors"] == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ERROR") and "File too large" in lines[0]
    assert files_under(tmp_path) == sorted(
        ["56/78/small%401.kvcache.safetensors", "56/78/small%401.kvcache.safetensors.metadata"]
    )


def test_permission_denied_fails_cleanly_and_other_puts_work():
    """A fan-out directory the writer may not write to (EACCES): that put fails with one error
    line and leaves nothing; a put into another directory works. As root, the writer runs as
    nobody in a subprocess, since root ignores permissions."""
    script = """
        import json, logging, os, sys
        import pygds, pygds.engines.posix  # everything imported before dropping root
        from lmcache_plugin.store import KVStore, StoreOptions
        from lmcache_plugin.format import EntryHeader
        logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
        if os.geteuid() == 0:
            os.setgid(65534)
            os.setuid(65534)
        store = KVStore(StoreOptions(paths=[sys.argv[1]], engine="posix", io_threads=0))
        denied = store.put("denied@1", 1234, b"d" * 5000, EntryHeader.single((5000,), "U8", 1))
        allowed = store.put("allowed@1", 5678, b"a" * 5000, EntryHeader.single((5000,), "U8", 1))
        print(json.dumps({"denied": denied, "allowed": allowed, "keys": store.keys(),
                          "errors": store.stats().put_errors}))
    """
    root = Path(tempfile.mkdtemp(prefix="kvstore-eacces-", dir="/tmp"))
    try:
        os.chmod(root, 0o777)
        (root / "12" / "34").mkdir(parents=True)
        os.chmod(root / "12" / "34", 0o555)
        r = _run_py(script, str(root))
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout)
        assert out == {"denied": False, "allowed": True, "keys": ["allowed@1"], "errors": 1}
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("ERROR") and "ermission denied" in lines[0]
        assert files_under(root) == [
            "56/78/allowed%401.kvcache.safetensors", "56/78/allowed%401.kvcache.safetensors.metadata"
        ]
    finally:
        os.chmod(root / "12" / "34", 0o755)
        shutil.rmtree(root)


def test_processes_writing_the_same_keys_leave_one_complete_entry_each(tmp_path):
    script = """
        import sys, time
        import numpy as np
        from lmcache_plugin.store import KVStore, StoreOptions
        from lmcache_plugin.format import EntryHeader
        base, gate = sys.argv[1], sys.argv[2]
        blobs = [np.random.default_rng(i).integers(0, 256, 200_000 + i, dtype=np.uint8).tobytes()
                 for i in range(24)]
        store = KVStore(StoreOptions(paths=[base], engine="posix", io_threads=0, scan=False))
        open(f"{gate}.ready.{os.getpid()}", "w").close()
        while not os.path.exists(gate):
            time.sleep(0.001)
        for i, data in enumerate(blobs):
            store.put(f"shared@1@0@{i:x}@half", 1000 + i, data, EntryHeader.single((len(data),), "U8", 1))
        store.close()
    """
    cache = tmp_path / "cache"
    gate = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", "import os\n" + textwrap.dedent(script), str(cache), str(gate)],
            env=dict(os.environ, PYTHONPATH=str(REPO)), stderr=subprocess.PIPE, text=True,
        )
        for _ in range(4)
    ]
    deadline = time.monotonic() + 120
    while len(list(tmp_path.glob("go.ready.*"))) < 4 and time.monotonic() < deadline:
        if any(p.poll() is not None for p in procs):
            break
        time.sleep(0.01)
    gate.touch()
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    layout = Layout(str(cache))
    names = files_under(cache)
    assert len(names) == 48 and not [n for n in names if ".tmp" in n]
    for i in range(24):
        k = f"shared@1@0@{i:x}@half"
        path = layout.data_path(str(cache), k, 1000 + i)
        data = rand_bytes(200_000 + i, i)
        header = pack_header(as_stored(u8(len(data)), k, data))
        assert Path(path).read_bytes() == header + data
        assert Path(metadata_path(path)).read_bytes() == header


def test_fanout_directories_are_created_whenever_missing(tmp_path, stores):
    """LMCache remembers created fan-out directories without their base path; here a directory
    seen in another path, or deleted behind the store's back, is simply created again."""
    paths = [str(tmp_path / "a"), str(tmp_path / "b")]
    stores(paths, device_id=0).put("x@1", 123456, b"x", u8(1))  # creates a/12/34
    store = stores(paths, device_id=1)
    assert store.wait_for_scan(30) and store.put("y@1", 123457, b"y", u8(1))  # b/12/34
    shutil.rmtree(tmp_path / "b" / "12")
    assert store.put("z@1", 123458, b"z", u8(1))
    assert os.path.exists(store.layout.data_path(paths[1], "z@1", 123458))


def test_writer_killed_at_random_points_leaves_only_complete_entries(tmp_path):
    script = """
        import sys
        import numpy as np
        from lmcache_plugin.store import KVStore, StoreOptions
        from lmcache_plugin.format import EntryHeader
        store = KVStore(StoreOptions(paths=[sys.argv[1]], engine="posix", io_threads=0, scan=False))
        print("ready", flush=True)
        i = 0
        while True:
            data = np.random.default_rng(i).integers(0, 256, 150_000 + i, dtype=np.uint8).tobytes()
            store.put(f"crash@1@0@{i:x}@half", 5000 + i, data, EntryHeader.single((len(data),), "U8", 1))
            i += 1
    """
    rng = np.random.default_rng(2024)
    for round_ in range(3):
        proc = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(script), str(tmp_path)],
            env=dict(os.environ, PYTHONPATH=str(REPO)), stdout=subprocess.PIPE, text=True,
        )
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(float(rng.uniform(0.05, 0.4)))
        proc.kill()
        proc.wait(30)
    store = KVStore(StoreOptions(paths=[str(tmp_path)], engine="posix", tmp_max_age_s=0))
    try:
        assert store.wait_for_scan(60)
        keys = store.keys()
        assert keys and not [f for f in files_under(tmp_path) if ".tmp" in f]
        for k in keys:
            i = int(k.split("@")[3], 16)
            out = bytearray(150_000 + i)
            assert store.get_into(k, 5000 + i, out), k
            assert bytes(out) == rand_bytes(150_000 + i, i)
        assert store.stats().corrupt == 0
        data_files = [f for f in files_under(tmp_path) if f.endswith(".safetensors")]
        assert len(data_files) == len(keys)
        assert all(os.path.exists(tmp_path / (f + ".metadata")) for f in data_files)  # rebuilt if missing
    finally:
        store.close()


# -- asynchronous puts and lifetime -------------------------------------------------------------
def test_submit_put_then_close_drains_everything(tmp_path):
    store = KVStore(StoreOptions(paths=[str(tmp_path)], engine="posix", io_threads=2))
    done: list[tuple[int, bool]] = []
    futures = []
    for i in range(24):
        data = rand_bytes(100_000, i)
        futures.append(store.submit_put(*key(i), data, u8(len(data)), on_done=lambda ok, i=i: done.append((i, ok))))
    store.close()
    assert all(f.done() and f.result() for f in futures)
    assert sorted(done) == [(i, True) for i in range(24)]
    assert not any(store.is_pending(key(i)[0]) for i in range(24))
    names = files_under(tmp_path)
    assert len([n for n in names if n.endswith(".metadata")]) == 24 and len(names) == 48
    with pytest.raises(RuntimeError, match="closed"):
        store.put(*key(99), b"x", u8(1))
    store.close()


def test_pending_and_inline_pool(tmp_path, stores):
    store = stores([str(tmp_path)], io_threads=0)
    seen = []
    fut = store.submit_put(*key(1), b"abc", u8(3), on_done=seen.append)
    assert fut.done() and fut.result() is True and seen == [True]
    assert store.submit_get_into(*key(1), bytearray(3)).result()
    pooled = stores([str(tmp_path / "p")], io_threads=1)
    gate = threading.Event()
    blocker = pooled.submit_put(*key(2), b"x", u8(1), on_done=lambda ok: gate.wait(10))
    queued = pooled.submit_put(*key(3), b"y", u8(1))
    assert pooled.is_pending(key(3)[0])
    gate.set()
    assert blocker.result(10) and queued.result(10) and pooled.flush(10)
    assert not pooled.is_pending(key(3)[0])


# -- bad input ----------------------------------------------------------------------------------
def test_bad_input(tmp_path, stores):
    store = stores([str(tmp_path)])
    with pytest.raises(ValueError, match="data holds"):
        store.put(*key(1), b"abc", u8(4))
    assert not store.put("k", "../x", b"a", u8(1))  # a hash that could escape: refused
    assert not store.contains("k", "../x") and store.lookup("", 1) is None
    assert store.stats().put_refused == 1
    for bad in [dict(engine="gpu"), dict(capacity_bytes=0), dict(capacity_fraction=1.5),
                dict(tmp_max_age_s=-1), dict(paths=" , ")]:
        opts = dict(paths=[str(tmp_path)], **{k: v for k, v in bad.items() if k != "paths"})
        if "paths" in bad:
            opts["paths"] = bad["paths"]
        with pytest.raises(ValueError):
            KVStore(StoreOptions(**opts))


def test_stats_counters(tmp_path, stores):
    store = stores([str(tmp_path)])
    store.put(*key(1), b"a" * 100, u8(100))
    out = bytearray(100)
    store.get_into(*key(1), out)
    store.get_into(*key(2), out)
    assert store.wait_for_scan(30)
    s = store.stats().as_dict()
    assert (s["hits"], s["misses"], s["puts"], s["bytes_written"], s["bytes_read"], s["entries"]) == (
        1, 1, 1, 100, 100, 1
    )
    assert s["scan_done"] is True and s["capacity_bytes"] is None


# -- scan at scale ------------------------------------------------------------------------------
def test_requests_are_served_while_a_large_scan_runs(tmp_path, stores):
    """50,000 entries on disk: the store answers puts, lookups and reads before its scan ends."""
    base = str(tmp_path)
    layout = Layout(base)
    for l1 in range(10, 20):
        for l2 in range(10, 20):
            os.makedirs(f"{base}/{l1}/{l2}")
    blank = tmp_path / "blank"
    blank.touch()
    for i in range(50_000):  # hard links: names are all a scan looks at, and links are quick to make
        h = int(f"{10 + i % 10}{10 + (i // 10) % 10}{i:07d}")
        os.link(blank, layout.data_path(base, f"m@1@0@{h:x}@half", h))
    old_key, old_hash = "m@1@0@old@half", 1919_0000001
    data = rand_bytes(10_000, 1)
    path = layout.data_path(base, old_key, old_hash)
    with open(path, "wb") as f:
        f.write(pack_header(u8(len(data))) + data)

    store = stores([base])
    out = bytearray(len(data))
    assert store.get_into(old_key, old_hash, out) and bytes(out) == data  # found on disk
    assert store.put(*key(1), b"new", u8(3))
    assert store.get_into(*key(1), bytearray(3))
    assert not store.stats().scan_done
    assert store.wait_for_scan(120)
    stats = store.stats()
    assert stats.entries == 50_002 and stats.scan_done and stats.scan_errors == 0


def test_batched_contains_counts_the_prefix_and_reads_no_further(tmp_path, stores):
    """LMCache's prefix lookup: hits up to the first miss, the keys after it never looked at;
    with `pin` exactly the hits are pinned. Scanned entries, put entries and entries found on
    disk (another store wrote them) all count."""
    writer = stores([str(tmp_path / "c")], scan=False)
    for i in range(4):
        assert writer.put(*key(i), bytes(8), u8(8))
    store = stores([str(tmp_path / "c")])
    assert store.wait_for_scan(30)
    assert store.put(*key(10), bytes(8), u8(8))
    assert writer.put(*key(11), bytes(8), u8(8))  # not indexed by `store`: found on disk
    looked_at: list[int] = []

    def keys(order: list[int]):
        for i in order:
            looked_at.append(i)
            yield key(i)

    assert store.batched_contains(keys([0, 10, 11, 1, 99, 2, 3])) == 4 and looked_at == [0, 10, 11, 1, 99]
    assert store.batched_contains(keys([0, 1, 2, 3])) == 4
    assert store.batched_contains([("", 5), key(0)]) == 0  # an unstorable key is a miss
    assert not any(store.is_pinned(*key(i)) for i in (0, 1, 2, 3, 10, 11))
    assert store.batched_contains(keys([2, 3, 98, 0]), pin=True) == 2
    assert [store.is_pinned(*key(i)) for i in (0, 1, 2, 3)] == [False, False, True, True]
    assert store.batched_contains([]) == 0
