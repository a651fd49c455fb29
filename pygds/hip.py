"""Thin helpers over hip-python: availability, devices, pointer attributes, raw allocation, copies and
streams, under the same names as `pygds.cuda` so `pygds.memory` can use either.

hip-python (`from hip import hip`) is imported on first use, and only after `guard.check_hip_runtime`
has seen libamdhip64 load, `hipInit` succeed and a GPU answer within a second, so pygds imports and
`hip_available()` returns quickly on machines without ROCm. Every helper takes and returns plain
ints and raises `HipError` naming the HIP error instead of returning hip-python's tuples. HIP keeps
one current device per thread (no contexts to retain): helpers that need a device switch to it for
the call and switch back.
"""
from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from typing import Any

from . import guard
from .errors import DriverUnavailableError, InvalidArgumentError, PygdsError, hip_error_name

log = logging.getLogger(__name__)

_HIP_PYTHON_HINT = ("install hip-python for your ROCm version (pip install hip-python, or the "
                    "hip-python wheel matching ROCm from AMD's index)")


class HipError(PygdsError, RuntimeError):
    """A HIP runtime call failed: carries the call (`op`), the `hipError_t` `code` and its `name`."""

    def __init__(self, op: str, code: int, name: str, detail: str = "") -> None:
        self.op, self.code, self.name = op, code, name
        message = f"{op} failed with {name} ({code})"
        super().__init__(f"{message}: {detail}" if detail else message)


_lock = threading.RLock()
_state: dict[str, Any] = {}  # "hip": the hip-python module, "available", "reason"


def _import_hip() -> Any:
    from hip import hip  # hip-python; also provided by rocm-bindings-hip as rocm.bindings.hip

    return hip


def _name(err: Any) -> str:
    name = getattr(err, "name", None)
    return name if name else hip_error_name(int(err))


def _probe() -> tuple[bool, str]:
    check = guard.check_hip_runtime()  # raw libamdhip64 probe with a timeout: never hangs
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
