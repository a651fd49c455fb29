"""`KVStore`: the multi-path KV store beneath the LMCache adapters (no LMCache import).

An entry is one data file (4 KiB header + raw bytes, `format.py`) plus a `.metadata` companion
holding a copy of the header, named as LMCache's GdsBackend names them (`layout.py`); a store
with `StoreOptions.metadata_file` off writes the data file alone (its header is the record). Every
entry written here names its full key in its header and, per `StoreOptions.checksum`, carries a
checksum of its data. Paths are shared with other writers (other stores, `pygds cache evict`, a
user's `mv`), so nothing on disk is taken on trust:

- Puts publish data, then `.metadata`, each through a temporary name (`publish.py`); `put`
  returns (and `submit_put` calls `on_done`) only when the entry's files are in place, and a
  failure leaves nothing visible. A put never trusts the index: an indexed entry whose file another process
  removed is written again.
- Reads never trust the index (`reader.py`): a file holding another key, a short, corrupt or
  damaged file is dropped with one warning and reported as `CorruptEntryError`; an entry
  removed or replaced since `lookup` is `EntryGoneError` (look it up again).
- `contains` may answer from the index: it is a hint LMCache follows with a read.
- Removal and eviction unlink the `.metadata` first, then the data file, and report only what
  was really deleted: a file that cannot be unlinked keeps its entry indexed, is not counted as
  freed, and is named in one warning. A reader holding the file open keeps reading the complete
  old file; one opening it afterwards gets a miss, never half an entry.

The parts, one job each: `Index` (entries, LRU, pins; `index.py`) filled by the `Scanner`
(`scan.py`), `Entries` (the index kept true to the disk; `entries.py`), `Claims` (stems in
flight, submitted puts; `claims.py`), `Capacity` (reservations and eviction; `capacity.py`),
`Reader` (`reader.py`), `Counters` and `StatsPublisher` (`counters.py`).

Lock discipline: each part has one lock, held only inside its own methods, and a thread holding
one may take only those after it in this order: capacity -> claims -> index -> counters (a
leaf). Eviction runs under the capacity lock, claims its victims under the claims lock while the
index hands them over. No lock is held during file I/O except the capacity lock while evicting,
which only puts that must wait for room wait on. The hot lookups (`contains` of an indexed
entry) take no lock at all: a dict membership test is atomic under the GIL.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from typing import Any, Callable, Iterable

import pygds

from .capacity import Capacity, capacity_of
from .claims import Claims
from .counters import STATS_DIR, Counters, StatsPublisher, StoreStats, publish_record, stats_file
from .entries import Entries
from .format import (
    CHECKSUM_FIELD,
    HEADER_SIZE,
    KEY_FIELD,
    CorruptEntryError,
    EntryHeader,
    checksum_of,
    header_digest,
    pack_header,
    unpack_header,
)
from .index import Entry, Index
from .layout import InvalidKeyError, Layout, is_bounded_stem, key_from_stem
from .options import StoreOptions
from .publish import delete_entry_files, publish_entry
from .reader import IO_ERRORS, EntryGoneError, EntryInfo, Reader
from .summed_io import spare_cores, sums
from .scan import Scanner

logger = logging.getLogger(__name__)

BOUNDED_KEY_FIELD = KEY_FIELD
"""`__metadata__` field holding an entry's full key text (every entry written here has it; for an
entry under a bounded name it is the only record of the key)."""

__all__ = [
    "BOUNDED_KEY_FIELD",
    "STATS_DIR",
    "CorruptEntryError",
    "EntryGoneError",
    "EntryHeader",
    "EntryInfo",
    "KVStore",
    "StoreOptions",
    "StoreStats",
]


class KVStore:
    """Thread-safe KV store over one or more cache directories."""

    def __init__(self, options: StoreOptions) -> None:
        options.validate()
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
        self._closing = False  # set first by close(): submits are refused, accepted work still runs
        self._closed = False
        self._index = Index()
        self._claims = Claims()
        self._counters = Counters()
        self._entries = Entries(self._index, self.layout, self._claims, self._counters)
        spread = options.spread_summed_io
        self._spread = spare_cores(options.io_threads) if spread is None else spread
        self._reader = Reader(self._entries, self._counters, self._open, options.checksum, options.metadata_file,
                              self._spread)
        bound = capacity_of(options.capacity_bytes, options.capacity_fraction, self.layout.write_path)
        self._capacity = Capacity(
            bound, self.layout.write_path, self._index, self._claims, self._counters, self._entries.keep
        )
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
            stat_bases=[self.layout.write_path] if bound is not None else [],
            snapshots=options.scan and options.index_snapshot,
        )
        if options.scan:
            self._scanner.start()
        else:
            self._scanner.skip()
        self._publisher = (
            StatsPublisher(self.stats_file, self._stats_record, options.stats_interval_s)
            if options.stats_interval_s > 0
            else None
        )
        logger.info(
            "KV store: %d path(s), writing to %s, engine %s, capacity %s, checksum %s",
            len(self.layout.paths),
            self.layout.write_path,
            options.engine,
            "unbounded" if bound is None else f"{bound} bytes",
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
        return self._capacity.bound

    def _open(self, path: str, mode: str, nbytes: int) -> pygds.File:
        """A `pygds.File` for an entry of `nbytes` data bytes (the one place the store opens data
        files): O_DIRECT per `direct_io` and `direct_io_min_bytes`."""
        direct = self.options.direct_io and nbytes >= self.options.direct_io_min_bytes
        return pygds.File(path, mode, engine=self.options.engine, direct=direct)

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the KV store is closed; create a new KVStore")

    def _check_accepting(self) -> None:
        """Submits are refused from the moment `close()` starts, so that everything it accepted
        before is what it drains."""
        if self._closing:
            raise RuntimeError("the KV store is closing; submit nothing after close()")

    def _refuse(self, why: str) -> bool:
        self._counters.refused(why)
        return False

    # -- writes -------------------------------------------------------------------------------
    def put(self, key_text: str, chunk_hash: int | str, data: Any, header: EntryHeader) -> bool:
        """Store the first `header.nbytes` bytes of `data` (torch tensor CPU/CUDA, bytes-like,
        numpy array, anything `pygds.as_buffer` takes) under `key_text`.

        The header written names `key_text` and, per `StoreOptions.checksum`, the data's checksum
        (whatever `header.extra` said about either is replaced).

        Returns True once the entry's files are in place; False when the key is
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
        summed = sums(self.options.checksum, view.kind)
        # A placeholder checksum: every checksum text has the length of the empty data's, so
        # whether the header fits is known here; the data is hashed as it is written.
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
        # A key already stored takes no claim: a claim hides the entry from lookups meanwhile
        if self._entries.on_disk(key_text, chunk_hash, stem):
            self._counters.bump(put_skipped=1)
            return False
        busy = self._claims.claim(stem, "put")
        if busy is None:
            self._counters.bump(put_skipped=1)
            return False
        try:
            if self._entries.on_disk(key_text, chunk_hash, stem):
                self._counters.bump(put_skipped=1)
                return False
            return self._publish(stem, key_text, final, header, view)
        finally:
            self._claims.release(stem, busy)

    def _publish(self, stem: str, key_text: str, final: str, header: EntryHeader, view: Any) -> bool:
        """Reserve room, publish the files, index the entry (the stem claimed for "put"); a
        header with a checksum gets the data's."""
        metadata = self.options.metadata_file
        need = header.nbytes + (2 if metadata else 1) * HEADER_SIZE
        if not self._capacity.reserve(need, key_text):
            return False
        entry = None
        try:
            header, header_bytes = publish_entry(final, header, view, self._open, fsync=self.options.fsync,
                                                 metadata=metadata, spread=self._spread)
            entry = Entry(stem=stem, base=self.layout.write_path, path=final, size=need,
                          has_metadata=metadata, header=header, key_text=key_text,
                          digest=header_digest(header_bytes))
        except IO_ERRORS as exc:
            self._counters.bump(put_errors=1)
            logger.error("storing %s in %s failed: %s", key_text, final, exc)
            return False
        finally:
            self._capacity.settle(need, entry)
        self._entries.cleared(stem)
        self._counters.bump(puts=1, bytes_written=header.nbytes)
        return True

    def submit_put(
        self,
        key_text: str,
        chunk_hash: int | str,
        data: Any,
        header: EntryHeader,
        on_done: Callable[[bool], None] | None = None,
    ) -> Future[bool]:
        """`put` on the I/O pool; the future's result and `on_done(result)` come after the
        entry's files are in place (or the put failed). The caller keeps `data` unchanged until then.
        RuntimeError once `close()` has started."""
        self._check_accepting()
        try:
            stem = self.layout.stem(key_text)
        except InvalidKeyError as exc:
            fut: Future[bool] = Future()
            fut.set_result(self._refuse(str(exc)))
            if on_done is not None:
                _call_quietly(on_done, False)
            return fut
        self._claims.add_pending(stem)
        if self._pool is None:
            fut = Future()
            fut.set_result(self._run_put(stem, key_text, chunk_hash, data, header, on_done))
            return fut
        try:
            fut = self._pool.submit(self._run_put, stem, key_text, chunk_hash, data, header, on_done)
        except RuntimeError:  # close() shut the pool down after this call's check
            self._claims.done_pending(stem)
            raise RuntimeError("the KV store is closing; submit nothing after close()") from None
        self._claims.track(fut)
        return fut

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
            self._counters.bump(put_errors=1)
            logger.error("storing %s failed: %s", key_text, exc)
            ok = False
        finally:
            self._claims.done_pending(stem)
        if on_done is not None:
            _call_quietly(on_done, ok)
        return ok

    def is_pending(self, key_text: str) -> bool:
        """True while a submitted put of `key_text` has not finished."""
        try:
            return self._claims.is_pending(self.layout.stem(key_text))
        except InvalidKeyError:
            return False

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every submitted put has finished; False on timeout."""
        return self._claims.wait(timeout)

    # -- reads --------------------------------------------------------------------------------
    def contains(self, key_text: str, chunk_hash: int | str, pin: bool = False) -> bool:
        """Index first, then every path on disk (no header read). `pin=True` pins a hit.

        An indexed entry answers from the index alone (no lock, no `Entry` made): LMCache asks
        this for every chunk of every request, and reads check everything anyway."""
        try:
            stem = self.layout.stem(key_text)
            if self._claims.is_busy(stem):
                return False
            if not pin and self._index.has(stem):
                return True
            entry = self._entries.find(key_text, chunk_hash, touch=False)
        except InvalidKeyError:
            return False
        if entry is None:
            return False
        return self._index.pin(entry) if pin else True  # a pin fails on an entry evicted meanwhile

    def batched_contains(self, keys: Iterable[tuple[str, int | str]], pin: bool = False) -> int:
        """How many of `keys` ((key text, chunk hash) pairs), from the first, `contains` finds
        before the first miss: LMCache's prefix lookup (`keys` is read no further)."""
        stem_of, busy, has = self.layout.stem, self._claims.is_busy, self._index.has
        found = 0
        for key_text, chunk_hash in keys:
            try:
                stem = stem_of(key_text)
            except InvalidKeyError:
                return found
            if pin or busy(stem) or not has(stem):
                if not self.contains(key_text, chunk_hash, pin):
                    return found
            found += 1
        return found

    def lookup(self, key_text: str, chunk_hash: int | str, *, check_file: bool = True) -> EntryInfo | None:
        """Find an entry (index, then every path on disk) with its validated header.

        Counts a hit or a miss. A corrupt header drops the entry (one warning) and misses. An
        indexed entry whose file is gone (removed or evicted by another process, which may have
        stored the key again in another path) is forgotten and the key looked for once more.
        `check_file=False` skips the `stat` that tells so for an entry whose header is known:
        for a `read_into` that follows at once, which raises `EntryGoneError` then.
        """
        find, current_header = self._entries.find, self._reader.current_header
        try:
            entry = find(key_text, chunk_hash, touch=True)
            header = current_header(entry, check_file)
            if entry is not None and header is None:
                entry = find(key_text, chunk_hash, touch=True)
                header = current_header(entry, check_file)
        except InvalidKeyError:
            entry = header = None
        if entry is None or header is None:
            self._counters.bump(misses=1)
            return None
        self._counters.bump(hits=1)
        return EntryInfo(key_text=key_text, path=entry.path, base=entry.base,
                         size=HEADER_SIZE + header.nbytes, header=header)

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
        header = self._reader.read_into(info, dest)
        self._counters.bump(bytes_read=header.nbytes)
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
        """`get_into` on the I/O pool (in the caller when the pool is disabled); RuntimeError once
        `close()` has started."""
        self._check_accepting()
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
            return self._entries.find(key_text, chunk_hash, touch=True) is not None
        except InvalidKeyError:
            return False

    # -- management ---------------------------------------------------------------------------
    def pin(self, key_text: str, chunk_hash: int | str) -> bool:
        """Pin (counted) so eviction never takes it; False if absent."""
        return self.contains(key_text, chunk_hash, pin=True)

    def unpin(self, key_text: str, chunk_hash: int | str) -> bool:
        """Undo one `pin`; False if absent or not pinned."""
        entry = self._indexed(key_text)
        return entry is not None and self._index.unpin(entry)

    def is_pinned(self, key_text: str, chunk_hash: int | str) -> bool:
        """True when the indexed entry has at least one pin."""
        entry = self._indexed(key_text)
        return entry is not None and entry.pins > 0

    def _indexed(self, key_text: str) -> Entry | None:
        try:
            return self._index.get(self.layout.stem(key_text))
        except InvalidKeyError:
            return None

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
        if not force and self.is_pinned(key_text, chunk_hash):  # no claim: it would hide the entry
            return False
        busy = self._claims.claim(stem, "delete")
        assert busy is not None
        try:
            if force:
                entry = self._index.pop(stem)
            else:
                unpinned, entry = self._index.pop_unpinned(stem)  # one step against a `pin`
                if not unpinned:
                    return False
            if entry is not None and entry.path not in candidates:
                candidates.append(entry.path)
            found = entry is not None
            failed: dict[str, OSError] = {}
            for path in candidates:
                removed, error = delete_entry_files(path)
                found = removed or found
                if error is not None:
                    failed[path] = error
            if entry is not None and entry.path in failed:
                self._entries.keep(entry)
            else:
                self._index.pop(stem)
            if not failed:
                self._entries.cleared(stem)
        finally:
            self._claims.release(stem, busy)
        if failed:
            logger.warning(
                "cannot remove KV cache entry %s: %s; it stays in the cache", key_text,
                "; ".join(map(str, failed.values())),
            )
            return False
        if found:
            self._counters.bump(removed=1)
        return found

    def clear(self) -> int:
        """Remove every indexed, unpinned entry; returns how many were deleted (those whose
        files cannot be deleted stay indexed, named in one warning)."""
        count = 0
        failed: list[OSError] = []
        for entry in self._index.snapshot():
            if entry.pins > 0:
                continue
            busy = self._claims.claim(entry.stem, "delete")
            assert busy is not None
            try:
                if self._index.get(entry.stem) is not entry or entry.pins > 0:
                    continue
                _, error = delete_entry_files(entry.path)
                if error is not None:
                    self._entries.keep(entry)
                    failed.append(error)
                    continue
                self._index.pop(entry.stem)
                count += 1
            finally:
                self._claims.release(entry.stem, busy)
        self._counters.bump(removed=count)
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
                header = entry.header or self._reader.load_header(entry)
                stored = header.extra.get(BOUNDED_KEY_FIELD) if header is not None else None
                if not isinstance(stored, str):
                    continue
                text = entry.key_text = stored
            out.append(text)
        return out

    # -- counters and lifetime ----------------------------------------------------------------
    def stats(self) -> StoreStats:
        """A snapshot of the counters."""
        scan = self._scanner.stats
        return StoreStats(
            **self._counters.snapshot(),
            entries=len(self._index),
            used_bytes=self._index.used_bytes(self.layout.write_path),
            capacity_bytes=self._capacity.bound,
            pending_puts=self._claims.pending_count(),
            scan_done=scan.done,
            scan_entries=scan.entries,
            scan_snapshot_entries=scan.snapshot_entries,
            scan_snapshot_dropped=scan.snapshot_dropped,
            scan_seconds=scan.seconds,
            scan_stale_tmp_removed=scan.stale_tmp_removed,
            scan_errors=scan.errors,
        )

    @property
    def stats_file(self) -> str:
        """Where this store publishes its counters."""
        return stats_file(self.layout.write_path)

    def _stats_record(self) -> dict[str, Any]:
        return {"write_path": self.layout.write_path, "paths": list(self.layout.paths), **self.stats().as_dict()}

    def publish_stats(self) -> None:
        """Write the counters (with host, pid and time) atomically to `stats_file`."""
        publish_record(self.stats_file, self._stats_record())

    def wait_for_scan(self, timeout: float | None = None) -> bool:
        """Wait for the start-up scan; True when it has finished."""
        return self._scanner.wait(timeout)

    def close(self) -> None:
        """Refuse new submits, then finish every put and read already submitted (their files on
        disk), stop the pool and the scan.

        Idempotent; later calls raise RuntimeError.
        """
        if self._closed:
            return
        self._closing = True
        if self._pool is not None:
            self._pool.shutdown(wait=True)  # runs every accepted task, then stops
        self.flush()  # submitted without a pool: done already; with one: nothing left
        self._closed = True
        self._scanner.close()  # stops the scan, writes the index snapshots
        if self._publisher is not None:
            self._publisher.stop()

    def __enter__(self) -> KVStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _named(header: EntryHeader, key_text: str, checksum: str | None) -> EntryHeader:
    """`header` naming `key_text`, with `checksum` or none."""
    extra = {k: v for k, v in header.extra.items() if k not in (KEY_FIELD, CHECKSUM_FIELD)}
    extra[KEY_FIELD] = key_text
    if checksum is not None:
        extra[CHECKSUM_FIELD] = checksum
    return replace(header, extra=extra)


def _call_quietly(fn: Callable[[bool], None], ok: bool) -> None:
    try:
        fn(ok)
    except Exception:
        logger.exception("a put completion callback raised")
