"""The in-memory index (LRU, pins, byte totals) and the start-up scan (listings only)."""

from __future__ import annotations

import logging
import os
import time

import pytest

from lmcache_plugin.format import HEADER_SIZE, EntryHeader, pack_header
from lmcache_plugin.index import Entry, Index, Scanner
from lmcache_plugin.layout import Layout, metadata_path
from lmcache_plugin.layout import tmp_path as tmp_name


def _entry(stem: str, base: str = "/a", size: int | None = 100, pins: int = 0) -> Entry:
    return Entry(stem=stem, base=base, path=f"{base}/{stem}", size=size, has_metadata=True, pins=pins)


def test_lru_order_touch_and_eviction_choice():
    index = Index()
    for name in "abcde":
        index.add(_entry(name))
    index.add(_entry("x", base="/other"))
    index.get("a", touch=True)  # a becomes most recent
    index.get("b").pins = 1  # b is pinned
    assert index.used_bytes("/a") == 500 and index.used_bytes("/other") == 100
    victims = index.take_lru("/a", 150, skip={"c"})
    assert [v.stem for v in victims] == ["d", "e"]  # b pinned, c skipped, x other base
    assert index.used_bytes("/a") == 300
    assert index.get("d") is None and index.get("x") is not None
    assert [v.stem for v in index.take_lru("/a", 10**9, skip=set())] == ["c", "a"]
    assert [e.stem for e in index.snapshot()] == ["b", "x"]


def test_add_keeps_existing_unless_replace_and_carries_pins():
    index = Index()
    first = index.add(_entry("k", size=10))
    first.pins = 2
    assert index.add(_entry("k", size=99)) is first
    second = index.add(_entry("k", size=50), replace=True)
    assert second.pins == 2 and index.used_bytes("/a") == 50
    index.set_size(second, 70, has_metadata=False)
    assert index.used_bytes("/a") == 70 and not second.has_metadata
    assert index.pop("k") is second and index.used_bytes("/a") == 0 and len(index) == 0


def test_entries_removed_during_a_scan_stay_removed():
    index = Index()
    index.begin_scan()
    index.add(_entry("gone"))
    index.pop("gone")
    assert index.add_scanned([_entry("gone"), _entry("new")]) == 1
    index.end_scan()
    assert index.get("gone") is None
    index.add_scanned([_entry("gone")])  # after the scan, no tombstones remain
    assert index.get("gone") is not None


def _write_entry(layout: Layout, base: str, key: str, chunk_hash: int, *, meta: bool = True,
                 data: bytes | None = None) -> str:
    path = layout.data_path(base, key, chunk_hash)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    header = pack_header(EntryHeader.single((4,), "U8", 1))
    with open(path, "wb") as f:
        f.write(header + b"abcd" if data is None else data)
    if meta:
        with open(metadata_path(path), "wb") as f:
            f.write(header)
    return path


def _scan(layout: Layout, index: Index | None = None, **kw) -> tuple[Index, Scanner]:
    index = index or Index()
    scanner = Scanner(layout, index, **kw)
    scanner.run()
    return index, scanner


def test_scan_finds_every_path_and_the_short_hashes_lmcache_misses(tmp_path):
    paths = [str(tmp_path / f"p{i}") for i in range(3)]
    layout = Layout(paths, device_id=0)
    hashes = [123456, -1, 7, -42, 99, 1234]
    written = {}
    for i, h in enumerate(hashes):
        key = f"model@1@0@{h:x}@half"
        written[layout.stem(key)] = _write_entry(layout, paths[i % 3], key, h, meta=(i != 2))
    (tmp_path / "p0" / "README").write_text("not an entry")
    os.makedirs(tmp_path / "p1" / "zzz")
    (tmp_path / "p0" / "12" / "foreign.bin").write_text("x")
    index, scanner = _scan(layout)
    assert scanner.stats.entries == len(hashes) and scanner.stats.errors == 0 and scanner.stats.done
    assert {e.stem: e.path for e in index.snapshot()} == written
    assert all(e.size is None and e.header is None for e in index.snapshot())
    no_meta = index.get(layout.stem("model@1@0@7@half"))
    assert not no_meta.has_metadata and no_meta.base == paths[2]
    assert sum(e.has_metadata for e in index.snapshot()) == len(hashes) - 1


def test_scan_stats_sizes_only_in_the_bounded_path(tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    layout = Layout([a, b])
    _write_entry(layout, a, "ka", 1111)
    _write_entry(layout, b, "kb", 2222, meta=False)
    index, _ = _scan(layout, stat_bases=[a])
    assert index.get("ka").size == HEADER_SIZE + 4 + HEADER_SIZE
    assert index.get("kb").size is None
    assert index.used_bytes(a) == 2 * HEADER_SIZE + 4 and index.used_bytes(b) == 0


def test_stale_temporary_files_are_removed_fresh_ones_kept(tmp_path):
    base = str(tmp_path)
    layout = Layout(base)
    final = _write_entry(layout, base, "k", 5555)
    short = _write_entry(layout, base, "s", 5)
    old = time.time() - 7200
    stale = [tmp_name(final), tmp_name(metadata_path(final)), tmp_name(short)]
    fresh = [tmp_name(final), tmp_name(metadata_path(short))]
    for p in stale + fresh:
        with open(p, "wb") as f:
            f.write(b"partial")
    for p in stale:
        os.utime(p, (old, old))
    _, scanner = _scan(layout, tmp_max_age_s=3600)
    assert scanner.stats.stale_tmp_removed == 3 and scanner.stats.entries == 2
    assert not any(os.path.exists(p) for p in stale)
    assert all(os.path.exists(p) for p in fresh + [final, short])
    _, scanner = _scan(layout, tmp_max_age_s=0)
    assert scanner.stats.stale_tmp_removed == 2


def _io_counters() -> dict[str, int]:
    with open("/proc/self/io") as f:
        return {k: int(v) for k, v in (line.split(": ") for line in f)}


@pytest.mark.skipif(not os.path.exists("/proc/self/io"), reason="needs /proc/self/io (task I/O accounting)")
def test_scan_reads_no_file_and_ignores_garbage(tmp_path, caplog):
    """The scan indexes 2,000 entries whose files hold garbage without reading one of them:
    the kernel's read counters for this process barely move and nothing is logged."""
    paths = [str(tmp_path / "a"), str(tmp_path / "b")]
    layout = Layout(paths)
    garbage = tmp_path / "garbage"
    garbage.write_bytes(os.urandom(300))
    for i in range(2000):  # hard links to one garbage file: every name reads as 300 random bytes
        path = layout.data_path(paths[i % 2], f"k{i}", i % 50 * 100 + 1000)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        os.link(garbage, path)
        if i % 3 == 0:
            os.link(garbage, metadata_path(path))
    caplog.set_level(logging.WARNING)
    before = _io_counters()
    index, scanner = _scan(layout)
    after = _io_counters()
    assert scanner.stats.entries == 2000 and len(index) == 2000
    assert after["syscr"] - before["syscr"] < 50  # one read per entry would be 2000
    assert after["rchar"] - before["rchar"] < 64 * 1024  # reading the files would be 600 KB
    assert not caplog.records


def test_background_scan_and_stop(tmp_path):
    layout = Layout(str(tmp_path))
    for i in range(200):
        _write_entry(layout, str(tmp_path), f"k{i}", 1000 + i)
    index = Index()
    scanner = Scanner(layout, index)
    scanner.start()
    assert scanner.wait(60)
    assert scanner.stats.entries == 200 and len(index) == 200
    scanner.stop()


def test_missing_path_is_not_an_error(tmp_path):
    layout = Layout([str(tmp_path / "absent"), str(tmp_path)])
    _, scanner = _scan(layout)
    assert scanner.stats.done and scanner.stats.errors == 0 and scanner.stats.entries == 0
