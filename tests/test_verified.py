"""With `checksum: once` a file already proved against its checksum is not hashed again, and no
change to it goes unnoticed; `auto` and `always` hash every read.

The store remembers a proved data file by its identity (device, inode, size, mtime, ctime) on
local disk file systems only, once a read verified it with every page of it clean before and
after the read and its last change `verified.SETTLE_NS` back (shortened here by the `settle`
fixture: the rule, not its value, is under test). A put proves nothing. The tests use real files
and real processes, change files the ways other writers do (`write`, rename, shared mappings,
writes into the temporary file of a put), and check that the next read hashes (and refuses) what
changed.
"""

from __future__ import annotations

import os
import platform
import select
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time

import numpy as np
import pytest

from lmcache_plugin.format import HEADER_SIZE, EntryHeader
from lmcache_plugin import verified
from lmcache_plugin.verified import LOCAL_FILE_SYSTEMS, VerifiedFiles
from pygds import fsinfo

N = 64 << 10
SETTLE_S = 0.3


def entry(i: int) -> tuple[str, int, bytes]:
    chunk_hash = 110_000 * (i + 1)
    data = np.random.default_rng(i).integers(0, 256, N, dtype=np.uint8).tobytes()
    return f"org/model@1@0@{chunk_hash:x}@bfloat16", chunk_hash, data


@pytest.fixture(autouse=True)
def settle(monkeypatch):
    monkeypatch.setattr(verified, "SETTLE_NS", int(SETTLE_S * 1e9))


@pytest.fixture
def local_dir(tmp_path):
    kind = fsinfo.fs_type(str(tmp_path))
    if kind not in LOCAL_FILE_SYSTEMS:
        pytest.skip(f"{tmp_path} is not on a local file system ({kind})")
    probe = tmp_path / "cachestat-probe"
    probe.write_bytes(b"x")
    fd = os.open(probe, os.O_RDONLY)
    try:
        os.fsync(fd)
        if not VerifiedFiles([str(tmp_path)]).pages_clean(fd):
            pytest.skip("this kernel reports no dirty pages (cachestat, Linux 6.5): nothing is proved")
    finally:
        os.close(fd)
        probe.unlink()
    return str(tmp_path)


def put(store, i: int) -> tuple[str, int, bytes]:
    k, h, data = entry(i)
    assert store.put(k, h, data, EntryHeader.single((N,), "U8", 1))
    return k, h, data


def settle_file(path: str) -> None:
    """Write the file's pages back and wait until its last change is settled."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        time.sleep(max(0.0, os.fstat(fd).st_ctime_ns / 1e9 + SETTLE_S + 0.05 - time.time()))
    finally:
        os.close(fd)


def prove(store, k: str, h: int) -> None:
    """Make the entry proved by a read: once its pages are written back (the put left them dirty)
    and its last change has settled."""
    settle_file(path_of(store, k, h))
    skipped = store.stats().checksum_skipped
    assert read(store, k, h) is not None
    assert store.stats().checksum_skipped == skipped  # this read hashed: it proves the file


def read(store, k: str, h: int) -> bytes | None:
    dest = bytearray(N)
    return bytes(dest) if store.get_into(k, h, dest) else None


def readline(proc: subprocess.Popen, timeout: float = 30) -> str:
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, "the other process said nothing"
    return proc.stdout.readline().strip()


def path_of(store, k: str, h: int) -> str:
    return store.lookup(k, h).path


def test_a_proved_file_is_not_hashed_again_and_an_in_place_write_is_still_caught(stores, local_dir):
    store = stores(local_dir, checksum="once")
    k, h, data = put(store, 1)
    prove(store, k, h)
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
    store = stores(local_dir, checksum="once")
    k, h, data = put(store, 2)
    prove(store, k, h)
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


def test_a_put_proves_nothing_and_a_read_proves_once_the_pages_are_written_back(stores, local_dir):
    store = stores(local_dir, checksum="once")
    k, h, data = put(store, 3)
    time.sleep(SETTLE_S + 0.05)
    assert read(store, k, h) == data  # hashed: the put proved nothing, and its pages are dirty
    assert store.stats().checksum_skipped == 0
    prove(store, k, h)
    for _ in range(3):
        assert read(store, k, h) == data
    assert store.stats().checksum_skipped == 3


def test_a_young_file_is_hashed_on_every_read(stores, local_dir, monkeypatch):
    """A file changed less than `SETTLE_NS` ago is never taken as proved, its pages clean or
    not: a write still running could have started before that change."""
    monkeypatch.setattr(verified, "SETTLE_NS", 60 * 10**9)
    store = stores(local_dir, checksum="once", fsync=True)
    k, h, data = put(store, 4)
    for _ in range(3):
        assert read(store, k, h) == data
    assert store.stats().checksum_skipped == 0


@pytest.mark.parametrize("mode", ["auto", "always"])
def test_other_checksum_modes_hash_every_read(stores, local_dir, mode):
    store = stores(local_dir, checksum=mode)
    k, h, data = put(store, 5)
    prove(store, k, h)
    for _ in range(3):
        assert read(store, k, h) == data
    assert store.stats().checksum_skipped == 0


def test_pages_are_clean_only_once_written_back(local_dir):
    files, elsewhere = VerifiedFiles([local_dir]), VerifiedFiles([local_dir], enabled=False)
    fd = os.open(os.path.join(local_dir, "dirty"), os.O_RDWR | os.O_CREAT, 0o600)

    def dirty_after_a_write() -> bool:
        """The kernel writes back after seconds; a busy flusher may be quicker, so thrice."""
        return any(os.pwrite(fd, b"x" * (1 << 20), 0) and not files.pages_clean(fd) for _ in range(3))

    try:
        assert dirty_after_a_write()
        os.fsync(fd)
        assert files.pages_clean(fd) and not elsewhere.pages_clean(fd)
        assert dirty_after_a_write()
    finally:
        os.close(fd)


# -- other writers: shared mappings ----------------------------------------------------------------

_MMAP_WRITER = textwrap.dedent(
    """
    import mmap, os, sys
    path, off, predirty = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
    fd = os.open(path, os.O_RDWR)
    m = mmap.mmap(fd, 0)
    if predirty:
        m[off] = m[off]          # same value: the page is dirty and writable, the bytes unchanged
        print("dirtied", flush=True)
        sys.stdin.readline()     # the store reads the file meanwhile
    m[off] = m[off] ^ 0xFF       # the real change
    m.flush()                    # msync(MS_SYNC): written back, clean again
    print("changed", flush=True)
    sys.stdin.readline()
    m.close()
    os.close(fd)
    """
)


class MmapWriter:
    """Another process that changes one data byte of a file through a shared mapping."""

    def __init__(self, path: str, predirty: bool) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _MMAP_WRITER, path, str(HEADER_SIZE + 100), "1" if predirty else "0"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )

    def expect(self, line: str) -> None:
        assert self.proc.stdout.readline().strip() == line

    def go_on(self) -> None:
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.go_on()
        self.proc.wait(60)


def read_after_a_store_through_a_mapping(store, k: str, h: int) -> bytes | None:
    """What a read serves once another process has changed a byte of the entry's data through a
    fresh shared mapping."""
    writer = MmapWriter(path_of(store, k, h), predirty=False)
    try:
        writer.expect("changed")
        return read(store, k, h)
    finally:
        writer.close()


@pytest.fixture
def shm_dir():
    """A directory on tmpfs (/dev/shm), removed at the end (close its stores first)."""
    if not os.path.isdir("/dev/shm") or fsinfo.fs_type("/dev/shm") != "tmpfs":
        pytest.skip("no tmpfs at /dev/shm")
    base = tempfile.mkdtemp(dir="/dev/shm", prefix="pygds-test-")
    yield base
    shutil.rmtree(base, ignore_errors=True)


def test_on_tmpfs_every_read_hashes_so_a_store_through_a_mapping_is_refused(stores, shm_dir):
    """tmpfs never faults a mapped page for writing: a store through a shared mapping (msync
    included) moves no timestamp, so nothing there is ever taken as proved."""
    store = stores(shm_dir, checksum="once")
    k, h, data = put(store, 6)
    for _ in range(2):
        assert read(store, k, h) == data
    try:
        served = read_after_a_store_through_a_mapping(store, k, h)
        stats = store.stats()
    finally:
        store.close()  # before `shm_dir` is removed: its close writes the snapshot there
    assert served is None and stats.checksum_skipped == 0 and stats.corrupt == 1


def test_a_page_dirtied_through_a_mapping_before_the_read_keeps_the_file_unproved(stores, local_dir):
    """Another process dirties a page through a mapping (same value) and the change settles: the
    page stays writable without a fault, so a later store would move no timestamp. The read finds
    the dirty page and proves nothing; the change after it is hashed and refused."""
    store = stores(local_dir, checksum="once")
    k, h, data = put(store, 7)
    prove(store, k, h)
    writer = MmapWriter(path_of(store, k, h), predirty=True)
    try:
        writer.expect("dirtied")
        time.sleep(SETTLE_S + 0.05)  # the fault's ctime has settled: only the dirty page stops a proof
        assert read(store, k, h) == data  # hashed (the identity moved), and not proved again
        writer.go_on()
        writer.expect("changed")
        served = read(store, k, h)
    finally:
        writer.close()
    assert served is None and store.stats().corrupt == 1


def test_a_store_through_a_mapping_after_the_proof_is_caught(stores, local_dir):
    """A proved file's pages are clean: the first store through a new mapping faults and moves
    ctime, so the next read hashes and refuses the change."""
    store = stores(local_dir, checksum="once")
    k, h, data = put(store, 8)
    prove(store, k, h)
    assert read_after_a_store_through_a_mapping(store, k, h) is None and store.stats().corrupt == 1


# -- other writers: a write stalled inside its system call ---------------------------------------

_UFFD_WRITER = r"""
# A writer whose single write syscall stalls (userfaultfd on its source buffer) after the kernel
# has moved the file's mtime/ctime, then finishes on request.
import ctypes, mmap, os, select, struct, sys, threading
path, offset, direct = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
PAGE = 4096
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
uffd = libc.syscall(ctypes.c_long(323), ctypes.c_long(os.O_CLOEXEC))  # userfaultfd(2), x86-64
if uffd < 0:
    print("no userfaultfd", ctypes.get_errno(), flush=True)
    sys.exit(0)
api = (ctypes.c_uint64 * 3)(0xAA, 0, 0)
assert libc.ioctl(uffd, ctypes.c_ulong(0xC018AA3F), api) == 0, ctypes.get_errno()
region = mmap.mmap(-1, PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
addr = ctypes.addressof(ctypes.c_char.from_buffer(region))
reg = (ctypes.c_uint64 * 4)(addr, PAGE, 1, 0)  # range, mode MISSING
assert libc.ioctl(uffd, ctypes.c_ulong(0xC020AA00), reg) == 0, ctypes.get_errno()
fd = os.open(path, os.O_WRONLY | (os.O_DIRECT if direct else 0))
buf = (ctypes.c_char * PAGE).from_address(addr)
result = []
t = threading.Thread(target=lambda: result.append(os.pwrite(fd, memoryview(buf).cast("B"), offset)))
t.start()
msg = os.read(uffd, 32)  # the write faulted on its source: stalled inside the syscall
print("stalled", flush=True)
sys.stdin.readline()
src = mmap.mmap(-1, PAGE)
old = os.pread(os.open(path, os.O_RDONLY), PAGE, offset)
src.write(bytes(b ^ 0xFF for b in old))
srcaddr = ctypes.addressof(ctypes.c_char.from_buffer(src))
cp = (ctypes.c_uint64 * 5)(addr, srcaddr, PAGE, 0, 0)
assert libc.ioctl(uffd, ctypes.c_ulong(0xC028AA03), cp) == 0, ctypes.get_errno()
t.join()
os.close(fd)
print("written", result[0], flush=True)
"""


@pytest.mark.skipif(platform.machine() != "x86_64", reason="the writer calls userfaultfd by its x86-64 number")
@pytest.mark.parametrize("direct", [False, True], ids=["buffered", "o_direct"])
def test_with_the_default_checksum_a_write_stalled_inside_its_syscall_is_never_served(stores, local_dir, direct):
    """Another process issues one in-place `pwrite` (buffered or O_DIRECT) of a page of an
    entry's data whose source buffer faults (userfaultfd here; a source mapped from a slow FUSE
    or NFS file does the same). The kernel moves mtime and ctime before it copies a byte, then
    the call sleeps. Two seconds later the file looks settled and clean, and a read hashes the
    old bytes; the write then lands without moving a timestamp. `checksum: once` would take the
    file as proved there (its documented trust); the default hashes every read and refuses the
    changed bytes."""
    store = stores(local_dir, fsync=True)
    assert store.wait_for_scan(30)
    k, h, data = entry(9)
    assert store.put(k, h, data, EntryHeader.single((N,), "U8", 1))
    writer = subprocess.Popen(
        [sys.executable, "-c", _UFFD_WRITER, path_of(store, k, h), str(HEADER_SIZE), "1" if direct else "0"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        said = readline(writer)
        if said.startswith("no userfaultfd"):
            pytest.skip(f"userfaultfd is not available here ({said})")
        assert said == "stalled"
        time.sleep(2.3)  # `verified.SETTLE_NS`, not shortened
        assert read(store, k, h) == data
        writer.stdin.write("\n")
        writer.stdin.flush()
        assert readline(writer).startswith("written 4096")
    finally:
        writer.stdin.close()
        writer.wait(30)
    assert read(store, k, h) is None and store.stats().checksum_skipped == 0


# -- other writers: into the files a put writes -----------------------------------------------------

_WATCHER = textwrap.dedent(
    """
    # Watch a fan-out directory; change every data file the store writes, one byte in its data.
    # "create": in the temporary file, once its data is in, before the put renames it.
    # "moved": right after the rename to the final name, restoring the mtime (os.utime).
    import ctypes, os, select, struct, sys
    directory, header_size, nbytes, mode = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.inotify_init1(os.O_NONBLOCK)
    assert libc.inotify_add_watch(fd, directory.encode(), 0x100 if mode == "create" else 0x80) >= 0
    print("ready", flush=True)
    while True:
        ready, _, _ = select.select([fd, sys.stdin], [], [], 60)
        if sys.stdin in ready or not ready:
            break
        buf, off = os.read(fd, 65536), 0
        while off < len(buf):
            _, _, _, ln = struct.unpack_from("iIII", buf, off)
            name = buf[off + 16:off + 16 + ln].rstrip(b"\\0").decode()
            off += 16 + ln
            wanted = ".kvcache.safetensors.tmp" in name if mode == "create" else name.endswith(".kvcache.safetensors")
            if not wanted:
                continue
            try:
                f = os.open(os.path.join(directory, name), os.O_RDWR)
            except OSError:
                continue
            try:
                for _ in range(100000):
                    if os.fstat(f).st_size >= header_size + nbytes:
                        break
                st = os.fstat(f)
                b = os.pread(f, 1, header_size + 100)
                os.pwrite(f, bytes([b[0] ^ 0xFF]), header_size + 100)
                if mode == "moved":
                    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
            finally:
                os.close(f)
            print("changed", flush=True)
    """
)


def same_directory_entry(i: int) -> tuple[str, int, bytes]:
    """Entries whose chunk hashes (12340000 and up) all fan out to directory 12/34."""
    chunk_hash = 12_340_000 + i
    return f"org/model@1@0@{chunk_hash:x}@bfloat16", chunk_hash, entry(i)[2]


@pytest.mark.parametrize("mode", ["create", "moved"])
def test_a_write_into_a_puts_file_is_never_served(stores, local_dir, mode):
    """Another process changes every file the puts write: in the temporary file before the
    rename ("create"), or right after it with the mtime put back ("moved"). The put proves
    nothing, so every read hashes and refuses the change."""
    store = stores(local_dir, checksum="once", fsync=True)
    assert store.wait_for_scan(30)
    directory = os.path.join(local_dir, "12", "34")
    os.makedirs(directory)
    watcher = subprocess.Popen(
        [sys.executable, "-c", _WATCHER, directory, str(HEADER_SIZE), str(N), mode],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert readline(watcher) == "ready"
        for i in range(4):
            k, h, data = same_directory_entry(i)
            assert store.put(k, h, data, EntryHeader.single((N,), "U8", 1))
            assert readline(watcher) == "changed"
            assert read(store, k, h) is None and read(store, k, h) is None
    finally:
        watcher.stdin.write("\n")
        watcher.stdin.flush()
        watcher.wait(60)
    assert store.stats().corrupt == 4
