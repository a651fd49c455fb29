"""Thin helpers over cuda-python's driver API: availability, devices, primary contexts, pointer
attributes, raw allocation, copies and streams.

cuda-python is imported on first use, so pygds imports without it. Every helper takes and returns
plain ints (addresses, ordinals, stream handles) and raises `CudaError` naming the CUDA error
instead of returning cuda-python's `(error, value)` tuples. Memory kinds are the generic ones of
`pygds.memory` ("host", "pinned", "device", "managed"), so a HIP sibling module can offer the same
functions under the same names.

pygds calls CUDA from worker threads that never chose a device: every helper that needs a context
first makes the primary context of the right device current (see `_on_device`).
"""
from __future__ import annotations

import contextlib
import ctypes
import logging
import threading
from collections.abc import Iterator
from functools import lru_cache
from typing import Any

from ._probe import Check, within
from .errors import CudaError, DriverUnavailableError, InvalidArgumentError

log = logging.getLogger(__name__)

_DRIVER_TIMEOUT_S = 1.0


def _probe_driver() -> Check:
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError as exc:
        return Check(False, f"the CUDA driver library libcuda.so.1 cannot be loaded ({exc})",
                     "install the NVIDIA driver (or run on a GPU machine), or use the POSIX engine")
    rc = cuda.cuInit(0)
    if rc != 0:
        return Check(False, f"cuInit failed with CUresult {rc}",
                     "check that the NVIDIA driver and its kernel module are loaded and a GPU is "
                     "visible (nvidia-smi), or use the POSIX engine")
    count = ctypes.c_int(0)
    rc = cuda.cuDeviceGetCount(ctypes.byref(count))
    if rc != 0 or count.value < 1:
        return Check(False, f"no CUDA device is visible (cuDeviceGetCount -> {rc}, {count.value} devices)",
                     "check CUDA_VISIBLE_DEVICES and nvidia-smi, or use the POSIX engine")
    return Check(True, f"CUDA driver usable with {count.value} device(s)")


@lru_cache(maxsize=1)
def check_driver() -> Check:
    """The raw libcuda probe of the never-hang guard: libcuda loads, `cuInit` succeeds and at least
    one device exists, decided within a second (a hung driver is left behind on its thread)."""
    return within(_probe_driver, _DRIVER_TIMEOUT_S, "pygds-cuda-probe", Check(
        False, f"the CUDA driver did not answer cuInit within {_DRIVER_TIMEOUT_S:.0f} s",
        "check the NVIDIA driver (nvidia-smi), or use the POSIX engine"))


_lock = threading.RLock()
_state: dict[str, Any] = {}          # "driver": the cuda-python module, "available", "reason"
_primary: dict[int, Any] = {}        # device ordinal -> retained primary CUcontext


def _import_driver() -> Any:
    try:
        from cuda.bindings import driver  # cuda-python >= 12.6
    except ImportError:
        from cuda import cuda as driver  # older cuda-python 12.x
    return driver


def _probe() -> tuple[bool, str]:
    check = check_driver()  # raw libcuda probe with a timeout: never hangs
    if not check.ok:
        return False, check.reason
    try:
        driver = _import_driver()
    except ImportError as exc:
        return False, f"cuda-python is not installed ({exc}); install pygds[cuda13] or pygds[cuda12]"
    try:
        (err,) = driver.cuInit(0)
        if err != driver.CUresult.CUDA_SUCCESS:
            return False, f"cuda-python's cuInit failed with {_name(driver, err)}"
        err, count = driver.cuDeviceGetCount()
        if err != driver.CUresult.CUDA_SUCCESS or count < 1:
            return False, f"no CUDA device is visible through cuda-python ({_name(driver, err)}, {count})"
    except Exception as exc:  # cuda-python raises its own loader errors when libcuda is missing
        return False, f"cuda-python cannot use the CUDA driver ({type(exc).__name__}: {exc})"
    _state["driver"] = driver
    _state["success"] = driver.CUresult.CUDA_SUCCESS
    return True, f"{count} CUDA device(s)"


def cuda_available() -> bool:
    """True when cuda-python and a CUDA driver with at least one device are usable; cached, never raises."""
    if "available" not in _state:
        with _lock:
            if "available" not in _state:
                try:
                    ok, reason = _probe()
                except Exception as exc:  # the promise is a bool, whatever went wrong
                    ok, reason = False, f"{type(exc).__name__}: {exc}"
                if not ok:
                    log.debug("CUDA is not usable: %s", reason)
                _state["reason"] = reason
                _state["available"] = ok
    return _state["available"]


def _driver() -> Any:
    if not cuda_available():
        raise DriverUnavailableError(f"CUDA is not usable: {_state['reason']}. Fix: run on a machine with an "
                                     "NVIDIA GPU and driver and install cuda-python, or use host memory")
    return _state["driver"]


def _name(driver: Any, err: Any) -> str:
    name = getattr(err, "name", None)
    if name:
        return name
    try:
        got, raw = driver.cuGetErrorName(err)
        if got == driver.CUresult.CUDA_SUCCESS and raw:
            return raw.decode()
    except Exception:  # an unknown code: fall through to the number
        pass
    return f"CUresult {int(err)}"


def _call(op: str, *args: Any) -> Any:
    """Call `driver.<op>(*args)`; return the single value (or None), raise `CudaError` on failure."""
    driver = _state["driver"]
    err, *values = getattr(driver, op)(*args)
    if err != driver.CUresult.CUDA_SUCCESS:
        raise CudaError(op, int(err), _name(driver, err))
    return values[0] if len(values) == 1 else None


def device_count() -> int:
    """How many CUDA devices are visible; 0 when CUDA is not usable."""
    if not cuda_available():
        return 0
    return int(_call("cuDeviceGetCount"))


def _check_device(device: int) -> int:
    count = device_count()
    if not isinstance(device, int) or not 0 <= device < count:
        raise InvalidArgumentError(f"CUDA device {device!r} does not exist; this machine has {count} "
                                   f"device(s), ordinals 0..{count - 1}")
    return device


def _primary_context(device: int) -> Any:
    """The primary context of `device`, retained once per process and kept for its lifetime."""
    ctx = _primary.get(device)
    if ctx is None:
        with _lock:
            ctx = _primary.get(device)
            if ctx is None:
                dev = _call("cuDeviceGet", _check_device(device))
                ctx = _call("cuDevicePrimaryCtxRetain", dev)
                _primary[device] = ctx
    return ctx


def _context_device() -> int | None:
    """The device of this thread's current context, or None when the thread has none."""
    driver = _driver()
    err, dev = driver.cuCtxGetDevice()
    if err == driver.CUresult.CUDA_SUCCESS:
        return int(dev)
    if err == driver.CUresult.CUDA_ERROR_INVALID_CONTEXT:
        return None
    raise CudaError("cuCtxGetDevice", int(err), _name(driver, err))


def current_device() -> int:
    """The device of this thread's current context; 0 (the device pygds would pick) when there is none."""
    device = _context_device()
    return 0 if device is None else device


def set_device(device: int) -> None:
    """Make the primary context of `device` current on this thread (retaining it once per process)."""
    _driver()
    _call("cuCtxSetCurrent", _primary_context(_check_device(device)))


@contextlib.contextmanager
def _on_device(device: int | None) -> Iterator[None]:
    """Run the body with a context of `device` current (None: any current context, else device 0).

    A thread without a context gets the primary context of the device and keeps it. A thread whose
    current context belongs to another device gets the right one pushed for the body only, so the
    caller's own choice of device is left as it was.
    """
    current = _context_device()
    if current is not None and (device is None or current == device):
        yield
        return
    ctx = _primary_context(0 if device is None else device)
    if current is None:
        _call("cuCtxSetCurrent", ctx)
        yield
        return
    _call("cuCtxPushCurrent", ctx)
    try:
        yield
    finally:
        _call("cuCtxPopCurrent")


def pointer_kind(ptr: int) -> tuple[str, int | None]:
    """("device" | "managed" | "pinned" | "host", device ordinal or None) of the memory at `ptr`.

    Memory CUDA does not know (CUDA_ERROR_INVALID_VALUE) is pageable host memory.
    """
    driver = _driver()
    attr = driver.CUpointer_attribute
    with _on_device(None):
        err, memtype = driver.cuPointerGetAttribute(attr.CU_POINTER_ATTRIBUTE_MEMORY_TYPE, ptr)
        if err == driver.CUresult.CUDA_ERROR_INVALID_VALUE:
            return "host", None
        if err != driver.CUresult.CUDA_SUCCESS:
            raise CudaError("cuPointerGetAttribute", int(err), _name(driver, err), f"pointer {ptr:#x}")
        if _call("cuPointerGetAttribute", attr.CU_POINTER_ATTRIBUTE_IS_MANAGED, ptr):
            return "managed", int(_call("cuPointerGetAttribute", attr.CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL, ptr))
        if int(memtype) == int(driver.CUmemorytype.CU_MEMORYTYPE_HOST):
            return "pinned", None
        return "device", int(_call("cuPointerGetAttribute", attr.CU_POINTER_ATTRIBUTE_DEVICE_ORDINAL, ptr))


def mem_alloc(nbytes: int, device: int) -> int:
    """`cuMemAlloc` of `nbytes` (> 0) on `device`; returns the address."""
    _driver()
    with _on_device(_check_device(device)):
        return int(_call("cuMemAlloc", nbytes))


def mem_free(ptr: int, device: int) -> None:
    """`cuMemFree` of an address from `mem_alloc`."""
    _driver()
    with _on_device(device):
        _call("cuMemFree", ptr)


def mem_alloc_host(nbytes: int) -> int:
    """`cuMemAllocHost` of `nbytes` (> 0) page-locked bytes; returns the address."""
    _driver()
    with _on_device(None):
        return int(_call("cuMemAllocHost", nbytes))


def mem_free_host(ptr: int) -> None:
    """`cuMemFreeHost` of an address from `mem_alloc_host`."""
    _driver()
    with _on_device(None):
        _call("cuMemFreeHost", ptr)


_HOST_KINDS = ("host", "pinned")


def memcpy(dst: int, dst_kind: str, src: int, src_kind: str, nbytes: int, *,
           device: int | None = None, stream: int | None = None) -> None:
    """Copy `nbytes` between two addresses of the given kinds with the matching cuMemcpy call.

    Host to host is not a CUDA copy: callers use `ctypes.memmove`. With `stream` the copy is the
    `Async` variant, ordered on that stream; without, it completes before returning.
    """
    driver = _driver()
    if dst_kind in _HOST_KINDS and src_kind in _HOST_KINDS:
        raise InvalidArgumentError("memcpy copies to or from device memory; use ctypes.memmove for host to host")
    if src_kind in _HOST_KINDS:
        op = "cuMemcpyHtoD"
    elif dst_kind in _HOST_KINDS:
        op = "cuMemcpyDtoH"
    else:
        op = "cuMemcpyDtoD"
    args: tuple = (dst, src, nbytes)
    if stream is not None:
        op, args = op + "Async", (dst, src, nbytes, stream)
    success = _state["success"]
    # The common case inline (this thread's context already serves the device: one cheap query);
    # `_on_device` sets or switches the context otherwise. Bulk I/O copies through here per task.
    err, current = driver.cuCtxGetDevice()
    if err == success and (device is None or int(current) == device):
        (err,) = getattr(driver, op)(*args)
        if err != success:
            raise CudaError(op, int(err), _name(driver, err))
        return
    with _on_device(device):
        _call(op, *args)


def stream_synchronize(stream: int) -> None:
    """Wait for all work on `stream` (0: the legacy default stream)."""
    _driver()
    with _on_device(None):
        _call("cuStreamSynchronize", stream)


def stream_create(device: int | None = None) -> int:
    """A new non-blocking stream on `device` (None: the current one); its handle. It lives as long
    as the process (pygds keeps one or two per I/O thread)."""
    driver = _driver()
    with _on_device(device):
        return int(_call("cuStreamCreate", int(driver.CUstream_flags.CU_STREAM_NON_BLOCKING)))
