"""File-system facts for a path: its mount, file-system type, GDS support, O_DIRECT, free space.

cuFile's behaviour and the KV-cache plugin's engine choice both depend on the file system a path
lives on, so the lookup has to be right where naive ones are not: symlinks are resolved, relative
paths and not-yet-created directories are accepted, a mount point matches only on a path
boundary (`/mnt/a` does not hold `/mnt/ab`), the last of several mounts stacked on one point
wins, escaped names in the mount table (`\\040` for a space) are decoded, and the type is the
kernel's own name (`overlay`, `tmpfs`, `ext4`, `nfs4`, `wekafs`, `fuse.<name>` ...).
"""
from __future__ import annotations

import errno
import mmap
import os
import re
import shutil
import tempfile
from dataclasses import asdict, dataclass
from typing import Any, Iterable

MOUNTINFO = "/proc/self/mountinfo"
PROC_MOUNTS = "/proc/mounts"

_ESCAPE = re.compile(rb"\\([0-7]{3})")
_DIRECT_PROBE_SIZE = 4096

GDS_FILE_SYSTEMS: dict[str, str] = {
    "ext4": "local block file system on NVMe, NVMe-oF or SCSI (mounted with data=ordered)",
    "xfs": "local block file system on NVMe, NVMe-oF or SCSI",
    "lustre": "Lustre (DDN EXAScaler)",
    "wekafs": "WekaFS",
    "nfs": "NFS over RDMA (for example VAST NFS)",
    "nfs4": "NFS over RDMA (for example VAST NFS)",
    "gpfs": "IBM Storage Scale (GPFS)",
    "beegfs": "BeeGFS",
    "virtiofs": "virtiofs",
    "panfs": "PanFS",
}
"""Kernel file-system names that cuFile can serve with true GPU-direct I/O (cufile.h's
`CU_FILE_*_SUPPORTED` status flags), with what each one needs."""

NO_GDS_FILE_SYSTEMS = ("tmpfs", "ramfs", "overlay")
"""Kernel file-system names where GPU-direct I/O cannot work at all (memory-backed or layered):
cuFile can only run them in compatibility mode, so POSIX I/O is the better choice there."""

_NOT_GDS_NOTES: dict[str, str] = {
    "tmpfs": "tmpfs lives in memory: cuFile runs it in compatibility mode and O_DIRECT may be refused; "
             "the KV-cache plugin uses POSIX there",
    "ramfs": "ramfs lives in memory: cuFile runs it in compatibility mode and O_DIRECT is refused; "
             "the KV-cache plugin uses POSIX there",
    "overlay": "overlay is a container's layered root: cuFile cannot do direct I/O on it; "
               "mount a host directory on a GDS file system into the container instead",
    "btrfs": "btrfs is not among cuFile's supported file systems; cuFile runs it in compatibility mode",
    "zfs": "ZFS is not among cuFile's supported file systems; cuFile runs it in compatibility mode",
}


@dataclass(frozen=True)
class Mount:
    """One entry of the mount table, names decoded."""

    mount_point: str
    fs_type: str
    source: str
    options: tuple[str, ...] = ()
    device: str | None = None  # "major:minor" (mountinfo only)
    root: str = "/"

    @property
    def is_block_device(self) -> bool:
        """True when the mount sits on a real block device (major number not 0)."""
        if not self.device:
            return self.source.startswith("/dev/")
        return not self.device.startswith("0:")

    def option(self, name: str) -> str | None:
        """The value of `name=value` among the options ("" for a bare flag, None when absent)."""
        for opt in self.options:
            key, sep, value = opt.partition("=")
            if key == name:
                return value if sep else ""
        return None


def _unescape(field: bytes) -> str:
    return os.fsdecode(_ESCAPE.sub(lambda m: bytes([int(m.group(1), 8)]), field))


def _parse_mountinfo_line(line: bytes) -> Mount | None:
    fields = line.split()
    try:
        sep = fields.index(b"-", 6)
    except ValueError:
        return None
    if len(fields) < sep + 3:
        return None
    options = fields[5].split(b",") + (fields[sep + 3].split(b",") if len(fields) > sep + 3 else [])
    return Mount(mount_point=_unescape(fields[4]), fs_type=_unescape(fields[sep + 1]),
                 source=_unescape(fields[sep + 2]), options=tuple(_unescape(o) for o in options),
                 device=fields[2].decode("ascii", "replace"), root=_unescape(fields[3]))


def _parse_mounts_line(line: bytes) -> Mount | None:
    fields = line.split()
    if len(fields) < 4:
        return None
    return Mount(mount_point=_unescape(fields[1]), fs_type=_unescape(fields[2]), source=_unescape(fields[0]),
                 options=tuple(_unescape(o) for o in fields[3].split(b",")))


def parse_mount_table(data: bytes) -> list[Mount]:
    """Mounts from the text of `/proc/self/mountinfo` or `/proc/mounts` (format detected per line)."""
    mounts = []
    for line in data.splitlines():
        if not line.strip():
            continue
        mount = _parse_mountinfo_line(line) if b" - " in line else _parse_mounts_line(line)
        if mount is not None:
            mounts.append(mount)
    return mounts


def read_mounts(table: str | None = None) -> list[Mount]:
    """The mount table: `table` if given, else `/proc/self/mountinfo`, else `/proc/mounts`."""
    candidates = [table] if table else [MOUNTINFO, PROC_MOUNTS]
    errors = []
    for name in candidates:
        try:
            with open(name, "rb") as f:
                return parse_mount_table(f.read())
        except OSError as exc:
            errors.append(f"{name}: {exc.strerror or exc}")
    raise FileNotFoundError(errno.ENOENT, "cannot read the mount table (" + "; ".join(errors) + "); "
                                          "mount /proc in this environment")


def _within(path: str, mount_point: str) -> bool:
    return mount_point == "/" or path == mount_point or path.startswith(mount_point.rstrip("/") + "/")


def resolve(path: str | os.PathLike) -> str:
    """Absolute path with every symlink resolved (the not-yet-existing tail kept as written)."""
    return os.path.realpath(os.path.abspath(os.fspath(path)))


def existing_ancestor(path: str) -> str:
    """`path` itself when it exists, else the nearest existing directory above it."""
    current = path
    while not os.path.exists(current):
        parent = os.path.dirname(current)
        if parent == current:
            break
        current = parent
    return current


def mount_of(path: str | os.PathLike, mounts: Iterable[Mount] | None = None) -> Mount:
    """The mount holding `path` (symlinks resolved, path-boundary match, the last stacked mount wins)."""
    real = resolve(path)
    best: Mount | None = None
    for mount in read_mounts() if mounts is None else mounts:
        point = mount.mount_point.rstrip("/") or "/"
        if _within(real, point) and (best is None or len(point) >= len(best.mount_point.rstrip("/") or "/")):
            best = mount
    if best is None:
        raise FileNotFoundError(errno.ENOENT, f"no mount in the mount table holds {real}; "
                                              "is /proc mounted from this mount namespace?", real)
    return best


def fs_type(path: str | os.PathLike, mounts: Iterable[Mount] | None = None) -> str:
    """The kernel's name of the file system holding `path` ("ext4", "tmpfs", "overlay", ...)."""
    return mount_of(path, mounts).fs_type


def gds_support(mount: Mount) -> tuple[bool, str]:
    """Whether cuFile can do true GPU-direct I/O on this mount, and why (or why not)."""
    kind = mount.fs_type
    if kind in GDS_FILE_SYSTEMS:
        if kind == "ext4" and mount.option("data") == "journal":
            return False, "ext4 mounted with data=journal: cuFile needs data=ordered; remount with data=ordered"
        if kind in ("nfs", "nfs4") and mount.option("proto") not in ("rdma", None):
            return False, (f"NFS over {mount.option('proto')}: cuFile needs NFS over RDMA (proto=rdma, "
                           "for example VAST NFS); over TCP it runs in compatibility mode")
        return True, GDS_FILE_SYSTEMS[kind]
    note = _NOT_GDS_NOTES.get(kind)
    if note is None:
        note = (f"{kind} is not among cuFile's supported file systems "
                f"({', '.join(sorted(set(GDS_FILE_SYSTEMS)))}); cuFile runs it in compatibility mode")
    return False, note


def probe_o_direct(directory: str) -> tuple[bool | None, str]:
    """Try O_DIRECT in a temporary file in `directory`: (True/False, detail), or (None, why untested)."""
    if not hasattr(os, "O_DIRECT"):
        return False, "this platform has no O_DIRECT"
    try:
        fd, name = tempfile.mkstemp(prefix=".pygds-odirect-", dir=directory)
    except OSError as exc:
        return None, f"not tested: cannot create a file in {directory} ({exc.strerror or exc})"
    os.close(fd)
    dfd = -1
    try:
        dfd = os.open(name, os.O_RDWR | os.O_DIRECT | os.O_CLOEXEC)
        with mmap.mmap(-1, _DIRECT_PROBE_SIZE) as buf:  # page-aligned, as O_DIRECT needs
            buf.write(b"\xa5" * _DIRECT_PROBE_SIZE)
            os.pwrite(dfd, buf, 0)
            os.preadv(dfd, [buf], 0)
        return True, f"aligned {_DIRECT_PROBE_SIZE}-byte O_DIRECT write and read succeeded"
    except OSError as exc:
        step = "open" if dfd < 0 else "aligned I/O"
        return False, f"O_DIRECT {step} failed: {exc.strerror or exc}"
    finally:
        if dfd >= 0:
            os.close(dfd)
        os.unlink(name)


@dataclass(frozen=True)
class PathFacts:
    """Everything `probe_path` learned about one path."""

    path: str
    resolved: str
    exists: bool
    probed_at: str  # the path itself, or its nearest existing ancestor
    mount_point: str
    fs_type: str
    source: str
    device: str | None
    block_device: bool
    gds_supported: bool
    gds_note: str
    o_direct: bool | None
    o_direct_detail: str
    free_bytes: int | None
    total_bytes: int | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def probe_path(path: str | os.PathLike, *, test_o_direct: bool = True,
               mounts: Iterable[Mount] | None = None) -> PathFacts:
    """File-system facts for `path`; a path that does not exist yet is judged by its nearest ancestor."""
    real = resolve(path)
    exists = os.path.exists(real)
    anchor = existing_ancestor(real)
    mount = mount_of(anchor, mounts)
    supported, note = gds_support(mount)
    directory = anchor if os.path.isdir(anchor) else os.path.dirname(anchor)
    if test_o_direct:
        direct, detail = probe_o_direct(directory)
    else:
        direct, detail = None, "not tested"
    try:
        usage = shutil.disk_usage(anchor)
        free, total = usage.free, usage.total
    except OSError:
        free = total = None
    return PathFacts(path=os.fspath(path), resolved=real, exists=exists, probed_at=anchor,
                     mount_point=mount.mount_point, fs_type=mount.fs_type, source=mount.source,
                     device=mount.device, block_device=mount.is_block_device, gds_supported=supported,
                     gds_note=note, o_direct=direct, o_direct_detail=detail, free_bytes=free, total_bytes=total)
