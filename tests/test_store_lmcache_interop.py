"""A cache written by either side is served by the other, checked with LMCache's own code.

LMCache's GdsBackend asserts a CUDA device in its constructor, so these tests build one without
running `__init__` and set the attributes its methods use; everything they call (`_key_to_path`,
`_save_gds`, `save_metadata`, `_scan_metadata_subdir`, `_try_to_read_metadata`, `_load_gds`,
`PathSharder`) is LMCache's real code. Its POSIX path copies between GPU and a mmap of the file
with `cudaMemcpy`; on this CPU machine the tensors live in host memory, so `ctypes.memmove`
(same arguments, host to host) plays cudaMemcpy's part.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import threading
from collections import OrderedDict

import pytest
import torch

gds = pytest.importorskip("lmcache.v1.storage_backend.gds_backend")
from lmcache.utils import CacheEngineKey, parse_cache_key  # noqa: E402
from lmcache.v1.memory_management import MemoryFormat  # noqa: E402
from lmcache.v1.storage_backend.path_sharder import PathSharder  # noqa: E402

from lmcache_plugin.format import EntryHeader, pack_header  # noqa: E402
from lmcache_plugin.layout import WEKA_DATA_SUFFIX, Layout, metadata_path  # noqa: E402
from lmcache_plugin.store import KVStore, StoreOptions  # noqa: E402

HASHES = [987654321012, -123456789, 4242, 123, 12, 5, -1, -42]


def host_memcpy(dst, src, count, kind) -> int:
    ctypes.memmove(dst, src, count)
    return 0


def lmcache_backend(paths: list[str], device_id: int = 0, suffix: str = gds._DATA_FILE_SUFFIX):
    backend = gds.GdsBackend.__new__(gds.GdsBackend)
    backend.data_suffix = suffix
    backend.gds_paths = list(paths)
    backend.gds_path = paths[device_id % len(paths)]
    backend.hot_lock = threading.Lock()
    backend.hot_cache = OrderedDict()
    backend.metadata_dirs = set()
    backend._use_noatime = True
    backend.gds_module = None
    backend._gpu_memcpy = host_memcpy
    return backend


def lmcache_scan(backend) -> None:
    """LMCache's start-up scan, run synchronously (its coroutine only fans these calls out)."""
    for base in backend.gds_paths:
        for entry in os.scandir(base):
            if entry.is_dir() and len(entry.name) == 2:
                backend._scan_metadata_subdir(entry.path, entry.name)


def lmcache_put(backend, key: CacheEngineKey, tensor: torch.Tensor, fmt: MemoryFormat, *,
                metadata: bool = True) -> str:
    """What `_async_save_bytes_to_disk` does: mkdir, `_save_gds`, then `save_metadata`."""
    path, _, l1, l2 = backend._key_to_path(key)
    os.makedirs(os.path.join(backend.gds_path, l1, l2), exist_ok=True)
    tmp = ".tmp" + gds.rand_suffix(8)
    header = backend._save_gds(path, tmp, tensor, fmt, None, 0)
    if metadata:
        asyncio.run(gds.save_metadata(path + gds._METADATA_FILE_SUFFIX, tmp, header))
    return path


def make_key(i: int, chunk_hash: int) -> CacheEngineKey:
    configs = {"lmcache.tag.user": f"u{i}"} if i % 2 else None
    return CacheEngineKey(f"org/model-{i}", 2, i % 2, chunk_hash, torch.bfloat16, request_configs=configs)


def rand_tensor(shape, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g).to(torch.bfloat16)


@pytest.mark.parametrize("n_paths", [1, 2, 4])
def test_affinity_is_lmcaches_path_sharder(n_paths):
    csv = " , ".join(f"/mnt/nvme{i}/cache" for i in range(n_paths)) + ", ,"
    for device_id in range(6):
        sharder = PathSharder(raw_csv=csv, strategy="by_gpu", dst_device=f"cuda:{device_id}")
        layout = Layout(csv, device_id)
        assert layout.write_path == sharder.selected
        assert list(layout.paths) == sharder.all_paths


@pytest.mark.parametrize("suffix", [gds._DATA_FILE_SUFFIX, WEKA_DATA_SUFFIX])
def test_file_names_are_lmcaches(suffix):
    backend = lmcache_backend(["/c0", "/c1"], suffix=suffix)
    layout = Layout(["/c0", "/c1"], data_suffix=suffix)
    for i, h in enumerate(HASHES):
        key = make_key(i, h)
        for base in ("/c0", "/c1"):
            assert backend._key_to_path(key, base_path=base)[0] == layout.data_path(base, key.to_string(), h)


def test_lmcache_reads_what_our_store_writes(tmp_path):
    paths = [str(tmp_path / "a"), str(tmp_path / "b")]
    expected = {}
    for device_id in (0, 1):
        store = KVStore(StoreOptions(paths=paths, device_id=device_id, engine="posix"))
        for i, h in enumerate(HASHES):
            key = make_key(i + 10 * device_id, h + device_id)
            tensor = rand_tensor((2, 4, 16, 8), seed=i + 10 * device_id)
            fmt = list(MemoryFormat)[1 + i % 3]
            assert store.put(key.to_string(), key.chunk_hash, tensor, EntryHeader.for_tensor(tensor, fmt))
            expected[key] = (tensor, fmt)
        assert {parse_cache_key(k) for k in store.keys()} <= set(expected)
        store.close()

    backend = lmcache_backend(paths)
    for key, (tensor, fmt) in expected.items():
        meta = backend._try_to_read_metadata(key)  # LMCache's contains() on disk
        assert (meta.shape, meta.dtype, meta.size, meta.fmt) == (tensor.shape, tensor.dtype, tensor.nbytes, fmt)
        with open(meta.path, "rb") as f:
            assert gds.unpack_metadata(f.read(4096))[:4] == (tensor.shape, tensor.dtype, tensor.nbytes, fmt)
        out = torch.empty_like(tensor)
        read = backend._load_gds(meta.path, 4096, ctypes.c_void_p(out.data_ptr()), tensor.nbytes, 0)
        assert read == tensor.nbytes and torch.equal(out.view(torch.int16), tensor.view(torch.int16))

    scanner = lmcache_backend(paths)
    lmcache_scan(scanner)
    long_hashes = {k for k in expected if len(str(k.chunk_hash)) >= 4}
    assert set(scanner.hot_cache) == long_hashes  # LMCache's scan misses short hashes; ours does not


def test_our_store_serves_what_lmcache_writes(tmp_path):
    paths = [str(tmp_path / "a"), str(tmp_path / "b")]
    expected = {}
    for device_id in (0, 1):
        backend = lmcache_backend(paths, device_id)
        for i, h in enumerate(HASHES):
            key = make_key(i, h * 3 + device_id)
            tensor = rand_tensor((3, 2, 8, 4), seed=100 + i + device_id)
            fmt = list(MemoryFormat)[1 + i % 3]
            path = lmcache_put(backend, key, tensor, fmt, metadata=(i != 1))
            expected[key] = (tensor, fmt, path)

    store = KVStore(StoreOptions(paths=paths, device_id=1, engine="posix"))
    try:
        assert store.wait_for_scan(30)
        assert {parse_cache_key(k) for k in store.keys()} == set(expected)
        for key, (tensor, fmt, path) in expected.items():
            info = store.lookup(key.to_string(), key.chunk_hash)
            assert info.path == path
            assert info.header == EntryHeader.for_tensor(tensor, fmt)
            out = torch.empty_like(tensor)
            store.read_into(info, out)
            assert torch.equal(out.view(torch.int16), tensor.view(torch.int16))
        assert store.stats().corrupt == 0
    finally:
        store.close()


def test_a_metadata_file_we_rebuild_is_what_lmcache_reads(tmp_path):
    backend = lmcache_backend([str(tmp_path)])
    key = make_key(1, 55555)
    tensor = rand_tensor((4, 4), seed=7)
    path = lmcache_put(backend, key, tensor, MemoryFormat.KV_2LTD, metadata=False)
    assert backend._try_to_read_metadata(key) is None  # LMCache cannot see it without .metadata
    store = KVStore(StoreOptions(paths=[str(tmp_path)], engine="posix"))
    try:
        assert store.lookup(key.to_string(), key.chunk_hash) is not None
    finally:
        store.close()
    with open(metadata_path(path), "rb") as f:
        assert f.read() == pack_header(EntryHeader.for_tensor(tensor, MemoryFormat.KV_2LTD))
    assert backend._try_to_read_metadata(key).size == tensor.nbytes


def long_key(model_len: int, chunk_hash: int) -> CacheEngineKey:
    """A key whose quoted text exceeds a file name, with two tags after the dtype field."""
    tags = {"lmcache.tag.user": "u" * 40, "lmcache.tag.session": "s" * 40}
    return CacheEngineKey("m" * model_len, 1, 0, chunk_hash, torch.bfloat16, request_configs=tags)


def test_lmcaches_start_up_scan_survives_our_long_key_names(tmp_path):
    """LMCache's `_scan_metadata` parses every `.metadata` name as a key and stops at any error
    but ValueError. Long keys whose bounded names are cut in each field of the key (model, world
    size, worker, hash, dtype, tags) sit in one directory with ordinary entries: LMCache's real
    scan indexes every ordinary entry and nothing else; our store finds and serves them all."""
    paths = [str(tmp_path / "a")]
    ordinary = [make_key(i, 20_000_000 + i) for i in range(20)]
    long_keys = [long_key(n, 20_000_100 + n) for n in range(100, 200)]
    assert len({Layout(paths).stem(k.to_string()) for k in long_keys}) == len(long_keys)
    expected = {}
    with KVStore(StoreOptions(paths=paths, engine="posix")) as store:
        for i, key in enumerate(ordinary + long_keys):
            tensor = rand_tensor((2, 4), seed=i)
            header = EntryHeader.for_tensor(tensor, MemoryFormat.KV_2LTD)
            assert store.put(key.to_string(), key.chunk_hash, tensor, header)
            expected[key] = tensor
    assert len(os.listdir(tmp_path / "a" / "20" / "00")) == 2 * len(expected)  # one directory

    scanner = lmcache_backend(paths)
    asyncio.run(scanner._scan_metadata())  # LMCache's own coroutine, as its constructor starts it
    assert set(scanner.hot_cache) == set(ordinary)

    with KVStore(StoreOptions(paths=paths, engine="posix")) as store:
        assert store.wait_for_scan(30) and store.stats().as_dict()["scan_entries"] == len(expected)
        for key, tensor in expected.items():
            info = store.lookup(key.to_string(), key.chunk_hash)
            out = torch.empty_like(tensor)
            store.read_into(info, out)
            assert torch.equal(out.view(torch.int16), tensor.view(torch.int16))
