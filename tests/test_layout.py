"""Paths, affinity and file names: LMCache's naming, short hashes, hostile keys, long names."""

from __future__ import annotations

import hashlib
import os
import urllib.parse

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmcache_plugin.layout import (
    DATA_SUFFIX,
    MAX_DATA_NAME,
    MAX_NAME_BYTES,
    WEKA_DATA_SUFFIX,
    InvalidKeyError,
    Layout,
    fanout,
    is_bounded_stem,
    is_tmp_name,
    metadata_path,
    parse_paths,
    tmp_path as tmp_name,
)


@pytest.mark.parametrize("n_paths", [1, 2, 4])
def test_affinity_wraps_around(n_paths):
    paths = [f"/mnt/nvme{i}/cache" for i in range(n_paths)]
    for device_id in range(6):
        layout = Layout(",".join(paths), device_id)
        assert layout.write_path == paths[device_id % n_paths]
        assert layout.paths == tuple(paths)


def test_paths_are_trimmed_and_empty_items_dropped():
    assert parse_paths(" /a , ,/b,, ") == ["/a", "/b"]
    assert Layout([" /a", "", "/b "]).paths == ("/a", "/b")
    for bad in ("", " , ,", [], ["  "]):
        with pytest.raises(ValueError, match="gds_path"):
            Layout(bad)


def test_paths_are_absolute_and_home_is_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    assert parse_paths("~/cache, rel/c ,/abs/./x/") == [str(tmp_path / "home" / "cache"), str(tmp_path / "rel" / "c"),
                                                       "/abs/x"]
    layout = Layout("rel/c,~/cache", device_id=1)
    assert layout.paths == (str(tmp_path / "rel" / "c"), str(tmp_path / "home" / "cache"))
    assert layout.write_path == str(tmp_path / "home" / "cache")


def test_same_directory_listed_twice_is_scanned_once(tmp_path):
    a = str(tmp_path / "a")
    layout = Layout([a, a + "/", str(tmp_path / "b")], device_id=1)
    assert layout.unique_paths == (a, str(tmp_path / "b"))
    assert layout.write_path == a


@pytest.mark.parametrize(
    "chunk_hash, levels",
    [(-1, ("-1", "")), (5, ("5", "")), (-5, ("-5", "")), (12, ("12", "")), (123, ("12", "3")),
     (-12, ("-1", "2")), (1234567, ("12", "34")), (-987654, ("-9", "87"))],
)
def test_fanout_matches_lmcache_for_short_and_negative_hashes(chunk_hash, levels):
    assert fanout(chunk_hash) == levels
    layout = Layout("/c")
    expected = os.path.join("/c", *levels, urllib.parse.quote("k@1", safe="") + DATA_SUFFIX)
    assert layout.data_path("/c", "k@1", chunk_hash) == expected


@given(st.integers(-(2**64), 2**64))
def test_fanout_is_lmcaches_formula(chunk_hash):
    h = str(chunk_hash)
    assert Layout("/c").data_path("/c", "key", chunk_hash) == os.path.join(
        "/c", h[:2], h[2:4], "key" + DATA_SUFFIX
    )


@pytest.mark.parametrize("bad", ["/x00", "a/00", "..00", ".", "00.", "12..", b"..", "x\0"])
def test_hashes_that_could_escape_are_refused(bad):
    with pytest.raises(InvalidKeyError):
        Layout("/c").data_path("/c", "k", bad)


keys = st.text(min_size=1, max_size=400)


@settings(max_examples=400, deadline=None)
@given(key=keys, chunk_hash=st.integers(-(10**20), 10**20))
def test_any_key_stays_inside_its_fanout_directory(key, chunk_hash):
    layout = Layout("/cache/root")
    path = layout.data_path("/cache/root", key, chunk_hash)
    l1, l2 = fanout(chunk_hash)
    assert os.path.dirname(path) == os.path.normpath(os.path.join("/cache/root", l1, l2))
    name = os.path.basename(path)
    assert "/" not in name and "\0" not in name and name not in (".", "..")
    assert len(name.encode()) <= MAX_DATA_NAME
    assert len(os.path.basename(tmp_name(metadata_path(path))).encode()) <= MAX_NAME_BYTES
    assert layout.stem_of_data_name(name) == layout.stem(key)
    if is_bounded_stem(layout.stem(key)):
        assert layout.key_text_of(name) is None
    else:
        assert layout.key_text_of(name) == key


@pytest.mark.parametrize(
    "key",
    ["../../etc/passwd", "..", ".", "/", "a/b/../../c", "\0", "model/name@1@0@ff@bfloat16",
     "日本語のモデル@1@0@1f@half", "tab\tnew\nline", "%2F..%2F", "~+~", "x" * (MAX_DATA_NAME - len(DATA_SUFFIX))],
)
def test_odd_keys_round_trip_on_a_real_file_system(tmp_path, key):
    base = str(tmp_path / "cache")
    layout = Layout(base)
    path = layout.data_path(base, key, 4242)
    assert os.path.realpath(path).startswith(os.path.realpath(base) + os.sep)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    for p in (path, metadata_path(path), tmp_name(path), tmp_name(metadata_path(path))):
        with open(p, "wb"):
            pass
    found = os.listdir(os.path.join(base, "42", "42"))
    assert len(found) == 4
    names = [n for n in found if layout.stem_of_data_name(n) is not None]
    assert names == [os.path.basename(path)]
    assert [n for n in found if layout.stem_of_metadata_name(n)] == [os.path.basename(path) + ".metadata"]
    assert layout.key_text_of(names[0]) == key


def test_keys_that_cannot_be_names_are_refused():
    layout = Layout("/c")
    for bad in ("", "\udc80 lone surrogate"):
        with pytest.raises(InvalidKeyError):
            layout.stem(bad)


def test_long_keys_get_bounded_distinct_names(tmp_path):
    base = str(tmp_path)
    layout = Layout(base)
    short = "m" * (MAX_DATA_NAME - len(DATA_SUFFIX))
    assert layout.stem(short) == short  # the longest ordinary name
    long_a, long_b = short + "a", short + "b"
    names = {layout.data_name(k) for k in (long_a, long_b, "é" * 200, "é" * 201)}
    assert len(names) == 4
    for key in (long_a, "é" * 201, "%" * 500):
        stem = layout.stem(key)
        assert is_bounded_stem(stem) and "+" in stem and "%" not in stem[-43:]
        assert not is_bounded_stem(layout.stem(key[:10]))
        path = layout.data_path(base, key, 99)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        longest = tmp_name(metadata_path(path))
        open(longest, "wb").close()  # fits in 255 bytes
        assert is_tmp_name(os.path.basename(longest))
        assert layout.stem_of_data_name(os.path.basename(path)) == stem
        assert layout.key_text_of(os.path.basename(path)) is None
    assert not is_bounded_stem(layout.stem("a+b"))  # '+' in a key is quoted


def test_bounded_names_are_never_parsed_as_lmcache_keys():
    """LMCache's start-up scan parses each `.metadata` name (unquoted) with `parse_cache_key` and
    skips only ValueError: wherever the cut falls in the key, a bounded stem raises ValueError."""
    lmcache_utils = pytest.importorskip("lmcache.utils")
    layout = Layout("/c")
    cut_fields = set()
    for model_len in range(1, 240, 3):
        for tags in ("", "@user%" + "u" * 60 + "@session%" + "s" * 200):
            key = "m" * model_len + "@1@0@1f2e3d@bfloat16" + tags
            stem = layout.stem(key)
            if not is_bounded_stem(stem):
                continue
            prefix = urllib.parse.unquote(stem.split("+", 1)[0])
            cut_fields.add(prefix.count("@"))
            assert key.startswith(prefix)
            with pytest.raises(ValueError):
                lmcache_utils.parse_cache_key(urllib.parse.unquote(stem))
    assert cut_fields == {0, 1, 2, 3}  # the cut fell in every field; at most three "@" are kept
    # a name cut before its fourth "@" is what earlier versions wrote: those entries stay readable
    key = "m" * 300 + "@1@0@1f2e3d@bfloat16"
    keep = MAX_DATA_NAME - len(DATA_SUFFIX) - len("+") - 40
    assert layout.stem(key) == "m" * keep + "+" + hashlib.sha1(key.encode()).hexdigest()


def test_foreign_and_non_canonical_names_are_not_entries():
    layout = Layout("/c")
    assert layout.stem_of_data_name("notes.txt") is None
    assert layout.stem_of_data_name(DATA_SUFFIX) is None
    assert layout.stem_of_data_name("a%41" + DATA_SUFFIX) is None  # LMCache would name it "aA"
    assert layout.stem_of_data_name("a%zz" + DATA_SUFFIX) is None
    assert layout.stem_of_metadata_name("k" + DATA_SUFFIX) is None
    assert layout.stem_of_metadata_name("k" + DATA_SUFFIX + ".metadata") == "k"


def test_temporary_names():
    t = tmp_name("/c/1/2/k" + DATA_SUFFIX)
    assert t.startswith("/c/1/2/k" + DATA_SUFFIX + ".tmp") and len(t) == len("/c/1/2/k" + DATA_SUFFIX) + 12
    assert is_tmp_name(t) and is_tmp_name("x.metadata.tmp0123abcd")
    assert tmp_name("/a") != tmp_name("/a")
    for name in ("x.tmp", "x.tmp0123abc", "x.tmp0123abcde", "x.tmpABCDEF12", "x" + DATA_SUFFIX):
        assert not is_tmp_name(name)


def test_weka_suffix():
    layout = Layout("/w", data_suffix=WEKA_DATA_SUFFIX)
    path = layout.data_path("/w", "k@1", 777)
    assert path == "/w/77/7/k%401.weka1"
    assert metadata_path(path).endswith(".weka1.metadata")
    assert layout.stem_of_data_name("k%401.weka1") == "k%401"
    assert layout.stem_of_data_name("k%401" + DATA_SUFFIX) is None
    for bad in ("", "a/b", "x" * 40, "é"):
        with pytest.raises(ValueError, match="suffix"):
            Layout("/w", data_suffix=bad)


def test_candidate_paths_put_the_write_path_first():
    layout = Layout("/a,/b,/c", device_id=2)
    assert [b for b, _ in layout.candidate_paths("k", 1)] == ["/c", "/a", "/b"]
    with pytest.raises(ValueError, match="device id"):
        Layout("/a", device_id=-1)


@settings(max_examples=300, deadline=None)
@given(st.text(min_size=1, max_size=40))
def test_name_check_agrees_with_the_quote_round_trip(text):
    """The scan's fast name check accepts exactly the stems some key quotes to."""
    import urllib.parse

    layout = Layout("/c")
    quoted = urllib.parse.quote(text, safe="")
    assert layout.stem_of_data_name(quoted + DATA_SUFFIX) == quoted
    for stem in (text, quoted.lower(), quoted.replace("%", "%25"), "a%41", quoted + "%C3"):
        if is_bounded_stem(stem):  # the other form of name (long keys), checked on its own
            continue
        try:
            exact = urllib.parse.quote(urllib.parse.unquote(stem, errors="strict"), safe="") == stem
        except UnicodeDecodeError:
            exact = False
        exact = exact and stem.isascii()
        assert (layout.stem_of_data_name(stem + DATA_SUFFIX) == stem) == exact, stem


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.text(min_size=1, max_size=60),
                 st.text(alphabet="Aa0_.~-@/%:+ é", min_size=1, max_size=60)))
def test_the_stem_is_quote_of_the_key(text):
    """Every lookup computes the stem by a fast path for plain keys; it is `quote` exactly."""
    import urllib.parse

    try:
        quoted = urllib.parse.quote(text, safe="", errors="strict")
    except UnicodeEncodeError:
        with pytest.raises(InvalidKeyError):
            Layout("/c").stem(text)
        return
    if len(quoted) + len(DATA_SUFFIX) <= MAX_DATA_NAME:
        assert Layout("/c").stem(text) == quoted
