"""Index snapshots: what the index held for one path, saved so that a restart serves at once.

A large cache's start-up scan lists tens of thousands of fan-out directories, and a cold listing
costs about a second per 100,000 entries. A snapshot is one file per path,
`<path>/.pygds-index/entries` (`entries-weka1` for the ".weka1" suffix), holding every entry the
index had there: its fan-out directory, stem and `.metadata` flag. The store loads it before the
scan starts, so `contains()` answers from the index at once; the scan then runs as always and
reconciles (`Index.add_snapshot`, `Index.end_scan`). Sizes are not recorded: until the scan has
seen an entry, capacity neither counts nor evicts it, so a stale snapshot cannot make a put evict
live entries.

A snapshot is only a hint, never a record: every read opens the file and checks its header's key,
length and checksum, so a stale or foreign snapshot can cause a miss or a wasted open, never wrong
bytes. Its directories must be 1-2 character fan-out names and the scan checks its names as it
checks listed ones (`Scanner`), so it cannot point outside its path. A snapshot that is truncated, damaged,
of another version, or written for another path or suffix is ignored (one log line) and the scan
alone fills the index.

The directory name is longer than two characters, so neither the scan, `pygds cache` nor LMCache
GdsBackend's scan (which visit 1-2 character directories only) ever looks inside it.

File: a first line `pygds-index-snapshot 3`, a JSON line (base real path, data suffix, counts,
the prefix and suffix every stem shares, writer, time), then the zlib-compressed body: one line
per directory group, `<fan-out dir>\\t<1 if .metadata>\\t<middle>/<middle>/...` (a middle is a
stem without the shared prefix and suffix), at most `MAX_BODY_BYTES` once decompressed. zlib's
own checksum covers the body. A cache's stems differ mostly in their chunk
hash (the model name and dtype repeat), so a restart decompresses and checks a fifth of the text.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import stat
import time
import zlib
from dataclasses import dataclass
from typing import Iterable

from .index import Entry, ScannedDir
from .layout import DATA_SUFFIX, MAX_DATA_NAME, Layout, is_tmp_name
from .publish import publish_bytes, unlink_quietly

logger = logging.getLogger(__name__)

SNAPSHOT_DIR = ".pygds-index"
MAGIC = b"pygds-index-snapshot 3\n"
_MAX_HEADER = 4096
_PART = r"(?:[^/\x00.][^/\x00]?|\.[^/\x00.])"  # 1-2 characters, neither "." nor ".."
_DIR_RE = re.compile(f"{_PART}(?:/{_PART})?")
_TMP_MAX_AGE_S = 3600.0
MAX_BODY_BYTES = 1 << 29
"""The most a snapshot's body may decompress to, and its names take once rebuilt (about 13
million names of a usual cache): a crafted snapshot cannot make a restart build gigabytes."""
_MAX_FILE_BYTES = MAX_BODY_BYTES + (MAX_BODY_BYTES >> 8) + _MAX_HEADER + 64
"""A snapshot file larger than this holds more than `MAX_BODY_BYTES` (zlib never grows text by
more than a fraction of a percent) and is not read at all."""
_MAX_GROUPS = 1 << 16
"""More directory groups than a path's fan-out directories can make (10,101 in-process, 256 in
MP mode, each at most twice: with and without `.metadata`)."""


@dataclass
class Group:
    """The entries of one fan-out directory that share a `.metadata` flag."""

    directory: str
    """relative to the path: "12/34", or "-1" for a short hash"""
    has_metadata: bool
    stems: list[str]


def snapshot_path(base: str, data_suffix: str) -> str:
    """Where the snapshot of `base` for entries named with `data_suffix` lives."""
    name = "entries" if data_suffix == DATA_SUFFIX else "entries" + data_suffix.replace(".", "-")
    return os.path.join(base, SNAPSHOT_DIR, name)


def groups_of(items: Iterable[tuple[str, Entry | ScannedDir]], base: str) -> list[Group]:
    """The index's (stem, entry) pairs of `base`, grouped by directory and `.metadata` flag.
    Names that are not ASCII are left out (the scan finds them)."""
    cut = len(base) + 1
    listed: dict[tuple[str, bool], list[str]] = {}
    for stem, found in items:
        if found.base != base:
            continue
        where = (found.directory if type(found) is ScannedDir else os.path.dirname(found.path), found.has_metadata)
        stems = listed.get(where)
        if stems is None:
            stems = listed[where] = []
        stems.append(stem)
    out = [Group(directory[cut:], meta, stems) for (directory, meta), stems in listed.items()]
    return [g for g in out if g.directory.isascii() and _DIR_RE.fullmatch(g.directory) and "/".join(g.stems).isascii()]


def write(base: str, layout: Layout, groups: list[Group]) -> bool:
    """Publish the snapshot of `base` atomically (temporary name, then rename), or remove it when
    there is nothing to record; False (logged) when the path refuses."""
    final = snapshot_path(base, layout.data_suffix)
    groups = [g for g in groups if g.stems]  # a line names one stem at least
    count = sum(len(g.stems) for g in groups)
    try:
        if not count:
            unlink_quietly(final)
            _remove_dir_if_empty(os.path.dirname(final))
            return True
        prefix, suffix = _affixes(groups)
        lines = []
        for g in groups:
            middles = "/".join(stem[len(prefix):len(stem) - len(suffix)] for stem in g.stems)
            lines.append(f"{g.directory}\t{int(g.has_metadata)}\t{middles}")
        raw = "\n".join(lines).encode("ascii")
        body = zlib.compress(raw, 1)
        meta = {"base": os.path.realpath(base), "suffix": layout.data_suffix, "entries": count,
                "groups": len(groups), "name_prefix": prefix, "name_suffix": suffix,
                "raw_bytes": len(raw), "body_bytes": len(body),
                "host": socket.gethostname(), "pid": os.getpid(), "written": time.time()}
        _sweep_tmp(os.path.dirname(final))
        publish_bytes(final, MAGIC + json.dumps(meta).encode() + b"\n" + body, make_dirs=True)
    except OSError as exc:
        logger.info("cannot write the index snapshot %s: %s; the next start scans instead", final, exc)
        return False
    logger.debug("wrote the index snapshot %s: %d entries", final, count)
    return True


def _affixes(groups: list[Group]) -> tuple[str, str]:
    """The prefix and the suffix every stem shares, not overlapping in the shortest one; neither
    cuts a %XX escape (the scan checks the three parts of a name one by one)."""
    first = min(min(g.stems) for g in groups)
    prefix = os.path.commonprefix([first, max(max(g.stems) for g in groups)])
    cut = prefix.find("%", len(prefix) - 2)  # an escape the prefix would end in
    if cut >= 0:
        prefix = prefix[:cut]
    room = min(min(map(len, g.stems)) for g in groups) - len(prefix)
    suffix = first[len(first) - room:] if room > 0 else ""
    for g in groups:
        for stem in g.stems:
            while not stem.endswith(suffix):
                suffix = suffix[1:]
    return prefix, suffix[suffix.find("%"):] if "%" in suffix else ""


@dataclass
class Snapshot:
    """A snapshot as read, in columns: per group its directory, `.metadata` flag and name count;
    the stems as their shared prefix and suffix and their middles, "/"-joined, group
    after group. A restart waits for the load: the scan checks and splits these in C."""

    directories: list[str]
    has_metadata: list[bool]
    counts: list[int]
    prefix: str
    suffix: str
    middles: str

    def stems(self) -> list[str]:
        """Every stem, group after group (one replace and one split)."""
        between = self.suffix + "/" + self.prefix
        return (self.prefix + self.middles.replace("/", between) + self.suffix).split("/")


def read(base: str, layout: Layout) -> Snapshot | None:
    """The snapshot of `base`; None when there is none or it cannot be used (why is logged: a
    snapshot is a hint, the scan fills the index anyway)."""
    path = snapshot_path(base, layout.data_suffix)
    try:
        return _parse(_read_file(path), base, layout)
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError, zlib.error) as exc:
        logger.warning("ignoring the index snapshot %s: %s; scanning instead (the next close "
                       "writes a new one)", path, exc)
        return None
    except OSError as exc:
        logger.info("cannot read the index snapshot %s: %s; scanning instead", path, exc)
        return None


def _read_file(path: str) -> bytes:
    """The bytes of the snapshot file at `path`. `ValueError` when it is no regular file (a FIFO
    would block the restart, a device never end) or is too large to be one; a symbolic link
    raises `OSError` (ELOOP)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > _MAX_FILE_BYTES:
            raise ValueError(f"not a regular file of at most {_MAX_FILE_BYTES} bytes")
        parts, left = [], st.st_size
        while left > 0 and (part := os.read(fd, left)):
            parts.append(part)
            left -= len(part)
        return b"".join(parts)
    finally:
        os.close(fd)


def _parse(blob: bytes, base: str, layout: Layout) -> Snapshot:
    if not blob.startswith(MAGIC):
        raise ValueError("not a snapshot of this version")
    end = blob.find(b"\n", len(MAGIC), len(MAGIC) + _MAX_HEADER)
    if end < 0:
        raise ValueError("no header line")
    meta = json.loads(blob[len(MAGIC):end])
    if meta["base"] != os.path.realpath(base):
        raise ValueError(f"written for {meta['base']!r}, not this path (copied or moved here)")
    if meta["suffix"] != layout.data_suffix:
        raise ValueError(f"written for data suffix {meta['suffix']!r}, not {layout.data_suffix!r}")
    body = memoryview(blob)[end + 1:]
    if len(body) != meta["body_bytes"]:
        raise ValueError(f"{len(body)} body bytes instead of {meta['body_bytes']} (truncated)")
    raw_bytes, groups = meta["raw_bytes"], meta["groups"]
    if type(raw_bytes) is not int or not 0 < raw_bytes <= MAX_BODY_BYTES:
        raise ValueError(f"a body of {raw_bytes!r} bytes claimed (at most {MAX_BODY_BYTES})")
    if type(groups) is not int or not 0 < groups <= _MAX_GROUPS:
        raise ValueError(f"{groups!r} directory groups claimed (at most {_MAX_GROUPS})")
    unzip = zlib.decompressobj()
    raw = unzip.decompress(body, raw_bytes + 1)
    if len(raw) != raw_bytes or not unzip.eof or unzip.unused_data:
        raise ValueError("the body does not match its recorded length")
    prefix, suffix = meta["name_prefix"], meta["name_suffix"]
    if not isinstance(prefix, str) or not isinstance(suffix, str) or "/" in prefix + suffix:
        raise ValueError("the shared prefix or suffix of the names is no part of a name")
    if len(prefix) + len(suffix) > MAX_DATA_NAME:
        raise ValueError(f"a shared prefix and suffix of {len(prefix) + len(suffix)} characters, longer than a name")
    if raw.count(b"\n") + 1 != groups:
        raise ValueError("the group count does not match the header")
    snap = Snapshot([], [], [], prefix, suffix, "")
    texts = []
    for line in raw.decode("ascii").split("\n"):
        directory, flag, stems_text = line.split("\t")
        if not _DIR_RE.fullmatch(directory):
            raise ValueError(f"{directory!r} is no fan-out directory")
        if flag not in ("0", "1"):
            raise ValueError(f"metadata flag {flag!r}")
        snap.directories.append(directory)
        snap.has_metadata.append(flag == "1")
        snap.counts.append(stems_text.count("/") + 1)
        texts.append(stems_text)
    entries = sum(snap.counts)
    if entries != meta["entries"]:
        raise ValueError("the entry count does not match the header")
    if raw_bytes + entries * (len(prefix) + len(suffix)) > MAX_BODY_BYTES:
        raise ValueError(f"{entries} names of {len(prefix) + len(suffix)} shared characters each: more than "
                         f"{MAX_BODY_BYTES} bytes once rebuilt")
    snap.middles = "/".join(texts)
    if "///" in snap.middles or (snap.middles.count("//") + snap.middles.startswith("/")
                                 + snap.middles.endswith("/") + (snap.middles == "")) > 1:
        raise ValueError("more than one name is the shared prefix and suffix alone (names are unique)")
    return snap


def _sweep_tmp(directory: str) -> None:
    """Remove temporary files a crashed writer left (older than an hour)."""
    try:
        names = os.listdir(directory)
    except OSError:
        return
    now = time.time()
    for name in names:
        if is_tmp_name(name):
            path = os.path.join(directory, name)
            try:
                if now - os.lstat(path).st_mtime > _TMP_MAX_AGE_S:
                    os.unlink(path)
            except OSError:
                pass


def _remove_dir_if_empty(directory: str) -> None:
    try:
        os.rmdir(directory)
    except OSError:
        pass
