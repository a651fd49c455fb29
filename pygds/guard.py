"""The checks that keep cuFile and hipFile from hanging, and the `auto` engine choice with its reason.

libcufile 1.20 reads `/proc/modules` in a `getline` loop that never ends when the open failed,
so `cuFileDriverOpen` spins forever in sandboxes without that file (gVisor-style containers).
It also needs a CUDA driver to do anything useful with GPU memory. Both are checked here, each
within a second, before pygds lets any cuFile call run. hipFile initialises the HIP runtime on
its first call; pygds first checks, within a second, that libamdhip64 loads, `hipInit` succeeds and
an AMD GPU is visible.
"""
from __future__ import annotations

import ctypes
import logging
import os
import threading
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

from .errors import DriverUnavailableError, InvalidArgumentError, LibraryNotFoundError, PygdsError, hip_error_name

log = logging.getLogger(__name__)

ENGINES = ("auto", "cufile", "hipfile", "posix")
ENGINE_ENV = "PYGDS_ENGINE"
_CUDA_TIMEOUT_S = 1.0
_HIP_TIMEOUT_S = 1.0


@dataclass(frozen=True)
class Check:
    """The outcome of one check: whether it passed, why, and what to do about it."""

    ok: bool
    reason: str
    fix: str = ""


def check_proc_modules(path: str = "/proc/modules") -> Check:
    """Open and read `/proc/modules` as libcufile does (an `open`, so shims that redirect it count)."""
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as exc:
        return Check(False, f"{path} cannot be read ({exc.strerror or exc}); libcufile "
                            "would spin forever in cuFileDriverOpen reading it",
                     "run where /proc/modules is readable (not a gVisor-style sandbox), "
                     "or use the POSIX engine (engine='posix' or PYGDS_ENGINE=posix)")
    return Check(True, f"{path} is readable")


def _probe_cuda() -> Check:
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
def check_cuda_driver() -> Check:
    """libcuda loads, `cuInit` succeeds and at least one device exists — decided within a second."""
    return _probe_within(_probe_cuda, _CUDA_TIMEOUT_S, "pygds-cuda-probe", Check(
        False, f"the CUDA driver did not answer cuInit within {_CUDA_TIMEOUT_S:.0f} s",
        "check the NVIDIA driver (nvidia-smi), or use the POSIX engine"))


def _probe_within(probe: Callable[[], Check], seconds: float, name: str, silent: Check) -> Check:
    """`probe()` on a daemon thread, or `silent` when it has not answered within `seconds`: a hung
    driver call cannot be interrupted, only left behind."""
    result: list[Check] = []
    worker = threading.Thread(target=lambda: result.append(probe()), daemon=True, name=name)
    worker.start()
    worker.join(seconds)
    return result[0] if result else silent


def loaded_hip_runtime(maps: str = "/proc/self/maps") -> str | None:
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


def hip_runtime_path() -> str:
    """The HIP runtime to probe: the one already in this process, else the one `find_library` finds."""
    from ._lib import HIP_RUNTIME_SPEC, find_library

    return loaded_hip_runtime() or find_library(HIP_RUNTIME_SPEC).path


def _probe_hip() -> Check:
    try:
        path = hip_runtime_path()
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
def check_hip_runtime() -> Check:
    """libamdhip64 loads, `hipInit` succeeds and at least one AMD GPU exists — decided within a second."""
    return _probe_within(_probe_hip, _HIP_TIMEOUT_S, "pygds-hip-probe", Check(
        False, f"the HIP runtime did not answer hipInit within {_HIP_TIMEOUT_S:.0f} s",
        "check the amdgpu driver (`amd-smi list`, dmesg), or use the POSIX engine"))


def ensure_hipfile_safe() -> None:
    """Raise `DriverUnavailableError` (cause and fix) unless hipFile can run without hanging."""
    check = check_hip_runtime()
    if not check.ok:
        raise DriverUnavailableError(f"hipFile cannot be used: {check.reason}. Fix: {check.fix}")


def nvidia_fs_loaded() -> bool:
    """Whether the nvidia-fs kernel module is present (true GDS); without it cuFile runs in compat mode."""
    return os.path.exists("/proc/driver/nvidia-fs")


def ensure_cufile_safe() -> None:
    """Raise `DriverUnavailableError` (cause and fix) unless cuFile can run without hanging."""
    for check in (check_proc_modules(), check_cuda_driver()):
        if not check.ok:
            raise DriverUnavailableError(f"cuFile cannot be used: {check.reason}. Fix: {check.fix}")


@dataclass(frozen=True)
class EngineChoice:
    """Which engine runs and why."""

    name: str
    reason: str


def requested_engine(engine: str | None) -> str:
    """The engine asked for: the argument, else `PYGDS_ENGINE`, else `auto`; validated."""
    name = (engine or os.environ.get(ENGINE_ENV) or "auto").strip().lower()
    if name not in ENGINES:
        source = "engine argument" if engine else ENGINE_ENV
        raise InvalidArgumentError(f"unknown engine {name!r} in {source}; choose one of {', '.join(ENGINES)}")
    return name


_fallback_logged: set[str] = set()
_fallback_lock = threading.Lock()


def log_fallback_once(reason: str) -> None:
    """One WARNING per distinct reason for falling back to POSIX, never one per I/O."""
    with _fallback_lock:
        if reason in _fallback_logged:
            return
        _fallback_logged.add(reason)
    log.warning("pygds: using the POSIX engine because %s", reason)


def choose_engine(engine: str | None = None) -> EngineChoice:
    """Resolve `auto` to the engine that will work here, with the reason, without opening anything.

    `auto` picks cuFile when libcufile loads and the guard passes, else hipFile when it is usable,
    else POSIX. An explicit engine is returned as asked; opening it reports its own errors.
    """
    name = requested_engine(engine)
    if name != "auto":
        return EngineChoice(name, f"requested ({'engine argument' if engine else ENGINE_ENV})")
    reasons = []
    try:
        from ._lib import cufile

        lib = cufile()
        ensure_cufile_safe()
        return EngineChoice("cufile", f"libcufile {lib.version_string} at {lib.path} and a usable CUDA driver")
    except PygdsError as exc:
        reasons.append(str(exc))  # the message names cuFile or libcufile already
    hip = _hipfile_check()
    if hip.ok:
        return EngineChoice("hipfile", hip.reason)
    reasons.append(f"hipFile: {hip.reason}")
    return EngineChoice("posix", "; ".join(reasons))


def _hipfile_check() -> Check:
    """Whether the hipFile engine says it is usable here, and why."""
    try:
        from .engines import hipfile
    except ImportError:
        return Check(False, "this pygds has no hipFile engine")
    return hipfile.usable()
