"""Buffers: anything that holds memory → `BufferView` (address, size, kind), plus device and pinned
allocations and copies between any two views.

`as_buffer` is the one door through which pygds sees user memory: torch tensors, objects with
`__cuda_array_interface__` (CuPy, Numba, ...), DLPack producers, `__array_interface__` (numpy),
the buffer protocol (bytes, bytearray, memoryview, mmap, array.array) and `Pointer`. A view's
`owner` keeps the source alive, so the address stays valid as long as the view is held.

Kinds are generic ("host", "pinned", "device", "managed"); the GPU calls live in `pygds.cuda` and
`pygds.hip`, which offer the same functions, and `gpu_runtime()` picks the one that owns GPU memory
in this process: HIP on ROCm (torch built for HIP, or an AMD GPU where CUDA is not), else CUDA.
The CUDA helpers are re-exported here for callers that think in buffers.
"""
from __future__ import annotations

import ctypes
import dataclasses
import logging
import math
import operator
import sys
import weakref
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from . import cuda, hip
from ._lifetime import Closeable
from .cuda import (
    cuda_available,
    current_device,
    device_count,
    pointer_kind,
    set_device,
    stream_synchronize,
)
from .errors import CudaError, InvalidArgumentError, PygdsError, UnsupportedBufferError

__all__ = [
    "BufferView", "CudaError", "DeviceBuffer", "KINDS", "PinnedBuffer", "Pointer", "as_buffer", "copy",
    "cuda_available", "current_device", "device_count", "gpu_available", "gpu_runtime", "pointer_kind",
    "set_device", "stream_synchronize",
]

KINDS = ("host", "pinned", "device", "managed")
_HOST_KINDS = ("host", "pinned")

log = logging.getLogger(__name__)

_ACCEPTED = ("a torch tensor, an object with __cuda_array_interface__ (CuPy, Numba), a DLPack producer "
             "(__dlpack__), a numpy array or other __array_interface__ object, a bytes-like object "
             "(bytes, bytearray, memoryview, mmap, array.array), or pygds.Pointer(ptr, nbytes)")


def gpu_runtime() -> ModuleType:
    """`pygds.hip` when GPU memory here is HIP memory (torch built for ROCm, or an AMD GPU answers and
    CUDA is not usable), else `pygds.cuda`. Both offer pointer_kind, mem_alloc, memcpy, ... and raise
    errors that say what is missing (the driver, or cuda-python / hip-python)."""
    torch = sys.modules.get("torch")
    if torch is not None and getattr(getattr(torch, "version", None), "hip", None):
        return hip
    if not cuda.cuda_available() and hip.check_runtime().ok:
        return hip
    return cuda


def gpu_available() -> bool:
    """Whether the runtime `gpu_runtime()` picks is usable (a GPU, its driver and its Python binding)."""
    runtime = gpu_runtime()
    return hip.hip_available() if runtime is hip else cuda.cuda_available()


def _index(name: str, value: Any) -> int:
    try:
        value = operator.index(value)
    except TypeError:
        raise InvalidArgumentError(f"{name} must be an int, got {type(value).__name__}") from None
    if value < 0:
        raise InvalidArgumentError(f"{name} must be >= 0, got {value}")
    return value


@dataclass(frozen=True)
class BufferView:
    """`nbytes` of memory at address `ptr`, of a `kind` ("host", "pinned", "device", "managed").

    `device` is the GPU ordinal for device and managed memory (None for host memory); `owner` is
    the object that keeps the memory alive.
    """

    ptr: int
    nbytes: int
    kind: str
    device: int | None = None
    readonly: bool = False
    owner: object = dataclasses.field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise InvalidArgumentError(f"unknown memory kind {self.kind!r}; use one of {', '.join(KINDS)}")
        if self.ptr < 0 or self.nbytes < 0:
            raise InvalidArgumentError(f"a buffer needs ptr >= 0 and nbytes >= 0, got ptr={self.ptr}, "
                                       f"nbytes={self.nbytes}")

    def slice(self, offset: int, size: int) -> BufferView:
        """The `size` bytes starting `offset` bytes into this view (same kind, device and owner)."""
        offset, size = _index("offset", offset), _index("size", size)
        if offset + size > self.nbytes:
            raise InvalidArgumentError(f"slice of {size} bytes at offset {offset} ends at {offset + size}, past "
                                       f"the end of this {self.nbytes}-byte buffer; pass a smaller offset or size")
        return dataclasses.replace(self, ptr=self.ptr + offset, nbytes=size)


_new = object.__new__


def _trusted_view(ptr: int, nbytes: int, kind: str, device: int | None, readonly: bool, owner: object) -> BufferView:
    """A `BufferView` of values pygds itself has just read from a buffer's interface, without the
    checks of `BufferView.__init__`: the same object, built in a third of the time (every
    `File.read(tensor)` makes one)."""
    view = _new(BufferView)
    fields = view.__dict__
    fields["ptr"] = ptr
    fields["nbytes"] = nbytes
    fields["kind"] = kind
    fields["device"] = device
    fields["readonly"] = readonly
    fields["owner"] = owner
    return view


@dataclass(frozen=True)
class Pointer:
    """A raw address and size the caller keeps valid; `kind="auto"` asks the GPU runtime what it points at."""

    ptr: int
    nbytes: int
    kind: str = "auto"
    device: int | None = None

    def __post_init__(self) -> None:
        _index("ptr", self.ptr)
        _index("nbytes", self.nbytes)
        if self.kind != "auto" and self.kind not in KINDS:
            raise InvalidArgumentError(f"unknown memory kind {self.kind!r}; use 'auto' or one of {', '.join(KINDS)}")

    def _view(self) -> BufferView:
        kind, device = self.kind, self.device
        if (kind == "auto" or (device is None and kind not in _HOST_KINDS)) and gpu_available():
            found_kind, found_device = gpu_runtime().pointer_kind(self.ptr)
            kind = found_kind if kind == "auto" else kind
            device = found_device if device is None else device
        elif kind == "auto":
            kind = "host"
        if kind in _HOST_KINDS:
            device = None
        elif device is None:
            device = 0
        return BufferView(self.ptr, self.nbytes, kind, device, False, self)


def as_buffer(obj: object, nbytes: int | None = None, *, writable: bool = False) -> BufferView:
    """The memory of `obj` as a `BufferView`, its first `nbytes` bytes when given.

    `writable=True` refuses read-only memory (e.g. `bytes`); non-contiguous arrays and unknown
    types raise `UnsupportedBufferError`, `nbytes` beyond the object's size `InvalidArgumentError`.
    """
    view = _adapt(obj)
    if writable and view.readonly:
        raise InvalidArgumentError(f"the {type(obj).__name__} is read-only but this operation writes into it; "
                                   "pass writable memory (a bytearray, numpy array or tensor)")
    if nbytes is None:
        return view
    nbytes = _index("nbytes", nbytes)
    if nbytes > view.nbytes:
        raise InvalidArgumentError(f"nbytes={nbytes} is larger than the {view.nbytes} bytes the "
                                   f"{type(obj).__name__} holds; pass a smaller nbytes or a larger buffer")
    return view.slice(0, nbytes)


def held_view(obj: object) -> BufferView:
    """`as_buffer(obj)` for a synchronous call that holds `obj` until it returns and lets no view
    outlive it: for a `DeviceBuffer` or `PinnedBuffer`, one view made per allocation, which does
    not keep the allocation alive (the caller's reference does), instead of a new view per call."""
    cls = type(obj)
    if cls is DeviceBuffer or cls is PinnedBuffer:
        view = obj._held  # type: ignore[union-attr]
        if view is not None:  # None once closed: `_adapt` raises naming that
            return view
    return _adapt(obj)


def _adapt(obj: object) -> BufferView:
    # exact types first, one cheap test each: these are what nearly every call passes
    cls = type(obj)
    if cls is BufferView:
        return obj  # type: ignore[return-value]
    if cls is DeviceBuffer or cls is PinnedBuffer:
        return obj.view  # type: ignore[union-attr]
    numpy = sys.modules.get("numpy")
    if numpy is not None and cls is numpy.ndarray:
        return _from_numpy(obj)
    torch = sys.modules.get("torch")  # an object can only be a tensor if torch is already imported
    if torch is not None and (cls is torch.Tensor or isinstance(obj, torch.Tensor)):
        return _from_torch(torch, obj)
    if isinstance(obj, BufferView):
        return obj
    if isinstance(obj, Pointer):
        return obj._view()
    if isinstance(obj, (DeviceBuffer, PinnedBuffer)):
        return obj.view
    iface = getattr(obj, "__cuda_array_interface__", None)
    if iface is not None:
        return _from_cuda_array_interface(obj, iface)
    iface = getattr(obj, "__array_interface__", None)
    if isinstance(iface, dict) and isinstance(iface.get("data"), tuple):
        return _from_array_interface(obj, iface)
    if hasattr(obj, "__dlpack__") and hasattr(obj, "__dlpack_device__"):
        return _from_dlpack(obj)
    try:
        mv = memoryview(obj)  # type: ignore[arg-type]
    except TypeError:
        hint = "; encode text first (s.encode())" if isinstance(obj, str) else ""
        raise UnsupportedBufferError(f"pygds cannot use a {type(obj).__module__}.{type(obj).__qualname__} as a "
                                     f"buffer; pass {_ACCEPTED}{hint}") from None
    return _from_memoryview(obj, mv)


# --- torch -----------------------------------------------------------------------------------------
def _from_torch(torch: Any, t: Any) -> BufferView:
    """Read afresh on every call, never cached per tensor: `set_`, `resize_` or `.data =` give a
    tensor other storage at any time."""
    if t.layout is not torch.strided:
        raise UnsupportedBufferError(f"a {t.layout} torch tensor has no single block of memory; "
                                     "convert it with .to_dense()")
    if not t.is_contiguous():
        raise UnsupportedBufferError(f"the torch tensor of shape {tuple(t.shape)} and strides {t.stride()} "
                                     "is not contiguous; pass tensor.contiguous()")
    if t.is_conj() or t.is_neg():
        raise UnsupportedBufferError("the torch tensor is a lazy conjugate/negative view whose memory does not "
                                     "hold its values; pass tensor.resolve_conj().resolve_neg()")
    if t.is_cuda:
        return _trusted_view(t.data_ptr(), t.nbytes, "device", t.get_device(), False, t)
    if t.is_cpu:
        return _trusted_view(t.data_ptr(), t.nbytes, "pinned" if t.is_pinned() else "host", None, False, t)
    raise UnsupportedBufferError(f"torch tensors on {t.device.type!r} are not supported; "
                                 "move the tensor with .cpu() or .cuda()")


# --- array interfaces ------------------------------------------------------------------------------
def _c_contiguous(shape: tuple[int, ...], strides: Any, itemsize: int) -> bool:
    """True when `strides` (bytes, or None) describe a C-contiguous layout of `shape`."""
    if strides is None or 0 in shape:
        return True
    expected = itemsize
    for dim, stride in zip(reversed(shape), reversed(tuple(strides))):
        if dim != 1 and stride != expected:
            return False
        expected *= dim
    return True


def _layout(obj: object, iface: dict, name: str) -> tuple[int, bool, int]:
    """(address, read-only, nbytes) from an array interface dict, checking it is usable as bytes."""
    typestr = iface["typestr"]
    if typestr[1:2] == "O":
        raise UnsupportedBufferError(f"the {type(obj).__name__} holds Python object pointers, not data; "
                                     "convert it to a numeric dtype")
    if iface.get("mask") is not None:
        raise UnsupportedBufferError(f"the {type(obj).__name__} has a mask in its {name}; pass the unmasked data")
    shape, itemsize = tuple(iface["shape"]), int(typestr[2:])
    if not _c_contiguous(shape, iface.get("strides"), itemsize):
        raise UnsupportedBufferError(f"the {type(obj).__name__} of shape {shape} and strides {iface['strides']} "
                                     "is not C-contiguous; pass a contiguous copy (e.g. numpy/cupy "
                                     "ascontiguousarray)")
    ptr, readonly = iface["data"]
    return int(ptr or 0), bool(readonly), math.prod(shape) * itemsize


def _from_cuda_array_interface(obj: object, iface: dict) -> BufferView:
    ptr, readonly, nbytes = _layout(obj, iface, "__cuda_array_interface__")
    stream = iface.get("stream") if iface.get("version", 0) >= 3 else None
    kind, device = "device", 0
    if gpu_available():
        runtime = gpu_runtime()
        if stream is not None:
            runtime.stream_synchronize(stream)  # the producer's pending work on its stream must finish first
        if ptr:
            kind, device = runtime.pointer_kind(ptr)
    return BufferView(ptr, nbytes, kind, device, readonly, obj)


def _from_numpy(a: Any) -> BufferView:
    """A plain numpy array: the common case (contiguous, writable, numbers) through the buffer
    protocol, three times faster than building `__array_interface__`; anything else the full way."""
    flags = a.flags
    if flags.c_contiguous and flags.writeable and a.nbytes and not a.dtype.hasobject:
        return _trusted_view(ctypes.addressof(ctypes.c_char.from_buffer(a)), a.nbytes, "host", None, False, a)
    return _from_array_interface(a, a.__array_interface__)


def _from_array_interface(obj: object, iface: dict) -> BufferView:
    ptr, readonly, nbytes = _layout(obj, iface, "__array_interface__")
    return BufferView(ptr, nbytes, "host", None, readonly, obj)


# --- DLPack (legacy, unversioned capsules) ---------------------------------------------------------
class _DLDevice(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class _DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class _DLTensor(ctypes.Structure):
    _fields_ = [("data", ctypes.c_void_p), ("device", _DLDevice), ("ndim", ctypes.c_int32),
                ("dtype", _DLDataType), ("shape", ctypes.POINTER(ctypes.c_int64)),
                ("strides", ctypes.POINTER(ctypes.c_int64)), ("byte_offset", ctypes.c_uint64)]


class _DLManagedTensor(ctypes.Structure):
    _fields_ = [("dl_tensor", _DLTensor), ("manager_ctx", ctypes.c_void_p), ("deleter", ctypes.c_void_p)]


# PYFUNCTYPE keeps the GIL held across the call: capsule calls need it, and so may a deleter.
_capsule_get_pointer = ctypes.PYFUNCTYPE(ctypes.c_void_p, ctypes.py_object, ctypes.c_char_p)(
    ("PyCapsule_GetPointer", ctypes.pythonapi))
_capsule_set_name = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.py_object, ctypes.c_char_p)(
    ("PyCapsule_SetName", ctypes.pythonapi))
_Deleter = ctypes.PYFUNCTYPE(None, ctypes.c_void_p)

# kDLCPU, kDLCUDA, kDLCUDAHost, kDLROCM, kDLROCMHost, kDLCUDAManaged
_DLPACK_KINDS = {1: "host", 2: "device", 3: "pinned", 10: "device", 11: "pinned", 13: "managed"}
_USED_NAME = b"used_dltensor"  # static: PyCapsule_SetName keeps the pointer


def _call_deleter(deleter: int, managed: int) -> None:
    _Deleter(deleter)(managed)


class _DLPackOwner:
    """Holds a consumed DLPack tensor and calls its deleter once nothing uses the memory any more."""

    def __init__(self, source: object, managed: int, deleter: int | None) -> None:
        self.source = source
        if deleter:
            weakref.finalize(self, _call_deleter, deleter, managed)


def _from_dlpack(obj: Any) -> BufferView:
    device_type, device_id = (int(x) for x in obj.__dlpack_device__())
    kind = _DLPACK_KINDS.get(device_type)
    if kind is None:
        raise UnsupportedBufferError(f"the {type(obj).__name__} lives on DLPack device type {device_type}; "
                                     "pygds takes CPU (1), CUDA (2), CUDA host (3), ROCm (10), ROCm host (11) "
                                     "and CUDA managed (13) memory")
    capsule = obj.__dlpack__()
    managed = _capsule_get_pointer(capsule, b"dltensor")
    tensor = _DLManagedTensor.from_address(managed).dl_tensor
    bits = tensor.dtype.bits * tensor.dtype.lanes
    if bits % 8:
        raise UnsupportedBufferError(f"the {type(obj).__name__} has {bits}-bit elements; pygds moves whole bytes")
    shape = tuple(tensor.shape[i] for i in range(tensor.ndim))
    strides = None if not tensor.strides else tuple(tensor.strides[i] * (bits // 8) for i in range(tensor.ndim))
    if not _c_contiguous(shape, strides, bits // 8):
        raise UnsupportedBufferError(f"the {type(obj).__name__} of shape {shape} is not C-contiguous; "
                                     "pass a contiguous copy")
    ptr = (tensor.data or 0) + tensor.byte_offset
    deleter = _DLManagedTensor.from_address(managed).deleter
    _capsule_set_name(capsule, _USED_NAME)  # consumed: from here on the deleter is ours to call
    owner = _DLPackOwner(obj, managed, deleter)
    device = tensor.device.device_id if kind in ("device", "managed") else None
    if kind in ("device", "managed") and gpu_available():
        gpu_runtime().stream_synchronize(0)  # unversioned __dlpack__() orders the producer's work on the legacy stream
    return BufferView(ptr, math.prod(shape) * (bits // 8), kind, device, False, owner)


# --- buffer protocol -------------------------------------------------------------------------------
class _PyBuffer(ctypes.Structure):
    _fields_ = [("buf", ctypes.c_void_p), ("obj", ctypes.c_void_p), ("len", ctypes.c_ssize_t),
                ("itemsize", ctypes.c_ssize_t), ("readonly", ctypes.c_int), ("ndim", ctypes.c_int),
                ("format", ctypes.c_char_p), ("shape", ctypes.c_void_p), ("strides", ctypes.c_void_p),
                ("suboffsets", ctypes.c_void_p), ("internal", ctypes.c_void_p)]


_get_buffer = ctypes.PYFUNCTYPE(ctypes.c_int, ctypes.py_object, ctypes.POINTER(_PyBuffer), ctypes.c_int)(
    ("PyObject_GetBuffer", ctypes.pythonapi))
_release_buffer = ctypes.PYFUNCTYPE(None, ctypes.POINTER(_PyBuffer))(("PyBuffer_Release", ctypes.pythonapi))


def _from_memoryview(obj: object, mv: memoryview) -> BufferView:
    if not mv.c_contiguous:
        raise UnsupportedBufferError(f"the {type(obj).__name__} is not C-contiguous; pass a contiguous copy "
                                     "(e.g. bytearray(view))")
    # The memoryview is the owner: it holds the export, so the object can neither be freed nor
    # resized (bytearray) or closed (mmap) while the view lives, and the address stays valid.
    info = _PyBuffer()
    _get_buffer(mv, ctypes.byref(info), 0)  # PyBUF_SIMPLE: the address, nothing else
    try:
        ptr = info.buf or 0
    finally:
        _release_buffer(ctypes.byref(info))
    return BufferView(ptr, mv.nbytes, "host", None, mv.readonly, mv)


# --- allocations -----------------------------------------------------------------------------------
def _free_quietly(free: Any, *args: int) -> None:
    """Free from a finalizer: a failure (e.g. the GPU runtime already shut down at exit) is logged, not raised."""
    try:
        free(*args)
    except PygdsError as exc:
        log.warning("pygds could not free GPU memory: %s", exc)


class _Allocation(Closeable):
    """The life cycle DeviceBuffer and PinnedBuffer share: `close()` (twice is fine), `with`, GC."""

    nbytes: int
    _ptr: int
    _free: weakref.finalize | None
    _kind: str  # of the memory, for `view`
    device: int | None

    def _track(self, ptr: int, free: Any, *args: int) -> None:
        self._ptr, self._closed = ptr, False
        self._free = weakref.finalize(self, _free_quietly, free, ptr, *args) if ptr else None
        # made once (the memory never moves) for `held_view`; without an owner, so no cycle
        self._held: BufferView | None = _trusted_view(ptr, self.nbytes, self._kind, self.device, False, None)

    @property
    def ptr(self) -> int:
        if self._closed:
            raise InvalidArgumentError(f"the {type(self).__name__} is closed; allocate a new one")
        return self._ptr

    @property
    def view(self) -> BufferView:
        """The whole buffer as a `BufferView` that keeps this buffer alive. Built on each call, cheaply
        (`_trusted_view`): a view kept inside the buffer would hold the buffer in a reference cycle,
        and the memory would then wait for the cycle collector instead of being freed when the
        last reference goes."""
        if self._closed:
            raise InvalidArgumentError(f"the {type(self).__name__} is closed; allocate a new one")
        return _trusted_view(self._ptr, self.nbytes, self._kind, self.device, False, self)

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Free the memory now; views taken earlier must not be used afterwards."""
        self._closed, self._held = True, None
        if self._free is not None:
            self._free()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"ptr={self._ptr:#x}"
        return f"{type(self).__name__}(nbytes={self.nbytes}, {state})"


class DeviceBuffer(_Allocation):
    """`nbytes` of device memory (`cuMemAlloc`, or `hipMalloc` on ROCm) on `device` (default: the current one).

    Freed by `close()`, the end of a `with` block, or garbage collection. Exposes
    `__cuda_array_interface__`, so torch.as_tensor, CuPy and Numba can use it directly.
    """

    _kind = "device"

    def __init__(self, nbytes: int, device: int | None = None) -> None:
        self.nbytes = _index("nbytes", nbytes)
        runtime = gpu_runtime()
        self.device = runtime.current_device() if device is None else device
        self._track(runtime.mem_alloc(self.nbytes, self.device) if self.nbytes else 0, runtime.mem_free,
                    self.device)

    @property
    def __cuda_array_interface__(self) -> dict:
        return {"shape": (self.nbytes,), "typestr": "|u1", "data": (self.ptr, False), "strides": None,
                "version": 3}

    def copy_from_host(self, src: object, nbytes: int | None = None, *, offset: int = 0) -> int:
        """Copy `nbytes` (default: all of `src`) from any buffer into this one at `offset`; returns bytes."""
        view = as_buffer(src, nbytes)
        copy(self.view.slice(offset, view.nbytes), view, view.nbytes)
        return view.nbytes

    def copy_to_host(self, dst: object, nbytes: int | None = None, *, offset: int = 0) -> int:
        """Copy `nbytes` (default: all of `dst`) from this buffer at `offset` into any buffer; returns bytes."""
        view = as_buffer(dst, nbytes, writable=True)
        copy(view, self.view.slice(offset, view.nbytes), view.nbytes)
        return view.nbytes


class PinnedBuffer(_Allocation):
    """`nbytes` of page-locked host memory (`cuMemAllocHost`, or `hipHostMalloc` on ROCm): fast to copy to
    and from the GPU.

    `.buffer` is a writable memoryview of it (also `memoryview(buf)` on Python 3.12+); each such
    view keeps the allocation alive. `close()` frees it at once: views taken earlier must not be
    used afterwards.
    """

    _kind = "pinned"
    device = None

    def __init__(self, nbytes: int) -> None:
        self.nbytes = _index("nbytes", nbytes)
        runtime = gpu_runtime()
        self._track(runtime.mem_alloc_host(self.nbytes) if self.nbytes else 0, runtime.mem_free_host)

    @property
    def buffer(self) -> memoryview:
        if not self.nbytes:
            return memoryview(bytearray())
        array = (ctypes.c_ubyte * self.nbytes).from_address(self.ptr)
        array._owner = self  # the memoryview holds the array, the array holds this allocation
        return memoryview(array).cast("B")

    def __buffer__(self, flags: int) -> memoryview:
        return self.buffer


def copy(dst: object, src: object, nbytes: int, *, stream: object = None) -> None:
    """Copy `nbytes` from `src` to `dst` (views or anything `as_buffer` takes), whatever their kinds.

    Host and pinned memory on both sides is a plain memmove; otherwise the matching cuMemcpy or
    hipMemcpy (of `gpu_runtime()`; HtoD, DtoH, DtoD) runs on the device involved. With `stream` (an
    int handle or anything `int()` accepts) a GPU copy is ordered on that stream and may still be
    running on return.
    """
    dst = dst if isinstance(dst, BufferView) else as_buffer(dst, writable=True)
    src = src if isinstance(src, BufferView) else as_buffer(src)
    nbytes = _index("nbytes", nbytes)
    if dst.readonly:
        raise InvalidArgumentError("cannot copy into read-only memory; pass a writable destination")
    if nbytes > dst.nbytes or nbytes > src.nbytes:
        raise InvalidArgumentError(f"copy of {nbytes} bytes does not fit: destination holds {dst.nbytes}, "
                                   f"source {src.nbytes}; pass a smaller nbytes")
    if not nbytes:
        return
    handle = None if stream is None else int(stream)  # type: ignore[call-overload]
    runtime = gpu_runtime()
    if dst.kind in _HOST_KINDS and src.kind in _HOST_KINDS:
        if handle is not None:
            runtime.stream_synchronize(handle)
        ctypes.memmove(dst.ptr, src.ptr, nbytes)
        return
    device = dst.device if dst.kind not in _HOST_KINDS else src.device
    runtime.memcpy(dst.ptr, dst.kind, src.ptr, src.kind, nbytes, device=device, stream=handle)
