"""The in-memory index (LRU, pins, byte totals) and the start-up scan (listings only)."""

from __future__ import annotations

import logging
import os
import time

import pytest

from lmcache_plugin.format import HEADER_SIZE, EntryHeader, pack_header
from lmcache_plugin.index import Entry, Index, ScannedDir
from lmcache_plugin.scan import Scanner
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


def test_a_pin_and_a_removal_are_one_step_each_against_the_other():
    """An entry found, then evicted or removed, is not pinned afterwards (a lock would hold a
    deleted entry); a pinned one is not popped by `pop_unpinned`."""
    index = Index()
    found = index.add(_entry("k"))
    assert index.take_lru("/a", 1, skip=set()) == [found]
    assert not index.pin(found) and found.pins == 0
    again = index.add(_entry("k"))
    assert index.pin(again) and again.pins == 1
    assert index.pop_unpinned("k") == (False, again) and index.get("k") is again
    assert index.unpin(again)
    assert index.pop_unpinned("k") == (True, again) and index.get("k") is None
    assert index.pop_unpinned("k") == (True, None)


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


# -- scanned entries are stored per listing and become `Entry` objects on first access ----------
def _listed(index: Index, stems: str, base: str = "/s", *, has_metadata: bool = True) -> int:
    return index.add_listed(dict.fromkeys(stems, ScannedDir(base, f"{base}/12/34", ".d", has_metadata)))


def test_listed_entry_is_made_once_on_first_access_and_stays_the_same_object():
    index = Index()
    assert _listed(index, "ab") == 2 and len(index) == 2
    first = index.get("a")
    assert first == Entry(stem="a", base="/s", path="/s/12/34/a.d", size=None, has_metadata=True)
    first.pins = 1
    first.key_text = "key a"
    assert index.get("a") is first and index.get("a", touch=True) is first
    assert index.get("a").pins == 1 and index.get("a").key_text == "key a"
    assert index.add(_entry("a", base="/s")) is first  # an existing entry wins
    snap = index.snapshot()
    assert snap[-1] is first and snap[0].stem == "b" and index.get("b") is snap[0]
    assert index.pop("a") is first and index.get("a") is None and len(index) == 1


def test_scanned_entries_are_older_than_put_ones_and_a_touch_makes_one_newest():
    index = Index()
    index.add(_entry("p1", base="/s"))
    _listed(index, "xyz")
    index.add(_entry("p2", base="/s"))
    index.get("y")  # a lookup without touch keeps its place
    assert [e.stem for e in index.snapshot()] == ["x", "y", "z", "p1", "p2"]
    index.get("x", touch=True)
    index.add(_entry("z", base="/s"))  # an existing entry wins and becomes the newest
    assert [e.stem for e in index.snapshot()] == ["y", "p1", "p2", "x", "z"]
    for stem in "xyz":
        index.set_size(index.get(stem), 10)
    assert [v.stem for v in index.take_lru("/s", 10**9, skip={"p2"})] == ["y", "p1", "x", "z"]
    assert [e.stem for e in index.snapshot()] == ["p2"]


def test_take_lru_takes_entries_of_known_size_only_and_skips_pinned_ones():
    """An entry of unknown size is not counted toward capacity, so eviction leaves it too."""
    index = Index()
    _listed(index, "abcd", base="/w")
    _listed(index, "o", base="/other")
    index.add(_entry("new", base="/w", size=100))
    for stem in "abc":
        index.set_size(index.get(stem), 30)
    index.get("b").pins = 1
    victims = index.take_lru("/w", 50, skip=set())
    assert [v.stem for v in victims] == ["a", "c"] and victims[0].path == "/w/12/34/a.d"
    assert index.used_bytes("/w") == 130
    assert {e.stem for e in index.snapshot()} == {"b", "d", "o", "new"}


def test_replacing_or_resizing_a_listed_entry_keeps_totals_right():
    index = Index()
    _listed(index, "ab", base="/w", has_metadata=False)
    a = index.get("a")
    assert not a.has_metadata
    index.set_size(a, 300, has_metadata=True)
    assert index.used_bytes("/w") == 300 and a.has_metadata
    a.pins = 2
    b = index.add(_entry("b", base="/w", size=40), replace=True)
    assert index.used_bytes("/w") == 340 and index.get("b") is b
    replaced = index.add(_entry("a", base="/w", size=10), replace=True)
    assert replaced.pins == 2 and index.used_bytes("/w") == 50
    index.set_size(a, 999)  # no longer indexed: the totals do not move
    assert index.used_bytes("/w") == 50


def test_listed_entries_removed_during_a_scan_stay_removed():
    index = Index()
    index.begin_scan()
    _listed(index, "ab")
    assert index.pop("a").path == "/s/12/34/a.d"
    index.add(_entry("put"))
    index.pop("put")
    assert _listed(index, ["a", "b", "put", "c"]) == 1  # b known, a and put removed
    assert {e.stem for e in index.snapshot()} == {"b", "c"}
    index.end_scan()
    assert _listed(index, ["a"]) == 1


def _touch(path: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb"):
        pass


def test_scan_indexes_exactly_the_names_layout_accepts(tmp_path):
    """Listings are sorted in bulk unless a name needs `Layout.stem_of_data_name`'s checks: the
    scan must index exactly the names that it accepts, with each name's own directory."""
    base = str(tmp_path)
    layout = Layout(base)
    suffix = layout.data_suffix
    names: dict[str, list[str]] = {}
    for byte in range(256):  # every escape, in its own directory beside a plain name
        names[f"{byte:02x}/00"] = [
            f"plain%40key{byte}{suffix}",
            f"plain%40key{byte}{suffix}.metadata",
            f"k%{byte:02X}k{byte}{suffix}",
            f"k%{byte:02x}k{byte}{suffix}",
        ]
    odd = ["kö", "k%C3%B6", "k%C3", "long+" + "0" * 40, "a+b", "x" * 200 + "+" + "0" * 20, "", suffix[:-1],
           "a%", "a%4", "a%2F%", "a@b", "a b", "a%2f", "x.tmpfoo", "x.tmp0123abcd", "ok4" + suffix + ".tmp"]
    for i, stem in enumerate(odd):  # each in its own directory tree, beside a plain name
        names[f"{chr(ord('a') + i)}/{i}"] = [stem + suffix, f"plain{i}{suffix}"]
    names["y"] = ["plain%2Fat%20depth%201" + suffix, "other.bin", "plain.kvcache", "x.tmp0123abcd"]
    expected = {}
    for directory, listed in names.items():
        for name in listed:
            _touch(os.path.join(base, directory, name))
            stem = layout.stem_of_data_name(name)
            if stem is not None:
                expected[stem] = os.path.join(base, directory, name)
    index, scanner = _scan(layout)
    assert {e.stem: e.path for e in index.snapshot()} == expected
    assert scanner.stats.entries == len(expected) and scanner.stats.errors == 0
    assert {e.stem for e in index.snapshot() if e.has_metadata} == {f"plain%40key{b}" for b in range(256)}


def test_scan_tells_entries_with_and_without_metadata_apart_in_one_listing(tmp_path):
    base = str(tmp_path)
    layout = Layout(base)
    for name in ["a", "a.metadata", "b", "c", "c.metadata", "orphan.metadata"]:
        _touch(os.path.join(base, "12", "34", name.replace(".metadata", layout.metadata_suffix)
                            if name.endswith(".metadata") else name + layout.data_suffix))
    index, _ = _scan(layout)
    assert {e.stem: e.has_metadata for e in index.snapshot()} == {"a": True, "b": False, "c": True}


def test_scan_with_a_data_suffix_that_ends_the_metadata_suffix(tmp_path):
    """With data suffix "data", "k1data.metadata" also ends in "data": still a metadata name."""
    base = str(tmp_path)
    layout = Layout(base, data_suffix="data")
    for name in ["k1data", "k1data.metadata", "k2data"]:
        _touch(os.path.join(base, "12", "34", name))
    index, scanner = _scan(layout)
    assert {e.stem: e.has_metadata for e in index.snapshot()} == {"k1": True, "k2": False}
    assert scanner.stats.entries == 2


def test_a_key_stored_in_two_paths_is_indexed_once(tmp_path):
    paths = [str(tmp_path / "a"), str(tmp_path / "b")]
    layout = Layout(paths)
    for base in paths:
        _write_entry(layout, base, "twice", 123456)
    _write_entry(layout, paths[1], "once", 654321)
    index, scanner = _scan(layout, threads=4)
    assert len(index) == 2 and scanner.stats.entries == 2
    assert index.get("twice").base in paths and index.get("once").base == paths[1]


def test_has_pin_and_unpin():
    """`has` answers for put and scanned entries alike (a scanned one is not made an `Entry`);
    pins count, and eviction skips a pinned entry until its last unpin."""
    index = Index()
    index.add(_entry("put"))
    index.add_listed({"listed": ScannedDir("/a", "/a/1", ".kv", True)})
    assert index.has("put") and index.has("listed") and not index.has("absent")
    entry = index.get("put")
    index.pin(entry)
    index.pin(entry)
    assert index.take_lru("/a", 10**9, skip={"listed"}) == []
    assert index.unpin(entry) and index.take_lru("/a", 10**9, skip={"listed"}) == []
    assert index.unpin(entry) and not index.unpin(entry)
    assert [e.stem for e in index.take_lru("/a", 10**9, skip={"listed"})] == ["put"]
    index.pop("listed")
    assert not index.has("listed")
