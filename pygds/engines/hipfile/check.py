"""hipFile's never-hang guard: whether hipFile can run here, and why not, decided within a second.

hipFile initialises the HIP runtime on its first call; pygds first checks that libhipfile loads
and, within a second, that libamdhip64 loads, `hipInit` succeeds and an AMD GPU is visible (the
HIP probe is `pygds.hip.check_runtime`, which GPU memory uses too).
"""
from __future__ import annotations

from ... import hip
from ..._lib import HIPFILE_SPEC, hipfile
from ..._probe import Check
from ...errors import DriverUnavailableError, LibraryNotFoundError


def library_check() -> Check:
    """Whether libhipfile loads, and from where."""
    try:
        lib = hipfile()
    except LibraryNotFoundError as exc:
        return Check(False, "libhipfile not found (looked in: " + "; ".join(exc.searched) + ")",
                     HIPFILE_SPEC.install_hint)
    return Check(True, f"libhipfile {lib.version_string} at {lib.path}")


def usable() -> Check:
    """Whether hipFile can run here: libhipfile loads and the HIP runtime has a GPU (within a second)."""
    library = library_check()
    if not library.ok:
        return library
    runtime = hip.check_runtime()
    if not runtime.ok:
        return Check(False, f"{library.reason} is installed but {runtime.reason}", runtime.fix)
    return Check(True, f"{library.reason} and {runtime.reason}")


def ensure_safe() -> None:
    """Raise `DriverUnavailableError` (cause and fix) unless hipFile can run without hanging."""
    check = hip.check_runtime()
    if not check.ok:
        raise DriverUnavailableError(f"hipFile cannot be used: {check.reason}. Fix: {check.fix}")
