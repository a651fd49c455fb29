"""pygds.memory and pygds.cuda with a CUDA driver: allocations, pointer kinds, copies, threads.

Runs under the stand-in libcuda (whose device memory is not host-accessible, like a GPU's) via
tests/test_cufile_on_standin.py, or on a GPU machine with PYGDS_TEST_CUFILE=1.
"""
from __future__ import annotations

import ctypes
import gc
import os
import subprocess
import sys
import textwrap
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from pygds import cuda, memory
from pygds.errors import InvalidArgumentError
from pygds.memory import DeviceBuffer, PinnedBuffer, Pointer, as_buffer

STANDIN = "PYGDS_STANDIN_DEVICES" in os.environ


def random_bytes(n: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


class CaiOnly:
    """Another library's device array: only __cuda_array_interface__ over someone else's memory."""

    def __init__(self, ptr: int, nbytes: int) -> None:
        self.__cuda_array_interface__ = {"shape": (nbytes // 4,), "typestr": "<u4", "data": (ptr, False),
                                         "strides": None, "version": 3, "stream": 1}


def test_cuda_is_available_with_a_device():
    assert memory.cuda_available() is True
    assert memory.device_count() >= 1
    assert memory.current_device() == 0


@pytest.mark.parametrize("size", [1, 4097, 1 << 20])
def test_device_buffer_round_trip(size):
    data = random_bytes(size, size)
    with DeviceBuffer(size) as dev:
        assert (dev.nbytes, dev.device) == (size, 0)
        assert dev.copy_from_host(data) == size
        out = bytearray(size)
        assert dev.copy_to_host(out) == size
        assert out == data


def test_device_buffer_offsets_and_partial_copies():
    data = random_bytes(10_000, 1)
    with DeviceBuffer(10_000) as dev:
        dev.copy_from_host(bytes(10_000))
        dev.copy_from_host(memoryview(data)[100:600], offset=1000)
        out = np.zeros(700, dtype=np.uint8)
        dev.copy_to_host(out, offset=950)
        assert out.tobytes() == bytes(50) + data[100:600] + bytes(150)
        with pytest.raises(InvalidArgumentError):
            dev.copy_from_host(data, offset=1)  # 10 000 bytes do not fit after offset 1


def test_pinned_buffer_is_pinned_host_memory_with_the_buffer_protocol():
    with PinnedBuffer(4096) as pinned:
        assert as_buffer(pinned).kind == "pinned"
        assert memory.pointer_kind(pinned.ptr) == ("pinned", None)
        view = pinned.buffer
        view[:4] = b"abcd"
        assert ctypes.string_at(pinned.ptr, 4) == b"abcd"
        arr = np.frombuffer(pinned.buffer, dtype=np.uint8)
        assert arr[:4].tobytes() == b"abcd"


def test_pinned_memoryview_keeps_the_allocation_alive():
    pinned = PinnedBuffer(64)
    ptr = pinned.ptr
    view = pinned.buffer
    view[:] = bytes(range(64))
    del pinned
    gc.collect()
    assert memory.pointer_kind(ptr) == ("pinned", None)  # still allocated
    assert bytes(view) == bytes(range(64))
    del view
    gc.collect()
    assert memory.pointer_kind(ptr) == ("host", None)  # freed once the last view went away


def test_pointer_kind_of_device_pinned_managed_and_pageable_memory():
    from cuda.bindings import driver

    with DeviceBuffer(256) as dev, PinnedBuffer(256) as pinned:
        assert memory.pointer_kind(dev.ptr) == ("device", 0)
        assert memory.pointer_kind(dev.ptr + 100) == ("device", 0)
        assert memory.pointer_kind(pinned.ptr) == ("pinned", None)
    page = bytearray(256)
    assert memory.pointer_kind(as_buffer(page).ptr) == ("host", None)
    err, managed = driver.cuMemAllocManaged(4096, driver.CUmemAttach_flags.CU_MEM_ATTACH_GLOBAL.value)
    assert err == driver.CUresult.CUDA_SUCCESS
    try:
        assert memory.pointer_kind(int(managed)) == ("managed", 0)
        assert as_buffer(Pointer(int(managed), 4096)).kind == "managed"
    finally:
        driver.cuMemFree(managed)


def test_as_buffer_of_device_memory_through_its_interfaces():
    with DeviceBuffer(1024) as dev:
        direct = as_buffer(dev)
        assert (direct.ptr, direct.nbytes, direct.kind, direct.device) == (dev.ptr, 1024, "device", 0)
        assert direct.owner is dev
        foreign = as_buffer(CaiOnly(dev.ptr, 1024))  # kind and ordinal from the pointer's attributes
        assert (foreign.ptr, foreign.nbytes, foreign.kind, foreign.device) == (dev.ptr, 1024, "device", 0)
        assert as_buffer(Pointer(dev.ptr, 1024)).kind == "device"
        assert as_buffer(dev, 10).nbytes == 10
        iface = dev.__cuda_array_interface__
        assert (iface["shape"], iface["typestr"], iface["version"]) == ((1024,), "|u1", 3)
        assert iface["data"] == (dev.ptr, False)
    with PinnedBuffer(64) as pinned:
        assert as_buffer(CaiOnly(pinned.ptr, 64)).kind == "pinned"


def test_copy_in_every_direction():
    data = random_bytes(5000, 7)
    host = bytearray(data)
    with DeviceBuffer(5000) as a, DeviceBuffer(5000) as b, PinnedBuffer(5000) as pinned:
        memory.copy(a.view, as_buffer(host), 5000)                       # host -> device
        memory.copy(b, a, 5000)                                           # device -> device
        memory.copy(pinned, b, 5000)                                      # device -> pinned
        assert bytes(pinned.buffer) == data
        back = bytearray(5000)
        memory.copy(back, pinned, 5000)                                   # pinned -> host (memmove)
        assert back == data
        memory.copy(a.view.slice(10, 100), pinned.view.slice(4000, 100), 100)  # pinned -> device
        memory.copy(as_buffer(back).slice(0, 120), a.view.slice(0, 120), 120)    # device -> host
        assert back[:120] == data[:10] + data[4000:4100] + data[110:120]


def test_copy_on_a_stream():
    from cuda.bindings import driver

    err, stream = driver.cuStreamCreate(0)
    assert err == driver.CUresult.CUDA_SUCCESS
    try:
        data = random_bytes(3000, 3)
        out = bytearray(3000)
        with DeviceBuffer(3000) as dev:
            memory.copy(dev, data, 3000, stream=stream)
            memory.copy(out, dev, 3000, stream=int(stream))
            memory.stream_synchronize(int(stream))
        assert out == data
    finally:
        driver.cuStreamDestroy(stream)


def _without_context() -> None:
    """Leave this thread with no current CUDA context, as a new thread has on a real GPU."""
    from cuda.bindings import driver

    while driver.cuCtxGetDevice()[0] == driver.CUresult.CUDA_SUCCESS:
        driver.cuCtxPopCurrent()


def test_fresh_worker_threads_get_a_context_by_themselves():
    data = random_bytes(2048, 11)

    def work(i: int) -> bytes:
        if i % 2:
            _without_context()
        with DeviceBuffer(2048) as dev:
            dev.copy_from_host(data)
            out = bytearray(2048)
            memory.copy(out, dev, 2048)
            assert memory.pointer_kind(dev.ptr) == ("device", 0)
        return bytes(out)

    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(work, range(8))) == [data] * 8


def test_buffer_made_in_one_thread_is_used_and_freed_in_another():
    dev = DeviceBuffer(512)
    dev.copy_from_host(bytes(range(256)) * 2)
    out = bytearray(512)

    def work() -> None:
        _without_context()
        dev.copy_to_host(out)
        dev.close()

    worker = threading.Thread(target=work)
    worker.start()
    worker.join()
    assert out == bytes(range(256)) * 2 and dev.closed


def test_close_twice_is_safe_and_frees_the_memory():
    dev = DeviceBuffer(128)
    ptr = dev.ptr
    dev.close()
    dev.close()
    assert memory.pointer_kind(ptr) == ("host", None)  # CUDA no longer knows the address
    with pytest.raises(InvalidArgumentError, match="closed"):
        dev.copy_from_host(b"x")
    pinned = PinnedBuffer(128)
    pinned.close()
    pinned.close()
    with pytest.raises(InvalidArgumentError, match="closed"):
        as_buffer(pinned)


def test_garbage_collection_frees_device_memory():
    dev = DeviceBuffer(128)
    ptr = dev.ptr
    view = dev.view
    del dev
    gc.collect()
    assert memory.pointer_kind(ptr) == ("device", 0)  # the view's owner keeps it
    del view
    gc.collect()
    assert memory.pointer_kind(ptr) == ("host", None)


def test_zero_byte_buffers():
    dev, pinned = DeviceBuffer(0), PinnedBuffer(0)
    assert dev.nbytes == pinned.nbytes == 0 and bytes(pinned.buffer) == b""
    memory.copy(dev, pinned, 0)
    dev.close()
    pinned.close()


def test_cuda_failures_name_the_cuda_error():
    with pytest.raises(cuda.CudaError, match="CUDA_ERROR_OUT_OF_MEMORY") as info:
        DeviceBuffer(1 << 50)
    assert (info.value.op, info.value.name) == ("cuMemAlloc", "CUDA_ERROR_OUT_OF_MEMORY")
    with pytest.raises(InvalidArgumentError, match="does not exist"):
        DeviceBuffer(16, device=memory.device_count())
    with pytest.raises(InvalidArgumentError, match="does not exist"):
        memory.set_device(-1)


@pytest.mark.skipif(not STANDIN, reason="the two-device case uses the stand-in's PYGDS_STANDIN_DEVICES")
def test_two_devices_keep_the_callers_current_device():
    script = textwrap.dedent("""
        from pygds import memory
        from pygds.memory import DeviceBuffer
        assert memory.device_count() == 2
        data = bytes(range(256)) * 16
        with DeviceBuffer(4096, device=1) as one, DeviceBuffer(4096) as zero:
            assert memory.current_device() == 0           # allocating on 1 did not move this thread
            assert (one.device, zero.device) == (1, 0)
            assert memory.pointer_kind(one.ptr) == ("device", 1)
            one.copy_from_host(data)
            memory.copy(zero, one, 4096)
            out = bytearray(4096)
            zero.copy_to_host(out)
            assert out == data
            memory.set_device(1)
            assert memory.current_device() == 1
            assert DeviceBuffer(16).device == 1
        print("ok")
    """)
    env = {**os.environ, "PYGDS_STANDIN_DEVICES": "2"}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stdout + out.stderr

