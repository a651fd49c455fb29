"""A file already proved against its checksum is not hashed again, and no change to it goes
unnoticed.

The store remembers a proved data file by its identity (device, inode, size, mtime, ctime) on
local file systems only: from its put where a write after a `stat` always moves ctime (Linux 6.13
and later), else once a read verified it and its last change lies `verified.SETTLE_NS` back. The
tests use real files, wait where the machine's timestamps need it, change files the ways other
writers do, and check that the next read hashes (and refuses) what changed.
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

from lmcache_plugin.format import HEADER_SIZE, EntryHeader
from lmcache_plugin.verified import LOCAL_FILE_SYSTEMS, SETTLE_NS, VerifiedFiles, fine_grained_ctime
from pygds import fsinfo

N = 64 << 10


def entry(i: int) -> tuple[str, int, bytes]:
    chunk_hash = 110_000 * (i + 1)
    data = np.random.default_rng(i).integers(0, 256, N, dtype=np.uint8).tobytes()
    return f"org/model@1@0@{chunk_hash:x}@bfloat16", chunk_hash, data


@pytest.fixture
def local_dir(tmp_path):
    kind = fsinfo.fs_type(str(tmp_path))
    if kind not in LOCAL_FILE_SYSTEMS:
        pytest.skip(f"{tmp_path} is not on a local file system ({kind})")
    return str(tmp_path)


def put(store, i: int) -> tuple[str, int, bytes]:
    k, h, data = entry(i)
    assert store.put(k, h, data, EntryHeader.single((N,), "U8", 1))
    return k, h, data


def prove(store, k: str, h: int, local_dir: str) -> None:
    """Make the entry proved: at once where ctime is fine-grained (the put did), else by a read
    once the file has settled."""
    if not fine_grained_ctime(local_dir):
        time.sleep(SETTLE_NS / 1e9 + 0.2)
        assert read(store, k, h) is not None


def read(store, k: str, h: int) -> bytes | None:
    dest = bytearray(N)
    return bytes(dest) if store.get_into(k, h, dest) else None


def path_of(store, k: str, h: int) -> str:
    return store.lookup(k, h).path


def test_a_proved_file_is_not_hashed_again_and_an_in_place_write_is_still_caught(stores, local_dir):
    store = stores(local_dir)
    k, h, data = put(store, 1)
    prove(store, k, h, local_dir)
    skipped = store.stats().checksum_skipped
    assert read(store, k, h) == data and read(store, k, h) == data
    assert store.stats().checksum_skipped == skipped + 2

    fd = os.open(path_of(store, k, h), os.O_WRONLY)  # another writer flips one byte in place
    try:
        os.pwrite(fd, bytes([data[100] ^ 0xFF]), HEADER_SIZE + 100)
    finally:
        os.close(fd)
    assert read(store, k, h) is None  # identity changed: hashed, refused
    stats = store.stats()
    assert stats.corrupt == 1 and stats.checksum_skipped == skipped + 2


def test_a_file_replaced_by_rename_is_hashed_again(stores, local_dir, tmp_path_factory):
    store = stores(local_dir)
    k, h, data = put(store, 2)
    prove(store, k, h, local_dir)
    assert read(store, k, h) == data
    skipped = store.stats().checksum_skipped
    assert skipped >= 1

    # the same key with other bytes, written by another store, renamed over this file
    other = stores(str(tmp_path_factory.mktemp("other")))
    changed = bytes(b ^ 0x5A for b in data)
    assert other.put(k, h, changed, EntryHeader.single((N,), "U8", 1))
    os.rename(path_of(other, k, h), path_of(store, k, h))
    assert read(store, k, h) == changed  # a new inode: hashed (and right)
    assert store.stats().checksum_skipped == skipped


def test_with_fine_grained_timestamps_a_put_proves_its_file(stores, local_dir):
    if not fine_grained_ctime(local_dir):
        pytest.skip("this kernel's timestamps in this file system are coarse (before Linux 6.13)")
    store = stores(local_dir)
    k, h, data = put(store, 3)
    for _ in range(3):
        assert read(store, k, h) == data
    assert store.stats().checksum_skipped == 3


def test_with_coarse_timestamps_a_young_file_is_hashed_on_every_read(stores, local_dir):
    if fine_grained_ctime(local_dir):
        pytest.skip("this kernel's timestamps are fine-grained once read (Linux 6.13 and later)")
    store = stores(local_dir)
    k, h, data = put(store, 4)
    for _ in range(3):
        assert read(store, k, h) == data
    assert store.stats().checksum_skipped == 0  # changed less than SETTLE_NS before each read


def test_checksum_always_hashes_every_read(stores, local_dir):
    store = stores(local_dir, checksum="always")
    k, h, data = put(store, 5)
    prove(store, k, h, local_dir)
    for _ in range(3):
        assert read(store, k, h) == data
    assert store.stats().checksum_skipped == 0


def test_a_put_proves_only_the_file_it_wrote(local_dir):
    """Another file renamed to the entry's name between the put's rename and its look at the
    name is not taken for the file the put wrote."""
    files = VerifiedFiles([local_dir])
    path, other = os.path.join(local_dir, "entry"), os.path.join(local_dir, "other")
    for name in (path, other):
        with open(name, "wb") as fh:
            fh.write(b"x" * 4096)
    written = os.stat(path)
    os.rename(other, path)  # what the put wrote is gone; another file holds the name
    files.written(local_dir, path, written)
    now = os.stat(path)
    assert not files.holds(path, now, now)

    files.written(local_dir, path, now)  # the file at the name is the one written
    assert files.holds(path, now, now) == fine_grained_ctime(local_dir)
