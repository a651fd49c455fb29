"""What cuFile's and hipFile's engines share: a reference-counted process-wide driver, the registry
of registered address ranges, registered buffers, and the driver's properties.

Each GPU-direct engine subclasses `GdsDriver` (naming its library, status check, open and close,
and parameter names) and `GdsRegisteredBuffer`, and keeps one `Registry` on its driver class.
"""
from __future__ import annotations

import ctypes
import logging
import threading
from bisect import bisect_left, bisect_right
from dataclasses import dataclass, fields
from typing import Any

from .. import _cufile_abi as abi
from .._lifetime import ClosedWhenCollected
from ..errors import PygdsError
from ..memory import BufferView, as_buffer

log = logging.getLogger(__name__)

_lock = threading.RLock()


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


class GdsDriver(ClosedWhenCollected):
    """A reference to process-wide driver state, the first reference opening it and the last
    `close()` closing it; size limits, poll mode and parameters by name. Subclasses name their
    library (`api`, `_library`), check its status structs, open and close it, map parameter
    names, and keep their engine's one `registry`."""

    api = ""
    _refs = 0
    registry: Registry

    @staticmethod
    def _library() -> Any:
        raise NotImplementedError

    def _check(self, op: str, status: Any) -> None:
        raise NotImplementedError

    def _open_driver(self) -> None:
        raise NotImplementedError

    def _close_driver(self) -> None:
        raise NotImplementedError

    def _param(self, name: str) -> tuple[str, int]:
        raise NotImplementedError

    def _parameter_names(self) -> list[str]:
        raise NotImplementedError

    @property
    def properties(self) -> DriverProperties:
        raise NotImplementedError

    def register(self, buf: object, nbytes: int | None = None, flags: int = 0) -> GdsRegisteredBuffer:
        """Register `buf` with this driver's library for the lifetime of the returned object."""
        raise NotImplementedError

    def parameter_range(self, name: str) -> tuple[int, int]:
        """(min, max) of a size_t parameter."""
        raise NotImplementedError

    def __init__(self) -> None:
        self._open = False
        cls = type(self)
        with _lock:
            if cls._refs == 0:
                self._open_driver()
            cls._refs += 1
            self._open = True

    def _call(self, name: str, *args: Any) -> Any:
        """`<api><name>(*args)`, e.g. `_call("DriverSetPollMode", ...)` → cuFileDriverSetPollMode."""
        return getattr(self._library(), self.api + name)(*args)

    def _checked(self, name: str, *args: Any, label: str = "") -> None:
        self._check(f"{self.api}{name}{label}", self._call(name, *args))

    @property
    def closed(self) -> bool:
        return not self._open

    def close(self) -> None:
        """Drop this reference; the last one closes the driver. Closing twice is harmless."""
        cls = type(self)
        with _lock:
            if not self._open:
                return
            self._open = False
            cls._refs -= 1
            if cls._refs == 0:
                self._close_driver()
                log.debug("%s driver closed", self.api)

    @classmethod
    def use_count(cls) -> int:
        """The reference count the library itself keeps (`cuFileUseCount` / `hipFileUseCount`)."""
        return int(getattr(cls._library(), cls.api + "UseCount")())

    def set_poll_mode(self, enabled: bool, threshold_kb: int = 4) -> None:
        self._checked("DriverSetPollMode", bool(enabled), int(threshold_kb))

    def set_max_direct_io_size(self, size_kb: int) -> None:
        self._checked("DriverSetMaxDirectIOSize", int(size_kb))

    def set_max_cache_size(self, size_kb: int) -> None:
        self._checked("DriverSetMaxCacheSize", int(size_kb))

    def set_max_pinned_mem_size(self, size_kb: int) -> None:
        self._checked("DriverSetMaxPinnedMemSize", int(size_kb))

    def get_parameter(self, name: str) -> int | bool | str:
        """Read a parameter by its C enum name (for cuFile also without the `CUFILE_PARAM_` prefix)."""
        kind, value = self._param(name)
        label = f"({name})"
        if kind == "size_t":
            out = ctypes.c_size_t()
            self._checked("GetParameterSizeT", value, ctypes.byref(out), label=label)
            return int(out.value)
        if kind == "bool":
            flag = ctypes.c_bool()
            self._checked("GetParameterBool", value, ctypes.byref(flag), label=label)
            return bool(flag.value)
        text = ctypes.create_string_buffer(4096)
        self._checked("GetParameterString", value, text, len(text), label=label)
        return text.value.decode(errors="replace")

    def set_parameter(self, name: str, value: int | bool | str) -> None:
        """Set a parameter by name; most take effect only when the driver next opens (libcufile
        1.17 and later: 1.15 and 1.16 ignore parameters staged before the open)."""
        kind, enum_value = self._param(name)
        label = f"({name})"
        if kind == "size_t":
            self._checked("SetParameterSizeT", enum_value, int(value), label=label)
        elif kind == "bool":
            self._checked("SetParameterBool", enum_value, bool(value), label=label)
        else:
            self._checked("SetParameterString", enum_value, str(value).encode(), label=label)

    def parameters(self) -> dict[str, int | bool | str]:
        """Every parameter by name, or why it cannot be read."""
        out: dict[str, int | bool | str] = {}
        for name in self._parameter_names():
            try:
                out[name] = self.get_parameter(name)
            except PygdsError as exc:
                out[name] = f"unavailable: {exc}"
        return out


class Registry:
    """Address ranges of registered buffers, to find the registration that holds a view.

    Every read and write looks a view up here, so lookups take no lock: `add` and `remove`
    (under a lock) replace `ranges`, one immutable (sorted starts, ends) pair, which a lookup
    reads in one step.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.ranges: tuple[tuple[int, ...], tuple[int, ...]] = ((), ())

    def add(self, start: int, end: int) -> None:
        with self._lock:
            starts, ends = self.ranges
            i = bisect_left(starts, start)
            self.ranges = (starts[:i] + (start,) + starts[i:], ends[:i] + (end,) + ends[i:])

    def remove(self, start: int) -> None:
        with self._lock:
            starts, ends = self.ranges
            i = bisect_left(starts, start)
            if i < len(starts) and starts[i] == start:
                self.ranges = (starts[:i] + starts[i + 1:], ends[:i] + ends[i + 1:])

    def find(self, ptr: int, nbytes: int) -> int | None:
        """The registered base holding [ptr, ptr + nbytes), or None."""
        starts, ends = self.ranges
        i = bisect_right(starts, ptr) - 1
        if i >= 0 and ptr + nbytes <= ends[i]:
            return starts[i]
        return None


class GdsRegisteredBuffer(ClosedWhenCollected):
    """Memory registered with the library's `BufRegister` until `close()`; a context manager.

    Any read or write into memory inside the range passes the registered base and an offset, so
    no bounce buffer is involved. Subclasses name their driver class, whose registry holds the range.
    """

    driver_class: type[GdsDriver] = GdsDriver

    def __init__(self, buf: object, nbytes: int | None = None, *, flags: int = 0,
                 driver: GdsDriver | None = None) -> None:
        self.view: BufferView = as_buffer(buf, nbytes)
        self._registered = False
        self._own_driver = self.driver_class() if driver is None else None
        self._driver = driver or self._own_driver
        try:
            self._driver._checked("BufRegister", ctypes.c_void_p(self.view.ptr), self.view.nbytes, flags)
        except BaseException:
            self.close()
            raise
        self._registered = True
        self._driver.registry.add(self.view.ptr, self.view.ptr + self.view.nbytes)

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
            self._driver.registry.remove(self.view.ptr)
            self._driver._checked("BufDeregister", ctypes.c_void_p(self.view.ptr))
        if self._own_driver is not None:
            self._own_driver.close()
            self._own_driver = None
