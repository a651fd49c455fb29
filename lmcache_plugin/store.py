"""`KVStore`: the multi-path KV store beneath the LMCache adapter (no LMCache import).

API CHANGES: since the first draft, `StoreOptions.engine` defaults to "auto" (was "posix").
`StoreOptions.checksum` ("auto") is new; headers written name their key and carry a checksum;
`remove()` returns False when a file could not be deleted; `read_into` of an entry whose header
changed since `lookup` raises `EntryGoneError` (was `CorruptEntryError`).

An entry is one data file (4 KiB header + raw bytes, `format.py`) plus a `.metadata` companion
holding a copy of the header, named as LMCache's GdsBackend names them (`layout.py`).

Publication: data goes to `<final>.tmp<hex>` in the write path, is renamed to its final name, then
the `.metadata` is written and renamed the same way; `put` returns (and `submit_put` calls its
`on_done`) only when both are in place. A failed write removes its temporary file and, if the
metadata step failed, the just-published data file, so nothing partial is ever visible. No fsync
by default (`StoreOptions.fsync`): a process crash loses nothing that was renamed, and a file torn
by a power loss is caught by the size check on read and dropped.

Identity and content: every entry written here names its full key in its header and, per
`StoreOptions.checksum`, carries a checksum of its data (`format.py`). Paths are shared with other
writers (other stores, `pygds cache evict`, a user's `mv`), so nothing on disk is taken on trust:

- Reads never trust the index: every `read_into` re-reads the header from the open file and checks
  it against the key asked for, the file's length, the header `lookup` returned and the
  destination, reads the data, checks that all of it came, and verifies the checksum of exactly
  the bytes read. A file holding another key, a short, corrupt or damaged file is dropped from the
  index with one warning and reported as `CorruptEntryError`; an entry removed, or replaced by
  another entry, since `lookup` is `EntryGoneError` (look it up again).
- Puts never trust the index either: an indexed entry whose file another process removed is
  forgotten and written again.
- Removal and eviction unlink the `.metadata` first, then the data file, and report only what was
  really deleted: a file that cannot be unlinked (read-only or immutable directory) keeps its entry
  indexed, is not counted as freed, and is named in one warning. A reader holding the file open
  keeps reading the complete old file, a reader opening it afterwards gets a miss, never half an
  entry.

Capacity (optional, `capacity_bytes` / `capacity_fraction`) bounds the bytes of the entries this
store knows in its write path; a put that would pass it first evicts least-recently-used unpinned
entries of that path. Entries in other paths belong to the workers writing there and are never
evicted here. Entries the start-up scan has not reached yet, and entries other processes add to
the write path, count from when this store first sees them.
"""

from __future__ import annotations

import ctypes
import errno
import json
import logging
import os
import socket
import stat as stat_mod
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable, Iterator, Sequence

import pygds

from .format import (
    CHECKSUM_FIELD,
    HEADER_SIZE,
    KEY_FIELD,
    CorruptEntryError,
    EntryHeader,
    checksum_of,
    pack_header,
    unpack_header,
)
from .index import Entry, Index, Scanner
from .layout import (
    DATA_SUFFIX,
    InvalidKeyError,
    Layout,
    is_bounded_stem,
    key_from_stem,
    metadata_path,
    tmp_path,
)

logger = logging.getLogger(__name__)

ENGINES = ("auto", "posix", "cufile", "hipfile")
STATS_DIR = ".pygds-stats"
"""Directory in each write path where stores publish their counters (ignored by every scan)."""
BOUNDED_KEY_FIELD = KEY_FIELD
"""`__metadata__` field holding an entry's full key text (every entry written here has it; for an
entry under a bounded name it is the only record of the key)."""
CHECKSUM_MODES = ("auto", "always", "off")
_HOST_KINDS = ("host", "pinned")
"""Buffer kinds the CPU hashes in place; device and managed memory need a copy to the host."""
_STAGING_BYTES = 16 << 20
"""Piece size of the host copy through which device memory is hashed ("always")."""

__all__ = [
    "CorruptEntryError",
    "EntryGoneError",
    "EntryHeader",
    "EntryInfo",
    "KVStore",
    "StoreOptions",
    "StoreStats",
]


class EntryGoneError(LookupError):
    """The entry vanished between lookup and read (removed, evicted); treat it as a miss."""


@dataclass(frozen=True)
class StoreOptions:
    """Everything `KVStore` needs; `config.py` builds it from the user's settings.

    paths: cache directories, a sequence or a comma list (items trimmed, empty ones dropped).
    device_id: selects the write path `paths[device_id % len(paths)]`.
    engine: "auto" | "posix" | "cufile" | "hipfile", passed to `pygds.File` for data I/O.
    io_threads: workers of the I/O pool behind `submit_*`; <= 0 runs them in the caller.
    direct_io: open data files with O_DIRECT.
    data_suffix: ".kvcache.safetensors" (".weka1" on wekafs).
    tmp_max_age_s: the start-up scan removes temporary files older than this; never younger ones.
    capacity_bytes: bound on the bytes of entries in the write path; None = unbounded (default).
    capacity_fraction: bound as a fraction (0, 1] of the write path's file system size.
        When both are set the smaller bound applies.
    fsync: fsync data and metadata before publishing them.
    scan: run the start-up scan of all paths in a background thread.
    stats_interval_s: publish the counters to `<write path>/.pygds-stats/<host>-<pid>.json`
        this often (and at close) for `pygds cache stats`; 0 (the default) disables publishing.
    checksum: "auto" | "always" | "off". "auto" (the default) writes a checksum of the data when
        it is in host memory and verifies it when reading into host memory: on the CPU it costs
        a fraction of the I/O time, while device memory would need a copy of every chunk to the
        host, which defeats GPU-direct (key, size and header checks still run). "always" also
        covers device memory, through a host copy. "off" writes and verifies none.
    """

    paths: str | Sequence[str]
    device_id: int = 0
    engine: str = "auto"
    io_threads: int = 4
    direct_io: bool = False
    data_suffix: str = DATA_SUFFIX
    tmp_max_age_s: float = 3600.0
    capacity_bytes: int | None = None
    capacity_fraction: float | None = None
    fsync: bool = False
    scan: bool = True
    stats_interval_s: float = 0.0
    checksum: str = "auto"


@dataclass(frozen=True)
class EntryInfo:
    """What `lookup` returns: where an entry lives and its validated header."""

    key_text: str
    path: str
    base: str
    size: int
    header: EntryHeader


@dataclass(frozen=True)
class StoreStats:
    """A snapshot of the store's counters."""

    hits: int
    misses: int
    puts: int
    put_skipped: int
    put_refused: int
    put_errors: int
    read_errors: int
    corrupt: int
    bytes_read: int
    bytes_written: int
    evictions: int
    evicted_bytes: int
    removed: int
    entries: int
    used_bytes: int
    capacity_bytes: int | None
    pending_puts: int
    scan_done: bool
    scan_entries: int
    scan_seconds: float
    scan_stale_tmp_removed: int
    scan_errors: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


_COUNTERS = (
    "hits", "misses", "puts", "put_skipped", "put_refused", "put_errors", "read_errors",
    "corrupt", "bytes_read", "bytes_written", "evictions", "evicted_bytes", "removed",
)


class _Busy:
    """A stem being written ("put") or deleted ("delete"); others wait on `done`."""

    __slots__ = ("op", "done")

    def __init__(self, op: str) -> None:
        self.op = op
        self.done = threading.Event()


def _validate(options: StoreOptions) -> None:
    if options.engine not in ENGINES:
        raise ValueError(f"engine {options.engine!r} is unknown; use one of {', '.join(ENGINES)}")
    if not isinstance(options.io_threads, int):
        raise ValueError(f"io_threads must be an integer, got {options.io_threads!r}")
    if not options.tmp_max_age_s >= 0:
        raise ValueError(f"tmp_max_age_s must be >= 0 seconds, got {options.tmp_max_age_s!r}")
    cap = options.capacity_bytes
    if cap is not None and (not isinstance(cap, int) or isinstance(cap, bool) or cap <= 0):
        raise ValueError(f"capacity_bytes must be a positive integer or None, got {cap!r}")
    frac = options.capacity_fraction
    if frac is not None and not (isinstance(frac, (int, float)) and 0 < frac <= 1):
        raise ValueError(f"capacity_fraction must be in (0, 1] or None, got {frac!r}")
    if options.checksum not in CHECKSUM_MODES:
        raise ValueError(
            f"checksum {options.checksum!r} is unknown; use one of {', '.join(CHECKSUM_MODES)}"
        )


def _open_file(path: str, mode: str, engine: str, direct: bool) -> pygds.File:
    """A `pygds.File` for entry data (the one place the store opens data files)."""
    return pygds.File(path, mode, engine=engine, direct=direct)


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        if n <= 0:
            raise OSError(errno.EIO, "short write")
        view, offset = view[n:], offset + n


_IO_ERRORS = (OSError, pygds.PygdsError)
"""What a failed data-file operation raises (`pygds.IOFailedError` is both)."""


class KVStore:
    """Thread-safe KV store over one or more cache directories."""

    def __init__(self, options: StoreOptions) -> None:
        _validate(options)
        self.options = options
        self.layout = Layout(options.paths, options.device_id, options.data_suffix)
        for path in self.layout.paths:
            try:
                os.makedirs(path, exist_ok=True)
            except OSError as exc:
                raise OSError(
                    exc.errno,
                    f"cannot create cache directory {path}: {exc.strerror}; create it or fix its "
                    "permissions, or remove it from the path list",
                ) from None
        self._index = Index()
        self._lock = threading.Lock()  # busy map, pending puts; taken before the index lock
        self._busy: dict[str, _Busy] = {}
        self._pending: dict[str, int] = {}
        self._futures: set[Future[bool]] = set()
        self._stats_lock = threading.Lock()
        self._counts = dict.fromkeys(_COUNTERS, 0)
        self._cap_lock = threading.Lock()
        self._reserved = 0
        self._capacity = self._compute_capacity()
        self._bad: dict[str, tuple[str, int, int, int]] = {}
        self._warned_refusals: set[str] = set()
        self._closed = False
        self._pool = (
            # each chunk is one whole read or write: the chunks are what runs in parallel
            ThreadPoolExecutor(options.io_threads, thread_name_prefix="kvstore-io",
                               initializer=pygds.pool.mark_io_thread)
            if options.io_threads > 0
            else None
        )
        self._scanner = Scanner(
            self.layout,
            self._index,
            tmp_max_age_s=options.tmp_max_age_s,
            stat_bases=[self.layout.write_path] if self._capacity is not None else [],
        )
        if options.scan:
            self._scanner.start()
        else:
            self._scanner.skip()
        self._stats_stop = threading.Event()
        self._publisher: threading.Thread | None = None
        if options.stats_interval_s > 0:
            self._publisher = threading.Thread(target=self._publish_loop, name="kvstore-stats", daemon=True)
            self._publisher.start()
        logger.info(
            "KV store: %d path(s), writing to %s, engine %s, capacity %s, checksum %s",
            len(self.layout.paths),
            self.layout.write_path,
            options.engine,
            "unbounded" if self._capacity is None else f"{self._capacity} bytes",
            options.checksum,
        )

    # -- properties ---------------------------------------------------------------------------
    @property
    def paths(self) -> tuple[str, ...]:
        """All configured cache paths (trimmed, in the given order)."""
        return self.layout.paths

    @property
    def write_path(self) -> str:
        """The affinity path this store writes to."""
        return self.layout.write_path

    @property
    def capacity_bytes(self) -> int | None:
        """The effective bound on the write path, or None."""
        return self._capacity

    def _compute_capacity(self) -> int | None:
        bounds = []
        if self.options.capacity_bytes is not None:
            bounds.append(self.options.capacity_bytes)
        if self.options.capacity_fraction is not None:
            st = os.statvfs(self.layout.write_path)
            bounds.append(int(st.f_blocks * st.f_frsize * self.options.capacity_fraction))
        return min(bounds) if bounds else None

    # -- bookkeeping --------------------------------------------------------------------------
    def _bump(self, **deltas: int) -> None:
        with self._stats_lock:
            for name, delta in deltas.items():
                self._counts[name] += delta

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the KV store is closed; create a new KVStore")

    def _claim(self, stem: str, op: str) -> _Busy | None:
        """Mark `stem` busy for `op`. A put finding another put returns None once it is done."""
        while True:
            with self._lock:
                busy = self._busy.get(stem)
                if busy is None:
                    busy = self._busy[stem] = _Busy(op)
                    return busy
            busy.done.wait()
            if op == "put" and busy.op == "put":
                return None

    def _release(self, stem: str, busy: _Busy) -> None:
        with self._lock:
            if self._busy.get(stem) is busy:
                del self._busy[stem]
        busy.done.set()

    def _is_busy(self, stem: str) -> bool:
        with self._lock:
            return stem in self._busy

    def _refuse(self, why: str) -> bool:
        """Count a refused put; warn once per distinct reason."""
        self._bump(put_refused=1)
        with self._stats_lock:
            first = why not in self._warned_refusals
            if first and len(self._warned_refusals) < 1000:
                self._warned_refusals.add(why)
        (logger.warning if first else logger.debug)("put refused: %s", why)
        return False

    # -- disk probing and headers -------------------------------------------------------------
    def _identity(self, path: str, st: os.stat_result) -> tuple[str, int, int, int]:
        return (path, st.st_ino, st.st_size, st.st_mtime_ns)

    def _probe(self, key_text: str, chunk_hash: int | str, stem: str) -> Entry | None:
        """Look for the entry's data file in every path; index and return it when found."""
        for base, path in self.layout.candidate_paths(key_text, chunk_hash):
            try:
                st = _stat_by_open(path)
            except OSError:
                continue
            if not stat_mod.S_ISREG(st.st_mode) or self._bad.get(stem) == self._identity(path, st):
                continue
            has_meta = os.path.exists(metadata_path(path))
            entry = Entry(
                stem=stem,
                base=base,
                path=path,
                size=st.st_size + (HEADER_SIZE if has_meta else 0),
                has_metadata=has_meta,
                key_text=key_text,
            )
            return self._index.add(entry)
        return None

    def _find(self, key_text: str, chunk_hash: int | str, *, touch: bool) -> Entry | None:
        """Index first, then disk; None while the stem is being written or deleted."""
        stem = self.layout.stem(key_text)
        if self._is_busy(stem):
            return None
        entry = self._index.get(stem, touch=touch)
        if entry is None:
            entry = self._probe(key_text, chunk_hash, stem)
        if entry is not None and entry.key_text is None:
            entry.key_text = key_text
        return entry

    def _drop(self, entry: Entry, exc: BaseException, st: os.stat_result | None, counter: str) -> None:
        """Forget a bad entry (index and future probes of the same file), one warning."""
        current = self._index.get(entry.stem)
        if current is entry:
            self._index.pop(entry.stem)
        if st is None:
            try:
                st = os.stat(entry.path)
            except OSError:
                pass
        if st is not None:
            self._bad[entry.stem] = self._identity(entry.path, st)
        self._bump(**{counter: 1})
        logger.warning("dropping KV cache entry %s: %s", entry.path, exc)

    def _forget(self, entry: Entry) -> None:
        """The entry's file vanished: drop it from the index quietly."""
        if self._index.get(entry.stem) is entry:
            self._index.pop(entry.stem)

    def _keep(self, entry: Entry) -> int:
        """An entry whose data file could not be deleted stays indexed (is put back), with its
        `.metadata` flag and size as they are now on disk; returns the bytes freed anyway."""
        has_metadata = os.path.exists(metadata_path(entry.path))
        before = size = entry.size
        if size is not None and entry.has_metadata and not has_metadata:
            size -= HEADER_SIZE
        entry = self._index.add(entry)
        self._index.set_size(entry, size, has_metadata)
        return (before or 0) - (size or 0)

    def _check_key(self, entry: Entry, header: EntryHeader, key_text: str | None) -> None:
        """Refuse a header naming another key than the entry's: a renamed or swapped file, or a
        name a case-insensitive file system folds onto this one. Without `key_text` the expected
        key is the one the stem was made from. A header without a key (LMCache wrote it) passes,
        except under a bounded name, whose key only the header records."""
        stored = header.key
        if stored is None:
            if is_bounded_stem(entry.stem):
                raise CorruptEntryError("the entry under a bounded name records no key")
            return
        expected = key_text or key_from_stem(entry.stem)
        if expected is not None:
            if stored != expected:
                raise CorruptEntryError(f"entry holds key {stored!r}, not {expected!r}"[:300])
            return
        try:
            same = self.layout.stem(stored) == entry.stem
        except InvalidKeyError:
            same = False
        if not same:
            raise CorruptEntryError(f"entry holds key {stored!r}, whose name is not this file's"[:300])

    def _load_header(self, entry: Entry) -> EntryHeader | None:
        """Read, validate and cache the header; rebuild a missing `.metadata` from it."""
        try:
            fd = os.open(entry.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            self._forget(entry)
            return None
        except OSError as exc:
            self._drop(entry, exc, None, "read_errors")
            return None
        st = None
        try:
            st = os.fstat(fd)
            raw = os.pread(fd, HEADER_SIZE, 0)
            header = unpack_header(raw, file_size=st.st_size)
            self._check_key(entry, header, entry.key_text)
        except CorruptEntryError as exc:
            self._drop(entry, exc, st, "corrupt")
            return None
        except OSError as exc:
            self._drop(entry, exc, st, "read_errors")
            return None
        finally:
            os.close(fd)
        entry.header = header
        if not entry.has_metadata:
            self._rebuild_metadata(entry, raw)
        self._index.set_size(
            entry, st.st_size + (HEADER_SIZE if entry.has_metadata else 0), entry.has_metadata
        )
        return header

    def _rebuild_metadata(self, entry: Entry, raw: bytes) -> None:
        """Write the missing `.metadata` companion from the data file's own header bytes."""
        final = metadata_path(entry.path)
        if os.path.exists(final):
            entry.has_metadata = True
            return
        tmp = tmp_path(final)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            try:
                _pwrite_all(fd, raw, 0)
            finally:
                os.close(fd)
            os.rename(tmp, final)
            entry.has_metadata = True
            logger.debug("rebuilt missing %s", final)
        except OSError as exc:
            _unlink_quietly(tmp)
            logger.debug("cannot rebuild %s: %s", final, exc)

    # -- writes -------------------------------------------------------------------------------
    def put(self, key_text: str, chunk_hash: int | str, data: Any, header: EntryHeader) -> bool:
        """Store the first `header.nbytes` bytes of `data` (torch tensor CPU/CUDA, bytes-like,
        numpy array, anything `pygds.as_buffer` takes) under `key_text`.

        The header written names `key_text` and, per `StoreOptions.checksum`, the data's checksum
        (whatever `header.extra` said about either is replaced).

        Returns True once data file and `.metadata` are both in place; False when the key is
        already stored (its data file is on disk, in any path: an indexed entry whose file is
        gone is written again) or was being written by a concurrent put (this call waits for
        it), when it is refused (larger than the capacity, unstorable key; one warning per
        reason) or when the write failed (one error line, nothing left visible).
        Raises ValueError for a header that does not fit the data, TypeError for data that
        is no buffer.
        """
        self._check_open()
        try:
            stem = self.layout.stem(key_text)
            final = self.layout.data_path(self.layout.write_path, key_text, chunk_hash)
        except InvalidKeyError as exc:
            return self._refuse(str(exc))
        view = pygds.as_buffer(data, writable=False)
        summed = self._sums(view)
        # Every checksum text has the length of the empty data's: whether the header fits is
        # known before the data is hashed (only a put that writes hashes).
        header = _named(header, key_text, checksum_of(()) if summed else None)
        try:
            header_bytes = pack_header(header)
        except ValueError as exc:
            if is_bounded_stem(stem):
                return self._refuse(f"key of {len(key_text)} characters is too long to store: {exc}")
            raise
        try:
            header = unpack_header(header_bytes)  # the canonical form, as read back later
        except CorruptEntryError as exc:
            raise ValueError(f"this header could not be read back: {exc.reason}") from None
        if view.nbytes < header.nbytes:
            raise ValueError(
                f"data holds {view.nbytes} bytes but the header describes {header.nbytes}; "
                "build the header from the data's own shapes and dtypes"
            )
        busy = self._claim(stem, "put")
        if busy is None:
            self._bump(put_skipped=1)
            return False
        try:
            if self._on_disk(key_text, chunk_hash, stem):
                self._bump(put_skipped=1)
                return False
            if summed:
                header = _named(header, key_text, self._checksum(view, header.nbytes))
                header_bytes = pack_header(header)
            need = header.nbytes + 2 * HEADER_SIZE
            if not self._reserve(need, key_text):
                return False
            entry = None
            try:
                self._write_entry(final, header_bytes, view, header.nbytes)
                entry = Entry(
                    stem=stem,
                    base=self.layout.write_path,
                    path=final,
                    size=need,
                    has_metadata=True,
                    header=header,
                    key_text=key_text,
                )
            except _IO_ERRORS as exc:
                self._bump(put_errors=1)
                logger.error("storing %s in %s failed: %s", key_text, final, exc)
                return False
            finally:
                with self._cap_lock:
                    self._reserved -= need
                    if entry is not None:
                        self._index.add(entry, replace=True)
                        self._bad.pop(stem, None)
            self._bump(puts=1, bytes_written=header.nbytes)
            return True
        finally:
            self._release(stem, busy)

    def _on_disk(self, key_text: str, chunk_hash: int | str, stem: str) -> bool:
        """True when the key's data file is on disk, in any path. The index only says where to
        look: an indexed entry whose file another process removed is forgotten."""
        entry = self._index.get(stem)
        if entry is not None:
            try:
                _stat_by_open(entry.path)
                return True
            except (FileNotFoundError, NotADirectoryError):
                self._forget(entry)
            except OSError:
                return True  # cannot tell; what is there stays
        return self._probe(key_text, chunk_hash, stem) is not None

    def _sums(self, view: Any) -> bool:
        """Whether a checksum is written for, or verified in, memory of this view's kind."""
        mode = self.options.checksum
        return mode == "always" or (mode == "auto" and view.kind in _HOST_KINDS)

    def _checksum(self, view: Any, nbytes: int) -> str:
        """The checksum of the first `nbytes` of `view`: hashed in place in host memory, through
        a host copy in pieces otherwise."""
        if view.kind in _HOST_KINDS:
            return checksum_of([_host_memory(view.ptr, nbytes)])
        return checksum_of(_staged(view, nbytes))

    def _write_entry(self, final: str, header_bytes: bytes, view: Any, nbytes: int) -> None:
        """Publish data then metadata, each through a temporary name; all or nothing."""
        tmp = tmp_path(final)
        try:
            try:
                f = _open_file(tmp, "x", self.options.engine, self.options.direct_io)
            except FileNotFoundError:
                os.makedirs(os.path.dirname(final), exist_ok=True)
                f = _open_file(tmp, "x", self.options.engine, self.options.direct_io)
            with f:
                _pwrite_all(f.fd, header_bytes, 0)
                if nbytes:
                    f.write(view, nbytes, file_offset=HEADER_SIZE)
                if self.options.fsync:
                    f.fsync()
            os.rename(tmp, final)
        except BaseException:
            _unlink_quietly(tmp)
            raise
        meta = metadata_path(final)
        mtmp = tmp_path(meta)
        try:
            fd = os.open(mtmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            try:
                _pwrite_all(fd, header_bytes, 0)
                if self.options.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(mtmp, meta)
        except BaseException:
            _unlink_quietly(mtmp)
            _unlink_quietly(final)
            raise

    def _reserve(self, need: int, key_text: str) -> bool:
        """Make room for `need` bytes in the write path (evicting LRU entries) and hold it."""
        with self._cap_lock:
            cap = self._capacity
            if cap is None:
                self._reserved += need
                return True
            if need > cap:
                return self._refuse(
                    f"an entry of {need} bytes is larger than the capacity of {cap} bytes of "
                    f"{self.layout.write_path}; raise capacity_bytes"
                )
            base = self.layout.write_path
            over = self._index.used_bytes(base) + self._reserved + need - cap
            if over > 0:
                self._evict(base, over)
            if self._index.used_bytes(base) + self._reserved + need > cap:
                return self._refuse(
                    f"no room for {key_text}: {self.layout.write_path} is full of pinned, "
                    "in-flight or undeletable entries"
                )
            self._reserved += need
            return True

    def _evict(self, base: str, nbytes: int) -> None:
        """Delete least-recently-used unpinned entries of `base` worth `nbytes` (cap lock held).
        An entry whose files cannot be deleted stays indexed, and the next one is taken instead."""
        freed = evicted = 0
        failed: dict[str, OSError] = {}
        want = nbytes
        while want > 0:
            with self._lock:
                victims = self._index.take_lru(base, want, skip=set(self._busy) | failed.keys())
                claims = []
                for entry in victims:
                    busy = self._busy[entry.stem] = _Busy("delete")
                    claims.append(busy)
            want = 0
            for entry, busy in zip(victims, claims):
                try:
                    size = entry.size or 0
                    _, error = _delete_files(entry.path)
                    if error is None:
                        freed += size
                        evicted += 1
                    else:
                        kept_free = self._keep(entry)
                        freed += kept_free
                        want += size - kept_free
                        failed[entry.stem] = error
                finally:
                    self._release(entry.stem, busy)
        if evicted or freed:
            self._bump(evictions=evicted, evicted_bytes=freed)
            logger.debug("evicted %d entries (%d bytes) from %s", evicted, freed, base)
        if failed:
            logger.warning(
                "cannot evict %d entries from %s (%s); they stay in the cache and count against "
                "its capacity", len(failed), base, next(iter(failed.values()))
            )

    def submit_put(
        self,
        key_text: str,
        chunk_hash: int | str,
        data: Any,
        header: EntryHeader,
        on_done: Callable[[bool], None] | None = None,
    ) -> Future[bool]:
        """`put` on the I/O pool; the future's result and `on_done(result)` come after both
        files are in place (or the put failed). The caller keeps `data` unchanged until then."""
        self._check_open()
        try:
            stem = self.layout.stem(key_text)
        except InvalidKeyError as exc:
            fut: Future[bool] = Future()
            fut.set_result(self._refuse(str(exc)))
            if on_done is not None:
                _call_quietly(on_done, False)
            return fut
        with self._lock:
            self._pending[stem] = self._pending.get(stem, 0) + 1
        if self._pool is None:
            fut = Future()
            fut.set_result(self._run_put(stem, key_text, chunk_hash, data, header, on_done))
            return fut
        fut = self._pool.submit(self._run_put, stem, key_text, chunk_hash, data, header, on_done)
        with self._lock:
            self._futures.add(fut)
        fut.add_done_callback(self._discard_future)
        return fut

    def _discard_future(self, fut: Future[bool]) -> None:
        with self._lock:
            self._futures.discard(fut)

    def _run_put(
        self,
        stem: str,
        key_text: str,
        chunk_hash: int | str,
        data: Any,
        header: EntryHeader,
        on_done: Callable[[bool], None] | None,
    ) -> bool:
        try:
            ok = self.put(key_text, chunk_hash, data, header)
        except Exception as exc:
            self._bump(put_errors=1)
            logger.error("storing %s failed: %s", key_text, exc)
            ok = False
        finally:
            with self._lock:
                left = self._pending.get(stem, 1) - 1
                if left:
                    self._pending[stem] = left
                else:
                    self._pending.pop(stem, None)
        if on_done is not None:
            _call_quietly(on_done, ok)
        return ok

    def is_pending(self, key_text: str) -> bool:
        """True while a submitted put of `key_text` has not finished."""
        try:
            stem = self.layout.stem(key_text)
        except InvalidKeyError:
            return False
        with self._lock:
            return stem in self._pending

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every submitted put has finished; False on timeout."""
        with self._lock:
            futures = list(self._futures)
        _, not_done = wait_futures(futures, timeout)
        return not not_done

    # -- reads --------------------------------------------------------------------------------
    def contains(self, key_text: str, chunk_hash: int | str, pin: bool = False) -> bool:
        """Index first, then every path on disk (no header read). `pin=True` pins a hit."""
        try:
            entry = self._find(key_text, chunk_hash, touch=False)
        except InvalidKeyError:
            return False
        if entry is None:
            return False
        if pin:
            with self._index.lock:
                entry.pins += 1
        return True

    def lookup(self, key_text: str, chunk_hash: int | str) -> EntryInfo | None:
        """Find an entry (index, then every path on disk) with its validated header.

        Counts a hit or a miss. A corrupt header drops the entry (one warning) and misses. An
        indexed entry whose file is gone (removed or evicted by another process, which may have
        stored the key again in another path) is forgotten and the key looked for once more.
        """
        try:
            entry = self._find(key_text, chunk_hash, touch=True)
            header = self._current_header(entry)
            if entry is not None and header is None:
                entry = self._find(key_text, chunk_hash, touch=True)
                header = self._current_header(entry)
        except InvalidKeyError:
            entry = header = None
        if entry is None or header is None:
            self._bump(misses=1)
            return None
        self._bump(hits=1)
        return EntryInfo(
            key_text=key_text,
            path=entry.path,
            base=entry.base,
            size=HEADER_SIZE + header.nbytes,
            header=header,
        )

    def _current_header(self, entry: Entry | None) -> EntryHeader | None:
        """The entry's validated header; None (entry forgotten or dropped) when its file is gone
        or bad. A cached header costs one stat."""
        if entry is None:
            return None
        if entry.header is None:
            return self._load_header(entry)
        if not os.path.exists(entry.path):
            self._forget(entry)
            return None
        return entry.header

    def read_into(self, info: EntryInfo, dest: Any) -> EntryHeader:
        """Read the entry's data into the start of `dest` (at least `nbytes`; torch tensor CPU
        or CUDA, numpy array, bytearray, anything `pygds.as_buffer` takes writable).

        The header is re-read from the open file and checked against the key, the file's length,
        the header `lookup` returned and the destination; the data read must be complete and,
        where the header has a checksum and `StoreOptions.checksum` covers the destination's
        memory, match it. Raises `CorruptEntryError` (entry dropped, one warning; `dest` then
        holds no usable data) for a file holding another key, a short, corrupt, damaged or
        unreadable file, `EntryGoneError` when the entry was removed or replaced meanwhile,
        `ValueError` when `dest` is too small (entry kept).
        """
        view = pygds.as_buffer(dest, writable=True)
        stem = self.layout.stem(info.key_text)
        entry = self._index.get(stem)
        if entry is None or entry.path != info.path:
            entry = Entry(stem=stem, base=info.base, path=info.path, size=None, has_metadata=True)
        try:
            f = _open_file(info.path, "r", self.options.engine, self.options.direct_io)
        except FileNotFoundError:
            self._forget(entry)
            raise EntryGoneError(f"{info.key_text} was removed from {info.path}") from None
        except _IO_ERRORS as exc:
            self._drop(entry, exc, None, "read_errors")
            raise CorruptEntryError(f"cannot open: {exc}", info.path) from None
        st = None
        with f:
            try:
                st = os.fstat(f.fd)
                header = unpack_header(os.pread(f.fd, HEADER_SIZE, 0), file_size=st.st_size)
                self._check_key(entry, header, info.key_text)
            except CorruptEntryError as exc:
                self._drop(entry, exc, st, "corrupt")
                raise CorruptEntryError(exc.reason, info.path) from None
            except OSError as exc:
                self._drop(entry, exc, st, "read_errors")
                raise CorruptEntryError(f"cannot read header: {exc}", info.path) from None
            if header != info.header:  # removed and put again: the old header would misread it
                self._forget(entry)
                raise EntryGoneError(
                    f"{info.key_text} in {info.path} was replaced since lookup (header changed: "
                    f"{header} != {info.header})"
                )
            if view.nbytes < header.nbytes:
                raise ValueError(
                    f"destination holds {view.nbytes} bytes but {info.path} has {header.nbytes}; "
                    "allocate it from the header lookup returned"
                )
            try:
                got = f.read(view, header.nbytes, file_offset=HEADER_SIZE) if header.nbytes else 0
            except _IO_ERRORS as exc:
                self._drop(entry, exc, st, "read_errors")
                raise CorruptEntryError(f"read failed: {exc}", info.path) from None
            if got != header.nbytes:
                exc = CorruptEntryError(f"short read: {got} of {header.nbytes} bytes", info.path)
                self._drop(entry, exc, st, "corrupt")
                raise exc
        if header.checksum is not None and self._sums(view):
            actual = self._checksum(view, got)  # exactly the bytes read
            if actual != header.checksum:
                exc = CorruptEntryError(
                    f"data checksum {actual} does not match the header's {header.checksum}", info.path
                )
                self._drop(entry, exc, st, "corrupt")
                raise exc
        self._index.get(stem, touch=True)
        self._bump(bytes_read=got)
        return header

    def get_into(self, key_text: str, chunk_hash: int | str, dest: Any) -> bool:
        """lookup + read_into; False on a miss or a dropped entry. An entry removed between
        lookup and read is looked up once more (another path may hold the key)."""
        for _ in range(2):
            info = self.lookup(key_text, chunk_hash)
            if info is None:
                return False
            try:
                self.read_into(info, dest)
            except EntryGoneError:
                continue
            except CorruptEntryError:
                return False
            return True
        return False

    def submit_get_into(self, key_text: str, chunk_hash: int | str, dest: Any) -> Future[bool]:
        """`get_into` on the I/O pool (in the caller when the pool is disabled)."""
        self._check_open()
        if self._pool is None:
            fut: Future[bool] = Future()
            try:
                fut.set_result(self.get_into(key_text, chunk_hash, dest))
            except Exception as exc:
                fut.set_exception(exc)
            return fut
        return self._pool.submit(self.get_into, key_text, chunk_hash, dest)

    def touch(self, key_text: str, chunk_hash: int | str) -> bool:
        """Mark the entry most recently used; False if it is not known."""
        try:
            return self._find(key_text, chunk_hash, touch=True) is not None
        except InvalidKeyError:
            return False

    # -- management ---------------------------------------------------------------------------
    def pin(self, key_text: str, chunk_hash: int | str) -> bool:
        """Pin (counted) so eviction never takes it; False if absent."""
        return self.contains(key_text, chunk_hash, pin=True)

    def unpin(self, key_text: str, chunk_hash: int | str) -> bool:
        """Undo one `pin`; False if absent or not pinned."""
        try:
            entry = self._index.get(self.layout.stem(key_text))
        except InvalidKeyError:
            return False
        if entry is None:
            return False
        with self._index.lock:
            if entry.pins <= 0:
                return False
            entry.pins -= 1
            return True

    def is_pinned(self, key_text: str, chunk_hash: int | str) -> bool:
        """True when the indexed entry has at least one pin."""
        try:
            entry = self._index.get(self.layout.stem(key_text))
        except InvalidKeyError:
            return False
        return entry is not None and entry.pins > 0

    def remove(self, key_text: str, chunk_hash: int | str, force: bool = True) -> bool:
        """Delete the entry's files (in every path) and its index entry.

        A pinned entry is removed only with `force`. Waits for a put of the same key in
        progress. Returns True when the entry was there and is gone; False when nothing was
        there, it is pinned and not forced, or a file could not be deleted (one warning naming
        the cause; the entry stays indexed, or is found again on disk).
        """
        try:
            stem = self.layout.stem(key_text)
            candidates = [p for _, p in self.layout.candidate_paths(key_text, chunk_hash)]
        except InvalidKeyError:
            return False
        busy = self._claim(stem, "delete")
        assert busy is not None
        try:
            entry = self._index.get(stem)
            if entry is not None and entry.pins > 0 and not force:
                return False
            if entry is not None and entry.path not in candidates:
                candidates.append(entry.path)
            found = entry is not None
            failed: dict[str, OSError] = {}
            for path in candidates:
                removed, error = _delete_files(path)
                found = removed or found
                if error is not None:
                    failed[path] = error
            if entry is not None and entry.path in failed:
                self._keep(entry)
            else:
                self._index.pop(stem)
            if not failed:
                self._bad.pop(stem, None)
        finally:
            self._release(stem, busy)
        if failed:
            logger.warning(
                "cannot remove KV cache entry %s: %s; it stays in the cache", key_text,
                "; ".join(map(str, failed.values())),
            )
            return False
        if found:
            self._bump(removed=1)
        return found

    def clear(self) -> int:
        """Remove every indexed, unpinned entry; returns how many were deleted (those whose
        files cannot be deleted stay indexed, named in one warning)."""
        count = 0
        failed: list[OSError] = []
        for entry in self._index.snapshot():
            if entry.pins > 0:
                continue
            busy = self._claim(entry.stem, "delete")
            assert busy is not None
            try:
                if self._index.get(entry.stem) is not entry or entry.pins > 0:
                    continue
                _, error = _delete_files(entry.path)
                if error is not None:
                    self._keep(entry)
                    failed.append(error)
                    continue
                self._index.pop(entry.stem)
                count += 1
            finally:
                self._release(entry.stem, busy)
        self._bump(removed=count)
        if failed:
            logger.warning(
                "cannot remove %d KV cache entries (%s); they stay in the cache", len(failed), failed[0]
            )
        return count

    def keys(self) -> list[str]:
        """Key texts of all indexed entries (a bounded-name entry's key comes from its header)."""
        out = []
        for entry in self._index.snapshot():
            text = entry.key_text or key_from_stem(entry.stem)
            if text is None:
                header = entry.header or self._load_header(entry)
                stored = header.extra.get(BOUNDED_KEY_FIELD) if header is not None else None
                if not isinstance(stored, str):
                    continue
                text = entry.key_text = stored
            out.append(text)
        return out

    def stats(self) -> StoreStats:
        """A snapshot of the counters."""
        with self._stats_lock:
            counts = dict(self._counts)
        with self._lock:
            pending = sum(self._pending.values())
        scan = self._scanner.stats
        return StoreStats(
            **counts,
            entries=len(self._index),
            used_bytes=self._index.used_bytes(self.layout.write_path),
            capacity_bytes=self._capacity,
            pending_puts=pending,
            scan_done=scan.done,
            scan_entries=scan.entries,
            scan_seconds=scan.seconds,
            scan_stale_tmp_removed=scan.stale_tmp_removed,
            scan_errors=scan.errors,
        )

    @property
    def stats_file(self) -> str:
        """Where this store publishes its counters."""
        return os.path.join(self.layout.write_path, STATS_DIR, f"{socket.gethostname()}-{os.getpid()}.json")

    def publish_stats(self) -> None:
        """Write the counters (with host, pid and time) atomically to `stats_file`."""
        record = {"host": socket.gethostname(), "pid": os.getpid(), "updated": time.time(),
                  "write_path": self.layout.write_path, "paths": list(self.layout.paths),
                  **self.stats().as_dict()}
        final = self.stats_file
        os.makedirs(os.path.dirname(final), exist_ok=True)
        tmp = tmp_path(final)
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(record, f)
        os.replace(tmp, final)

    def _publish_loop(self) -> None:
        while not self._stats_stop.wait(self.options.stats_interval_s):
            try:
                self.publish_stats()
            except OSError as exc:
                logger.debug("could not publish KV store counters: %s", exc)

    def wait_for_scan(self, timeout: float | None = None) -> bool:
        """Wait for the start-up scan; True when it has finished."""
        return self._scanner.wait(timeout)

    def close(self) -> None:
        """Drain submitted puts (data and metadata on disk), stop the pool and the scan.

        Idempotent; later puts raise RuntimeError.
        """
        if self._closed:
            return
        self.flush()
        self._closed = True
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        self._scanner.stop()
        self._stats_stop.set()
        if self._publisher is not None:
            self._publisher.join()
            try:
                self.publish_stats()
            except OSError as exc:
                logger.warning("could not publish the KV store's final counters to %s: %s", self.stats_file, exc)

    def __enter__(self) -> KVStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _stat_by_open(path: str) -> os.stat_result:
    """`fstat` of `path` opened read-only. Unlike `os.stat`, an open is not answered from a
    network or FUSE file system's attribute cache, which can report a file that another machine
    removed as present for up to a second. O_NONBLOCK: a FIFO at the name must not block."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        return os.fstat(fd)
    finally:
        os.close(fd)


def _named(header: EntryHeader, key_text: str, checksum: str | None) -> EntryHeader:
    """`header` naming `key_text`, with `checksum` or none."""
    extra = {k: v for k, v in header.extra.items() if k not in (KEY_FIELD, CHECKSUM_FIELD)}
    extra[KEY_FIELD] = key_text
    if checksum is not None:
        extra[CHECKSUM_FIELD] = checksum
    return replace(header, extra=extra)


def _host_memory(ptr: int, nbytes: int) -> Any:
    """`nbytes` of host memory at `ptr` as a buffer (no copy)."""
    return (ctypes.c_ubyte * nbytes).from_address(ptr) if nbytes else b""


def _staged(view: Any, nbytes: int) -> Iterator[memoryview]:
    """The first `nbytes` of `view` (any memory kind) in consecutive pieces copied to the host;
    each piece is valid until the next is asked for."""
    staging = bytearray(min(nbytes, _STAGING_BYTES))
    target = pygds.as_buffer(staging, writable=True)
    for offset in range(0, nbytes, len(staging)):
        n = min(len(staging), nbytes - offset)
        pygds.memory.copy(target, view.slice(offset, n), n)
        yield memoryview(staging)[:n]


def _delete_files(data_path: str) -> tuple[bool, OSError | None]:
    """Unlink an entry's `.metadata`, then its data file: (whether a file was removed, the error
    that stopped it). A `.metadata` that cannot be unlinked leaves the data file alone."""
    removed = False
    for path in (metadata_path(data_path), data_path):
        try:
            os.unlink(path)
            removed = True
        except (FileNotFoundError, NotADirectoryError):
            pass
        except OSError as exc:
            return removed, exc
    return removed, None


def _unlink_quietly(path: str) -> None:
    """Unlink a temporary or half-published file; errors other than a missing file are logged."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        logger.debug("cannot remove %s: %s", path, exc)


def _call_quietly(fn: Callable[[bool], None], ok: bool) -> None:
    try:
        fn(ok)
    except Exception:
        logger.exception("a put completion callback raised")
