"""`Driver` (the cuFile driver, opened once per process and reference counted) and `RegisteredBuffer`.

cuFile's driver is process-wide state: every `Driver` object is a reference to it, the first one
opens it (after the never-hang guard says it is safe) and the last `close()` closes it.
Registered buffers are remembered by address range so that `File` can hand cuFile the registered
base and an offset for any view inside one, which is what makes reads and writes zero-copy.
"""
from __future__ import annotations

import atexit
import bisect
import ctypes
import logging
import threading
from dataclasses import dataclass, fields
from typing import Any

from . import _cufile_abi as abi
from . import guard
from ._lib import cufile
from .errors import InvalidArgumentError, check_status
from .memory import BufferView, as_buffer

log = logging.getLogger(__name__)

_lock = threading.RLock()
_refs = 0


@dataclass(frozen=True)
class DriverProperties:
    """`CUfileDrvProps_t` as a readable object."""

    nvfs_major_version: int
    nvfs_minor_version: int
    poll_thresh_size_kb: int
    max_direct_io_size_kb: int
    dstatusflags: int
    dcontrolflags: int
    fflags: int
    max_device_cache_size_kb: int
    per_buffer_cache_size_kb: int
    max_device_pinned_mem_size_kb: int
    max_batch_io_size: int
    max_batch_io_timeout_msecs: int

    @property
    def supported_file_systems(self) -> list[str]:
        """Names of the `CU_FILE_*_SUPPORTED` status flags that are set."""
        return [f.name for f in abi.CUfileDriverStatusFlags_t
                if f.name.endswith("_SUPPORTED") and self.dstatusflags & (1 << f.value)]

    @property
    def control_flags(self) -> list[str]:
        """Names of the `CUfileDriverControlFlags_t` flags that are set."""
        return [f.name for f in abi.CUfileDriverControlFlags_t if self.dcontrolflags & (1 << f.value)]

    @property
    def feature_flags(self) -> list[str]:
        """Names of the `CUfileFeatureFlags_t` flags that are set."""
        return [f.name for f in abi.CUfileFeatureFlags_t if self.fflags & (1 << f.value)]

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)}
        out.update(supported_file_systems=self.supported_file_systems,
                   control_flags=self.control_flags, feature_flags=self.feature_flags)
        return out


class Driver:
    """A reference to the process-wide cuFile driver; a context manager.

    `Driver()` opens the driver if no other reference holds it open. It raises
    `DriverUnavailableError` within a second where cuFile would hang or cannot work
    (see `pygds.guard`), and `CuFileError` when `cuFileDriverOpen` fails.
    """

    def __init__(self) -> None:
        global _refs
        self._open = False
        with _lock:
            if _refs == 0:
                guard.ensure_cufile_safe()
                check_status("cuFileDriverOpen", cufile().cuFileDriverOpen())
                log.debug("cuFile driver opened (libcufile %s)", cufile().version_string)
            _refs += 1
            self._open = True

    @property
    def closed(self) -> bool:
        return not self._open

    def close(self) -> None:
        """Drop this reference; the last one closes the driver. Closing twice is harmless."""
        global _refs
        with _lock:
            if not self._open:
                return
            self._open = False
            _refs -= 1
            if _refs == 0:
                lib = cufile()
                close = lib.cuFileDriverClose_v2 if lib.has("cuFileDriverClose_v2") else lib.cuFileDriverClose
                check_status("cuFileDriverClose", close())
                log.debug("cuFile driver closed")

    def __enter__(self) -> Driver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - never raise from a finalizer
            pass

    @staticmethod
    def use_count() -> int:
        """`cuFileUseCount()`: how many users libcufile itself counts."""
        return int(cufile().cuFileUseCount())

    @property
    def properties(self) -> DriverProperties:
        props = abi.CUfileDrvProps_t()
        check_status("cuFileDriverGetProperties", cufile().cuFileDriverGetProperties(ctypes.byref(props)))
        n = props.nvfs
        return DriverProperties(
            n.major_version, n.minor_version, n.poll_thresh_size, n.max_direct_io_size,
            n.dstatusflags, n.dcontrolflags, props.fflags, props.max_device_cache_size,
            props.per_buffer_cache_size, props.max_device_pinned_mem_size,
            props.max_batch_io_size, props.max_batch_io_timeout_msecs)

    def set_poll_mode(self, enabled: bool, threshold_kb: int = 4) -> None:
        check_status("cuFileDriverSetPollMode", cufile().cuFileDriverSetPollMode(bool(enabled), int(threshold_kb)))

    def set_max_direct_io_size(self, size_kb: int) -> None:
        check_status("cuFileDriverSetMaxDirectIOSize", cufile().cuFileDriverSetMaxDirectIOSize(int(size_kb)))

    def set_max_cache_size(self, size_kb: int) -> None:
        check_status("cuFileDriverSetMaxCacheSize", cufile().cuFileDriverSetMaxCacheSize(int(size_kb)))

    def set_max_pinned_mem_size(self, size_kb: int) -> None:
        check_status("cuFileDriverSetMaxPinnedMemSize", cufile().cuFileDriverSetMaxPinnedMemSize(int(size_kb)))

    def register(self, buf: object, nbytes: int | None = None, flags: int = 0) -> RegisteredBuffer:
        """Register `buf` with cuFile for the lifetime of the returned object."""
        return RegisteredBuffer(buf, nbytes, flags=flags, driver=self)

    # -- parameters (cuFileGet/SetParameter*) ------------------------------------------------
    def get_parameter(self, name: str) -> int | bool | str:
        """Read a cuFile parameter by its `CUFILE_PARAM_*` name (with or without the prefix)."""
        kind, value = _param(name)
        lib = cufile()
        if kind == "size_t":
            out = ctypes.c_size_t()
            check_status(f"cuFileGetParameterSizeT({name})", lib.cuFileGetParameterSizeT(value, ctypes.byref(out)))
            return int(out.value)
        if kind == "bool":
            flag = ctypes.c_bool()
            check_status(f"cuFileGetParameterBool({name})", lib.cuFileGetParameterBool(value, ctypes.byref(flag)))
            return bool(flag.value)
        text = ctypes.create_string_buffer(4096)
        check_status(f"cuFileGetParameterString({name})", lib.cuFileGetParameterString(value, text, len(text)))
        return text.value.decode(errors="replace")

    def set_parameter(self, name: str, value: int | bool | str) -> None:
        """Set a cuFile parameter by name; cuFile accepts most only before the driver opens."""
        kind, enum_value = _param(name)
        lib = cufile()
        if kind == "size_t":
            check_status(f"cuFileSetParameterSizeT({name})", lib.cuFileSetParameterSizeT(enum_value, int(value)))
        elif kind == "bool":
            check_status(f"cuFileSetParameterBool({name})", lib.cuFileSetParameterBool(enum_value, bool(value)))
        else:
            check_status(f"cuFileSetParameterString({name})",
                         lib.cuFileSetParameterString(enum_value, str(value).encode()))

    def parameter_range(self, name: str) -> tuple[int, int]:
        """`cuFileGetParameterMinMaxValue` for a size_t parameter."""
        kind, value = _param(name)
        if kind != "size_t":
            raise InvalidArgumentError(f"{name} is a {kind} parameter; only size_t parameters have a range")
        lo, hi = ctypes.c_size_t(), ctypes.c_size_t()
        check_status(f"cuFileGetParameterMinMaxValue({name})",
                     cufile().cuFileGetParameterMinMaxValue(value, ctypes.byref(lo), ctypes.byref(hi)))
        return int(lo.value), int(hi.value)

    def parameters(self) -> dict[str, int | bool | str]:
        """Every readable parameter by name."""
        out: dict[str, int | bool | str] = {}
        for enum in (abi.CUFileSizeTConfigParameter_t, abi.CUFileBoolConfigParameter_t,
                     abi.CUFileStringConfigParameter_t):
            for member in enum:
                try:
                    out[member.name] = self.get_parameter(member.name)
                except Exception as exc:  # noqa: BLE001 - report, not fail, unreadable ones
                    out[member.name] = f"unavailable: {exc}"
        return out


_shared: Driver | None = None


def shared() -> Driver:
    """The driver reference that files hold: opened on first use, closed at interpreter exit.

    Opening cuFile's driver costs a few hundred milliseconds, so files do not open and close it
    one by one (as KvikIO does); an explicit `Driver()` still counts as its own reference.
    """
    global _shared
    with _lock:
        if _shared is None or _shared.closed:
            _shared = Driver()
            atexit.register(_shared.close)
        return _shared


def close_shared() -> None:
    """Drop the files' shared reference now (it reopens on the next cuFile file).

    Call it only when no cuFile `File` is open, e.g. before handing the process's cuFile state to
    raw `libcufile` calls or before a fork.
    """
    global _shared
    with _lock:
        if _shared is not None:
            _shared.close()
            _shared = None


def _param(name: str) -> tuple[str, int]:
    full = name if name.startswith("CUFILE_PARAM_") else "CUFILE_PARAM_" + name.upper()
    for kind, enum in (("size_t", abi.CUFileSizeTConfigParameter_t), ("bool", abi.CUFileBoolConfigParameter_t),
                       ("string", abi.CUFileStringConfigParameter_t)):
        if full in enum.__members__:
            return kind, int(enum[full])
    raise InvalidArgumentError(f"unknown cuFile parameter {name!r}; known: CUFILE_PARAM_* names of cufile.h")


class _Registry:
    """Address ranges of registered buffers, to find the registration that holds a view."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._starts: list[int] = []
        self._ends: list[int] = []

    def add(self, start: int, end: int) -> None:
        with self._lock:
            i = bisect.bisect_left(self._starts, start)
            self._starts.insert(i, start)
            self._ends.insert(i, end)

    def remove(self, start: int) -> None:
        with self._lock:
            i = bisect.bisect_left(self._starts, start)
            if i < len(self._starts) and self._starts[i] == start:
                del self._starts[i], self._ends[i]

    def find(self, ptr: int, nbytes: int) -> int | None:
        """The registered base holding [ptr, ptr + nbytes), or None."""
        with self._lock:
            i = bisect.bisect_right(self._starts, ptr) - 1
            if i >= 0 and ptr + nbytes <= self._ends[i]:
                return self._starts[i]
            return None


registry = _Registry()


class RegisteredBuffer:
    """Memory registered with `cuFileBufRegister` until `close()`; a context manager.

    Any `File` read or write into memory inside this range passes the registered base and an
    offset to cuFile, so no bounce buffer is involved.
    """

    def __init__(self, buf: object, nbytes: int | None = None, *, flags: int = 0,
                 driver: Driver | None = None) -> None:
        self.view: BufferView = as_buffer(buf, nbytes)
        self._driver = Driver() if driver is None else None
        self._registered = False
        check_status("cuFileBufRegister",
                     cufile().cuFileBufRegister(ctypes.c_void_p(self.view.ptr), self.view.nbytes, flags))
        self._registered = True
        registry.add(self.view.ptr, self.view.ptr + self.view.nbytes)

    @property
    def ptr(self) -> int:
        return self.view.ptr

    @property
    def nbytes(self) -> int:
        return self.view.nbytes

    def close(self) -> None:
        """Deregister (once) and drop the driver reference this buffer took."""
        if self._registered:
            self._registered = False
            registry.remove(self.view.ptr)
            check_status("cuFileBufDeregister", cufile().cuFileBufDeregister(ctypes.c_void_p(self.view.ptr)))
        if self._driver is not None:
            self._driver.close()
            self._driver = None

    def __enter__(self) -> RegisteredBuffer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # noqa: BLE001 - never raise from a finalizer
            pass
