"""cuFile's driver: the reference-counted process-wide `CuFileDriver`, its registered buffers and
their registry, and the reference that cuFile files share.

The first reference opens the driver after the never-hang guard (`check.ensure_safe`) passes; the
last `close()` closes it. Opening it also lets stream-ordered I/O try `cuFileReadAsync` again.
"""
from __future__ import annotations

import atexit
import ctypes
import logging
import threading
from typing import Any

from ... import _cufile_abi as abi
from ..._lib import cufile
from ...errors import InvalidArgumentError, check_status
from ..gds import DriverProperties, GdsDriver, GdsRegisteredBuffer, Registry
from . import check, stream

log = logging.getLogger(__name__)

_PARAMETER_ENUMS = (("size_t", abi.CUFileSizeTConfigParameter_t), ("bool", abi.CUFileBoolConfigParameter_t),
                    ("string", abi.CUFileStringConfigParameter_t))


class CuFileDriver(GdsDriver):
    """A reference to the process-wide cuFile driver; a context manager.

    It raises `DriverUnavailableError` within a second where cuFile would hang or cannot work,
    and `CuFileError` when `cuFileDriverOpen` fails.
    """

    api = "cuFile"
    _refs = 0
    registry = Registry()  # address ranges registered with cuFileBufRegister

    @staticmethod
    def _library() -> Any:
        return cufile()

    def _check(self, op: str, status: Any) -> None:
        check_status(op, status)

    def _open_driver(self) -> None:
        check.ensure_safe()
        self._checked("DriverOpen")
        stream.reset()
        log.debug("cuFile driver opened (libcufile %s)", cufile().version_string)

    def _close_driver(self) -> None:
        lib = cufile()
        close = lib.cuFileDriverClose_v2 if lib.has("cuFileDriverClose_v2") else lib.cuFileDriverClose
        check_status("cuFileDriverClose", close())

    def _param(self, name: str) -> tuple[str, int]:
        full = name if name.startswith("CUFILE_PARAM_") else "CUFILE_PARAM_" + name.upper()
        for kind, enum in _PARAMETER_ENUMS:
            if full in enum.__members__:
                return kind, int(enum[full])
        raise InvalidArgumentError(f"unknown cuFile parameter {name!r}; known: CUFILE_PARAM_* names of cufile.h")

    def _parameter_names(self) -> list[str]:
        return [member.name for _, enum in _PARAMETER_ENUMS for member in enum]

    @property
    def properties(self) -> DriverProperties:
        props = abi.CUfileDrvProps_t()
        self._checked("DriverGetProperties", ctypes.byref(props))
        n = props.nvfs
        return DriverProperties(
            n.major_version, n.minor_version, n.poll_thresh_size, n.max_direct_io_size,
            n.dstatusflags, n.dcontrolflags, props.fflags, props.max_device_cache_size,
            props.per_buffer_cache_size, props.max_device_pinned_mem_size,
            props.max_batch_io_size, props.max_batch_io_timeout_msecs)

    def register(self, buf: object, nbytes: int | None = None, flags: int = 0) -> CuFileRegisteredBuffer:
        """Register `buf` with cuFile for the lifetime of the returned object."""
        return CuFileRegisteredBuffer(buf, nbytes, flags=flags, driver=self)

    def parameter_range(self, name: str) -> tuple[int, int]:
        """`cuFileGetParameterMinMaxValue` for a size_t parameter."""
        kind, value = self._param(name)
        if kind != "size_t":
            raise InvalidArgumentError(f"{name} is a {kind} parameter; only size_t parameters have a range")
        lo, hi = ctypes.c_size_t(), ctypes.c_size_t()
        self._checked("GetParameterMinMaxValue", value, ctypes.byref(lo), ctypes.byref(hi), label=f"({name})")
        return int(lo.value), int(hi.value)


class CuFileRegisteredBuffer(GdsRegisteredBuffer):
    """Memory registered with `cuFileBufRegister` until `close()`; a context manager.

    Any read or write into memory inside this range passes the registered base and an offset to
    cuFile, so no bounce buffer is involved.
    """

    driver_class = CuFileDriver


_shared_lock = threading.Lock()
_shared: CuFileDriver | None = None


def shared() -> CuFileDriver:
    """The driver reference that cuFile files hold: opened on first use, closed at interpreter exit.

    Opening cuFile's driver costs a few hundred milliseconds, so files do not open and close it
    one by one (as KvikIO does); an explicit `pygds.Driver` still counts as its own reference.
    """
    global _shared
    with _shared_lock:
        if _shared is None or _shared.closed:
            _shared = CuFileDriver()
            atexit.register(_shared.close)
        return _shared


def close_shared() -> None:
    """Drop the files' shared reference now (it reopens on the next cuFile file)."""
    global _shared
    with _shared_lock:
        if _shared is not None:
            _shared.close()
            _shared = None
