"""The processes of the shared-path suite (`test_shared_paths.py`): store workers and the injector.

Run as `python tests/shared_paths_worker.py '<arguments as JSON>'`. What they share with the
test: the key universe, each key's bytes (derived from the key alone, so any process verifies any
entry) and the event logs from which the test decides which chunks were owed.

Keys come in two classes. "b" keys are put only by the bounded stores (write path 0, a small
`capacity_bytes`, so capacity eviction runs throughout); "u" keys only by the unbounded stores
(write path 1). Every store reads and removes keys of both classes. Sizes come from four classes
only, so most keys have a same-shape partner: a swap of two same-shape files passes every size
check, only the entry's own key (or a checksum) can tell.

Events (JSON lines, `time.monotonic_ns()` stamps, one clock for every process on the machine):
  ["put", key, t0, t1, outcome, worker]   outcome: stored | skipped (already there) | refused | failed
  ["rm", key, t0, t1, returned, worker]
  ["clear", t0, t1, count, worker]
  ["inject", kind, [keys], t0, t1, completed]   kind: swap | copy | flip | truncate
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import sys
import time
from pathlib import Path

import numpy as np

from faults import entry_data, u8_header

CLASSES = ("b", "u")
KEYS_PER_CLASS = 96
SIZES = (1000, 4096, 16384, 65536)
CAPACITY = 768 << 10
"""`capacity_bytes` of each bounded store: about a third of its keys fit."""
GUARD = 64
"""Bytes after every destination that a read must leave zero."""
HEADER_SIZE = 4096
INJECTIONS = ("swap", "copy", "flip", "truncate")


def key(cls: str, n: int) -> tuple[str, int]:
    """Key text and chunk hash; hashes spread over many fan-out directories."""
    return f"org/{cls}@1@0@{n:x}@bfloat16", (10_000_000 if cls == "b" else 20_000_000) + 7919 * n


def class_keys(cls: str) -> list[tuple[str, int]]:
    return [key(cls, n) for n in range(KEYS_PER_CLASS)]


def all_keys() -> list[tuple[str, int]]:
    return class_keys("b") + class_keys("u")


def size_of(key_text: str) -> int:
    digest = hashlib.blake2b(key_text.encode("utf-8"), digest_size=2, person=b"shared").digest()
    return SIZES[digest[0] % len(SIZES)]


def data_of(key_text: str) -> bytes:
    return entry_data(key_text, size_of(key_text))


def wrong_bytes(expected: bytes, served: bytes) -> int:
    """How many bytes of `served` differ from `expected` (a length difference counts in full)."""
    n = min(len(expected), len(served))
    a = np.frombuffer(expected, np.uint8, n)
    b = np.frombuffer(served, np.uint8, n)
    return int(np.count_nonzero(a != b)) + abs(len(expected) - len(served))


_BY_DATA: dict[bytes, str] = {}


def _owner_of(served: bytes) -> str | None:
    """The key whose data `served` is exactly, if any (tells a swap from a damaged file)."""
    if not _BY_DATA:
        _BY_DATA.update((hashlib.blake2b(data_of(k)).digest(), k) for k, _ in all_keys())
    return _BY_DATA.get(hashlib.blake2b(served).digest())


def wait_for(paths: list[Path], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not all(p.exists() for p in paths):
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout} s for {[str(p) for p in paths if not p.exists()]}")
        time.sleep(0.005)


# -- a store worker ------------------------------------------------------------------------------
class _Reader:
    """Reads through the store's two public ways, verifying every byte served."""

    def __init__(self, store, counts: dict[str, int]) -> None:
        self.store, self.counts = store, counts

    def read(self, k: str, h: int, way: str) -> bool | None:
        """True: served the right bytes; False: a miss; None: served wrong bytes (counted)."""
        from lmcache_plugin.store import CorruptEntryError, EntryGoneError

        expected = data_of(k)
        self.counts["reads"] += 1
        if way == "get_into":  # a destination of the expected size, as a caller that knows it
            dest = bytearray(len(expected) + GUARD)
            try:
                if not self.store.get_into(k, h, dest):
                    return False
            except ValueError:  # the entry found is larger than the key's own size
                self.counts["refused_too_large"] += 1
                return False
            served, guard = bytes(dest[: len(expected)]), dest[len(expected):]
        else:  # lookup + read_into, the destination sized from the header (the adapter's way)
            info = self.store.lookup(k, h)
            if info is None:
                return False
            dest = bytearray(info.header.nbytes + GUARD)
            try:
                header = self.store.read_into(info, dest)
            except (CorruptEntryError, EntryGoneError):
                return False
            served, guard = bytes(dest[: header.nbytes]), dest[header.nbytes:]
        self.counts["hits"] += 1
        bad = wrong_bytes(expected, served) + sum(1 for b in guard if b)
        if bad:
            other = _owner_of(served)
            self.counts["wrong_reads"] += 1
            self.counts["wrong_bytes"] += bad
            self.counts["wrong_reads_another_keys_data" if other else "wrong_reads_damaged_data"] += 1
            print(f"WRONG BYTES {k} via {way}: {bad} bytes wrong, "
                  + (f"the data of {other}" if other else f"{len(served)} bytes served"),
                  file=sys.stderr, flush=True)
            return None
        return True


def _store_options(args: dict, bounded: bool):
    """The store's defaults (what a user gets: its checksum setting included), I/O in the caller."""
    from lmcache_plugin.store import StoreOptions

    return StoreOptions(paths=args["paths"], device_id=0 if bounded else 1, engine="posix", io_threads=0,
                        capacity_bytes=CAPACITY if bounded else None)


_OUTCOMES = {"put_skipped": "skipped", "put_refused": "refused", "put_errors": "failed"}


def _put(store, k: str, h: int) -> str:
    """One put and what it did, told apart by the store's own counters (one thread puts)."""
    before = store.stats()
    data = data_of(k)
    if store.put(k, h, data, u8_header(len(data))):
        return "stored"
    after = store.stats()
    return next((o for name, o in _OUTCOMES.items() if getattr(after, name) > getattr(before, name)), "failed")


def run_worker(args: dict) -> None:
    from lmcache_plugin.store import KVStore

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s:%(name)s:%(message)s")
    me, work = args["index"], Path(args["workdir"])
    bounded = me % 2 == 0
    rng = random.Random(args["seed"])
    store = KVStore(_store_options(args, bounded))
    mine = class_keys("b" if bounded else "u")
    everyone = all_keys()
    counts = dict.fromkeys(("reads", "hits", "wrong_reads", "wrong_bytes", "wrong_reads_another_keys_data",
                            "wrong_reads_damaged_data", "refused_too_large", "contains", "removes", "removed",
                            "clears", "cleared"), 0)
    counts.update({f"put_{o}": 0 for o in ("stored", "skipped", "refused", "failed")})
    reader = _Reader(store, counts)
    events = []
    clear_at = args.get("clear_at")

    (work / f"ready{me}").touch()
    wait_for([work / "go"])
    start = time.monotonic()
    end = start + args["seconds"]
    while time.monotonic() < end:
        if clear_at is not None and time.monotonic() >= start + clear_at * args["seconds"]:
            clear_at = None
            t0 = time.monotonic_ns()
            n = store.clear()
            events.append(["clear", t0, time.monotonic_ns(), n, me])
            counts["clears"] += 1
            counts["cleared"] += n
            continue
        r = rng.random()
        if r < 0.35:
            k, h = rng.choice(mine)
            t0 = time.monotonic_ns()
            outcome = _put(store, k, h)
            events.append(["put", k, t0, time.monotonic_ns(), outcome, me])
            counts[f"put_{outcome}"] += 1
        elif r < 0.82:
            k, h = rng.choice(everyone)
            reader.read(k, h, rng.choice(("get_into", "lookup")))
        elif r < 0.90:
            k, h = rng.choice(everyone)
            store.contains(k, h)  # indexes what another process wrote, as LMCache's lookups do
            counts["contains"] += 1
        else:
            k, h = rng.choice(everyone)
            t0 = time.monotonic_ns()
            removed = store.remove(k, h)
            events.append(["rm", k, t0, time.monotonic_ns(), removed, me])
            counts["removes"] += 1
            counts["removed"] += removed
    with open(work / f"events{me}.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(e) + "\n" for e in events)
    run_counts = dict(counts)
    (work / f"done{me}").touch()
    wait_for([work / f"done{w}" for w in range(args["workers"])] + [work / "done_injector"])
    time.sleep(args["settle_s"])
    final = {"hits": [], "wrong": [], "misses": []}
    for k, h in everyone:
        got = reader.read(k, h, "lookup")
        final["hits" if got else "wrong" if got is None else "misses"].append(k)
    stats = store.stats().as_dict()
    store.close()
    print(json.dumps({"index": me, "bounded": bounded, "write_path": store.write_path, "run": run_counts,
                      "total": counts, "final": final, "stats": stats}))


# -- the injector -----------------------------------------------------------------------------
def _existing(bases: dict[str, str], cls: str) -> list[tuple[str, str, str]]:
    """(key text, data path, metadata path) of each key of `cls` whose data file is there."""
    from lmcache_plugin.layout import Layout

    base = bases[cls]
    layout = Layout(base)
    out = []
    for k, h in class_keys(cls):
        path = layout.data_path(base, k, h)
        if os.path.exists(path):
            out.append((k, path, path + ".metadata"))
    return out


def _plan(kind: str, rng: random.Random, bases: dict[str, str]):
    """One injection on the files of one class's path: (keys it may touch, the action), or None
    when there is nothing to do. The action may meet a file a store removed meanwhile."""
    from lmcache_plugin.layout import Layout

    cls = rng.choice(CLASSES)
    there = _existing(bases, cls)
    if not there:
        return None
    k, path, meta = rng.choice(there)
    if kind in ("swap", "copy"):
        same = [t for t in class_keys(cls) if t[0] != k and size_of(t[0]) == size_of(k)]
        other, other_hash = rng.choice(same)
        target = Layout(bases[cls]).data_path(bases[cls], other, other_hash)

        def swap() -> None:  # k's files take the other key's names (a rename, as a mix-up would)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            os.rename(path, target)
            os.rename(meta, target + ".metadata")

        def copy() -> None:  # k's whole file written over the other key's file in place
            blob = Path(path).read_bytes()
            fd = os.open(target, os.O_WRONLY)
            try:
                os.pwrite(fd, blob, 0)
            finally:
                os.close(fd)

        return [k, other], swap if kind == "swap" else copy

    def flip() -> None:  # one data byte changed in place: no size or header check sees it
        fd = os.open(path, os.O_RDWR)
        try:
            at = rng.randrange(HEADER_SIZE, os.fstat(fd).st_size)
            old = os.pread(fd, 1, at)
            os.pwrite(fd, bytes([old[0] ^ rng.randrange(1, 256)]), at)
        finally:
            os.close(fd)

    def truncate() -> None:
        os.truncate(path, rng.randrange(0, os.path.getsize(path)))

    return [k], flip if kind == "flip" else truncate


def run_injector(args: dict) -> None:
    work = Path(args["workdir"])
    rng = random.Random(args["seed"])
    bases = dict(zip(CLASSES, args["paths"]))
    events, counts = [], dict.fromkeys(INJECTIONS, 0)
    (work / "ready_injector").touch()
    wait_for([work / "go"])
    end = time.monotonic() + args["seconds"]
    while time.monotonic() < end:
        kind = rng.choice(INJECTIONS)
        planned = _plan(kind, rng, bases)
        if planned is not None:
            touched, action = planned
            t0 = time.monotonic_ns()
            try:
                action()
                counts[kind] += 1
                done = True
            except (FileNotFoundError, ValueError):  # the file went or shrank meanwhile
                done = False
            # logged even when it did not complete: part of it may have happened
            events.append(["inject", kind, touched, t0, time.monotonic_ns(), done])
        time.sleep(args["interval_s"])
    with open(work / "events_injector.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(e) + "\n" for e in events)
    (work / "done_injector").touch()
    print(json.dumps({"injections": counts}))


if __name__ == "__main__":
    _args = json.loads(sys.argv[1])
    run_injector(_args) if _args["role"] == "injector" else run_worker(_args)
