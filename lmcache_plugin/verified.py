"""Data files whose bytes are already proved against their checksum, so that a read need not hash
them again: checksum mode "once" ("auto" and "always" hash every read). "once" trusts that no
other process writes a cache file in place (the store never does): what it cannot see is below.

A file's bytes change only together with its identity (device, inode, size, mtime, ctime): a swap
or a new put is a new inode, a truncation a new size, a `write` a new mtime and ctime, set before
the data is copied in, and a store through a shared mapping faults on a clean page, which moves
them too. A file is proved by a read that hashed it, found it unchanged from before to after the
read, found every page of it clean before the read and after (`cachestat`), and found its last
change at least `SETTLE_NS` old. A later read of a file with the same identity before and after
reading skips the hash. Why each condition:

- only local disk file systems (`LOCAL_FILE_SYSTEMS`): there the kernel's `fstat` is the truth.
  Network and FUSE file systems can answer from an attribute cache that lags another machine's
  writes, and tmpfs never faults a mapped page for writing (a store through a mapping moves no
  timestamp); there every read verifies.
- clean pages: a page dirtied through a mapping stays writable without further faults until it
  is written back, so a later store through it would change the bytes unseen. A file put moments
  ago is hashed by every read until the kernel has written it back (asking for the write-back
  would make the read wait for the disk). Without `cachestat` (before Linux 6.5) nothing is proved.
- a settled last change: a write moves the timestamps when it starts, so a write still running
  when the file is read must have started before its last change; and where timestamps are coarse
  (a kernel tick, one second on ext4 with 128-byte inodes) a write within the tick of the last
  change leaves them as they were. Both are ruled out once that change lies `SETTLE_NS` back.
- never by a put: between its hash and its `fstat` another process could have written into the
  file unseen.

What this gives up: a medium error that changes bytes on the disk without any write (and that the
drive's own checks miss) is noticed by the first read of a file in a process, not by later ones;
an in-place write by another process that stalls inside its system call for longer than
`SETTLE_NS` (its source buffer on a slow mapping, say) and lands after a proving read goes unseen,
as does a write through an XFS handle (`FMODE_NOCMTIME`, for backup tools), which moves no
timestamp at all.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
import time
from typing import Iterable

from pygds import fsinfo

logger = logging.getLogger(__name__)

LOCAL_FILE_SYSTEMS = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "f2fs"})
"""Kernel disk file systems whose `fstat` always reports the last change (no attribute cache) and
whose mapped pages fault when first written after a write-back."""
SETTLE_NS = 2_000_000_000
"""How long ago a file's last change must lie for a verification to be remembered: more than the
coarsest timestamp granularity of `LOCAL_FILE_SYSTEMS` (one second) and than a write runs."""
MAX_REMEMBERED = 1 << 18
"""Proved files remembered per store (about 100 bytes each); the oldest are forgotten first."""
_SYS_CACHESTAT = 451
"""cachestat(2)'s number, the same on every Linux architecture (syscalls from 424 on share one)."""
_libc = ctypes.CDLL(None, use_errno=True)


class _CachestatRange(ctypes.Structure):
    _fields_ = [("off", ctypes.c_uint64), ("len", ctypes.c_uint64)]


class _Cachestat(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in
                ("nr_cache", "nr_dirty", "nr_writeback", "nr_evicted", "nr_recently_evicted")]


def identity(st: os.stat_result) -> tuple[int, int, int, int, int]:
    """What changes whenever a file's bytes may have changed."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class VerifiedFiles:
    """The proved files of some base paths (see the module docstring)."""

    def __init__(self, bases: Iterable[str], enabled: bool = True) -> None:
        self._bases = local_devices(bases) if enabled else {}
        """Base path -> its device: a file on another device (a mount below the base) is never
        remembered."""
        self._proved: dict[str, int] = {}  # data path -> hash of its identity when proved
        self._lock = threading.Lock()

    def stat_after_read(self, fd: int) -> os.stat_result | None:
        """`fstat` of a file just read, for `holds` and `verified`; None where nothing can be
        proved (no local base path) or `fstat` fails (FUSE reports ENOENT for an unlinked file)."""
        if not self._bases:
            return None
        try:
            return os.fstat(fd)
        except OSError:
            return None

    def proved(self, path: str, st: os.stat_result) -> bool:
        """Whether the file at `path`, as `st` shows it, is the very file version proved earlier
        (a read still checks with `holds` that it stayed so)."""
        return self._proved.get(path) == hash(identity(st))

    def holds(self, path: str, before: os.stat_result, after: os.stat_result | None) -> bool:
        """True when the file at `path`, unchanged from `before` (taken once it was open) to
        `after` (taken after the read), is the very file version proved earlier."""
        return after is not None and identity(before) == identity(after) and self.proved(path, before)

    def pages_clean(self, fd: int) -> bool:
        """Whether no page of the open file is dirty in the page cache, so that a store through a
        shared mapping must fault (and move ctime) to change it. A proving read needs this before
        it reads and again after its `stat_after_read`; a file put moments ago waits for the
        kernel's write-back (asking for it here would make the read wait for the disk). False
        also where nothing can be proved."""
        if not self._bases:
            return False
        counts, whole = _Cachestat(), _CachestatRange(0, 0)
        if _libc.syscall(ctypes.c_long(_SYS_CACHESTAT), ctypes.c_long(fd), ctypes.byref(whole),
                         ctypes.byref(counts), ctypes.c_long(0)) != 0:
            return False  # ENOSYS before Linux 6.5: dirty pages cannot be seen
        return counts.nr_dirty == 0

    def verified(self, base: str, path: str, before: os.stat_result, after: os.stat_result | None) -> None:
        """A read of `path` (in base path `base`), with its pages clean before and after
        (`pages_clean`), matched its checksum: remember the file when it stayed unchanged during
        the read and a later write would show."""
        device = self._bases.get(base)
        if device is None or after is None or device != before.st_dev or identity(before) != identity(after):
            return
        if time.time_ns() - before.st_ctime_ns >= SETTLE_NS:
            self._remember(path, before)

    def _remember(self, path: str, st: os.stat_result) -> None:
        with self._lock:
            self._proved.pop(path, None)  # re-inserted last: the newest is forgotten last
            self._proved[path] = hash(identity(st))
            if len(self._proved) > MAX_REMEMBERED:
                del self._proved[next(iter(self._proved))]


def local_devices(bases: Iterable[str]) -> dict[str, int]:
    """Base path -> its device, for the bases that lie on one of `LOCAL_FILE_SYSTEMS`: there, and
    only there, the `fstat` of an open file describes that file."""
    found = {}
    for base in bases:
        try:
            kind = fsinfo.fs_type(base)
            device = os.stat(base).st_dev
        except OSError as exc:
            logger.debug("file system of %s unknown (%s): not a local disk file system", base, exc)
            continue
        if kind in LOCAL_FILE_SYSTEMS:
            found[base] = device
    return found
