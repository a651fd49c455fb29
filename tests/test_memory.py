"""pygds.memory on a machine without CUDA: every host buffer kind, views, errors, DLPack, CAI."""
from __future__ import annotations

import array
import ctypes
import gc
import mmap
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from pygds import memory
from pygds.errors import DriverUnavailableError, InvalidArgumentError, UnsupportedBufferError
from pygds.memory import BufferView, DeviceBuffer, PinnedBuffer, Pointer, as_buffer

REPO = Path(__file__).resolve().parents[1]
CPU_ONLY = not memory.cuda_available()
needs_no_cuda = pytest.mark.skipif(not CPU_ONLY, reason="checks behaviour on a machine where CUDA is not usable")


def read(view: BufferView) -> bytes:
    return ctypes.string_at(view.ptr, view.nbytes)


class DLPackOnly:
    """Exposes another object's memory through DLPack alone, so as_buffer must take the DLPack path."""

    def __init__(self, source: object) -> None:
        self.source = source

    def __dlpack__(self, *args: object, **kwargs: object) -> object:
        return self.source.__dlpack__(*args, **kwargs)

    def __dlpack_device__(self) -> tuple[int, int]:
        return self.source.__dlpack_device__()


class CudaArray:
    """A producer of __cuda_array_interface__ pointing at memory nobody may touch."""

    def __init__(self, ptr: int, shape: tuple[int, ...], typestr: str = "<f4", strides=None,
                 readonly: bool = False, version: int = 3) -> None:
        self.__cuda_array_interface__ = {"shape": shape, "typestr": typestr, "data": (ptr, readonly),
                                         "strides": strides, "version": version}


# --- host kinds ------------------------------------------------------------------------------------
def test_bytearray_is_writable_host_memory_at_its_real_address():
    data = bytearray(b"pygds-bytearray")
    view = as_buffer(data, writable=True)
    assert (view.kind, view.device, view.readonly, view.nbytes) == ("host", None, False, len(data))
    assert read(view) == data
    ctypes.memmove(view.ptr, b"PY", 2)
    assert data.startswith(b"PYgds")


def test_bytearray_cannot_be_resized_while_a_view_holds_it():
    data = bytearray(64)
    view = as_buffer(data)
    with pytest.raises(BufferError):
        data.extend(b"x" * 4096)  # would move the memory under the view's address
    del view
    gc.collect()
    data.extend(b"x")
    assert len(data) == 65


def test_bytes_are_read_only():
    data = b"immutable bytes"
    view = as_buffer(data)
    assert (view.kind, view.readonly, read(view)) == ("host", True, data)
    with pytest.raises(InvalidArgumentError, match="read-only"):
        as_buffer(data, writable=True)


def test_memoryview_slices_keep_their_offset():
    data = bytearray(range(256))
    base = as_buffer(data)
    view = as_buffer(memoryview(data)[10:50])
    assert view.ptr == base.ptr + 10
    assert view.nbytes == 40
    assert read(view) == bytes(range(10, 50))
    assert as_buffer(memoryview(b"abcdef")[2:]).readonly


def test_non_contiguous_memoryview_is_refused():
    with pytest.raises(UnsupportedBufferError, match="contiguous"):
        as_buffer(memoryview(bytearray(16))[::2])


def test_mmap_anonymous_and_file_backed(tmp_path):
    anon = mmap.mmap(-1, 8192)
    anon[:5] = b"hello"
    view = as_buffer(anon, 5)
    assert (view.kind, view.nbytes, read(view)) == ("host", 5, b"hello")
    path = tmp_path / "mapped.bin"
    path.write_bytes(b"file-backed mapping")
    with path.open("rb") as f:
        ro = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    ro_view = as_buffer(ro)
    assert ro_view.readonly and read(ro_view) == b"file-backed mapping"
    with pytest.raises(BufferError):
        ro.close()  # the view's export keeps the mapping open
    del ro_view
    gc.collect()
    ro.close()


def test_array_array_and_ctypes_array():
    ints = array.array("i", [1, 2, 3, 4])
    view = as_buffer(ints)
    assert view.nbytes == 4 * ints.itemsize
    assert read(view) == ints.tobytes()
    raw = (ctypes.c_uint8 * 8)(*range(8))
    assert as_buffer(raw).ptr == ctypes.addressof(raw)


def test_numpy_arrays():
    arr = np.arange(12, dtype=np.float32).reshape(3, 4)
    view = as_buffer(arr, writable=True)
    assert (view.ptr, view.nbytes, view.kind) == (arr.ctypes.data, arr.nbytes, "host")
    assert read(view) == arr.tobytes()
    assert as_buffer(arr[1:]).ptr == arr.ctypes.data + 16  # a contiguous row slice
    frozen = np.frombuffer(b"12345678", dtype=np.uint8)
    assert as_buffer(frozen).readonly
    with pytest.raises(InvalidArgumentError, match="read-only"):
        as_buffer(frozen, writable=True)


def test_numpy_non_contiguous_and_object_arrays_are_refused():
    arr = np.arange(16, dtype=np.int64).reshape(4, 4)
    with pytest.raises(UnsupportedBufferError, match="not C-contiguous"):
        as_buffer(arr[:, 1])
    with pytest.raises(UnsupportedBufferError, match="contiguous"):
        as_buffer(arr.T)
    with pytest.raises(UnsupportedBufferError, match="object"):
        as_buffer(np.array([object(), object()]))


def test_torch_cpu_tensor():
    t = torch.arange(100, dtype=torch.float64)
    view = as_buffer(t)
    assert (view.ptr, view.nbytes, view.kind, view.device) == (t.data_ptr(), 800, "host", None)
    assert read(view) == t.numpy().tobytes()
    sub = as_buffer(t[10:20])  # a storage offset is part of data_ptr()
    assert sub.ptr == view.ptr + 80 and sub.nbytes == 80
    assert as_buffer(torch.nn.Parameter(torch.ones(3))).nbytes == 12


def test_torch_non_contiguous_tensor_names_the_fix():
    t = torch.zeros(8, 8)
    with pytest.raises(UnsupportedBufferError, match=r"\.contiguous\(\)") as info:
        as_buffer(t.t())
    assert isinstance(info.value, TypeError)
    assert as_buffer(t.t().contiguous()).nbytes == 256


def test_torch_sparse_and_lazy_conjugate_tensors_are_refused():
    with pytest.raises(UnsupportedBufferError, match="to_dense"):
        as_buffer(torch.eye(3).to_sparse())
    with pytest.raises(UnsupportedBufferError, match="resolve_conj"):
        as_buffer(torch.ones(2, dtype=torch.complex64).conj())


def test_pointer_with_explicit_and_auto_kind():
    backing = (ctypes.c_char * 32)()
    ptr = ctypes.addressof(backing)
    view = as_buffer(Pointer(ptr, 32, "host"))
    assert (view.ptr, view.nbytes, view.kind) == (ptr, 32, "host")
    assert as_buffer(Pointer(ptr, 32, "device", device=3)).device == 3
    with pytest.raises(InvalidArgumentError, match="unknown memory kind"):
        Pointer(ptr, 32, "gpu")
    with pytest.raises(InvalidArgumentError):
        Pointer(-1, 32)


@needs_no_cuda
def test_pointer_auto_is_host_without_cuda():
    backing = (ctypes.c_char * 8)()
    view = as_buffer(Pointer(ctypes.addressof(backing), 8))
    assert (view.kind, view.device) == ("host", None)
    assert as_buffer(Pointer(ctypes.addressof(backing), 8, "device")).device == 0


# --- sizes and slices ------------------------------------------------------------------------------
def test_nbytes_limits_the_view_and_too_large_names_both_sizes():
    data = bytearray(100)
    assert as_buffer(data, 40).nbytes == 40
    assert as_buffer(data, 0).nbytes == 0
    with pytest.raises(InvalidArgumentError, match=r"nbytes=101 .* 100 bytes") as info:
        as_buffer(data, 101)
    assert isinstance(info.value, ValueError)
    with pytest.raises(InvalidArgumentError):
        as_buffer(data, -1)


def test_slice_bounds():
    data = bytearray(range(64))
    view = as_buffer(data)
    part = view.slice(8, 16)
    assert (part.ptr, part.nbytes, part.owner, part.kind) == (view.ptr + 8, 16, view.owner, "host")
    assert read(part) == bytes(range(8, 24))
    assert view.slice(64, 0).nbytes == 0
    for offset, size in ((60, 8), (65, 0), (-1, 4), (0, -1)):
        with pytest.raises(InvalidArgumentError):
            view.slice(offset, size)


@given(st.binary(max_size=300), st.data())
def test_any_slice_reads_the_same_bytes_as_python_slicing(blob, data):
    start = data.draw(st.integers(0, len(blob)))
    size = data.draw(st.integers(0, len(blob) - start))
    assert read(as_buffer(blob).slice(start, size)) == blob[start:start + size]
    assert read(as_buffer(memoryview(blob)[start:start + size])) == blob[start:start + size]


def test_buffer_view_checks_its_fields_and_passes_through_as_buffer():
    with pytest.raises(InvalidArgumentError, match="unknown memory kind"):
        BufferView(0, 0, "vram")
    view = BufferView(4096, 10, "device", 0)
    assert as_buffer(view) is view
    assert as_buffer(view, 4) == BufferView(4096, 4, "device", 0)


# --- unsupported objects ---------------------------------------------------------------------------
@pytest.mark.parametrize("obj", [[1, 2, 3], "text", 42, None])
def test_unsupported_types_name_the_type_and_what_is_accepted(obj):
    with pytest.raises(UnsupportedBufferError) as info:
        as_buffer(obj)
    message = str(info.value)
    assert type(obj).__qualname__ in message
    assert "__cuda_array_interface__" in message and "Pointer" in message
    assert isinstance(info.value, TypeError)


# --- DLPack ----------------------------------------------------------------------------------------
def test_dlpack_cpu_torch_tensor():
    t = torch.arange(16, dtype=torch.int32)
    view = as_buffer(DLPackOnly(t))
    assert (view.ptr, view.nbytes, view.kind, view.device) == (t.data_ptr(), 64, "host", None)
    assert read(view) == t.numpy().tobytes()
    offset_view = as_buffer(DLPackOnly(t[4:]))  # data + byte_offset
    assert offset_view.ptr == t.data_ptr() + 16


def test_dlpack_numpy_array_keeps_memory_alive_and_calls_the_deleter():
    arr = np.arange(1000, dtype=np.int64)
    expected = arr.tobytes()
    baseline = sys.getrefcount(arr)
    view = as_buffer(DLPackOnly(arr))
    assert (view.ptr, view.nbytes, view.kind) == (arr.ctypes.data, 8000, "host")
    assert sys.getrefcount(arr) > baseline  # numpy's DLPack context holds the array
    del arr
    gc.collect()
    assert read(view) == expected
    source = view.owner.source.source
    del view
    gc.collect()
    assert sys.getrefcount(source) == baseline  # the deleter ran exactly once


def test_dlpack_non_contiguous_is_refused_without_leaking():
    arr = np.arange(20, dtype=np.float32)
    baseline = sys.getrefcount(arr)
    with pytest.raises(UnsupportedBufferError, match="contiguous"):
        as_buffer(DLPackOnly(arr[::2]))
    gc.collect()
    assert sys.getrefcount(arr) == baseline


# --- __cuda_array_interface__ ----------------------------------------------------------------------
@needs_no_cuda
def test_cuda_array_interface_maps_to_device_memory_without_touching_it():
    obj = CudaArray(0xDEAD0000, (4, 8), "<f4")
    view = as_buffer(obj)
    assert (view.ptr, view.nbytes, view.kind, view.device, view.readonly) == (0xDEAD0000, 128, "device", 0, False)
    assert view.owner is obj
    assert as_buffer(CudaArray(0xDEAD0000, (3,), "<f8", readonly=True, version=2)).readonly
    explicit = as_buffer(CudaArray(0xDEAD0000, (2, 3), "<i2", strides=(6, 2)))
    assert explicit.nbytes == 12


def test_cuda_array_interface_non_contiguous_is_refused():
    with pytest.raises(UnsupportedBufferError, match="not C-contiguous"):
        as_buffer(CudaArray(0xDEAD0000, (4, 8), "<f4", strides=(64, 4)))


# --- CUDA helpers without CUDA ---------------------------------------------------------------------
@needs_no_cuda
def test_cuda_helpers_report_clearly_without_cuda():
    assert memory.cuda_available() is False
    assert memory.device_count() == 0
    with pytest.raises(DriverUnavailableError, match="CUDA is not usable"):
        DeviceBuffer(16)
    with pytest.raises(DriverUnavailableError):
        PinnedBuffer(16)
    with pytest.raises(DriverUnavailableError):
        memory.pointer_kind(0x1000)
    with pytest.raises(DriverUnavailableError):
        memory.copy(bytearray(4), BufferView(0xDEAD0000, 4, "device", 0), 4)


def test_cuda_available_in_a_fresh_process_returns_false_without_cuda_python_or_torch():
    script = ("import sys, pygds.memory as m; ok = m.cuda_available(); "
              "print(ok, 'torch' in sys.modules, 'numpy' in sys.modules)")
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    available, torch_loaded, numpy_loaded = out.stdout.split()
    assert available == str(not CPU_ONLY)
    assert (torch_loaded, numpy_loaded) == ("False", "False")


def test_host_to_host_copy_needs_no_cuda():
    src = bytes(range(200))
    dst = bytearray(300)
    memory.copy(as_buffer(dst).slice(100, 150), as_buffer(src).slice(50, 150), 150)
    assert dst[100:250] == src[50:200] and dst[:100] == bytes(100)
    memory.copy(dst, b"xyz", 3)  # plain objects are adapted too
    assert dst[:3] == b"xyz"
    with pytest.raises(InvalidArgumentError, match="does not fit"):
        memory.copy(dst, src, 201)
    with pytest.raises(InvalidArgumentError, match="read-only"):
        memory.copy(b"fixed", src, 3)



# --- on a real GPU (gpu marker: skipped where none is) ---------------------------------------------
def cuda_torch() -> None:
    if not torch.cuda.is_available():
        pytest.skip("this torch build has no CUDA support (install a CUDA build of torch)")


@pytest.mark.gpu
def test_torch_cuda_tensor_is_device_memory():
    cuda_torch()
    t = torch.arange(1000, dtype=torch.int32, device="cuda")
    view = as_buffer(t)
    assert (view.ptr, view.nbytes, view.kind, view.device) == (t.data_ptr(), 4000, "device", t.device.index)
    assert memory.pointer_kind(view.ptr) == ("device", t.device.index)
    via_dlpack = as_buffer(DLPackOnly(t))
    assert (via_dlpack.ptr, via_dlpack.kind, via_dlpack.device) == (t.data_ptr(), "device", t.device.index)
    out = bytearray(4000)
    torch.cuda.synchronize()
    memory.copy(out, view, 4000)
    assert bytes(out) == t.cpu().numpy().tobytes()


@pytest.mark.gpu
def test_torch_pinned_tensor_and_pageable_memory():
    cuda_torch()
    pinned = torch.empty(64).pin_memory()
    assert as_buffer(pinned).kind == "pinned"
    assert memory.pointer_kind(pinned.data_ptr()) == ("pinned", None)
    assert memory.pointer_kind(as_buffer(bytearray(64)).ptr) == ("host", None)


@pytest.mark.gpu
def test_device_buffer_is_usable_by_torch_through_its_interface():
    cuda_torch()
    with DeviceBuffer(256) as dev:
        dev.copy_from_host(bytes(range(256)))
        t = torch.as_tensor(dev, device="cuda")
        assert t.data_ptr() == dev.ptr and t.dtype == torch.uint8
        assert t.cpu().numpy().tobytes() == bytes(range(256))


@pytest.mark.gpu
def test_cupy_arrays_through_cuda_array_interface_and_dlpack():
    cupy = pytest.importorskip("cupy", reason="CuPy is not installed")
    arr = cupy.arange(100, dtype=cupy.float32)
    view = as_buffer(arr)
    assert (view.ptr, view.nbytes, view.kind) == (arr.data.ptr, 400, "device")
    assert as_buffer(DLPackOnly(arr)).ptr == arr.data.ptr
    with pytest.raises(UnsupportedBufferError, match="contiguous"):
        as_buffer(arr[::2])
