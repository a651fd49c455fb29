"""A file the store already verified is not hashed again, and no change to it goes unnoticed.

The store remembers a verified data file by its identity (device, inode, size, mtime, ctime) once
the file has settled (`verified.SETTLE_NS`), on local file systems only. These tests wait for real
files to settle, then change them the ways other writers do and check that the next read hashes
(and refuses) what changed.
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

from lmcache_plugin.format import HEADER_SIZE, EntryHeader
from lmcache_plugin.verified import LOCAL_FILE_SYSTEMS, SETTLE_NS
from pygds import fsinfo

N = 64 << 10


def entry(i: int) -> tuple[str, int, bytes]:
    chunk_hash = 110_000 * (i + 1)
    data = np.random.default_rng(i).integers(0, 256, N, dtype=np.uint8).tobytes()
    return f"org/model@1@0@{chunk_hash:x}@bfloat16", chunk_hash, data


def settle() -> None:
    time.sleep(SETTLE_NS / 1e9 + 0.2)


@pytest.fixture
def local_dir(tmp_path):
    if fsinfo.fs_type(str(tmp_path)) not in LOCAL_FILE_SYSTEMS:
        pytest.skip(f"{tmp_path} is not on a local file system ({fsinfo.fs_type(str(tmp_path))})")
    return str(tmp_path)


def read(store, k: str, h: int) -> bytes | None:
    dest = bytearray(N)
    return bytes(dest) if store.get_into(k, h, dest) else None


def path_of(store, k: str, h: int) -> str:
    return store.lookup(k, h).path


def test_a_settled_file_is_hashed_once_and_an_in_place_write_is_still_caught(stores, local_dir):
    store = stores(local_dir)
    k, h, data = entry(1)
    assert store.put(k, h, data, EntryHeader.single((N,), "U8", 1))
    settle()
    assert read(store, k, h) == data  # verified, remembered
    assert read(store, k, h) == data  # the same file version: not hashed
    assert store.stats().checksum_skipped == 1

    fd = os.open(path_of(store, k, h), os.O_WRONLY)  # another writer flips one byte in place
    try:
        os.pwrite(fd, bytes([data[100] ^ 0xFF]), HEADER_SIZE + 100)
    finally:
        os.close(fd)
    assert read(store, k, h) is None  # identity changed: hashed, refused
    stats = store.stats()
    assert stats.corrupt == 1 and stats.checksum_skipped == 1


def test_a_file_replaced_by_rename_is_hashed_again(stores, local_dir, tmp_path_factory):
    store = stores(local_dir)
    k, h, data = entry(2)
    assert store.put(k, h, data, EntryHeader.single((N,), "U8", 1))
    settle()
    assert read(store, k, h) == data and read(store, k, h) == data
    assert store.stats().checksum_skipped == 1

    # the same key with other bytes, written by another store, renamed over this file
    other_dir = str(tmp_path_factory.mktemp("other"))
    other = stores(other_dir)
    changed = bytes(b ^ 0x5A for b in data)
    assert other.put(k, h, changed, EntryHeader.single((N,), "U8", 1))
    os.rename(path_of(other, k, h), path_of(store, k, h))
    assert read(store, k, h) == changed  # a new inode: hashed (and right)
    assert store.stats().checksum_skipped == 1


def test_a_young_file_is_hashed_on_every_read(stores, local_dir):
    store = stores(local_dir)
    k, h, data = entry(3)
    assert store.put(k, h, data, EntryHeader.single((N,), "U8", 1))
    for _ in range(3):
        assert read(store, k, h) == data
    assert store.stats().checksum_skipped == 0  # changed less than SETTLE_NS before each read


def test_checksum_always_hashes_every_read(stores, local_dir):
    store = stores(local_dir, checksum="always")
    k, h, data = entry(4)
    assert store.put(k, h, data, EntryHeader.single((N,), "U8", 1))
    settle()
    for _ in range(3):
        assert read(store, k, h) == data
    assert store.stats().checksum_skipped == 0
