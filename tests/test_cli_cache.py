"""`pygds cache` on a real cache written by the plugin's own store (and by LMCache's pack_metadata),
holding corrupt entries, missing and bad `.metadata`, orphans, and stale and fresh temporary files."""
from __future__ import annotations

import json
import os
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from lmcache_plugin.format import HEADER_SIZE, EntryHeader, pack_header
from lmcache_plugin.layout import Layout
from lmcache_plugin.store import KVStore, StoreOptions
from pygds.cli.main import main

HEADER = EntryHeader.single((2, 4, 16, 8), "BF16", 1)  # 2 KiB of data
OLD = time.time() - 2 * 3600


def key(model: str, n: int) -> str:
    return f"{model}@1@0@{n:x}@bfloat16"


def data(n: int) -> bytes:
    return bytes((n + i) % 251 for i in range(HEADER.nbytes))


def age(path: Path | str, when: float = OLD) -> None:
    os.utime(path, (when, when))


@dataclass
class Cache:
    a: Path
    b: Path
    good: dict[str, tuple[int, Path]] = field(default_factory=dict)  # key -> (hash, data file)
    files: dict[str, Path] = field(default_factory=dict)  # role -> file

    def args(self) -> list[str]:
        return ["--path", str(self.a), "--path", str(self.b)]

    def snapshot(self) -> dict[str, bytes]:
        return {str(p): p.read_bytes() for root in (self.a, self.b) for p in sorted(root.rglob("*")) if p.is_file()}


def store_entries(base: Path, entries: list[tuple[str, int]]) -> dict[str, tuple[int, Path]]:
    layout = Layout([str(base)])
    with KVStore(StoreOptions(paths=[str(base)], engine="posix", scan=False)) as store:
        for k, h in entries:
            assert store.put(k, h, data(h), HEADER)
    return {k: (h, Path(layout.data_path(str(base), k, h))) for k, h in entries}


@pytest.fixture
def cache(tmp_path) -> Cache:
    c = Cache(tmp_path / "a", tmp_path / "b")
    c.good.update(store_entries(c.a, [(key("llama", n), 1000 + n) for n in range(4)]))
    c.good.update(store_entries(c.b, [(key("org/mistral", n), 2000 + n) for n in range(2)]))
    extra = store_entries(c.a, [(key("llama", n), 3000 + n) for n in range(10, 16)])
    (k, (h, p)) = extra.popitem()
    with open(p, "r+b") as f:  # corrupt header
        f.write(b"\xff" * 64)
    c.files["corrupt"] = p
    (k, (h, p)) = extra.popitem()
    os.truncate(p, HEADER_SIZE + 100)  # torn: shorter than its header says
    c.files["truncated"] = p
    (k, (h, p)) = extra.popitem()
    os.unlink(str(p) + ".metadata")  # an old entry whose .metadata never arrived
    age(p)
    c.files["missing_meta"] = p
    (k, (h, p)) = extra.popitem()
    os.unlink(str(p) + ".metadata")  # a fresh one: its writer is still publishing
    c.files["publishing"] = p
    (k, (h, p)) = extra.popitem()
    Path(str(p) + ".metadata").write_bytes(pack_header(EntryHeader.single((3, 3), "F32", 1)))
    c.files["bad_meta"] = p
    (k, (h, p)) = extra.popitem()
    os.unlink(p)  # .metadata left behind, data gone
    age(str(p) + ".metadata")
    c.files["orphan"] = Path(str(p) + ".metadata")
    some = next(iter(c.good.values()))[1]
    stale = Path(str(some) + ".tmp0badc0de")
    stale.write_bytes(b"x" * 100)
    age(stale)
    c.files["stale_tmp"] = stale
    fresh = Path(str(some) + ".metadata.tmp12345678")
    fresh.write_bytes(b"y" * 10)
    c.files["fresh_tmp"] = fresh
    unknown = c.a / "notes.txt"
    unknown.write_text("hello")
    c.files["unknown"] = unknown
    return c


def run(capsys, *argv: str) -> tuple[int, str, str]:
    rc = main(["cache", *argv])
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def run_json(capsys, *argv: str, rc: int = 0) -> object:
    got, out, err = run(capsys, *argv, "--json")
    assert got == rc, err
    return json.loads(out)


def test_stats_counts_entries_per_path_and_per_model(capsys, cache):
    s = run_json(capsys, "stats", *cache.args())
    assert s["entries"] == 6 + 5  # good + corrupt, truncated, missing-metadata, publishing, bad-metadata
    assert s["per_path"][str(cache.a)]["entries"] == 9 and s["per_path"][str(cache.b)]["entries"] == 2
    assert s["per_model"]["llama"]["entries"] == 9 and s["per_model"]["org/mistral"]["entries"] == 2
    assert s["per_model"]["org/mistral"]["bytes"] == 2 * (2 * HEADER_SIZE + HEADER.nbytes)
    assert s["without_metadata"] == 2 and s["orphaned_metadata"] == 1 and s["unknown_files"] == 1
    assert s["temp_files"] == {"count": 2, "bytes": 110, "stale": 1}


def test_stats_human_output(capsys, cache):
    rc, out, _ = run(capsys, "stats", *cache.args())
    assert rc == 0 and "11 entries" in out and "org/mistral" in out and str(cache.b) in out


def test_ls_filters_sorts_and_reads_headers(capsys, cache):
    listed = run_json(capsys, "ls", *cache.args(), "--model", "org/mistral")
    assert sorted(e["key"] for e in listed) == [key("org/mistral", 0), key("org/mistral", 1)]
    listed = run_json(capsys, "ls", *cache.args(), "--match", "llama@1@0@[0-3]@*")
    assert [e["key"] for e in listed] == [key("llama", n) for n in range(4)]
    listed = run_json(capsys, "ls", *cache.args(), "--older-than", "1h")
    assert [e["path"] for e in listed] == [str(cache.files["missing_meta"])]
    listed = run_json(capsys, "ls", *cache.args(), "--sort", "size")
    assert listed[-1]["path"] == str(cache.files["truncated"])
    long = {e["path"]: e for e in run_json(capsys, "ls", "--long", *cache.args())}
    assert long[str(cache.files["corrupt"])]["status"] == "corrupt"
    assert long[str(cache.files["bad_meta"])]["status"] == "bad-metadata"
    good = long[str(cache.good[key("llama", 0)][1])]
    assert good["status"] == "ok" and good["header"]["shapes"] == [[2, 4, 16, 8]]
    assert good["header"]["dtypes"] == ["BF16"]
    rc, out, _ = run(capsys, "ls", "-l", *cache.args())
    assert rc == 0 and "2x4x16x8" in out and "corrupt" in out


def test_verify_finds_every_problem_and_leaves_writers_alone(capsys, cache):
    before = cache.snapshot()
    v = run_json(capsys, "verify", *cache.args(), rc=1)
    kinds = {(p["kind"], p["path"]) for p in v["problems"]}
    assert kinds == {
        ("corrupt", str(cache.files["corrupt"])),
        ("corrupt", str(cache.files["truncated"])),
        ("missing-metadata", str(cache.files["missing_meta"])),
        ("bad-metadata", str(cache.files["bad_meta"])),
        ("stale-temp", str(cache.files["stale_tmp"])),
        ("orphan-metadata", str(cache.files["orphan"])),
    }
    gc = f"`pygds cache gc --path {cache.a} --path {cache.b}`"
    assert all(p["fix"].startswith(gc) for p in v["problems"])
    assert v["status"] == {"ok": 6, "corrupt": 2, "missing-metadata": 1, "publishing": 1, "bad-metadata": 1}
    assert v["fresh_temp_files"] == 1
    assert cache.snapshot() == before  # verify only reads


def test_verify_with_a_short_min_age_counts_fresh_files_as_leftovers(capsys, cache):
    v = run_json(capsys, "verify", *cache.args(), "--min-age", "0", rc=1)
    kinds = [p["kind"] for p in v["problems"]]
    assert kinds.count("stale-temp") == 2 and kinds.count("missing-metadata") == 2


def test_gc_dry_run_changes_nothing(capsys, cache):
    before = cache.snapshot()
    g = run_json(capsys, "gc", *cache.args(), "--dry-run")
    assert g["dry_run"] and len(g["actions"]) == 6
    assert cache.snapshot() == before


def test_gc_repairs_the_cache_and_keeps_every_complete_entry(capsys, cache):
    g = run_json(capsys, "gc", *cache.args())
    removed = {a["path"] for a in g["actions"] if a["action"] == "remove"}
    rebuilt = {a["path"] for a in g["actions"] if a["action"] == "rebuild-metadata"}
    assert removed == {str(cache.files[r]) for r in ("corrupt", "truncated", "stale_tmp", "orphan")}
    assert rebuilt == {str(cache.files[r]) + ".metadata" for r in ("missing_meta", "bad_meta")}
    assert g["left_alone"] == {"fresh_temp_files": 1, "publishing_entries": 1, "unreadable_entries": 0}
    for role in ("corrupt", "truncated", "stale_tmp", "orphan"):
        assert not cache.files[role].exists()
    assert not Path(str(cache.files["corrupt"]) + ".metadata").exists()
    assert cache.files["fresh_tmp"].exists() and cache.files["unknown"].exists()
    assert not Path(str(cache.files["publishing"]) + ".metadata").exists() and cache.files["publishing"].exists()
    for role in ("missing_meta", "bad_meta"):
        p = cache.files[role]
        assert Path(str(p) + ".metadata").read_bytes() == p.read_bytes()[:HEADER_SIZE]
    v = run_json(capsys, "verify", *cache.args())  # clean now
    assert v["problems"] == []
    # every complete entry still reads back byte-exact through the plugin's store
    with KVStore(StoreOptions(paths=[str(cache.a), str(cache.b)], engine="posix", scan=False)) as store:
        for k, (h, _) in cache.good.items():
            dest = bytearray(HEADER.nbytes)
            assert store.get_into(k, h, dest) and bytes(dest) == data(h)


def test_evict_down_to_a_size_per_path_least_recently_used_first(capsys, tmp_path):
    base = tmp_path / "c"
    entries = store_entries(base, [(key("llama", n), 5000 + n) for n in range(5)])
    for n, (_, p) in enumerate(entries.values()):
        age(p, OLD + n * 60)  # entry 0 is the least recently used
    size = 2 * HEADER_SIZE + HEADER.nbytes
    before = {str(p) for p in base.rglob("*")}
    e = run_json(capsys, "evict", "--path", str(base), "--max-bytes", str(3 * size), "--dry-run")
    assert [x["key"] for x in e["evicted"]] == [key("llama", 0), key("llama", 1)]
    assert {str(p) for p in base.rglob("*")} == before
    e = run_json(capsys, "evict", "--path", str(base), "--max-bytes", str(3 * size))
    assert [x["key"] for x in e["evicted"]] == [key("llama", 0), key("llama", 1)] and e["freed_bytes"] == 2 * size
    assert e["remaining_bytes"] == {str(base): 3 * size}
    for n, (_, p) in enumerate(entries.values()):
        assert p.exists() is (n >= 2) and Path(str(p) + ".metadata").exists() is (n >= 2)


def test_evict_by_age_spares_unpublished_fresh_entries(capsys, tmp_path):
    base = tmp_path / "c"
    entries = list(store_entries(base, [(key("m", n), 7000 + n) for n in range(3)]).values())
    age(entries[0][1])
    os.unlink(str(entries[2][1]) + ".metadata")  # being published right now
    e = run_json(capsys, "evict", "--path", str(base), "--older-than", "30m", "--max-bytes", "0")
    evicted = {x["path"] for x in e["evicted"]}
    assert evicted == {str(entries[0][1]), str(entries[1][1])}
    assert entries[2][1].exists()


def test_evict_goes_past_an_entry_it_cannot_delete_and_says_so(capsys, tmp_path):
    """The least recently used entry cannot be unlinked (its `.metadata` name holds a directory):
    it is reported, stays, and the others are evicted; the exit status says not all went."""
    base = tmp_path / "c"
    entries = list(store_entries(base, [(key("m", n), 9000 + n) for n in range(4)]).values())
    for n, (_, p) in enumerate(entries):
        age(p, OLD + n * 60)
    stuck = Path(str(entries[0][1]) + ".metadata")
    stuck.unlink()
    stuck.mkdir()
    (stuck / "x").write_bytes(b"x")
    e = run_json(capsys, "evict", "--path", str(base), "--max-bytes", "0", "--min-age", "0s", rc=1)
    assert sorted(x["path"] for x in e["evicted"]) == sorted(str(p) for _, p in entries[1:])
    assert [x["path"] for x in e["failed"]] == [str(entries[0][1])] and e["failed"][0]["error"]
    assert entries[0][1].exists() and not any(p.exists() for _, p in entries[1:])
    rc, out, _ = run(capsys, "evict", "--path", str(base), "--max-bytes", "0", "--min-age", "0s")
    assert rc == 1 and f"cannot evict {key('m', 0)}" in out and "1 entry could not be deleted" in out


def test_evict_needs_a_criterion(capsys, cache):
    rc, _, err = run(capsys, "evict", *cache.args())
    assert rc == 2 and "--max-bytes" in err and "usage:" in err


def test_lmcache_written_entries_are_understood(capsys, tmp_path):
    """An entry laid out exactly as LMCache's GdsBackend writes it (its own pack_metadata)."""
    import torch
    from lmcache.utils import CacheEngineKey
    from lmcache.v1.memory_management import MemoryFormat
    from lmcache.v1.storage_backend.gds_backend import pack_metadata

    tensor = torch.arange(2 * 4 * 16 * 8, dtype=torch.float32).to(torch.bfloat16).reshape(2, 4, 16, 8)
    k = CacheEngineKey("meta-llama/Llama-3.1-8B", 1, 0, 123456, torch.bfloat16)
    meta = pack_metadata(tensor, MemoryFormat.KV_2LTD, lmcache_version="1")
    path = Path(Layout([str(tmp_path)]).data_path(str(tmp_path), k.to_string(), k.chunk_hash))
    path.parent.mkdir(parents=True)
    path.write_bytes(meta + tensor.view(torch.uint8).numpy().tobytes())
    Path(str(path) + ".metadata").write_bytes(meta)
    v = run_json(capsys, "verify", "--path", str(tmp_path))
    assert v["status"] == {"ok": 1} and v["problems"] == []
    s = run_json(capsys, "stats", "--path", str(tmp_path))
    assert s["per_model"] == {"meta-llama/Llama-3.1-8B": {"entries": 1, "bytes": 2 * HEADER_SIZE + tensor.nbytes}}
    [entry] = run_json(capsys, "ls", "--long", "--path", str(tmp_path))
    assert entry["key"] == k.to_string() and entry["header"]["dtypes"] == ["BF16"]


VALID_CONFIG = """\
chunk_size: 256
local_cpu: false
storage_plugins: [gds]
extra_config:
  storage_plugin.gds.module_path: lmcache_plugin.backend
  storage_plugin.gds.class_name: GdsPluginBackend
  storage_plugin.gds.gds_path: "{a},{b}"
"""


def test_paths_from_an_lmcache_config(capsys, cache, tmp_path):
    config = tmp_path / "lmcache.yaml"
    config.write_text(VALID_CONFIG.format(a=cache.a, b=cache.b))
    s = run_json(capsys, "stats", "--config", str(config))
    assert s["paths"] == [str(cache.a), str(cache.b)] and s["entries"] == 11


def test_check_config(capsys, cache, tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text(VALID_CONFIG.format(a=cache.a, b=cache.b))
    rc, out, _ = run(capsys, "check-config", str(good), "--ignore-env")
    assert rc == 0 and "ok" in out
    bad = tmp_path / "bad.yaml"
    bad.write_text(VALID_CONFIG.format(a=cache.a, b=cache.b) + "gds_path_sharding: by_rack\n")
    result = run_json(capsys, "check-config", str(bad), "--ignore-env", rc=1)
    assert not result["ok"] and any("gds_path_sharding" in p and "by_gpu" in p for p in result["problems"])
    rc, out, _ = run(capsys, "check-config", str(bad), "--ignore-env")
    assert rc == 1 and "by_rack" in out


@pytest.mark.parametrize("argv, words", [
    (["stats"], "--path DIR"),
    (["ls", "--path", "/nonexistent/cache"], "no such directory"),
    (["verify", "--path", ".", "--min-age", "soon"], "invalid duration"),
    (["evict", "--path", ".", "--max-bytes", "lots"], "invalid size"),
    (["check-config", "/nonexistent.yaml"], "no such file"),
    (["stats", "--config", "/nonexistent.yaml"], "no such file"),
    (["frobnicate"], "invalid choice"),
    ([], "required"),
])
def test_bad_arguments_exit_2(capsys, argv, words):
    rc, _, err = run(capsys, *argv)
    assert rc == 2 and "usage:" in err and words in err


def test_config_with_a_bad_value_is_an_error_not_a_traceback(capsys, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text(textwrap.dedent("""\
        gds_path: ""
        """))
    rc, _, err = run(capsys, "stats", "--config", str(config))
    assert rc == 1 and "gds_path" in err and "Traceback" not in err


def test_an_entry_republished_after_the_scan_is_not_removed(tmp_path):
    from lmcache_plugin.commands.cache import _remove_entry, scan

    base = tmp_path / "c"
    [(h, path)] = store_entries(base, [(key("m", 1), 4242)]).values()
    age(path)
    [entry] = scan([str(base)]).entries
    age(path, time.time())  # a writer renamed a new file in since the scan
    assert _remove_entry(entry) is False and path.exists() and Path(str(path) + ".metadata").exists()
    [entry] = scan([str(base)]).entries
    assert _remove_entry(entry) is True and not path.exists() and not Path(str(path) + ".metadata").exists()


def test_stats_shows_the_counters_stores_published(tmp_path, capsys):
    """Counters of a store (hits, misses, bytes) are readable through `pygds cache stats`."""
    import json as _json

    from lmcache_plugin.format import EntryHeader
    from lmcache_plugin.store import KVStore, StoreOptions
    from pygds.cli.main import main

    cache = tmp_path / "cache"
    with KVStore(StoreOptions(paths=[str(cache)], engine="posix", stats_interval_s=0.05)) as store:
        data = bytearray(range(256)) * 16
        assert store.put("m@1@0@12345@bf16", 12345, data, EntryHeader.single((4096,), "U8", 1))
        out = bytearray(len(data))
        assert store.get_into("m@1@0@12345@bf16", 12345, out) and out == data
        assert not store.get_into("m@1@0@999@bf16", 999, out)
    assert main(["cache", "stats", "--path", str(cache), "--json"]) == 0
    report = _json.loads(capsys.readouterr().out)
    assert report["entries"] == 1 and report["unknown_files"] == 0
    [counters] = report["counters"]
    assert counters["hits"] == 1 and counters["misses"] == 1
    assert counters["bytes_written"] == len(data) and counters["bytes_read"] == len(data)
    assert main(["cache", "verify", "--path", str(cache)]) == 0


# ---------------------------------------------------------------------------------------------
# directories as people type them; advice that works as given


@pytest.mark.parametrize("action", [["stats"], ["ls"], ["verify"], ["gc", "--dry-run"],
                                    ["evict", "--older-than", "1d", "--dry-run"]])
def test_directories_as_positional_arguments(capsys, cache, action):
    """`pygds cache verify DIR DIR` works as `--path DIR --path DIR`."""
    rc = 1 if action[0] == "verify" else 0

    def report(*argv: str) -> object:
        result = run_json(capsys, *argv, rc=rc)
        for problem in result.get("problems", []) if isinstance(result, dict) else []:
            problem.pop("fix")  # the suggested command repeats the directories as they were given
        return result

    positional = report(action[0], str(cache.a), str(cache.b), *action[1:])
    assert positional == report(*action, *cache.args())
    assert positional == report(action[0], str(cache.a), "--path", str(cache.b), *action[1:])


def test_positional_directory_that_does_not_exist(capsys, tmp_path):
    rc, _, err = run(capsys, "verify", str(tmp_path / "nope"))
    assert rc == 2 and f"{tmp_path / 'nope'}: no such directory" in err and "DIR or --path DIR" in err


def test_relative_and_home_directories_are_made_absolute(capsys, cache, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    s = run_json(capsys, "stats", "a", "--path", "~/b")  # as --path=~/b, which no shell expands
    assert s["paths"] == [str(cache.a), str(cache.b)] and s["entries"] == 11
    assert set(s["per_path"]) == {str(cache.a), str(cache.b)}


def test_verify_suggests_the_gc_that_fixes_what_it_found(capsys, cache):
    """With --min-age 0, verify reports the fresh files too; its suggested gc must remove them."""
    rc, out, _ = run(capsys, "verify", str(cache.a), "--path", str(cache.b), "--min-age", "0")
    assert rc == 1
    [fix] = [line for line in out.splitlines() if line.startswith("fix: run `")]
    command = fix.split("`")[1]
    assert command == f"pygds cache gc {cache.a} --path {cache.b} --min-age 0s"
    v = run_json(capsys, "verify", *cache.args(), "--min-age", "0", rc=1)
    assert {p["fix"].split("`")[1] for p in v["problems"]} == {f"pygds cache gc {' '.join(cache.args())} --min-age 0s"}
    argv = command.split()
    assert argv[:2] == ["pygds", "cache"]
    assert main(argv[1:]) == 0  # the suggestion, run as given
    capsys.readouterr()
    assert run_json(capsys, "verify", *cache.args(), "--min-age", "0")["problems"] == []


def test_verify_with_the_default_min_age_suggests_plain_gc(capsys, cache):
    _, out, _ = run(capsys, "verify", *cache.args())
    assert f"fix: run `pygds cache gc --path {cache.a} --path {cache.b}`" in out


def test_stats_names_unknown_files(capsys, cache):
    rc, out, _ = run(capsys, "stats", *cache.args())
    assert rc == 0 and f"unknown files: 1 ({cache.files['unknown']})" in out
    extra = [cache.b / f"stray-{n}.bin" for n in range(6)]
    for p in extra:
        p.write_bytes(b"?")
    rc, out, _ = run(capsys, "stats", *cache.args())
    [line] = [line for line in out.splitlines() if "unknown files: 7" in line]
    assert sum(str(p) in line for p in [cache.files["unknown"], *extra]) == 5 and line.endswith(" and 2 more)")
    s = run_json(capsys, "stats", *cache.args())
    assert sorted(s["unknown_paths"]) == sorted(str(p) for p in [cache.files["unknown"], *extra])


# ---------------------------------------------------------------------------------------------
# check-config finds what LMCache would trip on


def write_config(tmp_path, text: str) -> Path:
    f = tmp_path / "lmcache.yaml"
    f.write_text(VALID_CONFIG.format(a=tmp_path / "c0", b=tmp_path / "c1") + text)
    return f


@pytest.mark.parametrize("extra, words", [
    ("  storage_plugin.gds.disk_io_threads: -1\n", "disk_io_threads=-1"),
    ("  storage_plugin.gds.checksum: sometimes\n", "checksum='sometimes'"),
])
def test_check_config_bad_plugin_values(capsys, tmp_path, extra, words):
    f = write_config(tmp_path, extra)
    result = run_json(capsys, "check-config", str(f), "--ignore-env", rc=1)
    [problem] = result["problems"]
    assert words in problem and "Fix:" in problem


def test_check_config_typo_in_the_registration(capsys, tmp_path):
    f = write_config(tmp_path, "")
    f.write_text(f.read_text().replace("GdsPluginBackend", "GdsPlugnBackend"))
    rc, out, _ = run(capsys, "check-config", str(f), "--ignore-env")
    assert rc == 1 and "class_name='GdsPlugnBackend'" in out and "has no such class" in out
    assert "Fix: write storage_plugin.gds.module_path: lmcache_plugin.backend" in out
    f.write_text(f.read_text().replace("lmcache_plugin.backend", "lmcache_plugin.backends"))
    rc, out, _ = run(capsys, "check-config", str(f), "--ignore-env")
    assert rc == 1 and "module_path='lmcache_plugin.backends'" in out and "cannot import it" in out


def test_check_config_names_the_environment_variable(capsys, tmp_path, monkeypatch):
    f = write_config(tmp_path, "")
    monkeypatch.setenv("LMCACHE_CHUNK_SIZE", "abc")
    monkeypatch.setenv("LMCACHE_EXTRA_CONFIG", "{'use_cufile': false}")
    result = run_json(capsys, "check-config", str(f), rc=1)
    text = "\n".join(result["problems"])
    assert "chunk_size='abc' (from environment LMCACHE_CHUNK_SIZE)" in text
    assert ("LMCACHE_EXTRA_CONFIG=\"{'use_cufile': false}\": the environment variable is not valid JSON "
            "(Expecting property name enclosed in double quotes at line 1 column 2, character 1)") in text
    assert run_json(capsys, "check-config", str(f), "--ignore-env")["ok"]


def test_check_config_relative_path_shows_the_absolute_one(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    f = write_config(tmp_path, "")
    f.write_text(f.read_text().replace(f'"{tmp_path / "c0"},', '"cache,'))
    rc, out, _ = run(capsys, "check-config", str(f), "--ignore-env")
    assert rc == 1 and "gds_path='cache'" in out and "relative" in out
    assert f"Fix: write the absolute path, e.g. gds_path: {tmp_path / 'cache'}" in out


def test_check_config_without_lmcache_says_so(tmp_path):
    """Where lmcache is not installed, the command says what it could not check instead of failing."""
    import subprocess
    import sys

    f = write_config(tmp_path, "")
    code = ("import sys; sys.modules['lmcache'] = None\n"
            "from pygds.cli.main import main\n"
            f"sys.exit(main(['cache', 'check-config', {str(f)!r}, '--ignore-env']))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"{f}: ok" in done.stdout and "note: " in done.stdout and "were not checked" in done.stdout
    assert "lmcache cannot be imported" in done.stdout


# ---------------------------------------------------------------------------------------------
# one reader: verify checks what the store's reads check


def test_verify_reads_every_entry_as_the_store_does(capsys, tmp_path):
    """A flipped data byte (the checksum disagrees) and two data files swapped by name (each holds
    the other's key) are corrupt to `verify`, as they are to the store's reads; gc removes them."""
    base = tmp_path / "c"
    stored = store_entries(base, [(key("m", n), 5000 + n) for n in range(4)])
    (_, flipped), (_, first), (_, second), (k_ok, (h_ok, _)) = stored.items()
    with open(flipped[1], "r+b") as f:
        f.seek(HEADER_SIZE + 7)
        byte = f.read(1)
        f.seek(HEADER_SIZE + 7)
        f.write(bytes([byte[0] ^ 1]))
    a, b = first[1].read_bytes(), second[1].read_bytes()
    first[1].write_bytes(b)
    second[1].write_bytes(a)
    for path in (first[1], second[1]):
        Path(str(path) + ".metadata").write_bytes(path.read_bytes()[:HEADER_SIZE])
    with KVStore(StoreOptions(paths=[str(base)], engine="posix", scan=False)) as store:
        dest = bytearray(HEADER.nbytes)
        assert [store.get_into(k, h, dest) for k, (h, _) in stored.items()] == [False, False, False, True]
    v = run_json(capsys, "verify", "--path", str(base), rc=1)
    problems = {p["path"]: p["problem"] for p in v["problems"]}
    assert v["status"] == {"ok": 1, "corrupt": 3}
    assert "checksum" in problems[str(flipped[1])]
    assert "holds key" in problems[str(first[1])] and "holds key" in problems[str(second[1])]
    g = run_json(capsys, "gc", "--path", str(base))
    assert {a["path"] for a in g["actions"]} == {str(flipped[1]), str(first[1]), str(second[1])}
    assert run_json(capsys, "verify", "--path", str(base))["status"] == {"ok": 1}
    with KVStore(StoreOptions(paths=[str(base)], engine="posix", scan=False)) as store:
        dest = bytearray(HEADER.nbytes)
        assert store.get_into(k_ok, h_ok, dest) and bytes(dest) == data(h_ok)


def test_the_config_checker_pygds_info_loads(tmp_path):
    """`pygds info --config` finds the plugin's checker through the `pygds.config` entry point:
    the paths the file names and its problems, each with its fix."""
    from importlib.metadata import entry_points

    [ep] = [ep for ep in entry_points(group="pygds.config") if ep.name == "lmcache"]
    check = ep.load()
    good = write_config(tmp_path, "")
    paths, problems = check(str(good), {})
    assert paths == [str(tmp_path / "c0"), str(tmp_path / "c1")] and problems == []
    bad = write_config(tmp_path, "  storage_plugin.gds.checksum: sometimes\n")
    paths, problems = check(str(bad), {})
    assert paths == [] and len(problems) == 1 and "checksum='sometimes'" in problems[0] and " Fix: " in problems[0]
    paths, problems = check(str(good), {"LMCACHE_EXTRA_CONFIG": '{"x": 1}'})
    assert problems and "LMCACHE_EXTRA_CONFIG" in problems[0]


def test_multiprocess_mode_entries_are_complete_without_a_metadata_file(capsys, tmp_path):
    """The L2 adapter publishes an entry as its data file alone: verify finds nothing to repair,
    gc rebuilds nothing, and evict does not take a fresh one for a half-published entry."""
    from lmcache_plugin.l2_names import MpKey, fanout_hash, mp_key_text

    base = tmp_path / "l2"
    keys = [MpKey(chunk_hash=bytes([n]) * 16, model_name="org/m", kv_rank=1) for n in range(3)]
    with KVStore(StoreOptions(paths=str(base), engine="posix", metadata_file=False)) as store:
        for n, k in enumerate(keys):
            assert store.put(mp_key_text(k), fanout_hash(k), bytes([n]) * 4096, EntryHeader.single((4096,), "U8", 0))
    assert not list(base.rglob("*.metadata"))
    v = run_json(capsys, "verify", str(base), "--min-age", "0")
    assert v["entries"] == 3 and v["problems"] == [], v
    run(capsys, "gc", str(base), "--min-age", "0")
    assert not list(base.rglob("*.metadata"))
    e = run_json(capsys, "evict", str(base), "--max-bytes", "0")
    assert sorted(x["key"] for x in e["evicted"]) == sorted(mp_key_text(k) for k in keys)


def test_gc_never_removes_an_entry_it_could_not_read(tmp_path):
    """An entry whose file cannot be read (permissions, a failing device) is not proven bad:
    verify reports it as unreadable and gc leaves it where it is."""
    import subprocess
    import sys

    from faults.build import build_fault_shim
    from standin.build import CompilerMissing

    try:
        shim = build_fault_shim(tmp_path / "shim")
    except CompilerMissing as exc:
        pytest.skip(str(exc))
    base = tmp_path / "cache"
    ((_, path),) = store_entries(base, [(key("m", 1), 4242)]).values()
    env = shim.env(base, errno="EACCES", ops="open", match=".kvcache.safetensors")

    def pygds_cache(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "pygds", "cache", *argv, str(base), "--min-age", "0", "--json"],
                              env=env, capture_output=True, text=True, timeout=120)

    verify = pygds_cache("verify")
    problems = json.loads(verify.stdout)["problems"]
    assert verify.returncode == 1 and [p["kind"] for p in problems] == ["unreadable"], verify.stdout + verify.stderr
    assert "gc never removes" in problems[0]["fix"]
    gc = pygds_cache("gc")
    assert gc.returncode == 0, gc.stderr
    assert json.loads(gc.stdout)["actions"] == [] and path.exists() and Path(str(path) + ".metadata").exists()
