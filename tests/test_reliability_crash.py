"""Writers killed with SIGKILL at random points.

A zygote process (this file run as a script) imports the store once and forks writers on demand,
so a kill costs milliseconds, not an interpreter start. Each writer puts entries of random keys
and sizes (some MiB large, data derived from the key) on two paths with two I/O threads, removes
a few, and logs each put once it returned True. After every kill a fresh store on the same paths
must hold only complete, byte-exact entries, every logged put among them; temporary leftovers
survive a scan while younger than `tmp_max_age_s` and are removed by the next scan once older
(the first time after really waiting, later with their mtimes moved back).
Throughout, a live writer keeps putting large entries on the same paths: its fresh temporary files
are never removed (a removed one would fail its put) and it ends with no put error.

The seed (printed) comes from PYGDS_RELIABILITY_SEED or is drawn at random;
PYGDS_RELIABILITY_KILLS sets the number of kills of the default test.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import secrets
import signal
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import pytest

from faults import entry_data, entry_size, files_under, incomplete, record, u8_header
from lmcache_plugin.store import KVStore, StoreOptions

REPO_ROOT = Path(__file__).resolve().parents[1]
SLOW_REASON = "a long run (minutes): set PYGDS_TEST_SLOW=1 to run it (-m slow selects only these)"
KEYSPACE = 400
LARGE = 2 << 20
REMOVE_SHARE = 0.35
TMP_MAX_AGE_S = 2.0
LIVE = "live"


def crash_key(i: int) -> tuple[str, int]:
    """Keys with long, short and negative hashes (all fan-out shapes LMCache makes)."""
    chunk_hash = (i * 2_654_435_761) % (1 << 61) if i % 3 else -(i * 7) if i % 2 else i
    return f"org/crash-model@1@0@{i:x}@bfloat16", chunk_hash


def live_key(i: int) -> tuple[str, int]:
    return f"org/{LIVE}-model@1@0@{i:x}@bfloat16", 9_000_000 + i


def crash_size(key: str) -> int:
    return entry_size(key, large=LARGE)


def live_size(key: str) -> int:
    return (2 << 20) + entry_size(key) % (2 << 20)


# -- processes -------------------------------------------------------------------------------------
def _write_line(fd: int, text: str) -> None:
    os.write(fd, (text + "\n").encode())


def _crash_writer(paths: list[str], device_id: int, seed: int, log_path: str, blobs: list[bytes]) -> None:
    """Put (and sometimes remove) random keys until killed; log "+key" after a put returned True
    and "~key" before a removal starts. `blobs[i]` is the data of `crash_key(i)`."""
    rng = random.Random(seed)
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    store = KVStore(StoreOptions(paths=paths, device_id=device_id, engine="posix", io_threads=2, scan=False))
    in_flight = []
    while _orphan_guard():
        i = rng.randrange(KEYSPACE)
        k, h = crash_key(i)
        if rng.random() < REMOVE_SHARE:
            for fut in in_flight:  # its "+key" lines are written before the "~key" line
                fut.result()
            in_flight.clear()
            _write_line(log, "~" + k)
            store.remove(k, h)
            continue
        data = blobs[i]
        in_flight.append(store.submit_put(
            k, h, data, u8_header(len(data)), on_done=lambda ok, k=k: ok and _write_line(log, "+" + k)))
        if len(in_flight) >= 3:
            in_flight.pop(0).result()


def _live_writer(paths: list[str], stop_path: str, result_path: str) -> None:
    """Put large entries (removing all but the last two) until `stop_path` exists; write the
    counts to `result_path`."""
    store = KVStore(StoreOptions(paths=paths, device_id=1, engine="posix", io_threads=2, scan=False))
    i = stored = 0
    while not os.path.exists(stop_path) and _orphan_guard():
        k, h = live_key(i)
        data = entry_data(k, live_size(k))
        stored += store.put(k, h, data, u8_header(len(data)))
        if i >= 2:
            store.remove(*live_key(i - 2))
        i += 1
        time.sleep(0.01)
    stats = store.stats()
    store.close()
    Path(result_path).write_text(json.dumps({"attempted": i, "stored": stored, "put_errors": stats.put_errors}))


_ZYGOTE_PID = os.getpid()
_GIVE_UP = time.monotonic() + 900


def _orphan_guard() -> bool:
    """False once the zygote is gone or the test has run far too long: never outlive the test."""
    return os.getppid() == _ZYGOTE_PID and time.monotonic() < _GIVE_UP


def _zygote(paths: list[str]) -> None:
    """Fork writers on command: "crash SEED DEVICE LOG", "live STOP RESULT", "reap PID".

    The crash writers' data is made here once and shared with every fork."""
    blobs = [entry_data(k, crash_size(k)) for k, _ in map(crash_key, range(KEYSPACE))]
    for line in sys.stdin:
        cmd, *args = line.split()
        if cmd == "reap":
            _, status = os.waitpid(int(args[0]), 0)
            _write_line(1, f"status {status}")
            continue
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                if cmd == "crash":
                    _crash_writer(paths, int(args[1]), int(args[0]), args[2], blobs)
                else:
                    _live_writer(paths, args[0], args[1])
                code = 0
            finally:
                os._exit(code)
        _write_line(1, f"pid {pid}")


class Zygote:
    def __init__(self, paths: list[str]) -> None:
        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), OPENBLAS_NUM_THREADS="1", PYGDS_ENGINE="posix")
        self.proc = subprocess.Popen([sys.executable, __file__, json.dumps(paths)], env=env, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def ask(self, line: str) -> str:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline()
        assert answer, f"the zygote died (exit {self.proc.poll()})"
        return answer.split()[1]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(30)


# -- checks ------------------------------------------------------------------------------------------
def _tmp_files(paths: list[str]) -> dict[str, float]:
    """Temporary files of the crash writers (not the live one) with their mtimes."""
    out = {}
    for base in paths:
        for rel in files_under(base):
            name = Path(rel).name
            if ".tmp" in name and LIVE not in name:
                try:
                    out[os.path.join(base, rel)] = os.stat(os.path.join(base, rel)).st_mtime
                except FileNotFoundError:
                    pass
    return out


class Verifier:
    """Checks a fresh store's view of the paths after a kill, and counts."""

    def __init__(self, paths: list[str], log_path: Path) -> None:
        self.paths = paths
        self.log_path = log_path
        self.digests: dict[str, bytes] = {}
        self.entries_verified = 0
        self.leftovers_kept = 0
        self.leftovers_removed = 0
        self.metadata_rebuilt = 0
        self.published_checked = 0
        self.waited = False

    def expected(self, key: str) -> tuple[int, bytes]:
        size = live_size(key) if LIVE in key else crash_size(key)
        if key not in self.digests:
            self.digests[key] = hashlib.blake2b(entry_data(key, size)).digest()
        return size, self.digests[key]

    def explain(self, lost: set[str]) -> str:
        """The log lines and files of lost keys, for the failure message."""
        lines = []
        for k in sorted(lost):
            name = urllib.parse.quote(k, safe="")
            files = [os.path.join(b, p) for b in self.paths for p in files_under(b) if name in p]
            log = [f"{n}: {line}" for n, line in enumerate(self.log_path.read_text().splitlines())
                   if k in line or line.startswith("#")]
            lines.append(f"{k}: files {files}; log {log[-60:]}")
        return "\n".join(lines)

    def check(self, published: set[str], context: str, final: bool = False) -> None:
        leftovers = _tmp_files(self.paths)
        missing_meta = {p for base in self.paths for p in files_under(base)
                        if p.endswith(".safetensors") and (final or LIVE not in p)
                        and not os.path.exists(os.path.join(base, p + ".metadata"))}
        scan_start = time.time()
        with KVStore(StoreOptions(paths=self.paths, engine="posix", tmp_max_age_s=TMP_MAX_AGE_S)) as store:
            assert store.wait_for_scan(60), context
            young = {p for p, mtime in leftovers.items() if scan_start - mtime < TMP_MAX_AGE_S - 0.5}
            gone = {p for p in young if not os.path.exists(p)}
            assert not gone, f"{context}: the scan removed young temporary files {sorted(gone)}"
            self.leftovers_kept += len(young)
            keys = store.keys()
            assert len(keys) == len(set(keys)), context
            for k in keys:
                i = int(k.split("@")[3], 16)
                h = live_key(i)[1] if LIVE in k else crash_key(i)[1]
                size, digest = self.expected(k)
                dest = bytearray(size)
                if not store.get_into(k, h, dest):
                    # the live writer removes its older entries meanwhile; any other must read
                    assert LIVE in k and not final, f"{context}: visible entry {k} cannot be read"
                    continue
                assert hashlib.blake2b(dest).digest() == digest, f"{context}: entry {k} is not byte-exact"
                self.entries_verified += 1
            assert store.stats().scan_errors == 0, context
            lost = published - set(keys)
            assert not lost, f"{context}: puts that returned True are gone: {self.explain(lost)}"
            self.published_checked += len(published)
            stats = store.stats()
            assert (stats.corrupt, stats.read_errors) == (0, 0), f"{context}: {stats}"
        self.metadata_rebuilt += len(missing_meta)
        problems = [p for base in self.paths for p in incomplete(base)
                    if not p.startswith("temporary file") and (final or LIVE not in p)]
        assert not problems, f"{context}: {problems}"
        # The leftovers age past tmp_max_age_s: the next scan removes them all. The first time,
        # the clock really runs; later, their mtimes are moved back instead.
        aged = list(_tmp_files(self.paths).items())
        if aged and not self.waited:
            time.sleep(max(0.0, max(mtime for _, mtime in aged) + TMP_MAX_AGE_S + 0.2 - time.time()))
            self.waited = True
        else:
            old = time.time() - TMP_MAX_AGE_S - 10
            aged = [(p, old) for p, _ in aged if _set_mtime(p, old)]
        aged = [p for p, _ in aged]
        with KVStore(StoreOptions(paths=self.paths, engine="posix", tmp_max_age_s=TMP_MAX_AGE_S)) as store:
            assert store.wait_for_scan(60), context
            assert store.stats().scan_stale_tmp_removed >= len(aged), context
        still = set(aged) & set(_tmp_files(self.paths))
        assert not still, f"{context}: old temporary files survived the scan: {sorted(still)}"
        self.leftovers_removed += len(aged)


def _set_mtime(path: str, when: float) -> bool:
    try:
        os.utime(path, (when, when))
        return True
    except FileNotFoundError:
        return False


_RECORD = re.compile(r"([+~])(org/crash-model@1@0@[0-9a-f]+@bfloat16)")


def _published(log_path: Path) -> set[str]:
    """Keys whose put returned True, minus those any removal was started for afterwards.

    A kill can tear the line being written (seen: "~org/crash-model@1@0@5@b"); the writer died
    in that write, before the removal it announced, so a torn line is skipped."""
    live: set[str] = set()
    if log_path.exists():
        for line in log_path.read_text().splitlines():
            record = _RECORD.fullmatch(line)
            if record and record[1] == "+":
                live.add(record[2])
            elif record:
                live.discard(record[2])
    return live


def run_kills(tmp_path: Path, kills: int, seed: int) -> dict:
    print(f"crash test seed {seed} (PYGDS_RELIABILITY_SEED={seed} reproduces it), {kills} kills", flush=True)
    rng = random.Random(seed)
    paths = [str(tmp_path / "nvme0"), str(tmp_path / "nvme1")]
    log_path = tmp_path / "published.log"
    verifier = Verifier(paths, log_path)
    zygote = Zygote(paths)
    stop, live_result = tmp_path / "stop-live", tmp_path / "live.json"
    live_pid = int(zygote.ask(f"live {stop} {live_result}"))
    lifetimes = []
    try:
        for n in range(kills):
            context = f"seed {seed}, kill {n + 1}"
            with open(log_path, "a") as f:  # a new line: the last writer's may be torn
                f.write(f"\n# kill {n + 1}\n")
            pid = int(zygote.ask(f"crash {rng.randrange(1 << 30)} {n % 2} {log_path}"))
            lifetime = rng.uniform(0.0, 0.35)
            time.sleep(lifetime)
            os.kill(pid, signal.SIGKILL)
            status = int(zygote.ask(f"reap {pid}"))
            assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, f"{context}: status {status}"
            lifetimes.append(lifetime)
            verifier.check(_published(log_path), context)
    finally:
        stop.touch()
        live_status = int(zygote.ask(f"reap {live_pid}"))
        zygote.close()
    assert live_status == 0, f"seed {seed}: the live writer failed (status {live_status})"
    live = json.loads(live_result.read_text())
    assert live["put_errors"] == 0, f"seed {seed}: the live writer lost puts (a scan removed its temporary file?)"
    assert live["stored"] > 0
    verifier.check(_published(log_path), f"seed {seed}, final", final=True)
    records = [_RECORD.fullmatch(line) for line in log_path.read_text().splitlines()]
    return {
        "seed": seed, "kills": kills, "entries_verified": verifier.entries_verified,
        "crash_writer_puts_returned_true": sum(1 for r in records if r and r[1] == "+"),
        "crash_writer_removals_started": sum(1 for r in records if r and r[1] == "~"),
        "torn_log_lines": sum(1 for line, r in zip(log_path.read_text().splitlines(), records)
                              if not r and line and not line.startswith("#")),
        "published_puts_checked": verifier.published_checked,
        "distinct_keys_verified": len(verifier.digests),
        "tmp_leftovers_kept_while_young": verifier.leftovers_kept,
        "tmp_leftovers_removed_when_old": verifier.leftovers_removed,
        "data_without_metadata_rebuilt": verifier.metadata_rebuilt,
        "live_writer_puts": live["stored"], "live_writer_put_errors": live["put_errors"],
        "kill_after_s": [round(min(lifetimes), 3), round(max(lifetimes), 3)],
    }


def _seed() -> int:
    return int(os.environ.get("PYGDS_RELIABILITY_SEED") or secrets.randbelow(1 << 32))


def test_writers_killed_at_random_points(tmp_path):
    kills = int(os.environ.get("PYGDS_RELIABILITY_KILLS", "24"))
    figures = run_kills(tmp_path, kills, _seed())
    assert figures["tmp_leftovers_removed_when_old"] > 0, "no kill left a temporary file: nothing was tested"
    record("crash", **figures)


@pytest.mark.slow
@pytest.mark.skipif(os.environ.get("PYGDS_TEST_SLOW") != "1", reason=SLOW_REASON)
def test_writers_killed_at_random_points_many_times(tmp_path):
    figures = run_kills(tmp_path, 200, _seed())
    record("crash_slow", **figures)


if __name__ == "__main__":
    _zygote(json.loads(sys.argv[1]))
