"""`GdsL2Adapter` inside a real `lmcache server` (LMCache's MP mode), driven by LMCache's own
`lmcache bench server --mode cpu` client: stores land in our L2, requests after an L1 clear and
after a server restart are served from it (the server's `/metrics` say so) with the bytes the
client stored, and bad `adapter_params` stop the server at start with the fix."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import pytest
from l2_env import (
    LmcacheServer,
    bench_server,
    environment,
    free_port,
    l2_adapter_json,
    server_command,
    warm_checksums,
)

LOADS = 'lmcache_mp_l2_load_completed_requests_total{l2_name="plugin"}'
USAGE = 'lmcache_mp_l2_usage_bytes{l2_name="plugin"}'
L2_HITS = 'lmcache_mp_lookup_hit_l2_keys_total{cache_salt="",model_name="test-model"}'
CHUNK_FILE = 32 << 20  # one 256-token chunk of the bench's default KV shape, in bytes


def data_files(paths: list[str]) -> list[Path]:
    return [p for d in paths for p in Path(d).rglob("*.kvcache.safetensors")]


def checksums_ok(output: str) -> int:
    return int(re.search(r"Checksum OK:\s+(\d+)", output).group(1))


def wait_for(predicate, timeout_s: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return predicate()


def test_served_from_l2_after_l1_clear_and_after_restart(tmp_path: Path) -> None:
    paths = [str(tmp_path / "l2-a"), str(tmp_path / "l2-b")]
    spec = l2_adapter_json(paths)
    with LmcacheServer(spec, tmp_path / "server1.log") as server:
        first = bench_server(server, 0, 1)
        assert checksums_ok(first) == 1, first
        stored = warm_checksums(first)
        assert len(stored) == 1
        files = data_files(paths)
        assert len(files) == 2 and all(f.stat().st_size == 4096 + CHUNK_FILE for f in files)
        assert all("%40mp%40" in f.name for f in files)  # MP key texts, never in-process ones
        assert not [p for d in paths for p in Path(d).rglob("*.metadata")]
        assert server.post("/cache/clear", {"tier": "l1", "force": True})["status"] == "ok"
        before = server.metrics()
        second = bench_server(server, 0, 1)
        after = server.metrics()
        assert after[LOADS] > before.get(LOADS, 0.0), second
        assert after[L2_HITS] > before.get(L2_HITS, 0.0)
        assert warm_checksums(second) == stored
        usage = after[USAGE]
        assert usage == 2 * (CHUNK_FILE + 4096)  # two data files, no .metadata
        status = server.adapter_status()
        assert status["type"] == "GdsL2Adapter" and status["is_healthy"]
        assert sum(p["entries"] for p in status["paths"]) == 2
    assert "GdsL2Adapter: 2 path(s)" in server.log()  # which engine runs, and why, is in the log
    with LmcacheServer(spec, tmp_path / "server2.log") as server:
        assert wait_for(lambda: server.metrics().get(USAGE) == usage), "the scan's entries were not counted"
        third = bench_server(server, 0, 1)
        assert server.metrics()[LOADS] > 0, third
        assert warm_checksums(third) == stored
    assert len(data_files(paths)) == 2


@pytest.mark.parametrize(
    "params, expected",
    [
        ({"io_thread": 4}, "adapter_params.io_thread = 4: unknown key; fix: remove it or use one of paths,"),
        ({"io_threads": 0}, "adapter_params.io_threads = 0: not an integer from 1 to 256; fix: use e.g. 8"),
        ({"unwritable": True}, ": cannot write there (Not a directory); fix: create the directory"),
    ],
)
def test_bad_adapter_params_stop_the_server_with_the_fix(tmp_path: Path, params: dict, expected: str) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    paths = [str(blocker / "l2")] if params.pop("unwritable", False) else [str(tmp_path / "l2")]
    cmd = server_command(l2_adapter_json(paths, **params), free_port(), free_port())
    done = subprocess.run(cmd, check=False, capture_output=True, text=True, env=environment(), timeout=120)
    assert done.returncode != 0
    assert expected in done.stdout + done.stderr, (done.stdout + done.stderr)[-3000:]
