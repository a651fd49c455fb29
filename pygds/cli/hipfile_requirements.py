"""hipFile's documented requirements, checked as far as user space can see them, for `pygds info`.

AMD documents that hipFile needs ROCm >= 7.2, amdgpu-dkms >= 30.20.1 with AIS, kernel P2PDMA, ext4
(data=ordered) or xfs on local NVMe, and O_DIRECT. `requirements(paths)` reads files only (plus the
HIP runtime probe of the never-hang guard); it needs no root, though some facts (/proc/kallsyms,
the kernel config) may be hidden from unprivileged users or containers.
"""
from __future__ import annotations

import ctypes
import glob
import gzip
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass

from .. import fsinfo, hip
from ..engines.hipfile import library_check

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
    """Check hipFile's requirements on this machine, and for each path its file system and device."""
    found = [_library_requirement(), _runtime_requirement(), _ais_runtime_requirement(), _rocm_requirement(),
             _amdgpu_requirement(), _p2pdma_requirement()]
    for path in paths:
        found += _path_requirements(os.fspath(path))
    return found


def _library_requirement() -> Requirement:
    check = library_check()
    return Requirement("libhipfile", check.ok, check.reason, check.fix)


def _runtime_requirement() -> Requirement:
    check = hip.check_runtime()
    return Requirement("HIP runtime", check.ok, check.reason, check.fix)


def _ais_runtime_requirement() -> Requirement:
    """The HIP runtime offers hipAmdFileRead/hipAmdFileWrite, which hipFile's fastpath calls."""
    topic = "HIP runtime AIS"
    if not hip.check_runtime().ok:
        return Requirement(topic, None, "not checked: the HIP runtime is not usable (see above)")
    runtime = ctypes.CDLL(hip.runtime_path())
    version = ctypes.c_int(0)
    if runtime.hipRuntimeGetVersion(ctypes.byref(version)) != 0:
        return Requirement(topic, None, "not checked: hipRuntimeGetVersion failed")
    runtime.hipGetProcAddress.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_void_p), ctypes.c_int,
                                          ctypes.c_uint64, ctypes.POINTER(ctypes.c_int)]
    missing = []
    for symbol in (b"hipAmdFileRead", b"hipAmdFileWrite"):
        fn, status = ctypes.c_void_p(), ctypes.c_int(-1)
        rc = runtime.hipGetProcAddress(symbol, ctypes.byref(fn), version.value, 0, ctypes.byref(status))
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
