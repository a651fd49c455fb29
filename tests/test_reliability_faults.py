"""Real errnos from libc under the KV store: an LD_PRELOAD shim (`tests/faults/`) makes
writes, reads and opens of files under the cache directory fail with ENOSPC, EDQUOT, EIO, EACCES,
EPERM or EROFS, in a subprocess running the store (or the LMCache adapter).

Each failed put fails cleanly: False, one log line naming the cause, nothing partial visible (no
temporary file, no data file without `.metadata`, no `.metadata` without data), the index right
(contains / lookup miss), and the same put succeeds once the fault is lifted. A read that fails
drops the entry (a miss, one warning) and never serves bytes.

This file is also the worker it runs: `python tests/test_reliability_faults.py PLAN.json`.
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from faults import entry_data, files_under, incomplete, record, u8_header
from faults.build import FaultShim, build_fault_shim
from standin.build import REPO_ROOT, CompilerMissing

LOG_FORMAT = "%(levelname)s:%(name)s:%(message)s"
CAUSE = {  # what the log line must say (lower case), by errno
    "ENOSPC": ("no space left on device",), "EDQUOT": ("disk quota exceeded",), "EIO": ("input/output error",),
    "EACCES": ("permission denied",), "EPERM": ("operation not permitted", "permission denied"),
    "EROFS": ("read-only file system",),
}


def names_cause(line: str, errno_name: str) -> bool:
    return any(words in line.lower() for words in CAUSE[errno_name])
DATA_TMP = ".kvcache.safetensors.tmp"
META_TMP = ".kvcache.safetensors.metadata.tmp"


@pytest.fixture(scope="session")
def shim(tmp_path_factory: pytest.TempPathFactory) -> FaultShim:
    try:
        return build_fault_shim(tmp_path_factory.mktemp("fault-shim"))
    except CompilerMissing as exc:
        pytest.skip(str(exc))


def key(i: int) -> tuple[str, int]:
    return f"org/model@1@0@{i:x}@bfloat16", 1_000_003 * (i + 1)


def run_worker(env: dict[str, str], plan: dict, tmp_path: Path) -> tuple[dict, list[list[str]]]:
    """Run the plan under `env`; returns the worker's JSON and its log lines, per operation."""
    plan_path = tmp_path / f"plan{len(list(tmp_path.glob('plan*.json')))}.json"
    plan_path.write_text(json.dumps(plan))
    done = subprocess.run([sys.executable, __file__, str(plan_path)], env=env, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"worker failed:\n{done.stdout}\n{done.stderr}"
    per_op: list[list[str]] = [[]]
    for line in done.stderr.splitlines():
        if re.fullmatch(r"OP \d+", line):
            per_op.append([])
        elif line.strip():
            per_op[-1].append(line)
    assert per_op[0] == [], f"log lines before the first operation: {per_op[0]}"
    return json.loads(done.stdout), per_op[1:]


# -- write faults ------------------------------------------------------------------------------
WRITE_CASES = [
    # errno, ops, match, after_bytes: where the put meets the fault
    *[(e, "write", DATA_TMP, None) for e in ("ENOSPC", "EDQUOT", "EIO")],  # header of the data file
    *[(e, "write", DATA_TMP, 4096 + 1000) for e in ("ENOSPC", "EDQUOT", "EIO")],  # short, then fails
    *[(e, "write", META_TMP, None) for e in ("ENOSPC", "EDQUOT", "EIO")],  # the .metadata file
    *[(e, "create", DATA_TMP, None) for e in ("EACCES", "EPERM", "EROFS")],  # creating the data file
    *[(e, "create", META_TMP, None) for e in ("EACCES", "EPERM")],  # creating the .metadata file
]


def _case_id(case) -> str:
    errno_name, ops, match, after = case
    where = "data" if match == DATA_TMP else "metadata"
    return f"{errno_name}-{ops}-{where}" + ("-midway" if after is not None else "")


@pytest.mark.parametrize("case", WRITE_CASES, ids=[_case_id(c) for c in WRITE_CASES])
def test_write_fault_fails_cleanly_and_heals(shim, tmp_path, case):
    errno_name, ops, match, after = case
    cache = tmp_path / "cache"
    sizes = [300_000, 5_000, (1 << 20) + 17]
    keys = [key(i) for i in range(3)]
    plan = {"paths": [str(cache)], "root": str(cache), "ops": [
        *[op for (k, h), n in zip(keys, sizes) for op in (["put", k, h, n], ["check"])],
        *[op for k, h in keys for op in (["contains", k, h], ["lookup", k, h])],
        ["lift"],
        ["check"],
        *[["put", k, h, n] for (k, h), n in zip(keys, sizes)],
        *[["get", k, h, n] for (k, h), n in zip(keys, sizes)],
        ["check"],
    ]}
    env = shim.env(cache, errno=errno_name, ops=ops, match=match, after_bytes=after)
    out, logs = run_worker(env, plan, tmp_path)
    results = out["results"]
    n = len(keys)
    puts, checks = results[0:2 * n:2], results[1:2 * n:2]
    assert puts == [False] * n
    assert checks == [[]] * n, "a failed put left something visible"
    assert results[2 * n:4 * n] == [False] * (2 * n), "a failed put is in the index"
    assert results[4 * n + 1] == []
    assert results[4 * n + 2:5 * n + 2] == [True] * n, "puts fail after the fault was lifted"
    assert results[5 * n + 2:6 * n + 2] == ["hit"] * n
    assert results[-1] == []
    for i in range(n):  # one clear line per failed put
        lines = logs[2 * i]
        assert len(lines) == 1, lines
        assert lines[0].startswith("ERROR:lmcache_plugin.store:") and keys[i][0] in lines[0]
        assert names_cause(lines[0], errno_name), lines[0]
    assert all(not lines for j, lines in enumerate(logs) if j not in range(0, 2 * n, 2)), logs
    stats = out["stats"]
    assert (stats["put_errors"], stats["puts"], stats["corrupt"], stats["read_errors"]) == (n, n, 0, 0)
    assert out["injected"] >= n
    assert sorted(f for f in files_under(cache) if f.endswith(".metadata")) == sorted(
        f + ".metadata" for f in files_under(cache) if f.endswith(".safetensors"))
    record("write_fault", errno=errno_name, stage=_case_id(case), faults_injected=out["injected"],
           puts_failed=n, entries_written=n, entries_verified=n)


def test_fault_on_the_first_calls_only_lifts_by_itself(shim, tmp_path):
    """The first 2 data-file writes fail with ENOSPC; from the third on the disk "has room"."""
    cache = tmp_path / "cache"
    keys = [key(i) for i in range(4)]
    plan = {"paths": [str(cache)], "root": str(cache), "ops": [
        *[op for k, h in keys for op in (["put", k, h, 70_000], ["check"])],
        *[["put", k, h, 70_000] for k, h in keys[:2]],
        *[["get", k, h, 70_000] for k, h in keys],
    ]}
    out, logs = run_worker(shim.env(cache, errno="ENOSPC", match=DATA_TMP, times=2), plan, tmp_path)
    r = out["results"]
    assert r[0:8:2] == [False, False, True, True] and r[1:8:2] == [[]] * 4
    assert r[8:] == [True, True, "hit", "hit", "hit", "hit"]
    assert [len(x) for x in logs] == [1, 0, 1, 0] + [0] * 10
    assert out["injected"] == 2 and out["stats"]["put_errors"] == 2
    record("write_fault_first_calls", errno="ENOSPC", faults_injected=2, puts_failed=2, entries_written=4,
           entries_verified=4)


# -- pygds's own report -------------------------------------------------------------------------
@pytest.mark.parametrize("op,errno_name", [("write", "ENOSPC"), ("read", "EIO")])
@pytest.mark.parametrize("direct", [False, True], ids=["buffered", "O_DIRECT"])
def test_error_counts_the_bytes_moved_before_the_fault(shim, tmp_path, op, errno_name, direct):
    """A transfer cut short and then failing (a filling disk) is reported with its true progress."""
    where = tmp_path / "d"
    where.mkdir()
    path = where / "f.bin"
    path.write_bytes(bytes(2 << 20))  # written by this process, which has no shim
    code = (f"import pygds\n"
            f"with pygds.File({str(path)!r}, 'r+', engine='posix', direct={direct}) as f:\n"
            f"    try:\n"
            f"        f.{op}(pygds.as_buffer(bytearray(1 << 20)), 1 << 20, file_offset=4096)\n"
            f"    except pygds.IOFailedError as exc:\n"
            f"        print(exc)\n")
    env = shim.env(where, errno=errno_name, ops=op, after_bytes=100 * 4096)
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert f"{op} of 1048576 bytes at offset 4096 of {path} failed after {100 * 4096} bytes" in done.stdout
    assert CAUSE[errno_name][0] in done.stdout.lower()


# -- read faults -------------------------------------------------------------------------------
READ_CASES = [
    ("EIO", "read", 0, None),  # the first header read (lookup)
    ("EIO", "read", 1, None),  # the header re-read by read_into
    ("EIO", "read", 0, 2 * 4096),  # the data read itself
    ("EIO", "read", 0, 2 * 4096 + 1000),  # the data read, after a short read
    ("EACCES", "open", 0, None),  # opening the data file
]


@pytest.mark.parametrize("case", READ_CASES, ids=[f"{c[0]}-{c[1]}-skip{c[2]}-after{c[3]}" for c in READ_CASES])
def test_read_fault_drops_the_entry_and_never_serves_bytes(shim, tmp_path, case):
    errno_name, ops, skip, after = case
    cache = tmp_path / "cache"
    n = 200_000
    keys = [key(i) for i in range(3)]
    from lmcache_plugin.store import KVStore, StoreOptions

    # no index snapshot: the worker's reads under the shim are then the entries' alone
    with KVStore(StoreOptions(paths=[str(cache)], engine="posix", index_snapshot=False)) as store:
        for k, h in keys:
            assert store.put(k, h, entry_data(k, n), u8_header(n))
    k0, h0 = keys[0]
    plan = {"paths": [str(cache)], "root": str(cache), "ops": [
        ["get", k0, h0, n],  # faulted: a miss, one warning
        ["get", k0, h0, n],  # dropped: a miss, quietly
        ["contains", k0, h0],
        ["lookup", k0, h0],
        ["lift"],
        ["get", k0, h0, n],  # a file read and found bad stays dropped; one it could not open is found again
        *[["get", k, h, n] for k, h in keys[1:]],  # the others read fine
        ["put", k0, h0, n],  # rewriting the dropped entry works (one found again needs none)
        ["get", k0, h0, n],
        ["check"],
    ]}
    out, logs = run_worker(shim.env(cache, errno=errno_name, ops=ops, skip=skip, after_bytes=after), plan, tmp_path)
    found_again = ops == "open"
    assert out["results"] == ["miss", "miss", False, False, 0, "hit" if found_again else "miss", "hit", "hit",
                              not found_again, "hit", []]
    assert len(logs[0]) == 1 and logs[0][0].startswith("WARNING:lmcache_plugin.entries:dropping"), logs[0]
    assert names_cause(logs[0][0], errno_name), logs[0][0]
    assert not any(logs[1:]), logs
    assert out["stats"]["read_errors"] == 1 and out["stats"]["corrupt"] == 0
    assert out["injected"] >= 1
    with KVStore(StoreOptions(paths=[str(cache)], engine="posix")) as store:  # nothing was damaged
        for k, h in keys:
            got = bytearray(n)
            assert store.get_into(k, h, got) and bytes(got) == entry_data(k, n)
    record("read_fault", errno=errno_name, stage=f"{ops}-skip{skip}-after{after}", faults_injected=out["injected"],
           reads_failed=1, entries_verified=len(keys))


# -- the LMCache adapter -----------------------------------------------------------------------
ADAPTER_SCRIPT = r"""
import ctypes, json, logging, os, sys
sys.path.insert(0, os.path.join(os.environ["REPO"], "tests"))
logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s:%(name)s:%(message)s")
from lmcache_env import event_loop, launch_plugins, make_config, make_key, make_metadata, obj_bytes, \
    plugin_extra, random_obj, close_all
lib = ctypes.CDLL(None)
cache = sys.argv[1]
out = {}
with event_loop() as loop:
    config = make_config(extra_config={**plugin_extra(cache), "storage_plugin.gds.cufile_buffer_size": 4,
                                       "storage_plugin.gds.use_cufile": False,
                                       "storage_plugin.gds.disk_io_threads": 2})
    backends = launch_plugins(config, make_metadata(), loop)
    gds = backends["gds"]
    keys = [make_key(1000 + i) for i in range(6)]
    objs = [random_obj(gds, i) for i in range(6)]
    data = [obj_bytes(o) for o in objs]
    print("OP 1", file=sys.stderr, flush=True)
    futures = gds.batched_submit_put_task(keys, objs)
    out["puts"] = [f.result(timeout=60) for f in futures]
    out["contains"] = [gds.contains(k) for k in keys]
    out["injected_writes"] = lib.pygds_fault_injected()
    print("OP 2", file=sys.stderr, flush=True)
    redo = [i for i, ok in enumerate(out["puts"]) if not ok]
    futures = gds.batched_submit_put_task([keys[i] for i in redo], [objs[i] for i in redo])
    out["reputs"] = [f.result(timeout=60) for f in futures]
    for o in objs:
        o.ref_count_down()
    got = gds.batched_get_blocking(keys)
    out["gets"] = [o is not None and obj_bytes(o) == d for o, d in zip(got, data)]
    for o in got:
        if o is not None:
            o.ref_count_down()
    gds.close()
    backends = launch_plugins(config, make_metadata(), loop)  # a fresh process view: reads fail with EIO
    gds = backends["gds"]
    os.environ.update(PYGDS_FAULT_OPS="read", PYGDS_FAULT_ERRNO="EIO", PYGDS_FAULT_TIMES="1",
                      PYGDS_FAULT_MATCH="")
    lib.pygds_fault_reload()
    print("OP 3", file=sys.stderr, flush=True)
    first = gds.get_blocking(keys[0])
    out["eio_get"] = first is not None
    out["eio_contains"] = gds.contains(keys[0])
    out["injected_reads"] = lib.pygds_fault_injected()
    print("OP 4", file=sys.stderr, flush=True)
    got = gds.batched_get_blocking(keys[1:])
    out["gets_after"] = [o is not None and obj_bytes(o) == d for o, d in zip(got, data[1:])]
    for o in got:
        if o is not None:
            o.ref_count_down()
    out["stats"] = {k: v for k, v in gds.stats().items() if isinstance(v, (int, float, str))}
    close_all(backends)
print(json.dumps(out))
"""


def test_lmcache_adapter_under_enospc_then_eio(shim, tmp_path):
    """The plugin as LMCache loads it: 3 of 6 puts meet a full disk (one error line each, their
    futures False, nothing visible), a retry stores them; an EIO read gives a miss, not bytes."""
    cache = tmp_path / "cache"
    env = shim.env(cache, errno="ENOSPC", ops="write", match=DATA_TMP, times=3)
    env.update(REPO=str(REPO_ROOT), PYGDS_ENGINE="posix")
    for name in [k for k in env if k.startswith("LMCACHE_")]:
        del env[name]
    done = subprocess.run([sys.executable, "-c", ADAPTER_SCRIPT, str(cache)], env=env, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert sorted(out["puts"]) == [False] * 3 + [True] * 3 and out["injected_writes"] == 3
    assert out["contains"] == out["puts"]
    assert out["reputs"] == [True] * 3 and out["gets"] == [True] * 6
    assert out["eio_get"] is False and out["eio_contains"] is False and out["injected_reads"] == 1
    assert out["gets_after"] == [True] * 5
    sections = re.split(r"^OP \d+$", done.stderr, flags=re.M)
    ours = [[line for line in s.splitlines() if re.match(r"(WARNING|ERROR|CRITICAL):lmcache_plugin", line)]
            for s in sections]
    assert len(ours[1]) == 3 and all("No space left on device" in line for line in ours[1]), ours[1]
    assert ours[2] == []
    assert len(ours[3]) == 1 and "dropping" in ours[3][0] and "Input/output error" in ours[3][0], ours[3]
    assert ours[4] == []
    assert "Traceback" not in done.stderr
    assert incomplete(cache) == []
    record("adapter_fault", errno="ENOSPC", faults_injected=out["injected_writes"], puts_failed=3,
           entries_written=6, entries_verified=6)
    record("adapter_fault", errno="EIO", faults_injected=out["injected_reads"], reads_failed=1)


# -- the worker ----------------------------------------------------------------------------------
def _worker(plan_path: str) -> None:
    """Run a plan's operations on a KVStore; JSON results on stdout, "OP i" before each on stderr."""
    from lmcache_plugin.store import KVStore, StoreOptions

    plan = json.loads(Path(plan_path).read_text())
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format=LOG_FORMAT)
    lib = ctypes.CDLL(None)
    lib.pygds_fault_injected.restype = ctypes.c_longlong
    injected = 0
    store = KVStore(StoreOptions(paths=plan["paths"], engine="posix", io_threads=0))
    store.wait_for_scan(60)
    results: list = []
    for i, (op, *args) in enumerate(plan["ops"], 1):
        print(f"OP {i}", file=sys.stderr, flush=True)
        if op == "put":
            k, h, n = args
            results.append(store.put(k, h, entry_data(k, n), u8_header(n)))
        elif op == "get":
            k, h, n = args
            dest = bytearray(n)
            ok = store.get_into(k, h, dest)
            results.append("miss" if not ok else "hit" if bytes(dest) == entry_data(k, n) else "garbage")
        elif op == "contains":
            results.append(store.contains(*args))
        elif op == "lookup":
            results.append(store.lookup(*args) is not None)
        elif op == "lift":
            injected += lib.pygds_fault_injected()
            os.environ["PYGDS_FAULT_PREFIX"] = ""
            results.append(lib.pygds_fault_reload())
        elif op == "check":
            results.append(incomplete(plan["root"]))
        else:
            raise ValueError(f"unknown operation {op!r}")
    injected += lib.pygds_fault_injected()
    print(json.dumps({"results": results, "stats": store.stats().as_dict(), "injected": injected}))
    store.close()


if __name__ == "__main__":
    _worker(sys.argv[1])
