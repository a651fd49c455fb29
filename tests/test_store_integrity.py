"""The KV store on paths shared with other writers: never a wrong byte, never a lost chunk.

Other stores, `pygds cache evict` and users remove, rename and damage entries behind a store's
back. Each test here makes one such change with real files (and, where the change is a fault of
the operating system, with the `LD_PRELOAD` shim of `tests/faults` in a subprocess) and checks
what the store serves, reports and leaves on disk.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

import pygds
from faults import incomplete
from faults.build import FaultShim, build_fault_shim
from lmcache_plugin.format import (
    HEADER_SIZE,
    CorruptEntryError,
    EntryHeader,
    checksum_of,
    pack_header,
    unpack_header,
)
from lmcache_plugin.layout import metadata_path
from lmcache_plugin.store import EntryGoneError, KVStore, StoreOptions
from lmcache_plugin.summed_io import PIECE_BYTES
from lmcache_plugin.verified import local_devices
from pygds.fsinfo import fs_type
from standin.build import REPO_ROOT, CompilerMissing

DATA_TMP = ".kvcache.safetensors.tmp"
META_TMP = ".kvcache.safetensors.metadata.tmp"


def rand_bytes(n: int, seed: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def key(i: int) -> tuple[str, int]:
    chunk_hash = 110_000 * (i + 1)  # a fan-out directory of its own: "11/00", "22/00", ...
    return f"org/model@1@0@{chunk_hash:x}@bfloat16", chunk_hash


def u8(n: int) -> EntryHeader:
    return EntryHeader.single((n,), "U8", 1)


def warnings_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def header_on_disk(path: str) -> EntryHeader:
    with open(path, "rb") as f:
        return unpack_header(f.read(HEADER_SIZE))


# -- a put is never skipped on the index alone ---------------------------------------------------
def test_a_put_after_another_store_removed_the_entry_writes_it_again(tmp_path, stores):
    a, b = stores([str(tmp_path)]), stores([str(tmp_path)])
    k, h = key(0)
    data = rand_bytes(10_000, 0)
    assert a.put(k, h, data, u8(len(data)))
    assert b.contains(k, h)  # b indexes it
    assert a.remove(k, h)
    assert b.put(k, h, data, u8(len(data)))  # b's index is stale: the put still writes
    assert os.path.exists(b.layout.data_path(str(tmp_path), k, h))
    assert b.stats().put_skipped == 0 and b.stats().puts == 1
    for store in (a, b):
        out = bytearray(len(data))
        assert store.get_into(k, h, out) and bytes(out) == data
    assert not b.put(k, h, data, u8(len(data))) and b.stats().put_skipped == 1  # on disk: skipped


def test_a_read_that_finds_the_file_gone_forgets_the_entry(tmp_path, stores):
    a, b = stores([str(tmp_path)]), stores([str(tmp_path)])
    k, h = key(1)
    assert a.put(k, h, b"abc", u8(3))
    assert b.lookup(k, h) is not None and b.stats().entries == 1  # header cached in b
    assert a.remove(k, h)
    assert b.lookup(k, h) is None and b.stats().entries == 0 and b.stats().corrupt == 0


# -- removal and eviction report what really happened ----------------------------------------------
@contextmanager
def immutable(directory: Path):
    """`chattr +i` on `directory` (nothing in it can be unlinked, even by root) for the block."""
    if shutil.which("chattr") is None:
        pytest.skip("chattr is not installed")
    done = subprocess.run(["chattr", "+i", str(directory)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"chattr +i is refused here (not root, or a file system without it): {done.stderr}")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(directory)], check=True)


def test_remove_that_cannot_unlink_returns_false_and_keeps_the_entry(tmp_path, stores, caplog):
    store = stores([str(tmp_path)])
    k, h = key(2)
    data = rand_bytes(5000, 2)
    assert store.put(k, h, data, u8(len(data)))
    path = Path(store.layout.data_path(str(tmp_path), k, h))
    caplog.set_level(logging.WARNING)
    with immutable(path.parent):
        assert not store.remove(k, h)
        assert store.contains(k, h) and path.exists() and Path(metadata_path(str(path))).exists()
        out = bytearray(len(data))
        assert store.get_into(k, h, out) and bytes(out) == data
        assert store.stats().removed == 0 and store.stats().entries == 1
    (line,) = warnings_of(caplog)
    assert "cannot remove" in line and k in line and "Operation not permitted" in line
    assert store.remove(k, h) and not path.exists() and not store.contains(k, h)
    assert store.stats().removed == 1


def test_eviction_that_cannot_unlink_counts_nothing_freed_and_evicts_another(tmp_path, stores, caplog):
    on_disk = 20_000 + 2 * HEADER_SIZE
    store = stores([str(tmp_path)], capacity_bytes=2 * on_disk)
    blobs = {i: rand_bytes(20_000, 10 + i) for i in range(3)}
    for i in (0, 1):
        assert store.put(*key(i), blobs[i], u8(20_000))
    stuck = Path(store.layout.data_path(str(tmp_path), *key(0)))  # the least recently used
    caplog.set_level(logging.WARNING)
    with immutable(stuck.parent):
        assert store.put(*key(2), blobs[2], u8(20_000))
        stats = store.stats()
        assert stats.evictions == 1 and stats.evicted_bytes == on_disk
        assert stats.used_bytes == 2 * on_disk and stats.entries == 2
        assert stuck.exists() and store.contains(*key(0))
        assert not os.path.exists(store.layout.data_path(str(tmp_path), *key(1)))
        for i in (0, 2):
            out = bytearray(20_000)
            assert store.get_into(*key(i), out) and bytes(out) == blobs[i]
    (line,) = warnings_of(caplog)
    assert "cannot evict 1 entries" in line and "Operation not permitted" in line


def test_a_cache_full_of_undeletable_entries_refuses_puts_with_one_warning_per_cause(tmp_path, stores, caplog):
    on_disk = 20_000 + 2 * HEADER_SIZE
    store = stores([str(tmp_path)], capacity_bytes=on_disk)
    assert store.put(*key(0), rand_bytes(20_000, 10), u8(20_000))
    stuck = Path(store.layout.data_path(str(tmp_path), *key(0)))
    caplog.set_level(logging.WARNING)
    with immutable(stuck.parent):
        assert not any(store.put(*key(i), rand_bytes(20_000, 10 + i), u8(20_000)) for i in range(1, 6))
    assert store.stats().put_refused == 5 and store.contains(*key(0))
    cannot, refused = warnings_of(caplog)
    assert "cannot evict 1 entries" in cannot and "Operation not permitted" in cannot
    assert "put refused" in refused and "full of pinned, in-flight or undeletable entries" in refused


def test_clear_that_cannot_unlink_counts_only_what_it_removed(tmp_path, stores, caplog):
    store = stores([str(tmp_path)])
    for i in range(3):
        assert store.put(*key(i), b"x" * 10, u8(10))
    stuck = Path(store.layout.data_path(str(tmp_path), *key(1)))
    caplog.set_level(logging.WARNING)
    with immutable(stuck.parent):
        assert store.clear() == 2
        assert store.keys() == [key(1)[0]] and stuck.exists()
    assert len(warnings_of(caplog)) == 1


# -- entry identity and content ---------------------------------------------------------------
def test_swapped_data_files_are_refused_not_served(tmp_path, stores, caplog):
    store = stores([str(tmp_path)])
    (ka, ha), (kb, hb) = key(0), key(1)
    da, db = rand_bytes(8192, 20), rand_bytes(8192, 21)
    assert store.put(ka, ha, da, u8(8192)) and store.put(kb, hb, db, u8(8192))
    pa, pb = store.layout.data_path(str(tmp_path), ka, ha), store.layout.data_path(str(tmp_path), kb, hb)
    assert store.lookup(ka, ha) and store.lookup(kb, hb)  # headers cached before the swap
    os.rename(pa, pa + ".x")
    os.rename(pb, pa)
    os.rename(pa + ".x", pb)
    os.unlink(metadata_path(pa))  # a reader rebuilds a missing .metadata, never from a refused file
    fresh = stores([str(tmp_path)])
    caplog.set_level(logging.WARNING)
    for s in (store, fresh):  # through a cached header, and through a header read from disk
        for k, h in ((ka, ha), (kb, hb)):
            out = bytearray(8192)
            assert not s.get_into(k, h, out)
            assert not s.get_into(k, h, out)
        assert s.stats().corrupt == (2 if local_devices([str(tmp_path)]) else 4)  # see the next test
    lines = warnings_of(caplog)
    assert len(lines) == 4 and all("entry holds key" in line for line in lines)
    assert not os.path.exists(metadata_path(pa))


@pytest.fixture
def tmpfs_dir():
    """A fresh folder on tmpfs (/dev/shm), removed afterwards; skips where there is none."""
    if not os.path.isdir("/dev/shm") or fs_type("/dev/shm") != "tmpfs":
        pytest.skip("/dev/shm is not a tmpfs here")
    path = tempfile.mkdtemp(prefix="pygds-test-", dir="/dev/shm")
    yield Path(path)
    shutil.rmtree(path, ignore_errors=True)


@pytest.mark.parametrize("where", ["local disk", "tmpfs"])
def test_a_bad_file_is_skipped_by_later_probes_only_on_a_local_disk_file_system(tmp_path, stores, caplog, where,
                                                                                 request):
    """Only on a local disk file system does an open file's `fstat` surely describe that file (on
    bindfs it describes whatever is at the name now), so only there is a bad file's identity
    remembered and the file skipped; elsewhere each probe checks it again. One warning either way."""
    base = tmp_path if where == "local disk" else request.getfixturevalue("tmpfs_dir")
    if bool(local_devices([str(base)])) != (where == "local disk"):
        pytest.skip(f"{base} is on {fs_type(str(base))}, not on a {where} file system")
    store = stores([str(base)])
    (ka, ha), (kb, hb) = key(0), key(1)
    assert store.put(ka, ha, rand_bytes(8192, 20), u8(8192)) and store.put(kb, hb, rand_bytes(8192, 21), u8(8192))
    pa, pb = store.layout.data_path(str(base), ka, ha), store.layout.data_path(str(base), kb, hb)
    os.rename(pa, pa + ".x")
    os.rename(pb, pa)
    os.rename(pa + ".x", pb)
    caplog.set_level(logging.WARNING)
    for _ in range(3):
        assert not store.get_into(ka, ha, bytearray(8192))
        assert not store.contains(ka, ha) if where == "local disk" else store.contains(ka, ha)
    corrupt = store.stats().corrupt
    assert corrupt == 1 if where == "local disk" else corrupt >= 3, corrupt  # elsewhere every get checks it
    assert len(warnings_of(caplog)) == 1
    assert os.path.exists(pa)  # a bad file is never removed: it may be another process's to mend
    data = rand_bytes(8192, 20)
    assert store.put(ka, ha, data, u8(8192))  # a put writes over a file it found bad, anywhere
    out = bytearray(8192)
    assert store.get_into(ka, ha, out) and out == data


@pytest.mark.parametrize("change", ["truncate", "extend", "header"])
def test_a_file_changed_after_its_header_was_checked_is_checked_again(tmp_path, stores, caplog, change):
    """Reads skip parsing header bytes already checked (same digest), never the length check: a
    file cut or grown behind the same header, or given another header, is refused."""
    store = stores([str(tmp_path)])
    (k, h), (other, oh) = key(0), key(1)
    data = rand_bytes(8192, 30)
    assert store.put(k, h, data, u8(8192)) and store.put(other, oh, data, u8(8192))
    out = bytearray(8192)
    assert store.get_into(k, h, out) and bytes(out) == data  # header checked and remembered
    info = store.lookup(k, h)
    path = store.layout.data_path(str(tmp_path), k, h)
    if change == "truncate":
        os.truncate(path, HEADER_SIZE + 8191)
    elif change == "extend":
        with open(path, "ab") as f:
            f.write(b"\0")
    else:  # the other key's header over this file's (same data, same length)
        with open(store.layout.data_path(str(tmp_path), other, oh), "rb") as f:
            foreign = f.read(HEADER_SIZE)
        with open(path, "r+b") as f:
            f.write(foreign)
    caplog.set_level(logging.WARNING)
    with pytest.raises(CorruptEntryError):
        store.read_into(info, bytearray(8192))
    assert not store.get_into(k, h, bytearray(8192)) and store.stats().corrupt == 1
    (line,) = warnings_of(caplog)
    assert ("entry holds key" if change == "header" else "file is") in line


def test_keys_differing_only_in_case_are_told_apart(tmp_path, stores, caplog):
    """On a case-insensitive file system the second key's name opens the first key's file."""
    store = stores([str(tmp_path)])
    h = 330_000
    first, second = f"Org/Model@1@0@{h:x}@bfloat16", f"org/model@1@0@{h:x}@bfloat16"
    data = rand_bytes(4096, 3)
    assert store.put(first, h, data, u8(4096))
    src = store.layout.data_path(str(tmp_path), first, h)
    dst = store.layout.data_path(str(tmp_path), second, h)
    shutil.copy(src, dst)
    shutil.copy(metadata_path(src), metadata_path(dst))
    caplog.set_level(logging.WARNING)
    out = bytearray(4096)
    assert store.lookup(second, h) is None and not store.get_into(second, h, out)
    assert bytes(out) == bytes(4096) and store.stats().corrupt == 1
    (line,) = warnings_of(caplog)
    assert repr(first) in line and repr(second) in line
    assert store.get_into(first, h, out) and bytes(out) == data
    other = rand_bytes(4096, 4)
    assert store.put(second, h, other, u8(4096))  # the refused file does not block a put
    assert store.get_into(second, h, out) and bytes(out) == other


@pytest.mark.parametrize("mode", ["auto", "always"])
def test_a_flipped_data_byte_is_refused(tmp_path, stores, caplog, mode):
    store = stores([str(tmp_path)], checksum=mode)
    k, h = key(0)
    data = rand_bytes(300_000, 5)
    assert store.put(k, h, data, u8(len(data)))
    path = store.layout.data_path(str(tmp_path), k, h)
    assert header_on_disk(path).checksum == checksum_of([data])
    with open(path, "r+b") as f:
        f.seek(HEADER_SIZE + 123_456)
        byte = f.read(1)
        f.seek(HEADER_SIZE + 123_456)
        f.write(bytes([byte[0] ^ 0x10]))
    caplog.set_level(logging.WARNING)
    out = bytearray(len(data))
    assert not store.get_into(k, h, out)
    assert not store.get_into(k, h, out) and store.lookup(k, h) is None
    (line,) = warnings_of(caplog)
    assert "checksum" in line and store.stats().corrupt == 1


SEVERAL = 2 * pygds.pool.task_size() + 12_345
"""An entry of several pieces: 1 MiB ones hashed on the calling thread, task-size ones spread."""


@pytest.mark.parametrize("spread", [False, True], ids=["in turn", "spread"])
@pytest.mark.parametrize("direct", [False, True], ids=["buffered", "O_DIRECT"])
@pytest.mark.parametrize("flip", [5, PIECE_BYTES + 77, SEVERAL - 1], ids=["first", "second", "last"])
def test_an_entry_of_several_pieces_carries_the_checksum_of_all_its_bytes(tmp_path, stores, caplog, direct, flip,
                                                                          spread):
    """Host memory is hashed a piece at a time as it is written and read, the pieces moved in turn
    or spread over pygds's pool: the checksum is still the one of the whole data, and a flipped
    byte in any piece is refused."""
    n = SEVERAL
    store = stores([str(tmp_path)], direct_io=direct, spread_summed_io=spread)
    k, h = key(0)
    data = rand_bytes(n, 11)
    assert store.put(k, h, data, u8(n))
    path = store.layout.data_path(str(tmp_path), k, h)
    assert header_on_disk(path).checksum == checksum_of([data])
    out = bytearray(n)
    assert store.get_into(k, h, out) and out == data
    with open(path, "r+b") as f:
        f.seek(HEADER_SIZE + flip)
        byte = f.read(1)
        f.seek(HEADER_SIZE + flip)
        f.write(bytes([byte[0] ^ 0x01]))
    caplog.set_level(logging.WARNING)
    assert not store.get_into(k, h, bytearray(n)) and store.lookup(k, h) is None
    (line,) = warnings_of(caplog)
    assert "checksum" in line and store.stats().corrupt == 1


def test_a_spread_store_used_from_a_pool_thread_moves_its_pieces_there(tmp_path, stores):
    """Spread pieces wait for pygds's pool; on a pool thread itself (its only one, here) that wait
    would never end, so there the pieces move in turn."""
    store = stores([str(tmp_path)], spread_summed_io=True)
    k, h = key(0)
    data = rand_bytes(SEVERAL, 3)
    threads = pygds.pool.num_threads()
    pygds.pool.set_num_threads(1)
    try:
        assert pygds.pool.submit(store.put, k, h, data, u8(SEVERAL)).result(timeout=60)
        out = bytearray(SEVERAL)
        assert pygds.pool.submit(store.get_into, k, h, out).result(timeout=60) and out == data
        assert pygds.pool.submit(pygds.pool.on_pool_thread).result(timeout=60)
        assert not pygds.pool.on_pool_thread()
    finally:
        pygds.pool.set_num_threads(threads)


def test_checksum_off_writes_and_verifies_none(tmp_path, stores):
    k, h = key(0)
    data = rand_bytes(1000, 6)
    off = stores([str(tmp_path / "off")], checksum="off")
    assert off.put(k, h, data, u8(1000))
    header = header_on_disk(off.layout.data_path(str(tmp_path / "off"), k, h))
    assert header.key == k and header.checksum is None and "checksum" not in header.extra
    assert stores([str(tmp_path)]).put(k, h, data, u8(1000))  # with a checksum
    path = off.layout.data_path(str(tmp_path), k, h)
    with open(path, "r+b") as f:
        f.seek(HEADER_SIZE)
        f.write(bytes([data[0] ^ 1]))
    assert stores([str(tmp_path)], checksum="off").get_into(k, h, bytearray(1000))  # unverified
    assert not stores([str(tmp_path)]).get_into(k, h, bytearray(1000))


def test_a_caller_checksum_is_replaced_by_the_store_own(tmp_path, stores):
    store = stores([str(tmp_path)])
    k, h = key(0)
    data = rand_bytes(500, 7)
    stale = EntryHeader.single((500,), "U8", 1, {"lmcache_version": "1", "checksum": "xxh3_64:" + "0" * 16,
                                                 "key": "someone-else"})
    assert store.put(k, h, data, stale)
    header = header_on_disk(store.layout.data_path(str(tmp_path), k, h))
    assert header.key == k and header.checksum == checksum_of([data])
    assert store.get_into(k, h, bytearray(500))


def test_entries_without_key_or_checksum_are_served(tmp_path, stores):
    """LMCache's own entries (and older plugin versions') carry neither: the other checks run."""
    store = stores([str(tmp_path)])
    k, h = key(0)
    data = rand_bytes(2048, 8)
    path = store.layout.data_path(str(tmp_path), k, h)
    os.makedirs(os.path.dirname(path))
    Path(path).write_bytes(pack_header(u8(2048)) + data)
    Path(metadata_path(path)).write_bytes(pack_header(u8(2048)))
    out = bytearray(2048)
    assert store.get_into(k, h, out) and bytes(out) == data
    assert store.lookup(k, h).header == u8(2048)


def test_an_unknown_checksum_algorithm_is_kept_and_not_verified(tmp_path, stores):
    store = stores([str(tmp_path)])
    k, h = key(0)
    data = rand_bytes(64, 9)
    header = EntryHeader.single((64,), "U8", 1, {"lmcache_version": "1", "key": k, "checksum": "sha999:abc"})
    path = store.layout.data_path(str(tmp_path), k, h)
    os.makedirs(os.path.dirname(path))
    Path(path).write_bytes(pack_header(header) + data)
    out = bytearray(64)
    assert store.get_into(k, h, out) and bytes(out) == data


def test_replaced_between_lookup_and_read_with_the_same_size_is_never_read_with_the_old_header(
    tmp_path, stores
):
    a, b = stores([str(tmp_path)]), stores([str(tmp_path)])
    k, h = key(0)
    old = torch.arange(32, dtype=torch.bfloat16).reshape(4, 8)
    new = torch.arange(16, dtype=torch.float32)  # the same 64 bytes, another shape and dtype
    assert a.put(k, h, old, EntryHeader.for_tensor(old, 1))
    info = b.lookup(k, h)
    assert a.remove(k, h) and a.put(k, h, new, EntryHeader.for_tensor(new, 1))
    with pytest.raises(EntryGoneError, match="header changed"):
        b.read_into(info, torch.empty(4, 8, dtype=torch.bfloat16))
    assert b.stats().corrupt == 0  # the new entry is fine: nothing is dropped
    info = b.lookup(k, h)
    assert info.header.shape == (16,) and info.header.dtype == "F32"
    out = torch.empty(16, dtype=torch.float32)
    b.read_into(info, out)
    assert torch.equal(out, new)


def test_a_header_with_data_offsets_not_from_zero_is_refused(tmp_path, stores):
    """The byte count (end - start) matches the shape and the file: only the start is wrong."""
    store = stores([str(tmp_path)])
    k, h = key(0)
    data = rand_bytes(16, 10)
    meta = {"dtype": "U8", "shape": [16], "data_offsets": [8, 24], "fmt": 1,
            "__metadata__": {"lmcache_version": "1"}}
    text = json.dumps({"kvcache": meta}).encode()
    raw = (HEADER_SIZE - 8).to_bytes(8, "little") + text + b" " * (HEADER_SIZE - 8 - len(text))
    with pytest.raises(CorruptEntryError, match=r"data_offsets must be \[0, nbytes\]"):
        unpack_header(raw, file_size=HEADER_SIZE + 16)
    path = store.layout.data_path(str(tmp_path), k, h)
    os.makedirs(os.path.dirname(path))
    Path(path).write_bytes(raw + data)
    assert store.lookup(k, h) is None and store.stats().corrupt == 1


def test_bounded_name_holding_another_long_key_is_not_listed_under_it(tmp_path, stores):
    store = stores([str(tmp_path)])
    long1, long2 = "m" * 300 + "@1@0@1@bfloat16", "m" * 300 + "@1@0@2@bfloat16"
    h = 440_000
    assert store.put(long1, h, b"1" * 8, u8(8)) and store.put(long2, h, b"2" * 8, u8(8))
    p1, p2 = store.layout.data_path(str(tmp_path), long1, h), store.layout.data_path(str(tmp_path), long2, h)
    shutil.copy(p2, p1)
    fresh = stores([str(tmp_path)])
    assert fresh.wait_for_scan(30)
    assert fresh.keys() == [long2]
    assert not fresh.get_into(long1, h, bytearray(8)) and fresh.stats().corrupt == 1


def test_checksum_setting_is_validated(tmp_path):
    with pytest.raises(ValueError, match=r"checksum 'sometimes' is unknown; use one of auto, once, always, off"):
        KVStore(StoreOptions(paths=[str(tmp_path)], checksum="sometimes"))


# -- LMCache's own reader ------------------------------------------------------------------------
def test_lmcache_reads_the_headers_the_store_writes(tmp_path, stores):
    gds = pytest.importorskip("lmcache.v1.storage_backend.gds_backend")
    from lmcache.v1.memory_management import MemoryFormat

    store = stores([str(tmp_path)])
    tensor = torch.arange(2 * 3 * 16 * 8, dtype=torch.float32).reshape(2, 3, 16, 8).to(torch.bfloat16)
    long_key = "very/long-model-name-" * 20 + "@1@0@abc@bfloat16"
    for k, h in (key(0), (long_key, 0xABC)):
        assert store.put(k, h, tensor, EntryHeader.for_tensor(tensor, MemoryFormat.KV_2LTD))
        path = store.layout.data_path(str(tmp_path), k, h)
        for source in (path, metadata_path(path)):
            with open(source, "rb") as f:
                shape, dtype, nbytes, fmt, extra = gds.unpack_metadata(f.read(HEADER_SIZE))
            assert (shape, dtype, nbytes, fmt) == (tensor.shape, tensor.dtype, tensor.nbytes, MemoryFormat.KV_2LTD)
            assert extra["lmcache_version"] == "1" and extra["key"] == k
            assert extra["checksum"] == checksum_of([tensor.view(torch.uint8).numpy().tobytes()])


# -- faults of the operating system, in a subprocess under the LD_PRELOAD shim ------------------
@pytest.fixture(scope="module")
def shim(tmp_path_factory: pytest.TempPathFactory) -> FaultShim:
    try:
        return build_fault_shim(tmp_path_factory.mktemp("fault-shim"))
    except CompilerMissing as exc:
        pytest.skip(str(exc))


PREAMBLE = """
import ctypes, json, logging, os, sys
logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s:%(name)s:%(message)s")
from lmcache_plugin.format import EntryHeader
from lmcache_plugin.store import KVStore, StoreOptions
_shim = ctypes.CDLL(None)
_shim.pygds_fault_calls.restype = ctypes.c_longlong
CACHE = sys.argv[1]

def arm(**settings):
    for name in [n for n in os.environ if n.startswith("PYGDS_FAULT_")]:
        del os.environ[name]
    os.environ.update({"PYGDS_FAULT_" + n.upper(): str(v) for n, v in settings.items()})
    assert _shim.pygds_fault_reload() == 0

def u8(n):
    return EntryHeader.single((n,), "U8", 1)

def store(**kw):
    return KVStore(StoreOptions(paths=[CACHE], engine="posix", io_threads=0, **kw))

DATA = bytes(range(256)) * 400
K, H = "org/model@1@0@abc@bfloat16", 2748
"""


def run_under_shim(shim: FaultShim, cache: Path, body: str) -> subprocess.CompletedProcess:
    """Run PREAMBLE + `body` with the shim loaded and disarmed (`arm(...)` in the body arms it)."""
    cache.mkdir(exist_ok=True)
    env = shim.env("", base={k: v for k, v in os.environ.items() if not k.startswith("PYGDS_FAULT_")})
    script = PREAMBLE + textwrap.dedent(body)
    return subprocess.run([sys.executable, "-c", script, str(cache)], env=env, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)


def results(done: subprocess.CompletedProcess) -> dict:
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_remove_under_a_read_only_file_system_reports_it(shim, tmp_path):
    cache = tmp_path / "cache"
    done = run_under_shim(shim, cache, """
        s = store()
        assert s.put(K, H, DATA, u8(len(DATA)))
        arm(prefix=CACHE, ops="unlink", errno="EROFS")
        removed = s.remove(K, H)
        out = bytearray(len(DATA))
        served = s.get_into(K, H, out) and bytes(out) == DATA
        contains = s.contains(K, H)
        arm(prefix="")
        print(json.dumps({"removed": removed, "served": served, "contains": contains,
                          "stats": s.stats().removed, "again": s.remove(K, H),
                          "after": s.contains(K, H)}))
    """)
    out = results(done)
    assert out == {"removed": False, "served": True, "contains": True, "stats": 0, "again": True,
                   "after": False}
    warnings = [line for line in done.stderr.splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 1 and "Read-only file system" in warnings[0]
    assert list(cache.rglob("*.safetensors*")) == []


@pytest.mark.parametrize("checksum,nbytes,cut",
                         [("off", 256 * 400, 1000), ("auto", 3 * PIECE_BYTES, PIECE_BYTES + 1000)],
                         ids=["checksum off", "checksum auto, in the second piece"])
def test_a_short_read_is_never_accepted_as_complete(shim, tmp_path, checksum, nbytes, cut):
    """The file's length is right when checked; then it reads short (as when it shrinks)."""
    cache = tmp_path / "cache"
    done = run_under_shim(shim, cache, f"""
        from lmcache_plugin.format import CorruptEntryError
        DATA = bytes(range(256)) * {nbytes // 256}
        s = store(checksum="{checksum}")
        assert s.put(K, H, DATA, u8(len(DATA)))
        info = s.lookup(K, H)
        arm(prefix=CACHE, ops="read", action="eof", after_bytes=4096 + {cut})
        out = bytearray(len(DATA))
        try:
            s.read_into(info, out)
            result = "served"
        except CorruptEntryError as exc:
            result = exc.reason
        arm(prefix="")
        print(json.dumps({{"result": result, "corrupt": s.stats().corrupt,
                          "partial": bytes(out[:{cut}]) == DATA[:{cut}]}}))
    """)
    out = results(done)
    assert out == {"result": f"short read: {cut} of {nbytes} bytes", "corrupt": 1, "partial": True}


def test_a_spread_read_that_fails_leaves_no_piece_to_land_later(shim, tmp_path):
    """Spread, the pieces after the first are handed to pygds's pool. Here the pool's one thread is
    busy, so they wait in its queue while the first piece, read by the caller, fails: once
    `read_into` has raised, no piece may still land in the destination its caller now reuses (the
    queued ones never run), and it raises at once instead of waiting for the busy pool."""
    cache = tmp_path / "cache"
    done = run_under_shim(shim, cache, f"""
        import threading, time
        import pygds
        from lmcache_plugin.format import CorruptEntryError
        DATA = bytes(range(256)) * {SEVERAL // 256}
        s = store(spread_summed_io=True)
        assert s.put(K, H, DATA, u8(len(DATA)))
        info = s.lookup(K, H)
        pygds.pool.set_num_threads(1)
        release = threading.Event()
        pygds.pool.submit(release.wait)  # the pool's one thread, held
        out = bytearray(len(DATA))
        result = []

        def read():
            try:
                s.read_into(info, out)
                result.append("served")
            except CorruptEntryError as exc:
                result.append(exc.reason)

        # the header read passes, then the first piece fails
        arm(prefix=CACHE, ops="read", errno="EIO", skip=1, times=1)
        reader = threading.Thread(target=read)
        reader.start()
        reader.join(30)
        returned = not reader.is_alive() and not release.is_set()
        arm(prefix="")
        release.set()
        pygds.pool.submit(int).result(timeout=30)  # the pool has passed the queued pieces
        time.sleep(0.1)
        print(json.dumps({{"returned": returned, "result": result, "untouched": out == bytearray(len(DATA)),
                          "read_errors": s.stats().read_errors}}))
    """)
    out = results(done)
    assert out["result"][0].startswith("read failed:") and "Input/output error" in out["result"][0], out
    assert out == {"returned": True, "result": out["result"], "untouched": True, "read_errors": 1}


@pytest.mark.parametrize("spread", [False, True], ids=["in turn", "spread"])
@pytest.mark.parametrize("direct", [False, True], ids=["buffered", "O_DIRECT"])
def test_a_write_failing_in_a_later_piece_leaves_nothing_and_the_key_is_stored_again(shim, tmp_path, direct, spread):
    cache = tmp_path / "cache"
    done = run_under_shim(shim, cache, f"""
        DATA = bytes(range(256)) * {SEVERAL // 256}
        s = store(direct_io={direct}, spread_summed_io={spread})
        arm(prefix=CACHE, ops="write", errno="EIO", after_bytes={PIECE_BYTES + 4096},
            times=2)  # aligned for O_DIRECT; the data write fails, then its retry; the header passes
        failed = s.put(K, H, DATA, u8(len(DATA)))
        arm(prefix="")
        left = sorted(os.path.relpath(os.path.join(d, f), CACHE) for d, _, fs in os.walk(CACHE) for f in fs
                      if not d.startswith(os.path.join(CACHE, ".")))
        stored = s.put(K, H, DATA, u8(len(DATA)))
        out = bytearray(len(DATA))
        print(json.dumps({{"failed": failed, "left": left, "stored": stored, "errors": s.stats().put_errors,
                          "served": s.get_into(K, H, out) and bytes(out) == DATA}}))
    """)
    out = results(done)
    assert out == {"failed": False, "left": [], "stored": True, "errors": 1, "served": True}
    assert "Input/output error" in done.stderr


@pytest.mark.parametrize("where", [DATA_TMP, META_TMP], ids=["data", "metadata"])
def test_fsync_is_called_on_data_and_metadata_and_its_failure_fails_the_put(shim, tmp_path, where):
    cache = tmp_path / "cache"
    done = run_under_shim(shim, cache, f"""
        arm(prefix=CACHE, ops="fsync", skip=10**9)  # counts fsync calls, fails none
        assert store(fsync=True).put("counted@1", H, DATA, u8(len(DATA)))
        synced = _shim.pygds_fault_calls()
        arm(prefix=CACHE, ops="fsync", skip=10**9)
        assert store(fsync=False).put("uncounted@1", H, DATA, u8(len(DATA)))
        unsynced = _shim.pygds_fault_calls()
        arm(prefix=CACHE, ops="fsync", match={where!r}, errno="EIO")
        failed = store(fsync=True).put(K, H, DATA, u8(len(DATA)))
        print(json.dumps({{"synced": synced, "unsynced": unsynced, "failed": failed}}))
    """)
    assert results(done) == {"synced": 2, "unsynced": 0, "failed": False}
    errors = [line for line in done.stderr.splitlines() if line.startswith("ERROR")]
    assert len(errors) == 1 and "Input/output error" in errors[0]
    assert incomplete(cache) == [] and len(list(cache.rglob("*.safetensors"))) == 2


@pytest.mark.parametrize("where", [DATA_TMP, META_TMP], ids=["data", "metadata"])
def test_a_failed_rename_leaves_nothing_and_the_put_heals(shim, tmp_path, where):
    """The data file's rename failing, or the `.metadata`'s after the data file was published
    (which must then be taken away again): the put fails, nothing of it is left or indexed."""
    cache = tmp_path / "cache"
    done = run_under_shim(shim, cache, f"""
        s = store()
        arm(prefix=CACHE, ops="rename", match={where!r}, errno="EIO", times=1)
        first = s.put(K, H, DATA, u8(len(DATA)))
        files = sorted(os.listdir(os.path.dirname(s.layout.data_path(CACHE, K, H))))
        contains, injected = s.contains(K, H), _shim.pygds_fault_injected()
        again = s.put(K, H, DATA, u8(len(DATA)))
        out = bytearray(len(DATA))
        print(json.dumps({{"first": first, "contains": contains, "files": files, "injected": injected,
                          "again": again, "served": s.get_into(K, H, out) and bytes(out) == DATA}}))
    """)
    assert results(done) == {"first": False, "contains": False, "files": [], "injected": 1, "again": True,
                             "served": True}
    errors = [line for line in done.stderr.splitlines() if line.startswith("ERROR")]
    assert len(errors) == 1 and "Input/output error" in errors[0], errors
    assert "org/model@1@0@abc@bfloat16" in errors[0], errors[0]
    assert incomplete(cache) == []


@pytest.mark.parametrize("renames_done", [1, 2])
def test_a_crash_between_the_two_renames_never_shows_metadata_without_data(shim, tmp_path, renames_done):
    """Killed right after the first rename (and, for contrast, after the second): the data file
    is published first, so no `.metadata` ever names data that is not there in full."""
    cache = tmp_path / "cache"
    done = run_under_shim(shim, cache, f"""
        s = store()
        arm(prefix=CACHE, ops="rename", match=".tmp", action="crash-after", skip={renames_done - 1})
        s.put(K, H, DATA, u8(len(DATA)))
        print("not killed")
    """)
    assert done.returncode == -signal.SIGKILL, f"{done.stdout}\n{done.stderr}"
    names = sorted(p.name for p in cache.rglob("*") if p.is_file())
    data_name = "org%2Fmodel%401%400%40abc%40bfloat16.kvcache.safetensors"
    assert names == ([data_name] if renames_done == 1 else [data_name, data_name + ".metadata"])
    assert incomplete(cache, allow_missing_metadata=True) == []
    with KVStore(StoreOptions(paths=[str(cache)], engine="posix")) as reader:  # all of it is served
        data = bytes(range(256)) * 400
        out = bytearray(len(data))
        assert reader.get_into("org/model@1@0@abc@bfloat16", 2748, out) and bytes(out) == data
    assert incomplete(cache) == []  # the reader rebuilt the missing .metadata


def test_device_memory_checksums_follow_the_setting(standin, tmp_path):
    """On the CUDA stand-in: "auto" neither writes nor verifies a checksum for device memory (that
    would copy every chunk to the host: a damaged byte is served); "always" does both, through a
    host copy."""
    script = textwrap.dedent("""
        import json, os, sys
        from pygds.memory import DeviceBuffer
        from lmcache_plugin.format import HEADER_SIZE, EntryHeader, checksum_of, unpack_header
        from lmcache_plugin.store import KVStore, StoreOptions
        cache, data = sys.argv[1], bytes(range(256)) * 300 + b"tail"
        header, n = EntryHeader.single((len(data),), "U8", 1), len(data)
        def store(mode, sub):
            return KVStore(StoreOptions(paths=[os.path.join(cache, sub)], engine="posix", checksum=mode))
        def device(content=None):
            buf = DeviceBuffer(n)
            if content is not None:
                buf.copy_from_host(content)
            return buf
        def read(s, k):
            buf = device()
            out = bytearray(n)
            ok = s.get_into(k, 1234, buf)
            buf.copy_to_host(out)
            return ok and bytes(out) == data
        def flip(s, k):
            path = s.layout.data_path(s.layout.write_path, k, 1234)
            with open(path, "r+b") as f:
                f.seek(HEADER_SIZE + 5000)
                f.write(bytes([data[5000] ^ 1]))
        def stored_checksum(s, k):
            with open(s.layout.data_path(s.layout.write_path, k, 1234), "rb") as f:
                return unpack_header(f.read(HEADER_SIZE)).checksum
        out = {}
        for mode in ("auto", "always"):
            s = store(mode, mode)
            assert s.put("dev@1", 1234, device(data), header) and s.put("host@1", 1234, data, header)
            out[mode] = {"written": stored_checksum(s, "dev@1"), "read": read(s, "dev@1")}
            flip(s, "host@1")
            out[mode]["flipped_host_entry_into_device"] = s.get_into("host@1", 1234, device())
            empty = EntryHeader.single((0,), "U8", 1)
            out[mode]["empty"] = s.put("empty@1", 1234, device(data), empty) and s.get_into("empty@1", 1234, device())
            s.close()
        out["expected"] = checksum_of([data])
        print(json.dumps(out))
    """)
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], env=standin.env(),
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["auto"] == {"written": None, "read": True, "flipped_host_entry_into_device": True, "empty": True}
    assert out["always"] == {"written": out["expected"], "read": True, "flipped_host_entry_into_device": False,
                             "empty": True}


def _within(seconds: float, fn, *args):
    """`fn(*args)` on a thread; fails the test (instead of hanging it) when it does not return."""
    out: list = []
    worker = threading.Thread(target=lambda: out.append(fn(*args)), daemon=True)
    worker.start()
    worker.join(seconds)
    assert out, f"{fn.__name__} did not return within {seconds} s"
    return out[0]


def test_a_fifo_at_an_entry_name_is_a_miss_never_a_hang_and_the_key_is_stored_again(stores, tmp_path):
    """The start-up scan indexes names from listings alone; a FIFO put at an entry's name must
    neither block a lookup (an open of a FIFO waits for a writer) nor make a put skip the key."""
    k, h = key(1)
    data = np.arange(4096, dtype=np.uint8).tobytes()
    with KVStore(StoreOptions(paths=str(tmp_path), engine="posix")) as first:
        assert first.put(k, h, data, u8(len(data)))
        path = first.lookup(k, h).path
    os.unlink(path)
    os.unlink(metadata_path(path))
    os.mkfifo(path)
    os.mkfifo(metadata_path(path))
    store = stores(str(tmp_path))
    assert store.wait_for_scan(30) and store.contains(k, h)  # the scan saw the name
    assert _within(10, store.lookup, k, h) is None
    assert _within(10, store.put, k, h, data, u8(len(data)))
    dest = bytearray(len(data))
    assert _within(10, store.get_into, k, h, dest) and bytes(dest) == data


def test_close_refuses_new_submits_and_finishes_every_accepted_put(tmp_path):
    """A producer that keeps submitting while close() runs: every put the store accepted is on
    disk when close() returns, and the producer learns at once that no more are taken."""
    store = KVStore(StoreOptions(paths=str(tmp_path), engine="posix", io_threads=2))
    accepted: list = []
    refused: list[BaseException] = []
    data = bytes(4096)

    def produce() -> None:
        i = 0
        while True:
            k, h = key(i)
            try:
                accepted.append((k, h, store.submit_put(k, h, data, u8(len(data)))))
            except RuntimeError as exc:
                refused.append(exc)
                return
            i += 1

    producer = threading.Thread(target=produce)
    producer.start()
    while len(accepted) < 200:
        time.sleep(0.001)
    store.close()
    producer.join(30)
    assert not producer.is_alive() and refused and "closing" in str(refused[0])
    assert all(fut.done() and fut.result() for _, _, fut in accepted)
    with KVStore(StoreOptions(paths=str(tmp_path), engine="posix", scan=False)) as again:
        assert all(again.contains(k, h) for k, h, _ in accepted)
