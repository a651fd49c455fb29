"""Thin helpers over hip-python: availability, devices, pointer attributes, raw allocation, copies and
streams, under the same names as `pygds.cuda` so `pygds.memory` can use either.

hip-python (`from hip import hip`) is imported on first use, and only after `check_runtime` (the
never-hang guard's raw probe) has seen libamdhip64 load, `hipInit` succeed and a GPU answer within a
second, so pygds imports and `hip_available()` returns quickly on machines without ROCm. Every
helper takes and returns plain ints and raises `HipError` naming the HIP error instead of returning
hip-python's tuples. HIP keeps one current device per thread (no contexts to retain): helpers that
need a device switch to it for the call and switch back.
"""
from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import threading
from collections.abc import Iterator
from functools import lru_cache
from typing import Any

from ._lib import HIP_RUNTIME_SPEC, find_library
from ._probe import Check, within
from .errors import DriverUnavailableError, HipError, InvalidArgumentError, LibraryNotFoundError, hip_error_name

log = logging.getLogger(__name__)

_HIP_PYTHON_HINT = ("install hip-python for your ROCm version (pip install hip-python, or the "
                    "hip-python wheel matching ROCm from AMD's index)")
_RUNTIME_TIMEOUT_S = 1.0


def loaded_runtime(maps: str = "/proc/self/maps") -> str | None:
    """The libamdhip64 this process has already mapped (torch built for ROCm brings its own), if any."""
    try:
        with open(maps, encoding="utf-8", errors="replace") as f:
            for line in f:
                path = line.rstrip("\n").split(maxsplit=5)[5:]
                if path and os.path.basename(path[0]).startswith("libamdhip64.so"):
                    return path[0]
    except OSError:
        pass
    return None


def runtime_path() -> str:
    """The HIP runtime to probe: the one already in this process, else the one `find_library` finds."""
    return loaded_runtime() or find_library(HIP_RUNTIME_SPEC).path


def _probe_runtime() -> Check:
    try:
        path = runtime_path()
    except LibraryNotFoundError as exc:
        return Check(False, "the HIP runtime libamdhip64 cannot be loaded (" + "; ".join(exc.searched) + ")",
                     "install ROCm on a machine with an AMD GPU (or set PYGDS_AMDHIP_LIB), or use the POSIX "
                     "engine")
    hip = ctypes.CDLL(path)
    rc = hip.hipInit(0)
    if rc != 0:
        return Check(False, f"hipInit failed with {hip_error_name(rc)} ({rc}) in {path}",
                     "check that the amdgpu kernel driver is loaded and /dev/kfd and /dev/dri are accessible "
                     "(the render and video groups; --device=/dev/kfd --device=/dev/dri in containers), or use "
                     "the POSIX engine")
    count = ctypes.c_int(0)
    rc = hip.hipGetDeviceCount(ctypes.byref(count))
    if rc != 0 or count.value < 1:
        return Check(False, f"no AMD GPU is visible (hipGetDeviceCount -> {hip_error_name(rc)}, "
                            f"{count.value} devices)",
                     "check HIP_VISIBLE_DEVICES / ROCR_VISIBLE_DEVICES and `amd-smi list`, or use the POSIX engine")
    return Check(True, f"HIP runtime {path} usable with {count.value} device(s)")


@lru_cache(maxsize=1)
def check_runtime() -> Check:
    """The raw HIP probe of the never-hang guard: libamdhip64 loads, `hipInit` succeeds and at least
    one AMD GPU exists, decided within a second (a hung runtime is left behind on its thread)."""
    return within(_probe_runtime, _RUNTIME_TIMEOUT_S, "pygds-hip-probe", Check(
        False, f"the HIP runtime did not answer hipInit within {_RUNTIME_TIMEOUT_S:.0f} s",
        "check the amdgpu driver (`amd-smi list`, dmesg), or use the POSIX engine"))


_lock = threading.RLock()
_state: dict[str, Any] = {}  # "hip": the hip-python module, "available", "reason"


def _import_hip() -> Any:
    from hip import hip  # hip-python; also provided by rocm-bindings-hip as rocm.bindings.hip

    return hip


def _name(err: Any) -> str:
    name = getattr(err, "name", None)
    return name if name else hip_error_name(int(err))


def _probe() -> tuple[bool, str]:
    check = check_runtime()  # raw libamdhip64 probe with a timeout: never hangs
    if not check.ok:
        return False, check.reason
    try:
        hip = _import_hip()
    except ImportError as exc:
        return False, f"hip-python is not installed ({exc}); {_HIP_PYTHON_HINT}"
    try:
        (err,) = hip.hipInit(0)
        if err != hip.hipError_t.hipSuccess:
            return False, f"hip-python's hipInit failed with {_name(err)}"
        err, count = hip.hipGetDeviceCount()
        if err != hip.hipError_t.hipSuccess or count < 1:
            return False, f"no AMD GPU is visible through hip-python ({_name(err)}, {count})"
    except Exception as exc:  # hip-python raises RuntimeError when its own dlopen of libamdhip64 fails
        return False, (f"hip-python cannot use the HIP runtime ({type(exc).__name__}: {exc}); put ROCm's lib "
                       "folder on the loader path (ldconfig or LD_LIBRARY_PATH)")
    _state["hip"] = hip
    return True, f"{count} AMD GPU(s)"


def hip_available() -> bool:
    """True when hip-python and a HIP runtime with at least one GPU are usable; cached, never raises."""
    if "available" not in _state:
        with _lock:
            if "available" not in _state:
                try:
                    ok, reason = _probe()
                except Exception as exc:  # the promise is a bool, whatever went wrong
                    ok, reason = False, f"{type(exc).__name__}: {exc}"
                if not ok:
                    log.debug("HIP is not usable: %s", reason)
                _state["reason"] = reason
                _state["available"] = ok
    return _state["available"]


def _hip() -> Any:
    if not hip_available():
        raise DriverUnavailableError(f"HIP is not usable: {_state['reason']}. Fix: run on a machine with an AMD "
                                     f"GPU and ROCm, {_HIP_PYTHON_HINT}, or use host memory")
    return _state["hip"]


def _call(op: str, *args: Any) -> Any:
    """Call `hip.<op>(*args)`; return the single value (or None), raise `HipError` on failure."""
    hip = _state["hip"]
    err, *values = getattr(hip, op)(*args)
    if err != hip.hipError_t.hipSuccess:
        raise HipError(op, int(err), _name(err))
    return values[0] if len(values) == 1 else None


def device_count() -> int:
    """How many AMD GPUs are visible; 0 when HIP is not usable."""
    if not hip_available():
        return 0
    return int(_call("hipGetDeviceCount"))


def _check_device(device: int) -> int:
    count = device_count()
    if not isinstance(device, int) or not 0 <= device < count:
        raise InvalidArgumentError(f"HIP device {device!r} does not exist; this machine has {count} "
                                   f"device(s), ordinals 0..{count - 1}")
    return device


def current_device() -> int:
    """The calling thread's current HIP device (HIP starts every thread on device 0)."""
    _hip()
    return int(_call("hipGetDevice"))


def set_device(device: int) -> None:
    """Make `device` the calling thread's current HIP device."""
    _hip()
    _call("hipSetDevice", _check_device(device))


@contextlib.contextmanager
def _on_device(device: int | None) -> Iterator[None]:
    """Run the body with `device` current (None: leave the thread's device as it is), then restore it."""
    if device is None:
        yield
        return
    previous = int(_call("hipGetDevice"))
    if previous == device:
        yield
        return
    _call("hipSetDevice", device)
    try:
        yield
    finally:
        _call("hipSetDevice", previous)


def _attributes(ptr: int) -> Any:
    """hipPointerGetAttributes in either hip-python spelling: `(ptr)` (7.x+) or `(attributes, ptr)`."""
    hip = _state["hip"]
    try:
        return hip.hipPointerGetAttributes(ptr)
    except TypeError:
        attrs = hip.hipPointerAttribute_t()
        (err,) = hip.hipPointerGetAttributes(attrs, ptr)
        return err, attrs


def pointer_kind(ptr: int) -> tuple[str, int | None]:
    """("device" | "managed" | "pinned" | "host", device ordinal or None) of the memory at `ptr`.

    Memory HIP does not know (hipErrorInvalidValue, or hipMemoryTypeUnregistered) is pageable host
    memory.
    """
    hip = _hip()
    err, attrs = _attributes(ptr)
    if err == hip.hipError_t.hipErrorInvalidValue:
        return "host", None
    if err != hip.hipError_t.hipSuccess:
        raise HipError("hipPointerGetAttributes", int(err), _name(err), f"pointer {ptr:#x}")
    memtype = attrs.type if hasattr(attrs, "type") else attrs.memoryType  # `memoryType` before ROCm 6
    name = getattr(memtype, "name", None) or hip.hipMemoryType(int(memtype)).name
    if attrs.isManaged or name in ("hipMemoryTypeManaged", "hipMemoryTypeUnified"):
        return "managed", int(attrs.device)
    if name == "hipMemoryTypeHost":
        return "pinned", None
    if name in ("hipMemoryTypeDevice", "hipMemoryTypeArray"):
        return "device", int(attrs.device)
    return "host", None


def mem_alloc(nbytes: int, device: int) -> int:
    """`hipMalloc` of `nbytes` (> 0) on `device`; returns the address."""
    _hip()
    with _on_device(_check_device(device)):
        return int(_call("hipMalloc", nbytes))


def mem_free(ptr: int, device: int) -> None:
    """`hipFree` of an address from `mem_alloc`."""
    _hip()
    with _on_device(device):
        _call("hipFree", ptr)


def mem_alloc_host(nbytes: int) -> int:
    """Page-locked host memory of `nbytes` (> 0) bytes (`hipHostMalloc`); returns the address."""
    hip = _hip()
    op = "hipHostMalloc" if hasattr(hip, "hipHostMalloc") else "hipHostAlloc"
    return int(_call(op, nbytes, 0))


def mem_free_host(ptr: int) -> None:
    """`hipHostFree` of an address from `mem_alloc_host`."""
    hip = _hip()
    _call("hipHostFree" if hasattr(hip, "hipHostFree") else "hipFreeHost", ptr)


_HOST_KINDS = ("host", "pinned")


def memcpy(dst: int, dst_kind: str, src: int, src_kind: str, nbytes: int, *,
           device: int | None = None, stream: int | None = None) -> None:
    """Copy `nbytes` between two addresses of the given kinds with `hipMemcpy` (or `hipMemcpyAsync`).

    Host to host is not a HIP copy: callers use `ctypes.memmove`. With `stream` the copy is ordered
    on that stream and may still run on return; without, it completes before returning.
    """
    hip = _hip()
    if dst_kind in _HOST_KINDS and src_kind in _HOST_KINDS:
        raise InvalidArgumentError("memcpy copies to or from device memory; use ctypes.memmove for host to host")
    kinds = hip.hipMemcpyKind
    if src_kind in _HOST_KINDS:
        kind = kinds.hipMemcpyHostToDevice
    elif dst_kind in _HOST_KINDS:
        kind = kinds.hipMemcpyDeviceToHost
    else:
        kind = kinds.hipMemcpyDeviceToDevice
    with _on_device(device):
        if stream is None:
            _call("hipMemcpy", dst, src, nbytes, kind)
        else:
            _call("hipMemcpyAsync", dst, src, nbytes, kind, stream)


def stream_synchronize(stream: int) -> None:
    """Wait for all work on `stream` (0: the null stream of the current device)."""
    _hip()
    _call("hipStreamSynchronize", stream)


_STREAM_NON_BLOCKING = 1  # hipStreamNonBlocking in hip_runtime_api.h


def stream_create(device: int | None = None) -> int:
    """A new non-blocking stream on `device` (None: the current one); its handle. It lives as long
    as the process (pygds keeps one or two per I/O thread)."""
    _hip()
    with _on_device(device):
        return int(_call("hipStreamCreateWithFlags", _STREAM_NON_BLOCKING))
