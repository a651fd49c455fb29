"""Stores in separate processes on the same cache paths, with files swapped and damaged under them.

Four `KVStore` processes share two paths: two bounded stores (a small `capacity_bytes`, so
capacity eviction runs throughout) write path 0, two unbounded ones path 1; one of them clears
its whole index once, mid-run. For a fixed time each puts, reads (through `get_into` and through
`lookup` + `read_into`), probes with `contains` and removes, on overlapping keys. In the injected
cases a fifth process meanwhile renames one key's data and `.metadata` onto another key's names,
writes one key's file over another's in place, flips a data byte and truncates data files; most
keys have a same-shape partner, so a swapped file passes every size check. The FUSE cases run the
same across two bindfs mounts of one directory (as two machines would see a shared file system),
two stores on each.

Checked, for every byte served, during the run and in the final reads: it is the key's own data
(derived from the key alone) and nothing past it was written. Goal and assertion: 0 wrong bytes.

Chunks lost. A *claim* is a put that returned True, or one skipped because the store said the key
is already stored (that is a claim too: the caller will not store it again). A claim is *owed*
when nothing that may take the key away ended after the claim began: no remove of the key, no
`clear` by any process, no injection touching the key; a skip on a key that was ever injected is
not owed either (a damaged file may still sit at the key's name, and the put may have seen it).
After all processes stopped, the test reads the cache files itself: an owed key with no complete,
byte-exact file is lost; for keys written by the bounded stores, as many may be gone as those
stores evicted (eviction is counted, not named). Every store must also find every key that is on
disk, byte-exact (no stale index hiding an entry). Goals and assertions: 0 lost, 0 missed.

`PYGDS_SHARED_PATHS_SECONDS` sets the duration of each case (default 3);
`PYGDS_RELIABILITY_SEED` repeats a run's random choices (the timing is real, so only closely).
"""

from __future__ import annotations

import json
import os
import random
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from faults import incomplete, record
from lmcache_plugin.format import HEADER_SIZE, CorruptEntryError, unpack_header
from lmcache_plugin.layout import Layout
from shared_paths_worker import CLASSES, class_keys, data_of, size_of

REPO_ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("shared_paths_worker.py")
SECONDS_ENV = "PYGDS_SHARED_PATHS_SECONDS"
WORKERS = 4
INJECT_INTERVAL_S = 0.02
FUSE_SETTLE_S = 1.5
"""Wait before the final reads on FUSE: the kernel caches names and attributes for 1 s."""


# -- FUSE: two bindfs mounts of one directory -----------------------------------------------------
def _unmount(mountpoint: Path) -> None:
    for cmd in (["fusermount", "-u", str(mountpoint)], ["fusermount3", "-u", str(mountpoint)],
                ["umount", "-l", str(mountpoint)]):
        if not _is_mounted(mountpoint):
            return
        if shutil.which(cmd[0]):
            subprocess.run(cmd, check=False, capture_output=True, timeout=60)


def _is_mounted(mountpoint: Path) -> bool:
    target = os.path.realpath(mountpoint)
    with open("/proc/self/mounts", encoding="utf-8") as f:
        return any(line.split()[1] == target for line in f if len(line.split()) > 1)


@pytest.fixture
def two_mounts(tmp_path):
    """(the shared directory, mount a, mount b); skips where bindfs cannot mount, and always
    unmounts what it mounted."""
    if not os.path.exists("/dev/fuse"):
        pytest.skip("FUSE is unavailable: /dev/fuse does not exist")
    if shutil.which("bindfs") is None:
        pytest.skip("bindfs is not installed (Debian: apt-get install bindfs)")
    shared = tmp_path / "shared"
    mounts = [tmp_path / "mount_a", tmp_path / "mount_b"]
    shared.mkdir()
    mounted = []
    try:
        for m in mounts:
            m.mkdir()
            done = subprocess.run(["bindfs", "--no-allow-other", str(shared), str(m)],
                                  check=False, capture_output=True, text=True, timeout=60)
            if done.returncode != 0 or not _is_mounted(m):
                pytest.skip(f"bindfs could not mount {shared} on {m} (exit {done.returncode}): "
                            f"{done.stderr.strip() or 'not in /proc/self/mounts'}")
            mounted.append(m)
        yield shared, *mounts
    finally:
        for m in mounted:
            _unmount(m)
        still = [str(m) for m in mounted if _is_mounted(m)]
        assert not still, f"could not unmount {still}"


# -- the run -----------------------------------------------------------------------------------------
def _run(work: Path, worker_paths: list[list[str]], injector_paths: list[str] | None, seconds: float,
         seed: int, settle_s: float) -> tuple[list[dict], dict, list[list]]:
    """Start the processes, let them run, return (worker results, injector result, events)."""
    rng = random.Random(seed)
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), PYGDS_ENGINE="posix")
    jobs = []
    for i, paths in enumerate(worker_paths):
        jobs.append({"role": "worker", "index": i, "paths": paths, "workdir": str(work), "seconds": seconds,
                     "seed": rng.randrange(1 << 30), "workers": len(worker_paths), "settle_s": settle_s,
                     "clear_at": 0.4 if i == 1 else None})
    if injector_paths is not None:
        jobs.append({"role": "injector", "paths": injector_paths, "workdir": str(work), "seconds": seconds,
                     "seed": rng.randrange(1 << 30), "interval_s": INJECT_INTERVAL_S})
    else:
        (work / "done_injector").touch()
    # output goes to files, not pipes: a process whose pipe nobody reads yet (the others are waited
    # for one by one) would block on a full pipe, holding up every process that waits for it
    logs = [(work / f"out{i}.txt", work / f"err{i}.txt") for i in range(len(jobs))]
    procs = []
    for job, (out_path, err_path) in zip(jobs, logs):
        with open(out_path, "w") as out, open(err_path, "w") as err:
            procs.append(subprocess.Popen([sys.executable, str(WORKER), json.dumps(job)], env=env, cwd=REPO_ROOT,
                                          stdout=out, stderr=err, text=True))
    try:
        ready = [work / f"ready{i}" for i in range(len(worker_paths))]
        ready += [work / "ready_injector"] if injector_paths is not None else []
        deadline = time.monotonic() + 120
        while not all(r.exists() for r in ready):
            for p, (_, err_path) in zip(procs, logs):
                assert p.poll() is None, f"a process exited before it was ready:\n{err_path.read_text()}"
            assert time.monotonic() < deadline, "the processes were not ready within 120 s"
            time.sleep(0.01)
        (work / "go").touch()
        for p in procs:
            p.wait(timeout=seconds + 300)
        outputs = [(out_path.read_text(), err_path.read_text()) for out_path, err_path in logs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    results = []
    for p, (out, err) in zip(procs, outputs):
        assert p.returncode == 0, f"seed {seed}: a process failed (exit {p.returncode}):\n{err}"
        # the one error a store may log here is a put it reports as failed (on FUSE, a rename
        # meeting a name another mount removed): the caller knows it is not stored
        errors = [line for line in err.splitlines()
                  if line.startswith("ERROR") and not line.startswith("ERROR:lmcache_plugin.store:storing ")]
        assert not errors and "Traceback" not in err, f"seed {seed}: a process logged:\n{err}"
        results.append({**json.loads(out), "log": err})
    events = [json.loads(line) for log in sorted(work.glob("events*.jsonl"))
              for line in log.read_text().splitlines()]
    injector = results.pop() if injector_paths is not None else {"injections": {}, "log": ""}
    return results, injector, events


def _on_disk(bases: dict[str, str]) -> set[str]:
    """Keys with a complete, byte-exact data file in their class's path (read here directly)."""
    good = set()
    for cls, base in bases.items():
        layout = Layout(base)
        for k, h in class_keys(cls):
            try:
                blob = Path(layout.data_path(base, k, h)).read_bytes()
                header = unpack_header(blob[:HEADER_SIZE], file_size=len(blob))
            except (FileNotFoundError, CorruptEntryError):
                continue
            if header.nbytes == size_of(k) and blob[HEADER_SIZE:] == data_of(k):
                good.add(k)
    return good


def _owed(events: list[list]) -> set[str]:
    """Keys with at least one owed claim (see the module docstring)."""
    disturbed: dict[str, list[int]] = {}  # key -> end times of what may have taken it away
    clears: list[int] = []
    injected: set[str] = set()
    for e in events:
        if e[0] == "rm":
            disturbed.setdefault(e[1], []).append(e[3])
        elif e[0] == "clear":
            clears.append(e[2])
        elif e[0] == "inject":
            for k in e[2]:
                disturbed.setdefault(k, []).append(e[4])
                injected.add(k)
    owed = set()
    for e in events:
        if e[0] != "put" or e[4] not in ("stored", "skipped"):
            continue
        k, began = e[1], e[2]
        if e[4] == "skipped" and k in injected:
            continue
        if all(end < began for end in disturbed.get(k, []) + clears):
            owed.add(k)
    return owed


def _began(event: list) -> int:
    return event[3] if event[0] == "inject" else event[1] if event[0] == "clear" else event[2]


def _history(events: list[list], k: str) -> str:
    """What happened to key `k`, and every clear, in time order (for a failure message)."""
    mine = [e for e in events if e[0] == "clear" or k in (e[2] if e[0] == "inject" else e[1:2])]
    return "\n".join(json.dumps(e) for e in sorted(mine, key=_began))


def _shared_paths_case(case: str, work: Path, bases: list[str], worker_paths: list[list[str]],
                       injector_paths: list[str] | None, settle_s: float = 0.0) -> None:
    seed = int(os.environ.get("PYGDS_RELIABILITY_SEED") or secrets.randbelow(1 << 32))
    seconds = float(os.environ.get(SECONDS_ENV, "3"))
    print(f"shared-path case {case}, seed {seed} (PYGDS_RELIABILITY_SEED={seed} repeats it)", flush=True)
    work.mkdir()
    results, injector, events = _run(work, worker_paths, injector_paths, seconds, seed, settle_s)

    present = _on_disk(dict(zip(CLASSES, bases)))
    owed = _owed(events)
    lost_unbounded = sorted(k for k in owed if k.startswith("org/u@") and k not in present)
    gone_bounded = sorted(k for k in owed if k.startswith("org/b@") and k not in present)
    evictions = sum(r["stats"]["evictions"] for r in results if r["bounded"])
    lost = len(lost_unbounded) + max(0, len(gone_bounded) - evictions)
    missed = {r["index"]: sorted(present - set(r["final"]["hits"])) for r in results}
    total = {name: sum(r["total"][name] for r in results) for name in results[0]["total"]}
    run = {name: sum(r["run"][name] for r in results) for name in results[0]["run"]}
    operations = (sum(run[f"put_{o}"] for o in ("stored", "skipped", "refused", "failed"))
                  + run["reads"] + run["contains"] + run["removes"] + run["clears"])
    injections = injector["injections"]
    warnings = sum(r["log"].count("WARNING") for r in results)
    record("shared_paths", case=case, seed=seed, seconds=seconds, stores=len(results),
           processes=len(results) + (injector_paths is not None), operations=operations,
           puts_stored=run["put_stored"], puts_skipped=run["put_skipped"], puts_refused=run["put_refused"],
           puts_failed=run["put_failed"],
           reads=run["reads"], hits=run["hits"], removes=run["removes"], clears=run["clears"],
           cleared=run["cleared"], evictions=evictions, injections=sum(injections.values()),
           injections_by_kind=injections, final_reads=total["reads"] - run["reads"],
           wrong_reads=total["wrong_reads"], wrong_bytes=total["wrong_bytes"],
           wrong_reads_another_keys_data=total["wrong_reads_another_keys_data"],
           wrong_reads_damaged_data=total["wrong_reads_damaged_data"],
           owed_keys=len(owed), present_at_end=len(present), chunks_lost=lost,
           lost_unbounded=len(lost_unbounded), gone_bounded=len(gone_bounded),
           final_misses=sum(len(m) for m in missed.values()), store_warnings=warnings)

    assert total["wrong_reads"] == 0, (
        f"seed {seed}: {total['wrong_reads']} reads served {total['wrong_bytes']} wrong bytes:\n"
        + "\n".join([line for r in results for line in r["log"].splitlines() if "WRONG" in line][:20]))
    assert lost == 0, (f"seed {seed}: chunks lost: {lost_unbounded} from the unbounded path; "
                       f"{len(gone_bounded)} gone from the bounded path against {evictions} evictions; "
                       f"the history of the first:\n{_history(events, (lost_unbounded or gone_bounded)[0])}")
    assert not any(missed.values()), f"seed {seed}: entries on disk that a store could not find: {missed}"
    for base in bases:
        leftovers = [p for p in incomplete(base, allow_missing_metadata=True) if p.startswith("temporary")]
        assert not leftovers, f"seed {seed}: {leftovers}"
    assert run["put_stored"] and run["hits"] and run["removes"] and run["clears"] and evictions, (
        f"seed {seed}: the run did not exercise every operation: {run}, {evictions} evictions")
    if injector_paths is not None:
        assert all(injections.values()), f"seed {seed}: not every kind of injection ran: {injections}"


def _local_paths(root: Path) -> list[str]:
    return [str(root / "nvme0"), str(root / "nvme1")]


def test_stores_sharing_paths_local(tmp_path):
    bases = _local_paths(tmp_path / "cache")
    _shared_paths_case("local", tmp_path / "work", bases, [bases] * WORKERS, None)


def test_stores_sharing_paths_local_with_swapped_and_damaged_files(tmp_path):
    bases = _local_paths(tmp_path / "cache")
    _shared_paths_case("local, injected", tmp_path / "work", bases, [bases] * WORKERS, bases)


def _fuse_paths(shared: Path, a: Path, b: Path) -> tuple[list[str], list[list[str]]]:
    """Bases on the shared directory; stores 0 and 1 on mount a, 2 and 3 on mount b, so each
    pair writing one path sees it through different mounts."""
    return _local_paths(shared), [_local_paths(a), _local_paths(a), _local_paths(b), _local_paths(b)]


def test_stores_sharing_paths_over_two_fuse_mounts(tmp_path, two_mounts):
    shared, a, b = two_mounts
    bases, worker_paths = _fuse_paths(shared, a, b)
    _shared_paths_case("FUSE two mounts", tmp_path / "work", bases, worker_paths, None, FUSE_SETTLE_S)


def test_stores_sharing_paths_over_two_fuse_mounts_with_swapped_and_damaged_files(tmp_path, two_mounts):
    shared, a, b = two_mounts
    bases, worker_paths = _fuse_paths(shared, a, b)
    _shared_paths_case("FUSE two mounts, injected", tmp_path / "work", bases, worker_paths,
                       bases, FUSE_SETTLE_S)


_OLD_FILE_READER = """
import os, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY)
print("open", flush=True)
sys.stdin.readline()
end = time.monotonic() + float(sys.argv[2])
while time.monotonic() < end:
    os.pread(fd, 8192, 0)
"""


def test_a_good_file_put_over_a_bad_one_through_the_other_mount_is_found(tmp_path, two_mounts):
    """bindfs answers an open file's `fstat` for whatever is at the name now, and the kernel
    keeps one page cache per name: while another process on the same mount still reads a bad file,
    a store reading the good file just put over it (through the other mount) can see the bad
    bytes under the good file's identity. Once that reader is gone the good file must be found,
    not skipped as bad for good (`entries.py`)."""
    from faults import entry_data, u8_header
    from lmcache_plugin.store import KVStore, StoreOptions

    shared, mount_a, mount_b = two_mounts
    n = 16384

    def store(mount: Path) -> KVStore:
        return KVStore(StoreOptions(paths=[str(mount / "nvme0")], engine="posix", io_threads=0, scan=False))

    for attempt in range(2):
        key, chunk = f"org/u@1@0@{2 * attempt + 1:x}@bfloat16", 20_000_000 + 7919 * (2 * attempt + 1)
        other, other_chunk = f"org/u@1@0@{2 * attempt + 2:x}@bfloat16", 20_000_000 + 7919 * (2 * attempt + 2)
        a, b = store(mount_a), store(mount_b)
        try:
            path_a, path_b = (s.layout.data_path(s.layout.write_path, key, chunk) for s in (a, b))
            other_b = b.layout.data_path(b.layout.write_path, other, other_chunk)
            assert b.put(other, other_chunk, entry_data(other, n), u8_header(n))
            os.makedirs(os.path.dirname(path_b), exist_ok=True)
            os.rename(other_b, path_b)  # a bad file at the key's name: another key's entry
            os.rename(other_b + ".metadata", path_b + ".metadata")
            time.sleep(FUSE_SETTLE_S)
            reader = subprocess.Popen([sys.executable, "-c", _OLD_FILE_READER, path_a, "0.5"], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, text=True)
            try:
                assert reader.stdout.readline().strip() == "open"
                assert b.remove(key, chunk) and b.put(key, chunk, entry_data(key, n), u8_header(n))
                reader.stdin.write("go\n")
                reader.stdin.flush()
                end = time.monotonic() + 0.4
                while time.monotonic() < end:  # during the race: misses allowed, wrong bytes never
                    out = bytearray(n)
                    assert not a.get_into(key, chunk, out) or out == entry_data(key, n)
            finally:
                reader.wait(timeout=60)
            time.sleep(FUSE_SETTLE_S)  # nothing touches the key any more; FUSE caches expire
            out = bytearray(n)
            assert a.get_into(key, chunk, out) and out == entry_data(key, n), f"attempt {attempt}: {a.stats()}"
        finally:
            a.close()
            b.close()
