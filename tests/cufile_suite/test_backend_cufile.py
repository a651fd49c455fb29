"""The plugin on the cuFile engine with its registered buffer (stand-in CUDA driver on CI, a GPU
elsewhere): LMCache memory objects in registered device memory stored and loaded byte-exact.

With a CUDA build of torch the buffer is a CUDA tensor. With the CPU build used on CI, torch
cannot allocate device memory, so the buffer is stand-in device memory (pygds `DeviceBuffer`)
seen as a torch tensor that the host never touches: that memory is PROT_NONE, so any host-side
access (a bounce copy, a silent POSIX fallback) would crash, and a pass proves the bytes moved
through cuFile straight into and out of the registered buffer.
"""

from __future__ import annotations

import ctypes
import os

import numpy as np
import pytest
import torch
from lmcache.v1.memory_management import MemoryFormat
from lmcache_env import (
    chunk_shape,
    make_config,
    make_key,
    make_metadata,
    plugin_extra,
    run,
)
from lmcache_env import loop, no_lmcache_environment  # noqa: F401 - fixtures, used by name

from lmcache_plugin.backend import GdsPluginBackend
from lmcache_plugin.format import EntryHeader, pack_header
from lmcache_plugin.layout import Layout
from pygds.engines.registry import get as engine
from pygds.memory import DeviceBuffer

BUFFER = 2 << 20
CUDA_TORCH = torch.cuda.is_available()


class DeviceMemory:
    """The backend's buffer, and the test's way to put bytes in and take them out."""

    def __init__(self, nbytes: int) -> None:
        if CUDA_TORCH:
            self.device_buffer = None
            self.tensor = torch.empty(nbytes, dtype=torch.uint8, device="cuda:0")
        else:
            self.device_buffer = DeviceBuffer(nbytes)
            array = (ctypes.c_ubyte * nbytes).from_address(self.device_buffer.ptr)
            self.tensor = torch.frombuffer(array, dtype=torch.uint8)

    @property
    def ptr(self) -> int:
        return self.tensor.data_ptr()

    def write(self, offset: int, data: bytes) -> None:
        if self.device_buffer is None:
            self.tensor[offset:offset + len(data)].copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
        else:
            self.device_buffer.copy_from_host(bytearray(data), offset=offset)

    def read(self, offset: int, n: int) -> bytes:
        if self.device_buffer is None:
            return self.tensor[offset:offset + n].cpu().numpy().tobytes()
        out = bytearray(n)
        self.device_buffer.copy_to_host(out, n, offset=offset)
        return bytes(out)


def start(path: str, loop, memory: DeviceMemory) -> GdsPluginBackend:
    config = make_config(extra_config=plugin_extra(path, engine="cufile", cufile_buffer_size=BUFFER >> 20))
    return GdsPluginBackend(config=config, dst_device="cuda:0", metadata=make_metadata(),
                            local_cpu_backend=None, loop=loop, buffer=memory.tensor)


def random_bytes(n: int, seed: int) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


def test_memory_objects_through_cufile_byte_exact(tmp_path, loop):
    memory = DeviceMemory(BUFFER)
    backend = start(str(tmp_path / "c"), loop, memory)
    try:
        assert backend.engine == "cufile" and backend._registered is not None
        assert engine("cufile").registry.find(memory.ptr, BUFFER) == memory.ptr  # one registration: the whole buffer
        keys = [make_key(h) for h in (1234567, -89, 42424242, 5)]
        objs = [backend.allocate(chunk_shape(), torch.bfloat16, fmt=MemoryFormat.KV_2LTD) for _ in keys]
        data = [random_bytes(o.get_size(), i) for i, o in enumerate(objs)]
        for obj, blob in zip(objs, data):
            assert obj.raw_tensor.data_ptr() == memory.ptr + obj.metadata.address  # zero-copy
            memory.write(obj.metadata.address, blob)
        futures = backend.batched_submit_put_task(keys, objs)
        for obj in objs:
            obj.ref_count_down()
        assert [f.result(60) for f in futures] == [True] * 4
        for key, blob in zip(keys, data):
            # GPU memory under checksum "auto": the header names the key and carries no checksum
            header = pack_header(EntryHeader.single(chunk_shape(), torch.bfloat16, MemoryFormat.KV_2LTD.value,
                                                    {"lmcache_version": "1", "key": key.to_string()}))
            info = backend.store.lookup(key.to_string(), key.chunk_hash)
            with open(info.path, "rb") as f:
                assert f.read() == header + blob

        one = backend.get_blocking(keys[1])
        assert memory.read(one.metadata.address, one.get_size()) == data[1]
        one.ref_count_down()
        got = backend.batched_get_blocking(keys)
        assert [memory.read(o.metadata.address, o.get_size()) for o in got] == data
        for o in got:
            o.ref_count_down()
        got = run(loop, backend.batched_get_non_blocking("req", keys))
        assert [memory.read(o.metadata.address, o.get_size()) for o in got] == data
        for o in got:
            o.ref_count_down()
        assert backend.get_memory_allocator().total_allocated_size == 0
    finally:
        backend.close()
    assert engine("cufile").registry.find(memory.ptr, 1) is None  # deregistered on close

    fresh = DeviceMemory(BUFFER)
    again = start(str(tmp_path / "c"), loop, fresh)
    try:
        assert again.store.wait_for_scan(30) and again.stats()["scan_entries"] == 4
        got = again.batched_get_blocking(keys)
        assert [fresh.read(o.metadata.address, o.get_size()) for o in got] == data
        for o in got:
            o.ref_count_down()
    finally:
        again.close()


def test_close_drains_writes_from_registered_memory(tmp_path, loop):
    memory = DeviceMemory(BUFFER)
    backend = start(str(tmp_path / "c"), loop, memory)
    keys = [make_key(9000 + i) for i in range(16)]
    objs = [backend.allocate(chunk_shape(), torch.bfloat16) for _ in keys]
    data = [random_bytes(o.get_size(), 100 + i) for i, o in enumerate(objs)]
    for obj, blob in zip(objs, data):
        memory.write(obj.metadata.address, blob)
    done = []
    backend.batched_submit_put_task(keys, objs, on_complete_callback=done.append)
    for obj in objs:
        obj.ref_count_down()
    backend.close()
    assert len(done) == 16
    layout = Layout([str(tmp_path / "c")])
    for key, blob in zip(keys, data):
        path = layout.data_path(str(tmp_path / "c"), key.to_string(), key.chunk_hash)
        with open(path, "rb") as f:
            assert f.read()[4096:] == blob
        assert os.path.exists(path + ".metadata")
