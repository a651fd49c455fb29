"""cuFile's never-hang guard: whether cuFile can run here, and why not, decided within a second.

libcufile 1.20 reads `/proc/modules` in a `getline` loop that never ends when the open failed,
so `cuFileDriverOpen` spins forever in sandboxes without that file (gVisor-style containers).
It also needs a CUDA driver to do anything useful with GPU memory. Both are checked before pygds
lets any cuFile call run (the CUDA probe is `pygds.cuda.check_driver`, which GPU memory uses too).
"""
from __future__ import annotations

import os

from ... import cuda
from ..._lib import CUFILE_SPEC, cufile
from ..._probe import Check
from ...errors import DriverUnavailableError, LibraryNotFoundError, PygdsError

NVIDIA_FS = "/proc/driver/nvidia-fs"


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


def nvidia_fs_loaded() -> bool:
    """Whether the nvidia-fs kernel module is present (true GDS); without it cuFile runs in its
    compatibility mode. Its /proc directory is opened (an `open`, as libcufile opens the files in
    it), so the sandbox shim of tests/standin can present GDS mode."""
    try:
        fd = os.open(NVIDIA_FS, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return False
    os.close(fd)
    return True


def gds_mode() -> Check:
    """Whether cuFile would move data by DMA here (ok) or run its compatibility mode, which is POSIX
    I/O through host memory underneath (not ok); the reason says which and why."""
    if nvidia_fs_loaded():
        return Check(True, f"nvidia-fs is loaded ({NVIDIA_FS}): GDS mode, DMA between storage and GPU memory")
    return Check(False, f"nvidia-fs is not loaded ({NVIDIA_FS} is absent): cuFile would run its compatibility "
                        "mode, POSIX I/O through host memory underneath",
                 "load the nvidia-fs kernel module (modprobe nvidia_fs) for GPUDirect Storage")


def _safety_checks() -> tuple[Check, ...]:
    return check_proc_modules(), cuda.check_driver()


def ensure_safe() -> None:
    """Raise `DriverUnavailableError` (cause and fix) unless cuFile can run without hanging."""
    for check in _safety_checks():
        if not check.ok:
            raise DriverUnavailableError(f"cuFile cannot be used: {check.reason}. Fix: {check.fix}")


def usable() -> Check:
    """Whether cuFile can run here: libcufile loads, /proc/modules is readable and a CUDA driver
    with a device answers (within a second)."""
    try:
        lib = cufile()
    except LibraryNotFoundError as exc:
        return Check(False, "libcufile not found (looked in: " + "; ".join(exc.searched) + ")",
                     CUFILE_SPEC.install_hint)
    except PygdsError as exc:  # found but not loadable: the message names the file and why
        return Check(False, str(exc), CUFILE_SPEC.install_hint)
    for check in _safety_checks():
        if not check.ok:
            return check
    return Check(True, f"libcufile {lib.version_string} at {lib.path} and a usable CUDA driver")
