"""hipFile's driver: the reference-counted process-wide `HipFileDriver` (`CuFileDriver`'s twin), its
registered buffers and their registry.

hipfile.h declares driver properties, poll mode, size limits and parameters, but libhipfile does not
implement them: they raise `NotSupportedError` saying so instead of an opaque hipFileInternalError.
"""
from __future__ import annotations

import ctypes
import logging
from typing import Any

from ... import _cufile_abi as cu_abi
from ... import _hipfile_abi as abi
from ..._lib import hipfile
from ...errors import InvalidArgumentError, NotSupportedError, check_hipfile_status
from ..gds import DriverProperties, GdsDriver, GdsRegisteredBuffer, Registry
from . import check

log = logging.getLogger(__name__)


def check_status(op: str, status: abi.hipFileError_t, *, path: str | None = None) -> None:
    """`check_hipfile_status`, except that a call hipFile does not implement says so plainly."""
    name = op.split("(", 1)[0]
    if status.err == abi.hipFileInternalError and name in abi.NOT_IMPLEMENTED:
        raise NotSupportedError(f"{name} is not supported by hipFile: libhipfile {hipfile().version_string} "
                                "declares it but does not implement it (it returns hipFileInternalError). "
                                "hipFile runs with its built-in settings; it reads HIPFILE_* environment "
                                "variables (e.g. HIPFILE_ALLOW_COMPAT_MODE) instead")
    check_hipfile_status(op, status, path=path)


class HipFileDriver(GdsDriver):
    """A reference to the process-wide hipFile driver; a context manager (`CuFileDriver`'s twin).

    The first reference loads libhipfile (`LibraryNotFoundError` listing where it looked), runs the
    never-hang guard (`DriverUnavailableError` within a second where no HIP runtime and GPU answer)
    and calls hipFileDriverOpen; the last `close()` closes it.
    """

    api = "hipFile"
    _refs = 0
    registry = Registry()  # address ranges registered with hipFileBufRegister

    @staticmethod
    def _library() -> Any:
        return hipfile()

    def _check(self, op: str, status: Any) -> None:
        check_status(op, status)

    def _open_driver(self) -> None:
        lib = hipfile()  # loading calls nothing that needs a GPU: report a missing library first
        check.ensure_safe()
        self._checked("DriverOpen")
        log.debug("hipFile driver opened (libhipfile %s)", lib.version_string)

    def _close_driver(self) -> None:
        self._checked("DriverClose")

    def _param(self, name: str) -> tuple[str, int]:
        return _param(name)

    def _parameter_names(self) -> list[str]:
        return [member.name for _, enum, _ in _PARAMETER_ENUMS for member in enum]

    @property
    def properties(self) -> DriverProperties:
        """`hipFileDriverGetProperties` as `pygds.DriverProperties` (the flag bits mean what cuFile's do)."""
        props = abi.hipFileDriverProps_t()
        self._checked("DriverGetProperties", ctypes.byref(props))
        n = props.nvfs
        return DriverProperties(
            n.major_version, n.minor_version, n.poll_thresh_size, n.max_direct_io_size,
            n.driver_status_flags, n.driver_control_flags, props.feature_flags, props.max_device_cache_size,
            props.per_buffer_cache_size, props.max_device_pinned_mem_size, props.max_batch_io_count,
            props.max_batch_io_timeout_msecs)

    def register(self, buf: object, nbytes: int | None = None, flags: int = 0) -> HipFileRegisteredBuffer:
        """Register `buf` with hipFile for the lifetime of the returned object."""
        return HipFileRegisteredBuffer(buf, nbytes, flags=flags, driver=self)

    def parameter_range(self, name: str) -> tuple[int, int]:
        """cuFileGetParameterMinMaxValue has no hipFile counterpart."""
        _param(name)
        raise NotSupportedError(f"parameter ranges are not supported by hipFile: hipfile.h has no counterpart of "
                                f"cuFileGetParameterMinMaxValue (asked for {name})")


_PARAMETER_ENUMS = (
    ("size_t", abi.hipFileSizeTConfigParameter_t, cu_abi.CUFileSizeTConfigParameter_t),
    ("bool", abi.hipFileBoolConfigParameter_t, cu_abi.CUFileBoolConfigParameter_t),
    ("string", abi.hipFileStringConfigParameter_t, cu_abi.CUFileStringConfigParameter_t),
)


def _param(name: str) -> tuple[str, int]:
    """(kind, enum value) of a hipFile parameter; cuFile names map onto hipFile's same-numbered ones."""
    for kind, hip_enum, _ in _PARAMETER_ENUMS:
        if name in hip_enum.__members__:
            return kind, int(hip_enum[name])
    full = name if name.startswith("CUFILE_PARAM_") else "CUFILE_PARAM_" + name.upper()
    for kind, hip_enum, cu_enum in _PARAMETER_ENUMS:
        if full in cu_enum.__members__:
            value = int(cu_enum[full])
            if value in hip_enum._value2member_map_:
                return kind, value
            raise NotSupportedError(f"{full} is not supported by hipFile: it is a cuFile parameter with no "
                                    f"hipFile counterpart (hipFile has {', '.join(hip_enum.__members__)})")
    raise InvalidArgumentError(f"unknown hipFile parameter {name!r}; use a hipFileParam* name of hipfile.h "
                               "(or the CUFILE_PARAM_* name of the same cuFile parameter)")


class HipFileRegisteredBuffer(GdsRegisteredBuffer):
    """Memory registered with `hipFileBufRegister` until `close()`; a context manager.

    Reads and writes into memory inside this range pass the registered base and an offset to
    hipFile. hipFile registers device memory and pinned host memory, not pageable or managed memory.
    """

    driver_class = HipFileDriver
