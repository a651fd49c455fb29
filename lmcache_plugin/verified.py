"""Data files whose bytes are already proved against their checksum, so that a read need not hash
them again (checksum mode "auto"; "always" hashes every read).

A file's bytes change only together with its identity (device, inode, size, mtime, ctime): a swap
or a new put is a new inode, a truncation a new size, a `write` a new mtime and ctime, set before
the data is copied in, and a store through a shared mapping faults on a clean page, which moves
them too. A file is proved by a read that hashed it and found it unchanged from before to after
the read, with every page of it clean before the read and after (`cachestat`): a page dirtied
through a mapping stays writable without further faults until it is written back, so a dirty
page means a later store could change the bytes unseen (a read that finds one proves nothing:
a file put moments ago is hashed by every read until the kernel has written it back). A later read of a file with the same identity before and after
reading skips the hash. A put proves nothing: between its hash and its `fstat` another process
could have written into the file unseen.

Three conditions keep that true:

- the kernel's `fstat` is the truth: only on local disk file systems (`LOCAL_FILE_SYSTEMS`).
  Network and FUSE file systems can answer from an attribute cache that lags another machine's
  writes, and tmpfs never faults a mapped page for writing (a store through a mapping moves no
  timestamp); there every read verifies.
- a later write must show. Where timestamps are fine-grained once read (Linux 6.13 and later on
  ext4, xfs and btrfs: a write after a `stat` always moves ctime; probed per path at start),
  every write after the proof does. Elsewhere timestamps are coarse (a kernel tick, one second on
  ext4 with 128-byte inodes) and a write within the tick of the last change leaves them as they
  were: a file is remembered only once its last change lies `SETTLE_NS` back.
- the kernel reports dirty pages (`cachestat`, Linux 6.5 and later); without it nothing is proved.

What this gives up: a medium error that changes bytes on the disk without any write (and that the
drive's own checks miss) is noticed by the first read of a file in a process, not by later ones.
"""

from __future__ import annotations

import ctypes
import logging
import os
import secrets
import threading
import time
from typing import Iterable

from pygds import fsinfo

logger = logging.getLogger(__name__)

LOCAL_FILE_SYSTEMS = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "f2fs"})
"""Kernel disk file systems whose `fstat` always reports the last change (no attribute cache) and
whose mapped pages fault when first written after a write-back."""
SETTLE_NS = 2_000_000_000
"""Where timestamps are coarse, how long ago a file's last change must lie for a verification to
be remembered: more than the coarsest granularity of `LOCAL_FILE_SYSTEMS` (one second)."""
MAX_REMEMBERED = 1 << 18
"""Proved files remembered per store (about 100 bytes each); the oldest are forgotten first."""
_PROBES = 16
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
        self._bases: dict[str, tuple[int, int]] = {}
        """Base path -> (its device, the settle time its timestamps need): a file on another
        device (a mount below the base) is never remembered."""
        for base in bases if enabled else ():
            facts = _local_facts(base)
            if facts is not None:
                self._bases[base] = facts
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
        facts = self._bases.get(base)
        if facts is None or after is None or facts[0] != before.st_dev or identity(before) != identity(after):
            return
        if time.time_ns() - before.st_ctime_ns >= facts[1]:
            self._remember(path, before)

    def _remember(self, path: str, st: os.stat_result) -> None:
        with self._lock:
            self._proved.pop(path, None)  # re-inserted last: the newest is forgotten last
            self._proved[path] = hash(identity(st))
            if len(self._proved) > MAX_REMEMBERED:
                del self._proved[next(iter(self._proved))]


def _local_facts(base: str) -> tuple[int, int] | None:
    """(device, settle time) of `base` when it lies on one of `LOCAL_FILE_SYSTEMS`, else None."""
    try:
        kind = fsinfo.fs_type(base)
        device = os.stat(base).st_dev
    except OSError as exc:
        logger.debug("file system of %s unknown (%s): every read verifies", base, exc)
        return None
    if kind not in LOCAL_FILE_SYSTEMS:
        return None
    return device, 0 if fine_grained_ctime(base) else SETTLE_NS


def fine_grained_ctime(base: str) -> bool:
    """Whether a write right after an `fstat` always moves the file's ctime, in `base`. The probe
    file has a temporary name (`.tmp<8 hex>`), which scans know as such."""
    probe = os.path.join(base, f".pygds-ctime-probe.tmp{secrets.token_hex(4)}")
    try:
        fd = os.open(probe, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except OSError:
        return False
    try:
        for _ in range(_PROBES):
            seen = os.fstat(fd).st_ctime_ns
            os.pwrite(fd, b"\0", 0)
            if os.fstat(fd).st_ctime_ns == seen:
                return False
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
        os.unlink(probe)
