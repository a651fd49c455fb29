"""The hipFile engine (AMD GPU-direct storage on ROCm), its driver lifecycle, registered buffers, and
the checks of hipFile's documented requirements.

The high layer looks the same as on cuFile; the differences are hidden here:
- `HipFileDriver` is the reference-counted driver (`pygds.Driver`'s twin). Its properties, poll
  mode, size limits and parameters are declared by hipfile.h but not implemented by libhipfile:
  they raise `NotSupportedError` saying so instead of an opaque hipFileInternalError.
- hipFile refuses host memory that is not registered with it, so `HipFileHandle` moves
  unregistered host, pinned and managed memory with the POSIX engine on the same file, and device
  memory (registered or not) through hipFileRead/hipFileWrite.
- Batches and stream-ordered I/O run on pygds's thread pool (`pygds.Batch` and `File.read_async`
  do this for every engine but cuFile).

`usable()` is what `auto` consults: libhipfile loads and the HIP runtime answers within a second with
a GPU (the never-hang guard). `requirements(paths)` checks what AMD documents hipFile needs (ROCm >=
7.2, amdgpu-dkms >= 30.20.1 with AIS, kernel P2PDMA, ext4 data=ordered or xfs on local NVMe,
O_DIRECT) as far as it can be seen from user space.
"""
from __future__ import annotations

import ctypes
import fcntl
import glob
import gzip
import logging
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .. import _cufile_abi as cu_abi
from .. import _hipfile_abi as abi
from .. import fsinfo, guard
from .._lib import HIPFILE_SPEC, hipfile
from ..driver import DriverBase, DriverProperties, RegisteredBufferBase, Registry
from ..errors import (
    HipFileError,
    InvalidArgumentError,
    LibraryNotFoundError,
    NotSupportedError,
    PygdsError,
    check_hipfile_status,
    decode_io_result,
)
from ..memory import BufferView, as_buffer
from .base import EngineHandle
from .posix import PosixHandle

log = logging.getLogger(__name__)


def _library_check() -> guard.Check:
    try:
        lib = hipfile()
    except LibraryNotFoundError as exc:
        return guard.Check(False, "libhipfile not found (looked in: " + "; ".join(exc.searched) + ")",
                           HIPFILE_SPEC.install_hint)
    return guard.Check(True, f"libhipfile {lib.version_string} at {lib.path}")


def usable() -> guard.Check:
    """Whether hipFile can run here: libhipfile loads and the HIP runtime has a GPU (within a second)."""
    library = _library_check()
    if not library.ok:
        return library
    runtime = guard.check_hip_runtime()
    if not runtime.ok:
        return guard.Check(False, f"{library.reason} is installed but {runtime.reason}", runtime.fix)
    return guard.Check(True, f"{library.reason} and {runtime.reason}")


# --- the driver ----------------------------------------------------------------------------------
registry = Registry()  # address ranges registered with hipFileBufRegister


def _check(op: str, status: abi.hipFileError_t, *, path: str | None = None) -> None:
    """`check_hipfile_status`, except that a call hipFile does not implement says so plainly."""
    name = op.split("(", 1)[0]
    if status.err == abi.hipFileInternalError and name in abi.NOT_IMPLEMENTED:
        raise NotSupportedError(f"{name} is not supported by hipFile: libhipfile {hipfile().version_string} "
                                "declares it but does not implement it (it returns hipFileInternalError). "
                                "hipFile runs with its built-in settings; it reads HIPFILE_* environment "
                                "variables (e.g. HIPFILE_ALLOW_COMPAT_MODE) instead")
    check_hipfile_status(op, status, path=path)


class HipFileDriver(DriverBase):
    """A reference to the process-wide hipFile driver; a context manager (`pygds.Driver`'s twin).

    The first reference loads libhipfile (`LibraryNotFoundError` listing where it looked), runs the
    never-hang guard (`DriverUnavailableError` within a second where no HIP runtime and GPU answer)
    and calls hipFileDriverOpen; the last `close()` closes it.
    """

    api = "hipFile"
    _refs = 0

    @staticmethod
    def _library() -> Any:
        return hipfile()

    def _check(self, op: str, status: Any) -> None:
        _check(op, status)

    def _open_driver(self) -> None:
        lib = hipfile()  # loading calls nothing that needs a GPU: report a missing library first
        guard.ensure_hipfile_safe()
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


class HipFileRegisteredBuffer(RegisteredBufferBase):
    """Memory registered with `hipFileBufRegister` until `close()`; a context manager.

    Reads and writes into memory inside this range pass the registered base and an offset to
    hipFile. hipFile registers device memory and pinned host memory, not pageable or managed memory.
    """

    driver_class = HipFileDriver
    registry = registry


# --- the engine handle ---------------------------------------------------------------------------
class HipFileHandle(EngineHandle):
    """A file descriptor registered with `hipFileHandleRegister`; holds a driver reference.

    Device memory goes through hipFileRead/hipFileWrite (as registered base and offset when it lies
    in a `HipFileRegisteredBuffer`); other memory through a POSIX handle on the same file.
    """

    engine = "hipfile"

    def __init__(self, fd: int, path: str = "") -> None:
        self.path = path
        self._driver = HipFileDriver()
        self._lib = hipfile()
        self.handle = abi.hipFileHandle_t()
        self._buffered_fd: int | None = None
        descr = abi.hipFileDescr_t()
        descr.type = abi.hipFileHandleTypeOpaqueFD
        descr.handle.fd = fd
        try:
            _check(f"hipFileHandleRegister({path})",
                   self._lib.hipFileHandleRegister(ctypes.byref(self.handle), ctypes.byref(descr)), path=path)
            self._posix = self._posix_handle(fd)
        except BaseException:
            self.close()
            raise
        # bound once: these are the per-call hot path
        self._read = self._lib.hipFileRead
        self._write = self._lib.hipFileWrite
        self._find = registry.find

    def _posix_handle(self, fd: int) -> PosixHandle:
        """POSIX I/O on the same file for memory hipFile refuses; an O_DIRECT `fd` gets a buffered twin."""
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        if not flags & getattr(os, "O_DIRECT", 0):
            return PosixHandle(fd)
        twin = f"/proc/self/fd/{fd}" if os.path.exists(f"/proc/self/fd/{fd}") else self.path
        self._buffered_fd = os.open(twin, (flags & os.O_ACCMODE) | os.O_CLOEXEC)
        return PosixHandle(self._buffered_fd, fd)

    def _target(self, view: BufferView, size: int, buf_offset: int) -> tuple[int, int] | None:
        """(base, offset) to hand hipFile, or None when POSIX must move this memory."""
        ptr = view.ptr + buf_offset
        base = self._find(ptr, size)
        if base is not None:
            return base, ptr - base
        return (ptr, 0) if view.kind == "device" else None

    def read(self, view: BufferView, size: int, file_offset: int, buf_offset: int) -> int:
        target = self._target(view, size, buf_offset)
        if target is None:
            return self._posix.read(view, size, file_offset, buf_offset)
        ret = self._read(self.handle, target[0], size, file_offset, target[1])
        if ret >= 0:
            return ret
        return decode_io_result("hipFileRead", ret, ctypes.get_errno(), path=self.path, error=HipFileError)

    def write(self, view: BufferView, size: int, file_offset: int, buf_offset: int) -> int:
        target = self._target(view, size, buf_offset)
        if target is None:
            return self._posix.write(view, size, file_offset, buf_offset)
        ret = self._write(self.handle, target[0], size, file_offset, target[1])
        if ret >= 0:
            return ret
        return decode_io_result("hipFileWrite", ret, ctypes.get_errno(), path=self.path, error=HipFileError)

    def close(self) -> None:
        if self.handle:
            self._lib.hipFileHandleDeregister(self.handle)
            self.handle = abi.hipFileHandle_t()
        if self._buffered_fd is not None:
            os.close(self._buffered_fd)
            self._buffered_fd = None
        if self._driver is not None:
            self._driver.close()
            self._driver = None


# --- hipFile's documented requirements -------------------------------------------------------------
MIN_ROCM = (7, 2)
ROCM_ROOTS = ("/opt/rocm",)
KFD_NODES = "/sys/class/kfd/kfd/topology/nodes"
KFD_CAPABILITY_AIS = 0x40  # KFD topology `capability` bit: AIS P2PDMA initialised for that GPU
_INSTALL_GUIDE = "see the ROCm quick start and AMD's hipFile install guide; /opt/rocm/bin/ais-check verifies it"


@dataclass(frozen=True)
class Requirement:
    """One documented hipFile requirement: whether it is met (None: cannot be told from here), what
    was seen, and how to meet it."""

    topic: str
    ok: bool | None
    detail: str
    fix: str = ""


def requirements(paths: Iterable[str] = ()) -> list[Requirement]:
    """Check hipFile's requirements on this machine, and for each path its file system and device.

    Reads files only (plus the HIP runtime probe of the never-hang guard); needs no root, though
    some facts (/proc/kallsyms, kernel config) may be hidden from unprivileged users or containers.
    """
    found = [_library_requirement(), _runtime_requirement(), _ais_runtime_requirement(), _rocm_requirement(),
             _amdgpu_requirement(), _p2pdma_requirement()]
    for path in paths:
        found += _path_requirements(os.fspath(path))
    return found


def _library_requirement() -> Requirement:
    check = _library_check()
    return Requirement("libhipfile", check.ok, check.reason, check.fix)


def _runtime_requirement() -> Requirement:
    check = guard.check_hip_runtime()
    return Requirement("HIP runtime", check.ok, check.reason, check.fix)


def _ais_runtime_requirement() -> Requirement:
    """The HIP runtime offers hipAmdFileRead/hipAmdFileWrite, which hipFile's fastpath calls."""
    topic = "HIP runtime AIS"
    if not guard.check_hip_runtime().ok:
        return Requirement(topic, None, "not checked: the HIP runtime is not usable (see above)")
    hip = ctypes.CDLL(guard.hip_runtime_path())
    version = ctypes.c_int(0)
    if hip.hipRuntimeGetVersion(ctypes.byref(version)) != 0:
        return Requirement(topic, None, "not checked: hipRuntimeGetVersion failed")
    hip.hipGetProcAddress.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_void_p), ctypes.c_int,
                                      ctypes.c_uint64, ctypes.POINTER(ctypes.c_int)]
    missing = []
    for symbol in (b"hipAmdFileRead", b"hipAmdFileWrite"):
        fn, status = ctypes.c_void_p(), ctypes.c_int(-1)
        rc = hip.hipGetProcAddress(symbol, ctypes.byref(fn), version.value, 0, ctypes.byref(status))
        if rc != 0 or status.value != 0 or not fn.value:
            missing.append(symbol.decode())
    if missing:
        return Requirement(topic, False, f"HIP runtime {version.value} lacks {' and '.join(missing)}: hipFile "
                                         "can only use its compatibility path (POSIX I/O and hipMemcpy)",
                           f"install ROCm >= {MIN_ROCM[0]}.{MIN_ROCM[1]}; {_INSTALL_GUIDE}")
    return Requirement(topic, True, f"HIP runtime {version.value} offers hipAmdFileRead and hipAmdFileWrite")


def _rocm_version(environ: dict[str, str] | None = None) -> tuple[tuple[int, int], str] | None:
    """((major, minor), where) of the ROCm install that ROCM_PATH or /opt/rocm names, from .info/version."""
    environ = dict(os.environ) if environ is None else environ
    roots = [environ[v] for v in ("ROCM_PATH", "ROCM_HOME") if environ.get(v)]
    roots += list(ROCM_ROOTS) + sorted(glob.glob("/opt/rocm-*"), reverse=True)
    for root in roots:
        info = os.path.join(root, ".info", "version")
        try:
            with open(info, encoding="utf-8", errors="replace") as f:
                match = re.match(r"\s*(\d+)\.(\d+)", f.read())
        except OSError:
            continue
        if match:
            return (int(match.group(1)), int(match.group(2))), info
    return None


def _rocm_requirement() -> Requirement:
    wanted = f">= {MIN_ROCM[0]}.{MIN_ROCM[1]}"
    found = _rocm_version()
    if found is None:
        return Requirement("ROCm", None, "no ROCm installation found (no .info/version under ROCM_PATH, "
                                         "/opt/rocm or /opt/rocm-*)", f"install ROCm {wanted}; {_INSTALL_GUIDE}")
    version, where = found
    ok = version >= MIN_ROCM
    return Requirement("ROCm", ok, f"ROCm {version[0]}.{version[1]} ({where}); hipFile needs {wanted}",
                       "" if ok else f"upgrade to ROCm {wanted}; {_INSTALL_GUIDE}")


def _amdgpu_requirement() -> Requirement:
    """amdgpu-dkms >= 30.20.1 is seen by its effect: the loaded amdgpu exports kfd_ais_rw_file."""
    topic, fix = "amdgpu", f"install amdgpu-dkms >= 30.20.1 and reboot; {_INSTALL_GUIDE}"
    if not os.path.isdir("/sys/module/amdgpu"):
        return Requirement(topic, False, "the amdgpu kernel driver is not loaded (no /sys/module/amdgpu)", fix)
    module_version = _read_line("/sys/module/amdgpu/version")
    version = f"amdgpu {module_version}" if module_version else "amdgpu (in-kernel, no module version)"
    try:
        with open("/proc/kallsyms", encoding="utf-8", errors="replace") as f:
            has_ais = any("kfd_ais_rw_file" in line for line in f)
    except OSError as exc:
        return Requirement(topic, None, f"{version} is loaded; /proc/kallsyms cannot be read "
                                        f"({exc.strerror or exc}) to see whether it has AIS support", fix)
    if has_ais:
        return Requirement(topic, True, f"{version} has AIS support (exports kfd_ais_rw_file)")
    return Requirement(topic, False, f"{version} lacks AIS support (no kfd_ais_rw_file in /proc/kallsyms)", fix)


def _kfd_reports_ais(nodes_dir: str = KFD_NODES) -> bool | None:
    """True when a KFD GPU node reports AIS P2PDMA up, False when GPU nodes exist but none does, None
    when there are no GPU nodes to ask."""
    gpu_nodes = 0
    for props in glob.glob(os.path.join(nodes_dir, "*", "properties")):
        try:
            with open(props, encoding="utf-8") as f:
                values = {k: int(v) for k, v in (line.split() for line in f if len(line.split()) == 2)}
        except (OSError, ValueError):
            continue
        if not values.get("simd_count"):
            continue  # a CPU node
        gpu_nodes += 1
        if values.get("capability", 0) & KFD_CAPABILITY_AIS:
            return True
    return False if gpu_nodes else None


def _kernel_config_p2pdma(release: str | None = None) -> tuple[bool, str] | None:
    """(CONFIG_PCI_P2PDMA=y?, the config file) from the running kernel's config, or None if none is readable."""
    release = os.uname().release if release is None else release
    for path, opener in ((f"/boot/config-{release}", open), (f"/lib/modules/{release}/build/.config", open),
                         ("/proc/config.gz", gzip.open)):
        try:
            with opener(path, "rt") as f:
                return any(line.startswith("CONFIG_PCI_P2PDMA=y") for line in f), path
        except OSError:
            continue
    return None


def _p2pdma_requirement() -> Requirement:
    topic = "kernel P2PDMA"
    fix = "run a kernel built with CONFIG_PCI_P2PDMA=y (most distribution kernels are) and amdgpu-dkms >= 30.20.1"
    if _kfd_reports_ais():
        return Requirement(topic, True, "KFD reports AIS peer-to-peer DMA initialised on a GPU")
    config = _kernel_config_p2pdma()
    if config is None:
        return Requirement(topic, None, "no kernel config found (/boot/config-<release>, /proc/config.gz) "
                                        "to check CONFIG_PCI_P2PDMA", fix)
    enabled, where = config
    if enabled:
        return Requirement(topic, True, f"CONFIG_PCI_P2PDMA=y in {where}")
    return Requirement(topic, False, f"CONFIG_PCI_P2PDMA is not enabled in {where}", fix)


def _block_backing(device: str | None, sys_block: str = "/sys/dev/block") -> tuple[bool, str]:
    """(local NVMe?, what backs it) for a "major:minor" block device; LVM over local NVMe counts."""
    if not device:
        return False, "not a block device"
    node = os.path.realpath(os.path.join(sys_block, device))
    name = os.path.basename(node)
    if re.fullmatch(r"nvme\d+(?:c\d+)?n\d+(?:p\d+)?", name):
        namespace = os.path.dirname(node) if re.search(r"n\d+p\d+$", name) else node
        transports = _nvme_transports(namespace)
        if transports == {"pcie"}:
            return True, f"{name} is a local NVMe (PCIe) device"
        return False, f"{name} is NVMe over {', '.join(sorted(transports)) or 'an unknown transport'}, not local"
    slaves = sorted(glob.glob(os.path.join(node, "slaves", "*")))
    if name.startswith("dm-") and slaves:
        parts = [_block_backing(_read_line(os.path.join(s, "dev")), sys_block) for s in slaves]
        where = ", ".join(detail for _, detail in parts)
        if all(ok for ok, _ in parts):
            return True, f"{name} (device-mapper, e.g. LVM) lies on local NVMe: {where}"
        return False, f"{name} (device-mapper) lies on {where}"
    if name.startswith("md"):
        return False, f"{name} is MD software RAID, which hipFile's fastpath does not support"
    return False, f"{name} is not an NVMe device"


def _nvme_transports(namespace: str) -> set[str]:
    """Transports ("pcie", "tcp", "rdma", "fc", ...) of the controllers behind an NVMe namespace node:
    its `device` link, or, for a native-multipath head, the controllers beside it in its subsystem."""
    files = glob.glob(os.path.join(namespace, "device", "transport"))
    files += glob.glob(os.path.join(os.path.dirname(namespace), "nvme*", "transport"))
    return {t for t in (_read_line(f) for f in files) if t}


def _read_line(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    except OSError:
        return None


def _path_requirements(path: str) -> list[Requirement]:
    topic = f"path {path}"
    try:
        facts = fsinfo.probe_path(path)
        mount = fsinfo.mount_of(facts.probed_at)
    except OSError as exc:
        return [Requirement(topic, None, f"cannot be examined: {exc}", "check that /proc is mounted")]
    journal = mount.option("data")
    fs_ok = facts.fs_type == "xfs" or (facts.fs_type == "ext4" and journal in (None, "ordered"))
    fs = f"{facts.fs_type} at {facts.mount_point}" + (f" (data={journal})" if journal else "")
    found = [Requirement(f"{topic}: file system", fs_ok, fs + ("" if fs_ok else ": hipFile's fastpath takes "
                                                               "xfs or ext4 with data=ordered"),
                         "" if fs_ok else "put the cache on xfs or ext4 mounted with data=ordered (the default) "
                                          "(HIPFILE_UNSUPPORTED_FILE_SYSTEMS=true forces others, at your risk)")]
    local, backing = _block_backing(facts.device if facts.block_device else None)
    found.append(Requirement(f"{topic}: device", local, backing,
                             "" if local else "use a file system on local NVMe (raw, or LVM over local NVMe)"))
    found.append(Requirement(f"{topic}: O_DIRECT", facts.o_direct, facts.o_direct_detail,
                             "" if facts.o_direct else "use a file system where O_DIRECT works (xfs, ext4)"))
    return found
