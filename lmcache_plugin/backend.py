"""The LMCache adapter: LMCache's storage-plugin interface over `KVStore` (the only module that
imports `lmcache`).

LMCache loads it as a storage plugin:

    storage_plugins: [gds]
    extra_config:
      storage_plugin.gds.module_path: lmcache_plugin.backend
      storage_plugin.gds.class_name: GdsPluginBackend
      storage_plugin.gds.gds_path: /mnt/nvme0/cache,/mnt/nvme1/cache

and constructs `GdsPluginBackend(config=, dst_device=, metadata=, local_cpu_backend=, loop=)`.
The adapter is thin: a `CacheEngineKey` becomes its key text (`to_string()`) and chunk hash, a
`MemoryObj` becomes its bytes plus an `EntryHeader` from its metadata. Memory objects come from
one buffer of `buffer_size_mib` (GPU memory registered once with cuFile for a CUDA destination,
host memory for a CPU one), so reads and writes are zero-copy into it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import threading
import time
import weakref
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, List, Optional, Sequence, Union

import torch
from lmcache import torch_dev
from lmcache.utils import CacheEngineKey
from lmcache.v1.memory_allocators.tensor_memory_allocator import TensorMemoryAllocator
from lmcache.v1.memory_management import MemoryAllocatorInterface, MemoryFormat, MemoryObj
from lmcache.v1.storage_backend.abstract_backend import AllocatorBackendInterface, StoragePluginInterface

import pygds
from pygds.engines import registry as engines

from .config import ConfigError, EnginePlan, PluginSettings, load_settings, plan_engine
from .format import CorruptEntryError, EntryHeader, torch_dtype
from .layout import InvalidKeyError
from .store import EntryInfo, KVStore, StoreOptions

log = logging.getLogger(__name__)

_ALIGN = 4096  # cuFile and O_DIRECT want page-aligned buffers
_STATS_INTERVAL_S = 10.0  # how often counters are published for `pygds cache stats`


class _LockedTensorAllocator(TensorMemoryAllocator):
    """LMCache's allocator over our buffer, with frees under the same lock as allocations.

    Memory objects free themselves through their parent allocator (`ref_count_down`) from any
    thread; LMCache's `GPUMemoryAllocator` locks only around allocation, so frees could race.
    """

    def __init__(self, tensor: torch.Tensor) -> None:
        super().__init__(tensor, align_bytes=_ALIGN)
        self.align_bytes = _ALIGN
        self._lock = threading.RLock()

    def allocate(self, *args: Any, **kwargs: Any):  # type: ignore[override]
        with self._lock:
            return super().allocate(*args, **kwargs)

    def batched_allocate(self, *args: Any, **kwargs: Any):  # type: ignore[override]
        with self._lock:
            return super().batched_allocate(*args, **kwargs)

    def free(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        with self._lock:
            super().free(*args, **kwargs)

    def batched_free(self, *args: Any, **kwargs: Any) -> None:  # type: ignore[override]
        with self._lock:
            super().batched_free(*args, **kwargs)

    def memcheck(self) -> bool:
        with self._lock:
            return super().memcheck()

    def __str__(self) -> str:
        return "GdsPluginAllocator"


def device_index(dst_device: str) -> int:
    """The worker index LMCache's `PathSharder` derives from a destination, which picks the write
    path `paths[index % n]`: N for any "type:N" ("cuda:3", "xpu:1", "cpu:1"), else the current
    device of LMCache's accelerator for a bare accelerator name, else 0 ("cpu")."""
    text = str(dst_device).strip()
    kind, _, index = text.partition(":")
    if index.isdigit():
        return int(index)
    if kind != "cpu" and torch_dev.is_available():
        return int(torch_dev.current_device())
    return 0


def is_gpu_destination(dst_device: str) -> bool:
    """True for a CUDA or HIP destination ("cuda", "cuda:3", "hip:0"): memory objects then live
    in device memory, registered with cuFile or hipFile."""
    return re.fullmatch(r"\s*(cuda|hip)(?::\d+)?\s*", str(dst_device)) is not None


def header_for(memory_obj: MemoryObj) -> EntryHeader:
    """The entry header describing a memory object: one group in 0.5.6's layout, several in
    the multi-group layout of LMCache's main branch."""
    meta = memory_obj.metadata
    shapes = list(meta.shapes) if meta.shapes else [meta.shape]
    dtypes = list(meta.dtypes) if meta.dtypes else [meta.dtype]
    fmt = int(meta.fmt.value)
    if len(shapes) == 1:
        return EntryHeader.single(tuple(shapes[0]), dtypes[0], fmt)
    return EntryHeader.groups([tuple(s) for s in shapes], dtypes, fmt)


def _bytes_of(memory_obj: MemoryObj, nbytes: int) -> torch.Tensor:
    """The first `nbytes` bytes of a memory object as a flat uint8 tensor (no copy)."""
    raw = memory_obj.raw_tensor
    if raw is None:
        raise ValueError("the memory object is no longer valid")
    flat = raw.reshape(-1)
    if flat.dtype != torch.uint8:
        flat = flat.view(torch.uint8)
    return flat[:nbytes]


def _checksum_mode(setting: str, kind: str) -> str:
    """The store's checksum mode for chunks in memory of `kind`. "auto" is decided here, once, by
    the memory this adapter allocates from: the store would judge each chunk by its tensor, and a
    CPU tensor over GPU memory (an embedder's `buffer`) would look like host memory to it. Host
    memory keeps the store's "auto" (every chunk hashed on write and on every read)."""
    if setting != "auto":
        return setting
    return "auto" if kind in ("host", "pinned") else "off"


def _fs_types(paths: Sequence[str]) -> dict[str, str]:
    """The kernel's file-system type of each path ("unknown" where no mount holds it)."""
    from pygds import fsinfo

    types = {}
    for path in paths:
        try:
            types[path] = fsinfo.fs_type(path)
        except OSError:
            types[path] = "unknown"
    return types


class GdsPluginBackend(StoragePluginInterface, AllocatorBackendInterface):
    """A multi-path GPU-Direct-Storage KV-cache backend for LMCache (see the module docstring):
    a `StoragePluginInterface`, the interface LMCache documents for plugins, that also allocates
    (`AllocatorBackendInterface`), as LMCache's GdsBackend does.

    `buffer` (not passed by LMCache): memory to allocate from instead of `buffer_size_mib` of
    our own, as a flat uint8 torch tensor; its kind (host or device) is asked of CUDA. Embedders
    use it to share memory; the cuFile tests use stand-in device memory that a CPU build of torch
    cannot allocate.
    """

    def __init__(
        self,
        config: Any,
        dst_device: str = "cuda",
        metadata: Any = None,
        local_cpu_backend: Any = None,
        loop: Optional[asyncio.AbstractEventLoop] = None,
        *,
        buffer: Optional[torch.Tensor] = None,
    ) -> None:
        super().__init__(dst_device=dst_device, config=config, metadata=metadata,
                         local_cpu_backend=local_cpu_backend, loop=loop)
        self._closed = False
        self._registered: Any = None
        self._buffer: Optional[torch.Tensor] = None
        self._cpu_backend: Any = None
        self._store: Optional[KVStore] = None
        self._read_pool: Optional[ThreadPoolExecutor] = None
        self._request_keys: list[CacheEngineKey] = []
        self._request_lock = threading.Lock()
        self._alloc_failures = 0
        self._unreadable: set[str] = set()
        try:
            self._start(buffer)
        except ConfigError as exc:
            # LMCache's launcher reduces any constructor error to one "Failed to create backend"
            # line; say it fully here, once.
            log.error("gds plugin not started: %s", exc)
            self._teardown()
            raise
        except Exception as exc:
            log.error("gds plugin not started: %s", exc, exc_info=True)
            self._teardown()
            raise

    # -- start-up -----------------------------------------------------------------------------
    def _start(self, buffer: Optional[torch.Tensor]) -> None:
        self.settings: PluginSettings = load_settings(self.config, environ=os.environ)
        s = self.settings
        self.device_id = s.device_id if s.device_id is not None else device_index(self.dst_device)
        want_cuda = is_gpu_destination(self.dst_device)
        if buffer is None and want_cuda and not torch.cuda.is_available():
            log.warning("dst_device=%s but torch has no CUDA here: the gds plugin uses "
                        "host memory and POSIX I/O (path affinity still follows device %d)",
                        self.dst_device, self.device_id)
        self._check_hipfile(want_cuda)
        if buffer is None and not (want_cuda and torch.cuda.is_available()) and self.local_cpu_backend is not None:
            # Host memory next to LMCache's LocalCPUBackend: allocate from it, as LMCache's
            # LocalDiskBackend does; no buffer of our own, and no copy of every chunk LMCache
            # hands to a put (StorageManager copies into any other allocator first).
            self._cpu_backend = self.local_cpu_backend
            self._close_before_memory_is_freed(self._cpu_backend.get_memory_allocator())
            kind = "host"
        else:
            self._buffer = buffer if buffer is not None else self._allocate_buffer(want_cuda)
            kind = self._memory_kind(self._buffer)
        self.plan: EnginePlan = plan_engine(s, _fs_types(s.paths), device_memory=kind in ("device", "managed"))
        for message in self.plan.warnings:
            log.warning("%s", message)
        engine = self._prepare_engine(self.plan.engine)
        self.engine = engine
        self.memory_allocator = self.initialize_allocator(self.config, self.metadata)
        if s.io_threads > 0:
            # one whole read per chunk: the chunks are what runs in parallel
            self._read_pool = ThreadPoolExecutor(max_workers=s.io_threads, thread_name_prefix="gds-plugin-read",
                                                 initializer=pygds.pool.mark_io_thread)
        self._store = KVStore(StoreOptions(
            paths=s.paths, device_id=self.device_id, engine=engine, io_threads=s.io_threads,
            direct_io=s.direct_io, data_suffix=self.plan.data_suffix, tmp_max_age_s=s.tmp_max_age_s,
            capacity_bytes=s.capacity_bytes, capacity_fraction=s.capacity_fraction,
            stats_interval_s=_STATS_INTERVAL_S, checksum=_checksum_mode(s.checksum, kind)))
        memory = "LMCache's LocalCPUBackend" if self._buffer is None else f"{self._buffer.numel() >> 20} MiB {kind} buffer"
        if self._registered:
            memory += f" registered with {engine}"
        log.info("gds plugin %r started: device %s (affinity %d) writes to %s of %d path(s); engine %s "
                 "(%s); memory: %s", s.plugin_name, self.dst_device, self.device_id,
                 self._store.write_path, len(s.paths), engine, self.plan.reason, memory)

    def _close_before_memory_is_freed(self, allocator: MemoryAllocatorInterface) -> None:
        """Make closing LMCache's CPU allocator close this plugin first.

        Queued writes and running reads use memory objects of that allocator, and LMCache's
        `StorageManager.close()` closes the LocalCPUBackend (which frees its whole pool, whatever
        the objects' reference counts) before the plugins; LMCache offers no hook for this, so the
        allocator's own `close` is wrapped on this instance. A weak reference keeps the allocator
        from holding the plugin alive; a plugin already closed makes it a no-op.
        """
        free_pool = allocator.close
        plugin = weakref.ref(self)

        def close(*args: Any, **kwargs: Any) -> Any:
            backend = plugin()
            if backend is not None and not backend._closed:
                log.info("LMCache's CPU memory is being freed: the gds plugin finishes its writes and closes first")
                backend.close()
            return free_pool(*args, **kwargs)

        allocator.close = close  # type: ignore[method-assign]

    def _allocate_buffer(self, want_cuda: bool) -> torch.Tensor:
        size = self.settings.buffer_size_bytes
        if want_cuda and torch.cuda.is_available():
            return torch.empty(size, dtype=torch.uint8, device=torch.device("cuda", device_index(self.dst_device)))
        return torch.empty(size, dtype=torch.uint8)

    @staticmethod
    def _memory_kind(buffer: torch.Tensor) -> str:
        if buffer.is_cuda:
            return "device"
        return pygds.as_buffer(pygds.Pointer(buffer.data_ptr(), buffer.numel() * buffer.element_size())).kind

    def _check_hipfile(self, want_gpu: bool) -> None:
        """A GPU destination that asks for hipFile needs a usable hipFile (a CPU one never uses it)."""
        if self.settings.engine != "hipfile" or not want_gpu:
            return
        check = engines.get("hipfile").check()
        if not check.ok:
            raise ConfigError("engine", "hipfile", f"AMD hipFile was asked for ({self.settings.sources.get('engine')}) "
                              f"but it is not usable here: {check.reason}",
                              check.fix or "use cuFile (remove use_hipfile / gds_backend: hipfile) or engine: posix")

    def _prepare_engine(self, engine: str) -> str:
        """Register the buffer with the GPU-direct engine asked for (`auto`: the first usable one,
        cuFile or hipFile, as pygds's own `auto` picks) and return that engine's name; fall back to
        POSIX where `auto` allows it."""
        if engine not in ("cufile", "hipfile", "auto"):
            return engine
        try:
            self._registered = pygds.RegisteredBuffer(self._buffer, engine=engine)
        except pygds.PygdsError as exc:
            if engine != "auto":
                raise RuntimeError(f"{engine} was asked for ({self.settings.sources.get('engine')}) but the "
                                   f"buffer cannot be registered: {exc}. Fix: set engine: posix (or "
                                   "use_cufile: false), or repair the GDS installation (pygds info)") from exc
            log.warning("no GPU-direct engine is usable (%s); the gds plugin uses POSIX I/O on GPU memory", exc)
            return "posix"
        return self._registered.engine

    def initialize_allocator(self, config: Any, metadata: Any) -> MemoryAllocatorInterface:
        """The allocator over this backend's buffer (LMCache's TensorMemoryAllocator, locked), or
        the LocalCPUBackend's allocator where that backend's memory is used."""
        if self._cpu_backend is not None:
            return self._cpu_backend.get_memory_allocator()
        return _LockedTensorAllocator(self._buffer)

    # -- identity -----------------------------------------------------------------------------
    def __str__(self) -> str:
        return self.__class__.__name__

    @property
    def store(self) -> KVStore:
        if self._store is None:
            raise RuntimeError("the gds plugin is closed")
        return self._store

    @staticmethod
    def _key(key: CacheEngineKey) -> tuple[str, int]:
        return key.to_string(), key.chunk_hash

    # -- lookups ------------------------------------------------------------------------------
    def contains(self, key: CacheEngineKey, pin: bool = False) -> bool:
        store = self._store
        if store is None:
            raise RuntimeError("the gds plugin is closed")
        return store.contains(key.to_string(), key.chunk_hash, pin)

    async def batched_async_contains(self, lookup_id: str, keys: List[CacheEngineKey], pin: bool = False) -> int:
        """Prefix hits; with `pin`, each hit is pinned until LMCache unpins it after retrieval."""
        hits = self.store.batched_contains(((key.to_string(), key.chunk_hash) for key in keys), pin)
        if pin and hits:
            with self._request_lock:
                self._request_keys.extend(keys[:hits])
        return hits

    def exists_in_put_tasks(self, key: CacheEngineKey) -> bool:
        return self.store.is_pending(key.to_string())

    # -- writes -------------------------------------------------------------------------------
    def submit_put_task(
        self,
        key: CacheEngineKey,
        memory_obj: MemoryObj,
        on_complete_callback: Optional[Callable[[CacheEngineKey], None]] = None,
    ) -> Optional[Future]:
        """Write one chunk in the background; None when it is skipped (a put of it is in flight).

        A key the index holds is still submitted: another instance or `pygds cache evict` may
        have removed its files, and the store's put confirms on disk (its future is then False).
        The memory object is held (`ref_count_up`) until both files are in place; then
        `on_complete_callback(key)` runs on the I/O thread.
        """
        key_text, chunk_hash = self._key(key)
        store = self.store
        store.touch(key_text, chunk_hash)  # a chunk LMCache stores again is in use
        if store.is_pending(key_text):
            return None
        try:
            header = header_for(memory_obj)
            data = _bytes_of(memory_obj, header.nbytes)
        except (ValueError, TypeError) as exc:
            log.error("gds plugin cannot store %s: %s", key_text, exc)
            return None
        memory_obj.ref_count_up()

        def done(stored: bool) -> None:
            memory_obj.ref_count_down()
            if stored and on_complete_callback is not None:
                try:
                    on_complete_callback(key)
                except Exception as exc:  # noqa: BLE001 - a callback must not break the I/O thread
                    log.error("on_complete_callback failed for %s: %s", key_text, exc, exc_info=True)

        try:
            return store.submit_put(key_text, chunk_hash, data, header, on_done=done)
        except BaseException:
            memory_obj.ref_count_down()
            raise

    def batched_submit_put_task(
        self,
        keys: Sequence[CacheEngineKey],
        objs: List[MemoryObj],
        transfer_spec: Any = None,
        on_complete_callback: Optional[Callable[[CacheEngineKey], None]] = None,
    ) -> Union[List[Future], None]:
        """Write chunks in the background; the futures of those not skipped (each a bool)."""
        futures = []
        for key, memory_obj in zip(keys, objs, strict=True):
            future = self.submit_put_task(key, memory_obj, on_complete_callback)
            if future is not None:
                futures.append(future)
        return futures

    async def async_batched_submit_put_task(
        self,
        keys: Sequence[CacheEngineKey],
        objs: List[MemoryObj],
        transfer_spec: Any = None,
        on_complete_callback: Optional[Callable[[CacheEngineKey], None]] = None,
    ) -> None:
        """Submit the writes and wait (without blocking the event loop) until they are stored."""
        futures = self.batched_submit_put_task(keys, objs, transfer_spec, on_complete_callback) or []
        if futures:
            await asyncio.gather(*(asyncio.wrap_future(f) for f in futures), return_exceptions=True)

    # -- reads --------------------------------------------------------------------------------
    def _allocate_for(self, info: EntryInfo, busy_loop: bool = True) -> Optional[MemoryObj]:
        """Memory for an entry; None (a miss) when the allocator is full or cannot hold the
        entry's memory format (LMCache's CPU allocator refuses BINARY and UNDEFINED with
        ValueError), with one warning per format."""
        header = info.header
        try:
            shapes = [torch.Size(s) for s in header.shapes]
            dtypes = [torch_dtype(d) for d in header.dtypes]
            return self.allocate(shapes if len(shapes) > 1 else shapes[0], dtypes if len(dtypes) > 1 else dtypes[0],
                                 fmt=MemoryFormat(header.fmt), busy_loop=busy_loop)
        except (ValueError, TypeError) as exc:
            reason = f"memory format {header.fmt}, dtypes {list(header.dtypes)}: {exc}"
            level = logging.DEBUG if reason in self._unreadable else logging.WARNING
            self._unreadable.add(reason)
            log.log(level, "gds plugin cannot load %s on %s (%s): served as a miss", info.key_text,
                    self.dst_device, reason)
            return None

    def _lookup(self, key: CacheEngineKey) -> Optional[EntryInfo]:
        try:
            return self.store.lookup(*self._key(key))
        except (CorruptEntryError, InvalidKeyError):
            return None

    def _read_entry(self, info: EntryInfo, memory_obj: MemoryObj) -> Optional[MemoryObj]:
        """Read an entry into a memory object; on any failure free the object and return None
        (the store has already dropped a corrupt entry with its one warning)."""
        try:
            self.store.read_into(info, _bytes_of(memory_obj, info.header.nbytes))
            return memory_obj
        except (CorruptEntryError, LookupError, OSError, ValueError) as exc:
            log.debug("gds plugin read of %s failed: %s", info.key_text, exc)
        except Exception as exc:  # noqa: BLE001 - one failed entry must not fail a batch
            log.error("gds plugin read of %s failed: %s", info.key_text, exc, exc_info=True)
        memory_obj.ref_count_down()
        return None

    def get_blocking(self, key: CacheEngineKey) -> Optional[MemoryObj]:
        """Load one chunk (index first, then every path on disk); None on a miss or a bad entry."""
        info = self._lookup(key)
        memory_obj = self._allocate_for(info) if info is not None else None
        if info is None or memory_obj is None:
            return None
        return self._read_entry(info, memory_obj)

    def _submit_read(self, info: EntryInfo, memory_obj: MemoryObj) -> Future:
        """`_read_entry` on the disk_io_threads pool; inline when the pool is disabled or shut
        down by a concurrent `close()` (the read then fails and frees its memory object, which
        would otherwise be lost with the refused task)."""
        pool = self._read_pool
        if pool is not None:
            try:
                return pool.submit(self._read_entry, info, memory_obj)
            except RuntimeError:  # "cannot schedule new futures after shutdown"
                pass
        future: Future = Future()
        future.set_result(self._read_entry(info, memory_obj))
        return future

    def _start_read(self, key: CacheEngineKey, busy_loop: bool) -> Optional[Future]:
        info = self._lookup(key)
        memory_obj = self._allocate_for(info, busy_loop) if info is not None else None
        if info is None or memory_obj is None:
            return None
        return self._submit_read(info, memory_obj)

    def batched_get_blocking(self, keys: List[CacheEngineKey]) -> List[Optional[MemoryObj]]:
        """Load chunks in parallel on the I/O pool; a failed entry is None, the others load."""
        jobs = [self._start_read(key, busy_loop=True) for key in keys]
        return [job.result() if job is not None else None for job in jobs]

    def get_non_blocking(self, key: CacheEngineKey, location: Optional[str] = None) -> Optional[Future]:
        """Start loading one chunk: a Future of the memory object (of None if the read fails), or
        None at once when the key is not stored or the buffer is full."""
        return self._start_read(key, busy_loop=False)

    async def batched_get_non_blocking(self, lookup_id: str, keys: list[CacheEngineKey],
                                       transfer_spec: Any = None) -> list[MemoryObj]:
        """Prefetch: load the chunks on the I/O pool while the event loop runs on; returns the
        loaded prefix (LMCache uses chunks up to the first missing one) and frees the rest."""
        jobs: list[Future] = []
        for key in keys:
            info = self._lookup(key)
            memory_obj = await self._allocate_async(info) if info is not None else None
            if info is None or memory_obj is None:
                break
            jobs.append(self._submit_read(info, memory_obj))
        results = [await asyncio.wrap_future(job) for job in jobs]
        loaded: list[MemoryObj] = []
        for memory_obj in results:
            if memory_obj is None:
                break
            loaded.append(memory_obj)
        for memory_obj in results[len(loaded):]:
            if memory_obj is not None:
                memory_obj.ref_count_down()
        return loaded

    async def _allocate_async(self, info: EntryInfo) -> Optional[MemoryObj]:
        """`allocate` with retries that wait on the event loop instead of sleeping on it."""
        for attempt in range(self.settings.max_alloc_attempts):
            memory_obj = self._allocate_for(info, busy_loop=False)
            if memory_obj is not None:
                return memory_obj
            if attempt + 1 < self.settings.max_alloc_attempts:
                await asyncio.sleep(self.settings.alloc_attempt_delay_s)
        return None

    # -- pins, removal, policy --------------------------------------------------------------
    def pin(self, key: CacheEngineKey) -> bool:
        return self.store.pin(*self._key(key))

    def unpin(self, key: CacheEngineKey) -> bool:
        return self.store.unpin(*self._key(key))

    def remove(self, key: CacheEngineKey, force: bool = True) -> bool:
        return self.store.remove(*self._key(key), force=force)

    def batched_remove(self, keys: list[CacheEngineKey], force: bool = True) -> int:
        return sum(1 for key in keys if self.remove(key, force))

    def touch_cache(self) -> None:
        """Mark the chunks of the last looked-up request most recently used (LRU eviction)."""
        with self._request_lock:
            keys, self._request_keys = self._request_keys, []
        for key in reversed(keys):
            self.store.touch(*self._key(key))

    def clear(self) -> int:
        """Remove every unpinned entry; returns how many entries (not tokens) were removed."""
        return self.store.clear()

    # -- allocation ---------------------------------------------------------------------------
    def allocate(
        self,
        shapes: Union[torch.Size, list[torch.Size]],
        dtypes: Union[torch.dtype, list[torch.dtype]],
        fmt: MemoryFormat = MemoryFormat.KV_2LTD,
        eviction: bool = True,
        busy_loop: bool = True,
    ) -> Optional[MemoryObj]:
        """A memory object in the (registered) buffer; with `busy_loop`, up to
        `max_alloc_attempts` tries `allocation_attempt_delay_secs` apart. `eviction` does not
        apply to our buffer: it holds only chunks in transit. Host memory comes from the
        LocalCPUBackend, with its eviction (`eviction`) but never its own busy loop, which waits
        forever when nothing can be evicted: the same bounded tries apply."""
        if self._cpu_backend is not None:
            cpu = self._cpu_backend
            return self._retry(lambda: cpu.allocate(shapes, dtypes, fmt, eviction=eviction, busy_loop=False),
                               busy_loop)
        return self._retry(lambda: self.memory_allocator.allocate(shapes, dtypes, fmt), busy_loop)

    def batched_allocate(
        self,
        shapes: Union[torch.Size, list[torch.Size]],
        dtypes: Union[torch.dtype, list[torch.dtype]],
        batch_size: int,
        fmt: MemoryFormat = MemoryFormat.KV_2LTD,
        eviction: bool = True,
        busy_loop: bool = True,
    ) -> Optional[list[MemoryObj]]:
        if self._cpu_backend is not None:
            cpu = self._cpu_backend
            return self._retry(lambda: cpu.batched_allocate(shapes, dtypes, batch_size, fmt, eviction=eviction,
                                                            busy_loop=False), busy_loop)
        return self._retry(lambda: self.memory_allocator.batched_allocate(shapes, dtypes, batch_size, fmt),
                           busy_loop)

    def _retry(self, attempt: Callable[[], Any], busy_loop: bool) -> Any:
        tries = self.settings.max_alloc_attempts if busy_loop else 1
        for n in range(tries):
            result = attempt()
            if result is not None:
                return result
            if n + 1 < tries and self.settings.alloc_attempt_delay_s > 0:
                time.sleep(self.settings.alloc_attempt_delay_s)
        self._alloc_failures += 1
        level = logging.WARNING if self._alloc_failures == 1 else logging.DEBUG
        if self._cpu_backend is not None:
            memory, fix = "LMCache's CPU memory", "raise max_local_cpu_size"
        else:
            memory, fix = f"buffer ({self.settings.buffer_size_mib} MiB)", "raise cufile_buffer_size / gds_buffer_size"
        log.log(level, "gds plugin: %s full after %d attempt(s) (failures so far: %d). Fix: %s",
                memory, tries, self._alloc_failures, fix)
        return None

    def calculate_chunk_budget(self) -> int:
        """How many full chunks the buffer (or the LocalCPUBackend) holds at once."""
        if self._cpu_backend is not None:
            return self._cpu_backend.calculate_chunk_budget()
        if self.metadata is None or self._buffer is None:
            return 0
        chunk = sum(s.numel() * d.itemsize for s, d in zip(self.metadata.get_shapes(),
                                                            self.metadata.get_dtypes()))
        aligned = -(-chunk // _ALIGN) * _ALIGN
        return self._buffer.numel() // aligned if aligned else 0

    def get_memory_allocator(self) -> MemoryAllocatorInterface:
        return self.memory_allocator

    def get_allocator_backend(self) -> AllocatorBackendInterface:
        """Where LMCache allocates the chunks it hands to our puts: this backend (its buffer of
        GPU memory, registered with cuFile or hipFile or, in the documented POSIX fallback, not),
        or LMCache's LocalCPUBackend where its host memory is used."""
        return self._cpu_backend if self._cpu_backend is not None else self

    # -- observability and shutdown --------------------------------------------------------
    def stats(self) -> dict[str, Any]:
        """The store's counters plus this adapter's (allocation failures, engine, write path)."""
        out = self.store.stats().as_dict()
        out.update(alloc_failures=self._alloc_failures, engine=self.engine, write_path=self.store.write_path)
        return out

    def close(self) -> None:
        """Drain every submitted write (data and metadata on disk) and read, then deregister the
        buffer and drop the cuFile driver. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._teardown()
        log.info("gds plugin closed")

    def _teardown(self) -> None:
        pool, self._read_pool = self._read_pool, None
        if pool is not None:
            pool.shutdown(wait=True)  # reads in flight finish before their memory goes away
        store, self._store = self._store, None
        if store is not None:
            store.close()
        registered, self._registered = self._registered, None
        if registered is not None:
            registered.close()


