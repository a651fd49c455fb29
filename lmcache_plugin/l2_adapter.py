"""`GdsL2Adapter`: the KV store as an L2 adapter of LMCache's multiprocess mode (`lmcache server`).

LMCache loads it without any change of its own:

    --l2-adapter '{"type":"plugin","module_path":"lmcache_plugin.l2_adapter",
                   "class_name":"GdsL2Adapter","adapter_params":{"paths":[...]}}'

Its factory finds `GdsL2AdapterConfig` by name, builds it from `adapter_params` (bad params stop
the server at start, naming the key, the value and the fix) and calls
`GdsL2Adapter(config, l1_memory_desc=...)`.

- Multi-path: LMCache sends every key to every adapter, so striping over drives happens here. One
  `KVStore` per path; a key is written to `paths[xxh3(key text) % len(paths)]` and looked for in
  that path first, then in the others (entries written under another path list stay found).
- The same store as the in-process plugin: 4 KiB header naming the key, checksum, atomic publish,
  start-up scan of every path, capacity bound per path. Key texts: `l2_names.py`. No `.metadata`
  companions (`StoreOptions.metadata_file` off): they exist for LMCache's GdsBackend, which never
  reads MP entries, and would cost a second file create and rename per entry.
- Memory: the objects are carved from LMCache's host L1 arena. With cuFile the arena is registered
  once from `l1_memory_desc`; otherwise the POSIX engine moves it with pread/pwrite, and the
  start-up log says which ran and why. `direct_io` opens the data files of entries of at least
  `direct_io_min_kb` (default 1 MiB) with O_DIRECT: for those the arena is the cache, the page
  cache would only hold a second copy, and a buffered write costs several times the CPU of a
  direct one (page allocation and copy); smaller entries cost less through the page cache than
  through a device round trip each, and a load may find them there (BENCHMARKS.md, MP mode).
  pygds moves the aligned part of a request directly and the rest buffered.
- Threads: submits only queue work. Stores and loads run on their own pools (so loads never wait
  behind stores): a task queues up to `io_threads` workers, each taking the task's next key until
  none is left, so its keys move in parallel without a queued item per key. Lookups run on one
  thread; each completion is signalled on the operation's event fd.
- Accounting: every entry this adapter holds (those the start-up scan found included) is reported
  to LMCache with `_notify_keys_stored` at its disk size (its data file: header + data), so
  LMCache's L2 eviction (an `"eviction"` block beside `adapter_params`) sees real usage against
  `max_capacity_gb`; entries the store evicted itself, or that vanished, are reported deleted.
- Locks: lookup-and-lock pins the entry it found (`KVStore.pin`); eviction, LMCache's `delete`
  included, never takes a pinned entry; `submit_unlock` unpins and never raises. A lock holds in
  this process only: another server on the same paths may still delete or evict the entry (its
  load then misses; bytes are checked as always).
- Loads: an entry is served only into an object of its own size, dtypes and shapes (the header
  records the stored object's); another one under the key (a server with another KV dtype on the
  same paths) is a miss, and a store replaces it.
"""

from __future__ import annotations

import itertools
import math
import os
import secrets
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import xxhash
from lmcache.lmcache_native import Bitmap
from lmcache.logging import init_logger
from lmcache.v1.distributed.api import ObjectKey
from lmcache.v1.distributed.internal_api import L1MemoryDesc, L2StoreResult
from lmcache.v1.distributed.l2_adapters.base import L2AdapterInterface, L2TaskId
from lmcache.v1.distributed.l2_adapters.config import L2AdapterConfigBase
from lmcache.v1.platform import create_event_notifier

import pygds

from .format import HEADER_SIZE
from .l2_names import FANOUT_DIRS, MpKey, fanout_hash, mp_key_text, parse_mp_key_text
from .layout import Layout, parse_paths
from .options import CHECKSUM_MODES
from .store import CorruptEntryError, EntryGoneError, EntryHeader, KVStore, StoreOptions
from .summed_io import spare_cores

logger = init_logger(__name__)  # LMCache's handlers: these lines appear in the server's log

ENGINES = ("auto", "posix", "cufile")
GIB = 1 << 30
DIRECT_IO_MIN_KB = 1024
"""Default `direct_io_min_kb`: measured, 256 KiB entries stored and loaded faster buffered and
4 MiB entries faster with O_DIRECT (BENCHMARKS.md, MP mode); 1 MiB lies between."""
ENTRY_OVERHEAD = HEADER_SIZE
"""Disk bytes of an entry beyond its data: the data file's header."""
MIN_CAPACITY_PER_PATH = 2 * HEADER_SIZE
"""The smallest `max_capacity_gb` share of one path that start-up accepts: a header and a page."""


class L2ParamError(ValueError):
    """A bad `adapter_params` value; the message names the key, the value and the fix."""

    def __init__(self, key: str, value: Any, why: str, fix: str) -> None:
        super().__init__(f"GdsL2Adapter adapter_params.{key} = {value!r}: {why}; fix: {fix}")
        self.key = key
        self.value = value


def _flag(d: Mapping[str, Any], key: str, default: bool) -> bool:
    value = d.get(key, default)
    if not isinstance(value, bool):
        raise L2ParamError(key, value, "not a boolean", f"write true or false for {key}")
    return value


def _choice(d: Mapping[str, Any], key: str, default: str, choices: Sequence[str]) -> str:
    value = d.get(key, default)
    if value not in choices:
        raise L2ParamError(key, value, "unknown value", f"use one of {', '.join(choices)}")
    return value


class GdsL2AdapterConfig(L2AdapterConfigBase):
    """`adapter_params` of `GdsL2Adapter` (see `help()`)."""

    PARAMS = {
        "paths": "cache directories, a list or a comma-separated string (required); keys are "
                 "spread over them by their hash",
        "max_capacity_gb": "bound on the entries' disk bytes over all paths, split evenly per path "
                           "(default: unbounded); LMCache's L2 eviction needs it",
        "engine": "auto | posix | cufile (default auto: cuFile with the L1 arena registered where "
                  "usable, else POSIX)",
        "direct_io": "O_DIRECT for the data files of entries of at least direct_io_min_kb (default "
                     "true: the L1 arena is the cache, the page cache would only hold a second copy); "
                     "unaligned parts go buffered",
        "direct_io_min_kb": "entries smaller than this many KiB are written and read buffered "
                            "(default 1024: below it the page cache costs less than a device round trip "
                            "per entry); 0 sends every entry through O_DIRECT",
        "io_threads": "parallel stores and, separately, parallel loads (default 8; for entries under 1 MiB "
                      "read from the page cache 2 is faster: such a load is mostly Python, and more threads "
                      "contend for the GIL)",
        "checksum": "auto | once | always | off: xxh3 checksum of every entry (default auto = on; once: "
                    "each file hashed once per process, trusting that nothing else writes cache files in place)",
        "fsync": "fsync each entry before publishing it (default false)",
    }

    def __init__(self, paths: Sequence[str], max_capacity_gb: float | None = None, engine: str = "auto",
                 direct_io: bool = True, direct_io_min_kb: int = DIRECT_IO_MIN_KB, io_threads: int = 8,
                 checksum: str = "auto", fsync: bool = False) -> None:
        self.paths = tuple(paths)
        self.max_capacity_gb = max_capacity_gb
        self.engine = engine
        self.direct_io = direct_io
        self.direct_io_min_kb = direct_io_min_kb
        self.io_threads = io_threads
        self.checksum = checksum
        self.fsync = fsync

    @property
    def capacity_bytes(self) -> int | None:
        return None if self.max_capacity_gb is None else int(self.max_capacity_gb * GIB)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> GdsL2AdapterConfig:
        """Parse and check `adapter_params`; `L2ParamError` for any bad key or value."""
        if not isinstance(d, Mapping):
            raise L2ParamError("<all>", d, "adapter_params must be a JSON object",
                               'pass e.g. {"paths": ["/mnt/nvme0/l2"]}')
        for key in d:
            if key not in cls.PARAMS:
                raise L2ParamError(key, d[key], "unknown key",
                                   f"remove it or use one of {', '.join(cls.PARAMS)}")
        raw = d.get("paths")
        if not (isinstance(raw, str) or (isinstance(raw, (list, tuple)) and all(isinstance(p, str) for p in raw))):
            raise L2ParamError("paths", raw, "required: a list of directories or a comma-separated string",
                               'set "paths": ["/mnt/nvme0/l2", "/mnt/nvme1/l2"]')
        paths = parse_paths(raw)
        if not paths:
            raise L2ParamError("paths", raw, "no directory given", 'set "paths": ["/mnt/nvme0/l2"]')
        real = [os.path.realpath(p) for p in paths]
        if len(set(real)) != len(real):
            raise L2ParamError("paths", raw, "a directory is listed twice", "list each directory once")
        cap = d.get("max_capacity_gb")
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, (int, float))
                                or not math.isfinite(cap) or not cap > 0):
            raise L2ParamError("max_capacity_gb", cap, "not a positive finite number",
                               "give the bound in GiB, e.g. 500, or leave it out for no bound")
        if cap is not None and cap * GIB / len(paths) < MIN_CAPACITY_PER_PATH:
            raise L2ParamError("max_capacity_gb", cap, f"leaves less than {MIN_CAPACITY_PER_PATH} bytes per path "
                               f"({len(paths)} paths), too little to hold an entry",
                               "give the bound in GiB, e.g. 500, or leave it out for no bound")
        min_kb = d.get("direct_io_min_kb", DIRECT_IO_MIN_KB)
        if isinstance(min_kb, bool) or not isinstance(min_kb, int) or min_kb < 0:
            raise L2ParamError("direct_io_min_kb", min_kb, "not an integer >= 0",
                               "use e.g. 1024, or 0 to send every entry through O_DIRECT")
        threads = d.get("io_threads", 8)
        if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= 256:
            raise L2ParamError("io_threads", threads, "not an integer from 1 to 256", "use e.g. 8")
        return cls(paths=paths, max_capacity_gb=cap, engine=_choice(d, "engine", "auto", ENGINES),
                   direct_io=_flag(d, "direct_io", True), direct_io_min_kb=min_kb, io_threads=threads,
                   checksum=_choice(d, "checksum", "auto", CHECKSUM_MODES), fsync=_flag(d, "fsync", False))

    @classmethod
    def help(cls) -> str:
        return "GdsL2Adapter adapter_params:\n" + "\n".join(f"- {k}: {v}" for k, v in cls.PARAMS.items())


def _prepare_path(path: str, direct_io: bool) -> None:
    """Create `path`, its fan-out directories and a file in it (opened with O_DIRECT when asked),
    or stop with the fix."""
    # unique per call: two servers (even with one pid, in two containers) may start on one shared path
    probe = os.path.join(path, f".pygds-l2-probe-{os.getpid()}-{secrets.token_hex(8)}")
    try:
        os.makedirs(path, exist_ok=True)
        for name in FANOUT_DIRS:
            os.makedirs(os.path.join(path, name), exist_ok=True)
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600))
    except OSError as exc:
        raise L2ParamError("paths", path, f"cannot write there ({exc.strerror or exc})",
                           "create the directory and make it writable for this user, or list another") from None
    try:
        if direct_io:
            os.close(os.open(probe, os.O_WRONLY | os.O_DIRECT | os.O_CLOEXEC))
    except OSError as exc:
        raise L2ParamError("direct_io", True, f"{path} refuses O_DIRECT ({exc.strerror or exc})",
                           'set "direct_io": false, or use a file system with O_DIRECT (ext4, xfs)') from None
    finally:
        os.unlink(probe)


@dataclass
class _Engine:
    name: str
    reason: str
    registered: Any = None


def _prepare_engine(requested: str, desc: L1MemoryDesc | None) -> _Engine:
    """The engine for the stores, and the L1 arena registered once where cuFile runs."""
    if requested == "posix":
        return _Engine("posix", "requested (adapter_params.engine)")
    choice = pygds.choose_engine(requested)
    if choice.name != "cufile":  # hipFile would move host memory through POSIX anyway
        return _Engine("posix", choice.reason)
    if desc is None:
        return _Engine("cufile", f"{choice.reason}; LMCache described no L1 arena, so none is registered")
    size = desc.stable_registration_size or desc.size
    try:
        registered = pygds.RegisteredBuffer(pygds.Pointer(desc.ptr, size, kind="host"))
    except pygds.PygdsError as exc:
        if requested == "cufile":
            raise L2ParamError("engine", requested, f"cuFile cannot register the L1 arena: {exc}",
                               "use engine auto or posix, or repair the GDS installation (pygds info)") from None
        return _Engine("posix", f"cuFile cannot register the L1 arena ({exc})")
    return _Engine("cufile", f"{choice.reason}; L1 arena of {size} bytes registered", registered)


def _header_for(obj: Any, nbytes: int) -> EntryHeader:
    """The object's own shapes and dtypes when they describe its bytes, else `nbytes` of U8."""
    meta = obj.metadata
    try:
        if meta.shapes and meta.dtypes:
            header = EntryHeader.groups(meta.shapes, meta.dtypes, meta.fmt)
        else:
            header = EntryHeader.single(meta.shape, meta.dtype, meta.fmt)
        if header.nbytes == nbytes:
            return header
    except (ValueError, TypeError):
        pass
    return EntryHeader.single((nbytes,), "U8", meta.fmt)


def _fits(stored: EntryHeader, wanted: EntryHeader) -> bool:
    """Whether an entry of header `stored` is what an object described by `wanted` holds."""
    return (stored.nbytes, stored.dtypes, stored.shapes) == (wanted.nbytes, wanted.dtypes, wanted.shapes)


def _layout(header: EntryHeader) -> str:
    return ", ".join(f"{d}{list(s)}" for d, s in zip(header.dtypes, header.shapes))


def _mp(key: ObjectKey) -> MpKey:
    return MpKey(key.chunk_hash, key.model_name, key.kv_rank, key.object_group_id, key.cache_salt)


class _Task:
    """A submitted store or load: per-key results filled in by pool threads, which take its keys
    one by one (`take`) until none is left."""

    __slots__ = ("held", "keys", "left", "lock", "objects", "results", "sizes", "take", "task_id")

    def __init__(self, task_id: int, keys: list[ObjectKey], objects: list[Any]) -> None:
        self.task_id = task_id
        self.keys = keys
        self.objects = objects
        self.take = itertools.count().__next__  # atomic under the GIL
        self.results = [False] * len(keys)
        self.sizes = [0] * len(keys)
        self.held: list[tuple[ObjectKey, str, int, int] | None] = [None] * len(keys)
        self.left = len(keys)
        self.lock = threading.Lock()

    def done(self, i: int, ok: bool, size: int = 0, held: tuple[ObjectKey, str, int, int] | None = None) -> bool:
        """Record key `i` (`held`: what a store leaves to account); True when the task is complete."""
        with self.lock:
            self.results[i], self.sizes[i], self.held[i] = ok, size, held
            self.left -= 1
            return self.left == 0


class GdsL2Adapter(L2AdapterInterface):
    """LMCache MP-mode L2 adapter over one `KVStore` per path (see the module docstring)."""

    config_class_name = "GdsL2AdapterConfig"

    def __init__(self, config: GdsL2AdapterConfig | Mapping[str, Any],
                 l1_memory_desc: L1MemoryDesc | None = None) -> None:
        if not isinstance(config, GdsL2AdapterConfig):
            config = GdsL2AdapterConfig.from_dict(config)
        for path in config.paths:
            _prepare_path(path, config.direct_io)
        capacity = config.capacity_bytes
        super().__init__(max_capacity_bytes=capacity or 0)
        self.config = config
        self._engine = _prepare_engine(config.engine, l1_memory_desc)
        per_path = None if capacity is None else max(1, capacity // len(config.paths))
        self._stores: list[KVStore] = []
        try:
            for path in config.paths:
                self._stores.append(KVStore(StoreOptions(
                    paths=[path], engine=self._engine.name, io_threads=0, direct_io=config.direct_io,
                    direct_io_min_bytes=config.direct_io_min_kb << 10,
                    capacity_bytes=per_path, fsync=config.fsync, checksum=config.checksum,
                    metadata_file=False,  # its store and load pools, io_threads each:
                    spread_summed_io=spare_cores(2 * config.io_threads))))
        except BaseException:
            self._close_stores()
            if self._engine.registered is not None:
                self._engine.registered.close()
            raise
        self._layouts = [Layout([p]) for p in config.paths]
        self._ids = itertools.count()
        self._lock = threading.Lock()  # results, pins
        self._done_store: dict[L2TaskId, L2StoreResult] = {}
        self._done_lookup: dict[L2TaskId, Bitmap] = {}
        self._done_load: dict[L2TaskId, Bitmap] = {}
        self._pins: dict[str, list[int]] = {}
        self._acct_lock = threading.RLock()  # accounting and listener notifications
        self._accounted: dict[str, tuple[ObjectKey, int, int]] = {}  # text -> key, disk bytes, path
        self._seen_evictions = [0] * len(self._stores)
        self._closed = threading.Event()
        self._store_efd = create_event_notifier()
        self._lookup_efd = create_event_notifier()
        self._load_efd = create_event_notifier()
        self._store_pool = ThreadPoolExecutor(config.io_threads, thread_name_prefix="gds-l2-store",
                                              initializer=pygds.pool.mark_io_thread)
        self._load_pool = ThreadPoolExecutor(config.io_threads, thread_name_prefix="gds-l2-load",
                                             initializer=pygds.pool.mark_io_thread)
        self._lookup_pool = ThreadPoolExecutor(1, thread_name_prefix="gds-l2-lookup")
        self._scan_thread = threading.Thread(target=self._account_scanned, name="gds-l2-scan", daemon=True)
        self._scan_thread.start()
        arena = ("none described" if l1_memory_desc is None else
                 f"{l1_memory_desc.size} bytes at {l1_memory_desc.ptr:#x}, "
                 + ("registered with cuFile once" if self._engine.registered is not None else
                    f"not registered: {self._engine.name} moves it with "
                    + ("pread/pwrite" if self._engine.name == "posix" else "cuFile's own staging")))
        logger.info("GdsL2Adapter: %d path(s) %s, engine %s (%s); L1 arena %s; O_DIRECT %s; capacity %s",
                    len(self._stores), ", ".join(config.paths), self._engine.name, self._engine.reason, arena,
                    f"for entries of {config.direct_io_min_kb} KiB and more" if config.direct_io else "off",
                    "unbounded" if capacity is None else f"{capacity} bytes")

    def _check_open(self, call: str) -> None:
        if self._closed.is_set():
            raise RuntimeError(f"GdsL2Adapter.{call} after close(): the adapter of {', '.join(self.config.paths)} "
                               "is closed; LMCache stops calling it at shutdown, so a call now is a bug of the caller")

    # -- keys and paths ---------------------------------------------------------------------
    def _where(self, key: ObjectKey) -> tuple[str, str, list[int]]:
        """Key text, fan-out hash, and the store indexes to look in (the key's own path first)."""
        mp = _mp(key)
        text = mp_key_text(mp)
        home = xxhash.xxh3_64_intdigest(text.encode()) % len(self._stores)
        return text, fanout_hash(mp), [home] + [i for i in range(len(self._stores)) if i != home]

    # -- event fds --------------------------------------------------------------------------
    def get_store_event_fd(self) -> int:
        return self._store_efd.fileno()

    def get_lookup_and_lock_event_fd(self) -> int:
        return self._lookup_efd.fileno()

    def get_load_event_fd(self) -> int:
        return self._load_efd.fileno()

    # -- store ------------------------------------------------------------------------------
    def submit_store_task(self, keys: list[ObjectKey], objects: list[Any]) -> L2TaskId:
        self._check_open("submit_store_task")
        task = self._new_task(keys, objects)
        if not keys:
            self._finish_store(task)
        for _ in range(min(self.config.io_threads, len(keys))):
            self._store_pool.submit(self._store_keys, task)
        return task.task_id

    def _new_task(self, keys: list[ObjectKey], objects: list[Any]) -> _Task:
        if len(keys) != len(objects):
            raise ValueError(f"{len(keys)} keys but {len(objects)} memory objects; pass one object per key")
        return _Task(next(self._ids), list(keys), list(objects))

    def _store_keys(self, task: _Task) -> None:
        n = len(task.keys)
        while (i := task.take()) < n:
            self._store_one(task, i, task.objects[i])

    def _store_one(self, task: _Task, i: int, obj: Any) -> None:
        key, written, held = task.keys[i], 0, None
        try:
            text, fan, order = self._where(key)
            store = self._stores[order[0]]
            nbytes = obj.get_size()
            data = pygds.Pointer(obj.data_ptr, nbytes, kind="host")
            header = _header_for(obj, nbytes)
            stored = store.put(text, fan, data, header)
            present = stored
            if not stored:  # already there, refused or failed (the store logged why)
                info = store.lookup(text, fan)
                present = info is not None and _fits(info.header, header)
                if info is not None and not present:
                    # another size or layout under this key: loads of this object would miss it
                    # forever, so it is replaced (unless a lookup holds it locked: then this store fails)
                    stored = present = store.remove(text, fan, force=False) and store.put(text, fan, data, header)
            written = nbytes if stored else 0
            if present:
                held = (key, text, nbytes + ENTRY_OVERHEAD, order[0])
        except Exception:
            logger.exception("GdsL2Adapter could not store %s", key)
        if task.done(i, held is not None, written, held):
            self._finish_store(task)

    def _finish_store(self, task: _Task) -> None:
        held = [h for h in task.held if h is not None]

        def report() -> None:
            self._account(held)  # in the task's key order
            # an entry evicted by a later store while this task still ran was not reported yet
            self._unaccount([text for key, text, _, idx in held
                             if not self._stores[idx].contains(text, fanout_hash(_mp(key)))])
            self._reconcile_evictions()

        self._complete("store", task.task_id, report, self._done_store,
                       L2StoreResult(all(task.results), sum(task.sizes)), self._store_efd)

    def _complete(self, kind: str, task_id: L2TaskId, report: Callable[[], object], done: dict, result: Any,
                  efd: Any) -> None:
        """Tell LMCache what the task changed (`report`), then post its result: always, or LMCache
        would wait for it for ever."""
        try:
            report()
        except Exception:
            logger.exception("GdsL2Adapter could not report the keys of %s task %s to LMCache", kind, task_id)
        finally:
            with self._lock:
                done[task_id] = result
            efd.notify()

    def pop_completed_store_tasks(self) -> dict[L2TaskId, L2StoreResult]:
        with self._lock:  # the dict itself stays: `_complete` may hold it already
            done = dict(self._done_store)
            self._done_store.clear()
        return done

    # -- lookup and lock --------------------------------------------------------------------
    def submit_lookup_and_lock_task(self, keys: list[ObjectKey], group_layout_descs: dict[int, Any]) -> L2TaskId:
        self._check_open("submit_lookup_and_lock_task")
        task_id = next(self._ids)
        self._lookup_pool.submit(self._lookup_task, task_id, list(keys))
        return task_id

    def _lookup_task(self, task_id: L2TaskId, keys: list[ObjectKey]) -> None:
        bitmap = Bitmap(len(keys))
        for i, key in enumerate(keys):
            try:
                if self._lock_one(key):
                    bitmap.set(i)
            except Exception:
                logger.exception("GdsL2Adapter lookup of %s failed; served as a miss", key)
        with self._lock:
            self._done_lookup[task_id] = bitmap
        self._lookup_efd.notify()

    def _lock_one(self, key: ObjectKey) -> bool:
        text, fan, order = self._where(key)
        for idx in order:
            store = self._stores[idx]
            if store.lookup(text, fan) is not None and store.pin(text, fan):
                with self._lock:
                    self._pins.setdefault(text, []).append(idx)
                return True
        self._forget_if_gone(text, fan)
        return False

    def query_lookup_and_lock_result(self, task_id: L2TaskId) -> Bitmap | None:
        with self._lock:
            return self._done_lookup.pop(task_id, None)

    def submit_unlock(self, keys: list[ObjectKey]) -> None:
        """Unpin what lookup-and-lock pinned; never raises (LMCache never retries an unlock)."""
        for key in keys:
            try:
                text, fan, _ = self._where(key)
                with self._lock:
                    held = self._pins.get(text)
                    if not held:
                        continue
                    idx = held.pop()
                    if not held:
                        del self._pins[text]
                self._stores[idx].unpin(text, fan)
            except Exception:
                logger.exception("GdsL2Adapter could not unlock %s; ignored", key)

    # -- load -------------------------------------------------------------------------------
    def submit_load_task(self, keys: list[ObjectKey], objects: list[Any]) -> L2TaskId:
        self._check_open("submit_load_task")
        task = self._new_task(keys, objects)
        if not keys:
            self._finish_load(task)
        for _ in range(min(self.config.io_threads, len(keys))):
            self._load_pool.submit(self._load_keys, task)
        return task.task_id

    def _load_keys(self, task: _Task) -> None:
        n = len(task.keys)
        while (i := task.take()) < n:
            self._load_one(task, i, task.objects[i])

    def _load_one(self, task: _Task, i: int, obj: Any) -> None:
        ok = False
        try:
            ok = self._read(task.keys[i], obj)
        except Exception:
            logger.exception("GdsL2Adapter could not load %s; served as a miss", task.keys[i])
        if task.done(i, ok):
            self._finish_load(task)

    def _read(self, key: ObjectKey, obj: Any) -> bool:
        """Fill `obj` from the entry: True only when every byte came from a checked entry of
        exactly the object's size and layout (another one is a miss, never a partial fill)."""
        text, fan, order = self._where(key)
        with self._lock:
            held = self._pins.get(text)
            if held:
                order = [held[-1]] + [i for i in order if i != held[-1]]
        nbytes = obj.get_size()
        dest = pygds.Pointer(obj.data_ptr, nbytes, kind="host")
        wanted = _header_for(obj, nbytes)
        for idx in order:
            store = self._stores[idx]
            for _ in range(2):  # an entry replaced or removed since lookup is looked up once more
                info = store.lookup(text, fan, check_file=False)  # the read finds a vanished file
                if info is None:
                    break
                if not _fits(info.header, wanted):  # another path may hold the one asked for
                    logger.warning("GdsL2Adapter entry %s holds %d bytes of %s, LMCache asked for %d bytes of %s: "
                                   "not served", info.path, info.header.nbytes, _layout(info.header), nbytes,
                                   _layout(wanted))
                    break
                try:
                    store.read_into(info, dest)
                    return True
                except EntryGoneError:
                    continue
                except CorruptEntryError:
                    break  # dropped by the store, with a warning
        self._forget_if_gone(text, fan)  # LMCache counted it held: tell it when no path holds it
        return False

    def _finish_load(self, task: _Task) -> None:
        """Post the task's result, telling LMCache's eviction policy which keys were used."""
        bitmap = Bitmap(len(task.keys))
        loaded = []
        for i, ok in enumerate(task.results):
            if ok:
                bitmap.set(i)
                loaded.append(task.keys[i])
        self._complete("load", task.task_id, lambda: loaded and self._notify_keys_accessed(loaded), self._done_load,
                       bitmap, self._load_efd)

    def query_load_result(self, task_id: L2TaskId) -> Bitmap | None:
        with self._lock:
            return self._done_load.pop(task_id, None)

    # -- eviction and accounting ------------------------------------------------------------
    def delete(self, keys: list[ObjectKey]) -> None:
        """Delete unlocked entries (LMCache's L2 eviction calls this). A locked entry stays and is
        reported used, so that the eviction policy, which passes no filter for L2, takes other
        entries next rather than asking for this one again and again."""
        self._check_open("delete")
        in_use = []
        for key in keys:
            try:
                text, fan, order = self._where(key)
                with self._lock:
                    if self._pins.get(text):
                        in_use.append(key)
                        continue
                for idx in order:
                    self._stores[idx].remove(text, fan, force=False)
                self._forget_if_gone(text, fan)
            except Exception:
                logger.exception("GdsL2Adapter could not delete %s", key)
        if in_use:
            self._notify_keys_accessed(in_use)

    def _account(self, items: list[tuple[ObjectKey, str, int, int]]) -> None:
        """Report (key, text, disk bytes, path index) as stored where not reported so yet: bytes,
        and LMCache's eviction policy (keys of one request in their order, as it expects). A key
        given twice counts once; one reported at another size or path (replaced) is reported
        deleted first."""
        with self._acct_lock:
            new: dict[str, tuple[ObjectKey, str, int, int]] = {}
            for item in items:
                known = self._accounted.get(item[1])
                if known is None or known[1:] != item[2:]:
                    new[item[1]] = item
            self._unaccount([text for text in new if text in self._accounted])
            if not new:
                return
            for key, text, size, idx in new.values():
                self._accounted[text] = (key, size, idx)
            self._notify_keys_stored([item[0] for item in new.values()], [item[2] for item in new.values()])

    def _unaccount(self, texts: list[str]) -> None:
        with self._acct_lock:
            gone = [self._accounted.pop(t) for t in texts if t in self._accounted]
            if gone:
                self._notify_keys_deleted([k for k, _, _ in gone], [s for _, s, _ in gone])

    def _forget_if_gone(self, text: str, fan: str) -> None:
        """A reported entry that no store holds any more (removed, evicted, or dropped as bad) is
        reported deleted."""
        with self._acct_lock:
            if text not in self._accounted:
                return
        if not any(store.contains(text, fan) for store in self._stores):
            self._unaccount([text])

    def _reconcile_evictions(self) -> None:
        """Report deleted what a store evicted on its own (its capacity bound)."""
        for idx, store in enumerate(self._stores):
            evictions = store.stats().evictions
            with self._acct_lock:
                if evictions == self._seen_evictions[idx]:
                    continue
                self._seen_evictions[idx] = evictions
                present = set(store.keys())
                self._unaccount([t for t, (_, _, i) in self._accounted.items() if i == idx and t not in present])

    def _account_scanned(self) -> None:
        """Once a path's start-up scan is done, report the MP entries it found."""
        for idx, store in enumerate(self._stores):
            while not store.wait_for_scan(0.5):
                if self._closed.is_set():
                    return
            layout, items = self._layouts[idx], []
            for text in store.keys():
                mp = parse_mp_key_text(text)
                if mp is None:
                    continue
                try:
                    st = os.stat(layout.data_path(layout.paths[0], text, fanout_hash(mp)))
                    key = ObjectKey(*mp)
                except (OSError, ValueError):
                    continue
                items.append((key, text, st.st_size, idx))
            if self._closed.is_set():
                return
            self._account(items)
            logger.info("GdsL2Adapter: %d entries found in %s at start", len(items), layout.paths[0])

    def register_listener(self, listener: Any) -> None:
        """Register, then tell the new listener (LMCache's eviction policy) of every entry held."""
        with self._acct_lock:
            super().register_listener(listener)
            held = list(self._accounted.values())
            if held:
                listener.on_l2_keys_stored([k for k, _, _ in held], [s for _, s, _ in held])

    # -- status -----------------------------------------------------------------------------
    def report_status(self) -> dict:
        paths = []
        for path, store in zip(self.config.paths, self._stores):
            s = store.stats()
            paths.append({"path": path, "entries": s.entries, "used_bytes": s.used_bytes,
                          "capacity_bytes": s.capacity_bytes, "stores": s.puts, "hits": s.hits,
                          "misses": s.misses, "corrupt": s.corrupt, "put_errors": s.put_errors,
                          "read_errors": s.read_errors, "evictions": s.evictions, "scan_done": s.scan_done})
        with self._lock:
            locked = sum(len(v) for v in self._pins.values())
        return {"is_healthy": not self._closed.is_set(), "type": type(self).__name__,
                "engine": self._engine.name, "engine_reason": self._engine.reason,
                "l1_registered": self._engine.registered is not None, "direct_io": self.config.direct_io,
                "direct_io_min_kb": self.config.direct_io_min_kb,
                "locked_keys": locked, "paths": paths}

    # -- shutdown ---------------------------------------------------------------------------
    def close(self) -> None:
        """Finish every submitted store and load, then close the stores and the event fds."""
        if self._closed.is_set():
            return
        self._closed.set()
        for pool in (self._store_pool, self._load_pool, self._lookup_pool):
            pool.shutdown(wait=True)
        self._scan_thread.join()
        self._close_stores()
        if self._engine.registered is not None:
            self._engine.registered.close()
        for efd in (self._store_efd, self._lookup_efd, self._load_efd):
            efd.close()

    def _close_stores(self) -> None:
        for store in self._stores:
            try:
                store.close()
            except Exception:
                logger.exception("GdsL2Adapter could not close the store of %s", store.paths[0])
