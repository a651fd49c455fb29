"""Index snapshots: a restart indexes what the last close saw at once, the scan confirms it, and
no snapshot, however stale, damaged or foreign, makes a read return wrong bytes."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap
import threading

import pytest

from benchmarks.bench_scan import lmcache_scanner
from lmcache_plugin import snapshot
from lmcache_plugin.commands.cache import scan as cache_scan
from lmcache_plugin.format import HEADER_SIZE, EntryHeader
from lmcache_plugin.index import Index
from lmcache_plugin.layout import Layout, metadata_path
from lmcache_plugin.scan import Scanner, _plain_stems

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def key(i: int) -> tuple[str, int]:
    chunk_hash = i * 7919 + 123457
    return f"org/model@1@0@{chunk_hash:x}@bfloat16", chunk_hash


def payload(i: int, n: int = 100) -> bytes:
    return bytes((i + j) % 251 for j in range(n))


def u8(n: int) -> EntryHeader:
    return EntryHeader.single((n,), "U8", 1)


def fill(stores, paths, count: int, **kw) -> None:
    """`count` entries written by a store that is then closed (its close writes the snapshots)."""
    store = stores(paths, **kw)
    assert store.wait_for_scan(30)
    for i in range(count):
        assert store.put(*key(i), payload(i), u8(100))
    store.close()


def loaded(paths, **kw) -> tuple[Index, Scanner]:
    """A fresh index with the snapshots loaded and the scan not yet run."""
    index = Index()
    scanner = Scanner(Layout(paths), index, **kw)
    index.begin_scan()
    scanner.load_snapshots()
    return index, scanner


def stem(i: int) -> str:
    return Layout("/x").stem(key(i)[0])


def data_file(base, i: int) -> str:
    return Layout(str(base)).data_path(str(base), *key(i))


def test_a_restart_indexes_the_snapshot_at_once_and_the_scan_confirms_it(tmp_path, stores):
    paths = [str(tmp_path / "a"), str(tmp_path / "b")]
    fill(stores, paths, 30)
    assert os.path.isfile(snapshot.snapshot_path(paths[0], Layout(paths).data_suffix))
    assert not os.path.exists(os.path.join(paths[1], snapshot.SNAPSHOT_DIR))  # nothing there to record
    index, scanner = loaded(paths)
    assert scanner.stats.snapshot_entries == 30 and all(index.has(stem(i)) for i in range(30))
    scanner.run()
    assert scanner.stats.entries == 30 and scanner.stats.snapshot_dropped == 0 and len(index) == 30
    store = stores(paths)
    buf = bytearray(100)
    assert all(store.contains(*key(i)) for i in range(30))
    assert all(store.get_into(*key(i), buf) and buf == payload(i) for i in range(30))


def test_entries_gone_or_swapped_since_the_snapshot_miss_and_are_never_served(tmp_path, stores):
    base = tmp_path / "a"
    fill(stores, [str(base)], 10)
    os.unlink(metadata_path(data_file(base, 1)))  # removed by another process after the close
    os.unlink(data_file(base, 1))
    shutil.copyfile(data_file(base, 3), data_file(base, 2))  # entry 2's name now holds entry 3
    index, scanner = loaded([str(base)])
    assert index.has(stem(1)) and index.has(stem(2))  # the snapshot still names both
    scanner.run()
    assert not index.has(stem(1)) and scanner.stats.snapshot_dropped == 1
    store = stores([str(base)])
    buf = bytearray(100)
    assert not store.get_into(*key(1), buf)
    assert not store.get_into(*key(2), buf) and buf != payload(3)  # the header names another key
    assert store.wait_for_scan(30) and not store.contains(*key(1))
    assert store.get_into(*key(3), buf) and buf == payload(3)


def test_an_entry_the_snapshot_puts_elsewhere_takes_the_place_the_scan_lists(tmp_path, stores):
    a, b = tmp_path / "a", tmp_path / "b"
    fill(stores, [str(a), str(b)], 3)
    moved = data_file(b, 0)
    os.makedirs(os.path.dirname(moved))
    for src, dst in ((data_file(a, 0), moved), (metadata_path(data_file(a, 0)), metadata_path(moved))):
        os.rename(src, dst)
    index, scanner = loaded([str(a), str(b)])
    scanner.run()
    assert index.get(stem(0)).path == moved
    store = stores([str(a), str(b)])
    buf = bytearray(100)
    assert store.get_into(*key(0), buf) and buf == payload(0)


def test_an_incomplete_scan_keeps_what_the_snapshot_named_and_a_put_keeps_its_entry(tmp_path, stores):
    base = tmp_path / "a"
    fill(stores, [str(base)], 4)
    for i in range(4):  # every file removed after the close
        os.unlink(metadata_path(data_file(base, i)))
        os.unlink(data_file(base, i))
    index, scanner = loaded([str(base)])
    scanner.stop()  # stopped before listing anything: it cannot tell what is gone
    scanner.run()
    assert len(index) == 4 and scanner.stats.snapshot_dropped == 0
    index, scanner = loaded([str(base)])
    index.add(index.get(stem(0)), replace=True)  # a put while the scan runs is no snapshot's word
    scanner.run()
    assert [e.stem for e in index.snapshot()] == [stem(0)] and scanner.stats.snapshot_dropped == 3


@pytest.mark.parametrize("damage", ["truncated", "garbage", "flipped", "other version", "empty"])
def test_a_damaged_snapshot_is_ignored_and_the_scan_alone_fills_the_index(tmp_path, stores, caplog, damage):
    base = tmp_path / "a"
    fill(stores, [str(base)], 20)
    path = snapshot.snapshot_path(str(base), Layout(str(base)).data_suffix)
    blob = open(path, "rb").read()
    blob = {"truncated": blob[:-7], "garbage": os.urandom(len(blob)), "empty": b"",
            "flipped": blob[:-20] + bytes([blob[-20] ^ 0x10]) + blob[-19:],
            "other version": blob.replace(snapshot.MAGIC, b"pygds-index-snapshot 9\n", 1)}[damage]
    open(path, "wb").write(blob)
    with caplog.at_level(logging.WARNING, logger="lmcache_plugin.snapshot"):
        index, scanner = loaded([str(base)])
    assert scanner.stats.snapshot_entries == 0 and len(index) == 0
    assert "ignoring the index snapshot" in caplog.text
    scanner.run()
    assert len(index) == 20


def test_a_snapshot_copied_from_another_path_is_ignored(tmp_path, stores, caplog):
    a, b = tmp_path / "a", tmp_path / "b"
    fill(stores, [str(a)], 5)
    os.makedirs(b / snapshot.SNAPSHOT_DIR)
    suffix = Layout(str(a)).data_suffix
    shutil.copyfile(snapshot.snapshot_path(str(a), suffix), snapshot.snapshot_path(str(b), suffix))
    with caplog.at_level(logging.WARNING, logger="lmcache_plugin.snapshot"):
        index, scanner = loaded([str(b)])
    assert len(index) == 0 and f"written for {os.path.realpath(a)!r}" in caplog.text
    store = stores([str(b)])
    assert not any(store.contains(*key(i)) for i in range(5))


def test_a_snapshot_cannot_name_a_file_outside_its_fan_out_directories(tmp_path):
    base = str(tmp_path / "a")
    layout = Layout(base)
    good = layout.stem(key(0)[0])
    assert snapshot.write(base, layout, [snapshot.Group("..", True, [good])])
    assert snapshot.read(base, layout) is None
    assert snapshot.write(base, layout, [snapshot.Group("12/34", True, [good, "not a name", "A%41", ""])])
    index, scanner = loaded([base])
    assert scanner.stats.snapshot_entries == 1 and index.has(good)  # foreign names left out


@pytest.mark.parametrize("stems", [
    ["org%2Fm%401%400%40123%40bfloat16", "org%2Fm%401%400%40124%40bfloat16", "org%2Fm%401%400%40-5%40bfloat16"],
    ["k%2Cx", "k%2Fx"],  # the common "k%2" would cut an escape
    ["a%2C", "b%3C"],  # and so would the common "C"
    ["ab", "abab", "b"],  # nothing shared; a prefix and a suffix must not overlap in "ab"
    ["only"],
])
def test_a_snapshot_gives_back_every_stem_it_was_written_with(tmp_path, stems):
    """Stems are stored without the prefix and suffix they all share, cut where no %XX escape
    is split, so that the scan can check the three parts alone."""
    base = str(tmp_path)
    layout = Layout(base)
    assert snapshot.write(base, layout, [snapshot.Group("12/34", True, stems[:1]),
                                         snapshot.Group("56", False, stems[1:])])
    snap = snapshot.read(base, layout)
    assert snap.stems() == stems and snap.counts == [1, len(stems) - 1][:len(stems)]
    assert all(map(_plain_stems, (snap.prefix, snap.middles, snap.suffix))) == _plain_stems("/".join(stems))


def test_capacity_counts_snapshot_entries_once_the_scan_has_seen_them(tmp_path, stores):
    """A snapshot records no sizes: its entries neither count toward a capacity bound nor are
    evicted until the scan has stat'ed them, so a stale snapshot cannot make a put evict live
    entries."""
    base = tmp_path / "a"
    fill(stores, [str(base)], 6, capacity_bytes=10**9)
    size = 100 + 2 * HEADER_SIZE
    index, scanner = loaded([str(base)], stat_bases=[str(base)])
    assert len(index) == 6 and index.used_bytes(str(base)) == 0
    assert index.take_lru(str(base), 10**9, skip=set()) == [] and len(index) == 6
    index.get(stem(1), touch=True)  # looked up before the scan reached it
    with open(data_file(base, 0), "ab") as f:  # changed since the snapshot: the scan's size wins
        f.write(b"x" * 50)
    scanner.run()
    assert index.used_bytes(str(base)) == 6 * size + 50 and len(index) == 6
    assert len(index.take_lru(str(base), 10**9, skip=set())) == 6


def test_the_scan_confirms_a_looked_up_snapshot_entry_in_place(tmp_path, stores):
    """Whoever holds or pinned an entry a lookup made before the scan reached it keeps the one
    object, which takes the scan's size; its pin still counts and is still undone."""
    base = tmp_path / "a"
    fill(stores, [str(base)], 3, capacity_bytes=10**9)
    size = 100 + 2 * HEADER_SIZE
    index, scanner = loaded([str(base)], stat_bases=[str(base)])
    held = index.get(stem(0))
    index.pin(held)
    touched = index.get(stem(1), touch=True)
    scanner.run()
    assert index.get(stem(0)) is held and index.get(stem(1)) is touched
    assert held.size == touched.size == size and index.used_bytes(str(base)) == 3 * size
    assert stem(0) not in {e.stem for e in index.take_lru(str(base), 10**9, skip=set())}
    assert index.unpin(held) and [e.stem for e in index.take_lru(str(base), 10**9, skip=set())] == [stem(0)]


def test_a_stale_snapshot_makes_no_put_evict_a_live_entry(tmp_path, stores):
    """A bounded store closes with 10 entries (its bound); another process then removes 8. A
    restart's first put, made while the scan may still run, evicts nothing: 2 entries of 10
    are on disk, whatever the snapshot still names."""
    small = 16 << 10
    bound = 10 * (small + 2 * HEADER_SIZE)
    base = str(tmp_path)
    store = stores(base, capacity_bytes=bound)
    assert store.wait_for_scan(30)
    for i in range(10):
        assert store.put(*key(i), payload(i, small), u8(small))
    store.close()
    other = stores(base, scan=False)
    for i in range(1, 9):
        assert other.remove(*key(i))
    store = stores(base, capacity_bytes=bound)
    assert store.put(*key(100), payload(100, small), u8(small))
    assert store.wait_for_scan(30)
    assert store.stats().evictions == 0
    assert store.contains(*key(0)) and store.contains(*key(9)) and store.contains(*key(100))


def test_a_snapshot_claiming_a_huge_body_is_ignored_before_decompressing(tmp_path, stores, monkeypatch, caplog):
    base = tmp_path / "a"
    fill(stores, [str(base)], 5)
    monkeypatch.setattr(snapshot, "MAX_BODY_BYTES", 64)  # the real bound is 512 MiB
    with caplog.at_level(logging.WARNING, logger="lmcache_plugin.snapshot"):
        assert snapshot.read(str(base), Layout(str(base))) is None
    assert "bytes claimed (at most 64)" in caplog.text
    monkeypatch.undo()
    index, scanner = loaded([str(base)])
    assert len(index) == 5  # within the bound it loads


def test_an_exit_during_the_scans_snapshot_write_leaves_no_temporary_file(tmp_path, stores):
    """The scan thread (a daemon) writes the snapshot when it found it out of date. A process that
    exits meanwhile without closing its store waits for that write instead of cutting it short."""
    base = tmp_path / "a"
    fill(stores, [str(base)], 5, index_snapshot=False)  # no snapshot yet: the scan will write one
    script = textwrap.dedent(f"""
        import os, sys, threading, time
        sys.path.insert(0, {ROOT!r})
        from lmcache_plugin.store import KVStore, StoreOptions
        writing = threading.Event()
        rename = os.rename
        def slow_rename(src, dst):
            if os.path.basename(dst) == "entries":  # the snapshot's temporary file is written
                writing.set()
                time.sleep(0.5)
            rename(src, dst)
        os.rename = slow_rename
        store = KVStore(StoreOptions(paths=[{str(base)!r}]))
        assert writing.wait(30)
        print("exiting", flush=True)  # the store left open, its scan thread mid-write
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "exiting", done.stderr
    assert os.listdir(base / snapshot.SNAPSHOT_DIR) == ["entries"]
    index, _ = loaded([str(base)])
    assert len(index) == 5


_CRAFTED_RESTART = r"""
import json, os, resource, sys, time, zlib
from lmcache_plugin import snapshot
from lmcache_plugin.layout import Layout
from lmcache_plugin.store import KVStore, StoreOptions
base, shape, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
layout = Layout(base)
if shape == "long_affixes":  # one group of n+1 names, each the 3800-character shared prefix
    raw, prefix, entries, groups = ("00\t0\t" + "/" * n).encode(), "a" * 3800, n + 1, 1
else:                        # n groups of one one-letter name each
    raw, prefix, entries, groups = "\n".join(["00\t0\t"] * n).encode(), "a", n, n
body = zlib.compress(raw, 9)
meta = {"base": os.path.realpath(base), "suffix": layout.data_suffix, "entries": entries,
        "groups": groups, "name_prefix": prefix, "name_suffix": "", "raw_bytes": len(raw),
        "body_bytes": len(body)}
path = snapshot.snapshot_path(base, layout.data_suffix)
os.makedirs(os.path.dirname(path), exist_ok=True)
with open(path, "wb") as f:
    f.write(snapshot.MAGIC + json.dumps(meta).encode() + b"\n" + body)
rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
store = KVStore(StoreOptions(paths=[base], engine="posix"))
seconds = time.perf_counter() - t0
store.close()
grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) << 10
print(json.dumps({"file_bytes": os.path.getsize(path) if os.path.exists(path) else None,
                  "snapshot_file_bytes": len(snapshot.MAGIC) + len(json.dumps(meta)) + 1 + len(body),
                  "raw_bytes": len(raw), "rss_grown": grown, "constructor_s": seconds}))
"""


@pytest.mark.parametrize("shape, n", [("long_affixes", 150_000), ("one_name_groups", 2_000_000)])
def test_a_tiny_crafted_snapshot_cannot_make_a_restart_build_gigabytes(tmp_path, shape, n):
    """A restart's cost is per name and per group, and every name is rebuilt as prefix + middle
    + suffix. A 4 KB file naming 150,001 names that are all a 3,800-character prefix, or a
    17 KB file of 2,000,000 one-name groups, is refused (prefix and suffix longer than a name,
    more groups than fan-out directories, more than one name equal to the affixes alone) before
    anything is built: the restart grows by less than 256 MiB and scans instead."""
    base = str(tmp_path / "cache")
    os.makedirs(base)
    out = subprocess.run([sys.executable, "-c", _CRAFTED_RESTART, base, shape, str(n)], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["snapshot_file_bytes"] < 20_000
    assert got["rss_grown"] < 256 << 20, (
        f"a {got['snapshot_file_bytes']}-byte snapshot made the restart grow by "
        f"{got['rss_grown'] >> 20} MiB ({got['constructor_s']:.1f} s in the constructor)")


def moved_after_the_snapshot(tmp_path, stores) -> tuple[Layout, str, str, str, str]:
    """Paths [A, B]; B's snapshot names one entry, whose files another process then moves to A:
    (the layout, A, B, the entry's stem, its data file in A)."""
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    k, h = "org/model@1@0@abcdef12@bfloat16", 0xABCDEF12
    first = stores([b, a])
    assert first.wait_for_scan(30)
    assert first.put(k, h, bytes(1000), u8(1000))
    first.close()
    layout = Layout([a, b])
    in_b, in_a = layout.data_path(b, k, h), layout.data_path(a, k, h)
    os.makedirs(os.path.dirname(in_a))
    os.rename(in_b, in_a)
    os.rename(metadata_path(in_b), metadata_path(in_a))
    return layout, a, b, layout.stem(k), in_a


def test_a_snapshot_entry_the_scan_finds_in_another_path_is_counted_there(tmp_path, stores):
    """Paths [A (write, bounded), B]; B's snapshot names key K, whose files another process
    then moved to A. A lookup makes K's `Entry` (base B) before the scan reaches it; the scan,
    finding K in A, moves the entry there whole: its bytes count in A, A's eviction can take it,
    and B's next snapshot leaves it out."""
    layout, a, b, stem_k, in_a = moved_after_the_snapshot(tmp_path, stores)

    index = Index()
    scanner = Scanner(layout, index, stat_bases=[a])
    index.begin_scan()
    scanner.load_snapshots()
    held = index.get(stem_k)  # e.g. `is_pinned` before the scan reached it
    scanner.run()
    size = 1000 + 2 * HEADER_SIZE
    assert held.path == in_a
    assert (held.base, index.used_bytes(a), index.used_bytes(b)) == (a, size, 0)
    assert [e.stem for e in index.take_lru(a, 10**9, set())] == [stem_k]


@pytest.mark.parametrize("touch", [False, True], ids=["looked_up", "read"])
def test_a_listing_moves_a_looked_up_snapshot_entry_in_place(tmp_path, stores, touch):
    """The same move found by a listing (no capacity bound, sizes unknown): the `Entry` a lookup
    made, pinned, read or not, is the one object at the listed place afterwards."""
    layout, a, _, stem_k, in_a = moved_after_the_snapshot(tmp_path, stores)

    index = Index()
    scanner = Scanner(layout, index)
    index.begin_scan()
    scanner.load_snapshots()
    held = index.get(stem_k, touch=touch)
    index.pin(held)
    scanner.run()
    assert index.get(stem_k) is held and (held.base, held.path, held.pins) == (a, in_a, 1)


@pytest.mark.parametrize("kind", ["fifo", "dev_zero", "huge_sparse"])
def test_a_snapshot_that_is_no_small_regular_file_cannot_stall_a_restart(tmp_path, kind):
    """A FIFO at the snapshot's name would block the restart, a link to /dev/zero never end, a
    sparse 2 GiB file be read whole: the snapshot is opened without following links or blocking
    and read only when it is a regular file no larger than a snapshot can be."""
    base = tmp_path / "cache"
    path = snapshot.snapshot_path(str(base), Layout(str(base)).data_suffix)
    os.makedirs(os.path.dirname(path))
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "dev_zero":
        os.symlink("/dev/zero", path)
    else:
        with open(path, "wb") as f:
            f.truncate(2 << 30)
    script = textwrap.dedent(
        """
        import resource, sys, time
        resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))  # keep the host safe
        from lmcache_plugin.store import KVStore, StoreOptions
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t0 = time.perf_counter()
        KVStore(StoreOptions(paths=[sys.argv[1]], engine="posix")).close()
        print("started in", round(time.perf_counter() - t0, 2), "s, grown MiB",
              (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) >> 10)
        """
    )
    try:
        out = subprocess.run([sys.executable, "-c", script, str(base)], cwd=ROOT,
                             capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the KVStore constructor was still blocked after 20 s ({kind} snapshot)")
    assert out.returncode == 0, out.stderr[-1500:]
    started, grown = out.stdout.split()[2], int(out.stdout.split()[-1])
    assert float(started) < 2 and grown < 256, out.stdout


def test_pygds_cache_and_lmcache_gds_backend_ignore_the_snapshot(tmp_path, stores):
    base = tmp_path / "a"
    fill(stores, [str(base)], 5)
    assert os.path.isdir(base / snapshot.SNAPSHOT_DIR)
    listed = cache_scan([str(base)])
    assert len(listed.entries) == 5 and listed.unknown == [] and listed.temps == []
    backend = lmcache_scanner([str(base)])
    asyncio.run(backend._scan_metadata())
    assert len(backend.hot_cache) == 5


def test_the_snapshot_goes_when_the_path_is_emptied(tmp_path, stores):
    base = tmp_path / "a"
    fill(stores, [str(base)], 3)
    store = stores([str(base)])
    assert all(store.remove(*key(i)) for i in range(3))
    store.close()
    assert [p for p in base.rglob("*") if p.is_file()] == []


WRITER = textwrap.dedent("""
    import sys
    sys.path.insert(0, {root!r})
    from lmcache_plugin.format import EntryHeader
    from lmcache_plugin.store import KVStore, StoreOptions
    first = int(sys.argv[1])
    for round_ in range(8):
        store = KVStore(StoreOptions(paths={paths!r}, engine="posix", device_id=first // 1000))
        for i in range(first + round_ * 5, first + round_ * 5 + 5):
            h = i * 7919 + 123457
            store.put(f"org/model@1@0@{{h:x}}@bfloat16", h, bytes(100), EntryHeader.single((100,), "U8", 1))
        store.close()
""")


def test_two_processes_writing_snapshots_of_one_path_never_tear_it(tmp_path, stores):
    paths = [str(tmp_path / "a"), str(tmp_path / "b")]
    script = tmp_path / "writer.py"
    script.write_text(WRITER.format(root=ROOT, paths=paths))
    procs = [subprocess.Popen([sys.executable, str(script), str(first)]) for first in (0, 1000)]
    layout = Layout(paths)
    seen = 0
    while any(p.poll() is None for p in procs):
        for base in paths:
            if os.path.exists(snapshot.snapshot_path(base, layout.data_suffix)):
                assert snapshot.read(base, layout) is not None  # whole, never half written
                seen += 1
    assert [p.wait(120) for p in procs] == [0, 0] and seen
    index, scanner = loaded(paths)
    scanner.run()
    assert len(index) == 80  # the last writer's snapshot plus what the scan found
    store = stores(paths)
    assert store.wait_for_scan(30)
    assert all(store.contains(*key(i)) for i in [*range(40), *range(1000, 1040)])


def python_steps(fn) -> int:
    """Bytecodes `fn` runs, in this thread and in the threads it starts."""
    steps = []

    def trace(frame, event, arg):
        frame.f_trace_opcodes = True
        if event == "opcode":
            steps.append(None)
        return trace

    threading.settrace(trace)
    sys.settrace(trace)
    try:
        fn()
    finally:
        sys.settrace(None)
        threading.settrace(None)
    return len(steps)


def cache_of(base, per_dir: int) -> None:
    """`per_dir` entries (names only: the scan and the snapshot never open them) in each of four
    fan-out directories, and the snapshot naming them."""
    layout = Layout(str(base))
    groups = []
    for d in range(4):
        directory = base / f"1{d}" / "34"
        directory.mkdir(parents=True)
        stems = [layout.stem(f"org/model@1@0@1{d}34{i:05d}@bfloat16") for i in range(per_dir)]
        for stem in stems:
            (directory / (stem + layout.data_suffix)).touch()
            (directory / (stem + layout.data_suffix + ".metadata")).touch()
        groups.append(snapshot.Group(f"1{d}/34", True, stems))
    assert snapshot.write(str(base), layout, groups)


def test_a_restart_loads_and_confirms_a_snapshot_without_a_python_step_per_name(tmp_path):
    """A restart of a cache of a million entries waits for the load, and its requests compete
    with the confirming scan: both do their per-name work in C, so 400 more names in the same
    directories cost fewer than 400 more bytecodes."""
    steps = {}
    for per_dir in (20, 120):
        base = tmp_path / str(per_dir)
        cache_of(base, per_dir)
        index = Index()
        scanner = Scanner(Layout(str(base)), index, threads=1)
        index.begin_scan()
        load = python_steps(scanner.load_snapshots)
        confirm = python_steps(scanner.run)
        assert len(index) == 4 * per_dir and scanner.stats.entries == 4 * per_dir
        assert scanner.stats.snapshot_entries == 4 * per_dir and scanner.stats.snapshot_dropped == 0
        steps[per_dir] = load, confirm
    assert steps[120][0] - steps[20][0] < 400, steps
    assert steps[120][1] - steps[20][1] < 400, steps
