"""Data files whose bytes are already proved against their checksum, so that a read need not hash
them again (checksum mode "auto"; "always" hashes every read).

A file's bytes change only together with its identity (device, inode, size, mtime, ctime): a swap
or a new put is a new inode, a truncation a new size, an in-place write a new mtime and ctime, set
before the data is copied in. A file is proved by a read that verified it, or by the put that
wrote it from the bytes it had just hashed; a later read of a file with the same identity before
and after reading skips the hash. Two conditions keep that true:

- the kernel's `fstat` is the truth: only on local file systems (`LOCAL_FILE_SYSTEMS`). Network and
  FUSE file systems can answer from an attribute cache that lags another machine's writes; there
  every read verifies.
- a later write must show. Where timestamps are fine-grained once read (Linux 6.13 and later on
  ext4, xfs, btrfs and tmpfs: a write after a `stat` always moves ctime; probed per path at start),
  every write after the proof does. Elsewhere timestamps are coarse (a kernel tick, one second on
  ext4 with 128-byte inodes) and a write within the tick of the last change leaves them as they
  were: a file is remembered only once its last change lies `SETTLE_NS` back, and a put proves
  nothing.

What this gives up: a medium error that changes bytes on the disk without any write (and that the
drive's own checks miss) is noticed by the first read of a file in a process, not by later ones.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
import time
from typing import Iterable

from pygds import fsinfo

logger = logging.getLogger(__name__)

LOCAL_FILE_SYSTEMS = frozenset({"ext2", "ext3", "ext4", "xfs", "btrfs", "f2fs", "tmpfs", "ramfs"})
"""Kernel file systems whose `fstat` always reports the last change (no attribute cache)."""
SETTLE_NS = 2_000_000_000
"""Where timestamps are coarse, how long ago a file's last change must lie for a verification to
be remembered: more than the coarsest granularity of `LOCAL_FILE_SYSTEMS` (one second)."""
MAX_REMEMBERED = 1 << 18
"""Proved files remembered per store (about 100 bytes each); the oldest are forgotten first."""
_PROBES = 16


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

    def holds(self, path: str, before: os.stat_result, after: os.stat_result | None) -> bool:
        """True when the file at `path`, unchanged from `before` (taken once it was open) to
        `after` (taken after the read), is the very file version proved earlier."""
        if after is None:
            return False
        now = identity(before)
        return now == identity(after) and self._proved.get(path) == hash(now)

    def verified(self, base: str, path: str, before: os.stat_result, after: os.stat_result | None) -> None:
        """A read of `path` (in base path `base`) matched its checksum: remember the file when
        it stayed unchanged during the read and a later write would show."""
        facts = self._bases.get(base)
        if facts is None or after is None or facts[0] != before.st_dev or identity(before) != identity(after):
            return
        if time.time_ns() - before.st_ctime_ns >= facts[1]:
            self._remember(path, before)

    def written(self, base: str, path: str, written: os.stat_result) -> None:
        """A put wrote `path` from bytes it had hashed, `written` being the file's `fstat` after
        the data went in, before the rename: remember the file now at `path` when it is that same
        file, unchanged (the rename moved only its ctime), where timestamps are fine-grained."""
        facts = self._bases.get(base)
        if facts is None or facts[0] != written.st_dev or facts[1] != 0:
            return
        try:
            st = os.stat(path)
        except OSError:
            return
        if identity(st)[:4] == identity(written)[:4]:
            self._remember(path, st)

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
