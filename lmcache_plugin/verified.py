"""Data files whose bytes a reader has already proved against their checksum, so that it need not
hash them again (checksum mode "auto"; "always" hashes every read).

A file's bytes change only together with its identity (device, inode, size, mtime, ctime): a swap
or a new put is a new inode, a truncation a new size, an in-place write a new mtime and ctime, set
before the data is copied in. So once a read has verified a file, a later read of a file with the
same identity before and after reading may skip the hash, under two conditions that keep it true:

- the kernel's `fstat` is the truth: only on local file systems (`LOCAL_FILE_SYSTEMS`). Network and
  FUSE file systems can answer from an attribute cache that lags another machine's writes; there
  every read verifies.
- the file had settled when it was verified: its ctime at least `SETTLE_NS` old. Timestamps are
  coarse (a kernel tick, one second on ext4 with 128-byte inodes), and a write within the tick of
  the last change leaves them as they were; a file changed more recently is verified again on its
  next read.

What this gives up: a medium error that changes bytes on the disk without any write (and that the
drive's own checks miss) is noticed by the first read of a file in a process, not by later ones.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Iterable

from pygds import fsinfo

logger = logging.getLogger(__name__)

LOCAL_FILE_SYSTEMS = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "f2fs", "tmpfs", "ramfs"})
"""Kernel file systems whose `fstat` always reports the last change (no attribute cache)."""
SETTLE_NS = 2_000_000_000
"""How long ago a file's last change must lie for its verification to be remembered: more than
the coarsest timestamp granularity of `LOCAL_FILE_SYSTEMS` (one second)."""
MAX_REMEMBERED = 1 << 18
"""Verified files remembered per store (about 100 bytes each); the oldest are forgotten first."""


def identity(st: os.stat_result) -> tuple[int, int, int, int, int]:
    """What changes whenever a file's bytes may have changed."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class VerifiedFiles:
    """The files of some base paths verified by reads of this process (see the module docstring)."""

    def __init__(self, bases: Iterable[str], enabled: bool = True) -> None:
        self._trusted_devices = {b: dev for b in bases if enabled and (dev := _device_if_local(b)) is not None}
        """Base path -> its device: a file elsewhere (another mount below the base) is never remembered."""
        self._proved: dict[str, int] = {}  # data path -> hash of its identity when verified
        self._lock = threading.Lock()

    def holds(self, path: str, before: os.stat_result, after: os.stat_result) -> bool:
        """True when the file at `path`, unchanged from `before` (taken once it was open) to
        `after` (taken after the read), is the very file version an earlier read verified."""
        if not self._trusted_devices:
            return False
        now = identity(before)
        return now == identity(after) and self._proved.get(path) == hash(now)

    def verified(self, base: str, path: str, before: os.stat_result, after: os.stat_result) -> None:
        """A read of `path` (in base path `base`) matched its checksum: remember the file when
        it stayed unchanged during the read, had settled, and lies where `fstat` is the truth."""
        if self._trusted_devices.get(base) != before.st_dev:
            return
        now = identity(before)
        if now != identity(after) or time.time_ns() - before.st_ctime_ns < SETTLE_NS:
            return
        with self._lock:
            self._proved.pop(path, None)  # re-inserted last: the newest is forgotten last
            self._proved[path] = hash(now)
            if len(self._proved) > MAX_REMEMBERED:
                del self._proved[next(iter(self._proved))]


def _device_if_local(base: str) -> int | None:
    """The device of `base` when it lies on one of `LOCAL_FILE_SYSTEMS`, else None."""
    try:
        kind = fsinfo.fs_type(base)
        device = os.stat(base).st_dev
    except OSError as exc:
        logger.debug("file system of %s unknown (%s): every read verifies", base, exc)
        return None
    return device if kind in LOCAL_FILE_SYSTEMS else None
