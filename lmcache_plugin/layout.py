"""Where entries live: the configured paths, write affinity and file names.

Names are LMCache GdsBackend's, so a cache written by either is served by the other:

    <base>/<h[:2]>/<h[2:4]>/<quote(key_text, safe="")><data_suffix>      (the data file)
    <data file>.metadata                                                  (its header copy)
    <final name>.tmp<8 hex>                                               (while being written)

with `h = str(chunk_hash)`, the decimal hash. Short and negative hashes give short or empty
fan-out levels exactly as LMCache's `os.path.join` does: "-1" -> `<base>/-1/<name>` (the empty
second level vanishes), "123" -> `<base>/12/3/<name>`.

Safety: `quote(..., safe="")` leaves only `[A-Za-z0-9_.~-]` and `%XX`, so a name can hold no
separator; the data suffix is never empty, so a name is never "." or "..". A fan-out level that
could escape, or an empty hash (only possible for non-integer hashes), is refused with
`InvalidKeyError`.

Long names: a data name longer than `MAX_DATA_NAME` bytes (255 minus the longest suffix we add,
".metadata.tmp" + 8 hex) would make LMCache fail with ENAMETOOLONG. Such a key is stored under the
bounded name `<quoted prefix>+<sha1 of the key text>`; "+" never occurs in a quoted name, so bounded
names cannot collide with ordinary ones, and both the writer and any reader of this module compute
the same name from the key. LMCache cannot find these entries (it cannot store such keys at all),
but its start-up scan parses every `.metadata` name as a key: the prefix therefore holds at most
three quoted "@", so that parse fails with the ValueError the scan skips (a cut inside a later field
of the key could raise KeyError, which stops LMCache's whole scan).
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import urllib.parse
from typing import Sequence

DATA_SUFFIX = ".kvcache.safetensors"
WEKA_DATA_SUFFIX = ".weka1"
METADATA_SUFFIX = ".metadata"

MAX_NAME_BYTES = 255
_TMP_SUFFIX_LEN = len(".tmp") + 8
MAX_DATA_NAME = MAX_NAME_BYTES - len(METADATA_SUFFIX) - _TMP_SUFFIX_LEN
"""Longest data file name (bytes) whose metadata temporary name still fits in 255 bytes."""

BOUNDED_MARK = "+"
_QUOTED_AT = "%40"
_KEY_FIELDS = 5
"""LMCache's key text is `model@world_size@worker_id@chunk_hash@dtype[@tag%value...]`; its parser
raises ValueError for fewer fields."""
_TMP_RE = re.compile(r"\.tmp[0-9a-f]{8}$")
# What quote(key, safe="") can produce: unreserved characters and upper-case %XX escapes, never
# an escape of an unreserved character; escapes of bytes >= 0x80 must also form valid UTF-8.
_QUOTED_RE = re.compile(r"(?:[A-Za-z0-9_.~-]|%[0-9A-F]{2})+")
_NOT_PLAIN_RE = re.compile(r"[^A-Za-z0-9_.~@/%-]")
"""A character outside those a key text is usually made of: unreserved ones, which `quote` keeps,
and "@", "/" and "%", which `_quote` escapes itself."""
_NEEDLESS_ESCAPE_RE = re.compile(r"%(?:2D|2E|3[0-9]|4[1-9A-F]|5[0-9A]|5F|6[1-9A-F]|7[0-9A]|7E)")
_HIGH_ESCAPE_RE = re.compile(r"%[89A-F][0-9A-F]")


class InvalidKeyError(ValueError):
    """A key or hash that cannot be turned into a safe file name."""


def parse_paths(paths: str | Sequence[str]) -> list[str]:
    """Split a comma list (or take a sequence), trim items, drop empty ones; each becomes an
    absolute path with `~` expanded, so that a later change of working directory moves nothing
    and `~/cache` is the home directory's, not a directory named "~"."""
    items = paths.split(",") if isinstance(paths, str) else list(paths)
    return [os.path.abspath(os.path.expanduser(p.strip())) for p in items if isinstance(p, str) and p.strip()]


def fanout(chunk_hash: int | str | bytes) -> tuple[str, str]:
    """The two directory levels for a chunk hash, as LMCache computes them."""
    h = str(chunk_hash)
    if not h:  # the entry would lie in the base directory itself, where no scan looks
        raise InvalidKeyError("the chunk hash is empty; use integer chunk hashes")
    levels = (h[:2], h[2:4])
    for level in levels:
        if level in (".", "..") or "/" in level or "\0" in level or os.sep in level:
            raise InvalidKeyError(
                f"chunk hash {h!r} gives the directory level {level!r}, which could leave the "
                "cache directory; use integer chunk hashes"
            )
    return levels


def is_tmp_name(name: str) -> bool:
    """True for a temporary name `<final>.tmp<8 hex>` (ours and LMCache's)."""
    return _TMP_RE.search(name) is not None


_tmp_names = random.Random()
"""Temporary names need to be unlikely to collide, not unpredictable (the exclusive create
refuses a collision): seeded once from the OS, and again in a forked child, so no put pays for a
`getrandom` call."""
os.register_at_fork(after_in_child=_tmp_names.seed)


def tmp_path(final: str) -> str:
    """A fresh temporary name next to `final`."""
    return f"{final}.tmp{_tmp_names.getrandbits(32):08x}"


def metadata_path(data_path: str) -> str:
    """The `.metadata` companion of a data file."""
    return data_path + METADATA_SUFFIX


def is_bounded_stem(stem: str) -> bool:
    """True for a stem stored under the bounded long-key name."""
    return BOUNDED_MARK in stem


class Layout:
    """The configured paths, the affinity path, and name computation for one store."""

    def __init__(
        self, paths: str | Sequence[str], device_id: int = 0, data_suffix: str = DATA_SUFFIX
    ) -> None:
        items = parse_paths(paths)
        if not items:
            raise ValueError(
                f"no cache path given (got {paths!r}); set gds_path to one directory or a "
                "comma-separated list of directories"
            )
        if (
            not data_suffix
            or "/" in data_suffix
            or "\0" in data_suffix
            or not data_suffix.isascii()
            or len(data_suffix) > 32
        ):
            raise ValueError(
                f"data suffix {data_suffix!r} must be 1-32 ASCII characters without '/', "
                f"e.g. {DATA_SUFFIX!r} or {WEKA_DATA_SUFFIX!r}"
            )
        if int(device_id) < 0:
            raise ValueError(f"device id {device_id} must be >= 0")
        self.paths: tuple[str, ...] = tuple(items)
        self.device_id = int(device_id)
        self.data_suffix = data_suffix
        self.metadata_suffix = data_suffix + METADATA_SUFFIX
        first: dict[str, str] = {}
        for p in self.paths:
            first.setdefault(os.path.realpath(p), p)
        self.unique_paths: tuple[str, ...] = tuple(first.values())
        """The paths with duplicates (same real directory) removed, for scans and probes."""
        chosen = self.paths[self.device_id % len(self.paths)]
        self.write_path: str = first[os.path.realpath(chosen)]
        """`paths[device_id % len(paths)]` (its first spelling when a directory is listed twice)."""

    def stem(self, key_text: str) -> str:
        """The file-name stem (name without suffix) for a key text."""
        if not isinstance(key_text, str) or not key_text:
            raise InvalidKeyError(f"key text must be a non-empty string, got {key_text!r}")
        quoted = _quote(key_text)
        if len(quoted) + len(self.data_suffix) <= MAX_DATA_NAME:
            return quoted
        digest = hashlib.sha1(key_text.encode("utf-8")).hexdigest()
        keep = MAX_DATA_NAME - len(self.data_suffix) - len(BOUNDED_MARK) - len(digest)
        prefix = quoted[:keep]
        pct = prefix.rfind("%", max(0, len(prefix) - 2))
        if pct != -1:
            prefix = prefix[:pct]  # never cut a %XX escape in half
        return f"{_fewer_fields_than_a_key(prefix)}{BOUNDED_MARK}{digest}"

    def data_name(self, key_text: str) -> str:
        """The data file name for a key text."""
        return self.stem(key_text) + self.data_suffix

    def data_path(self, base: str, key_text: str, chunk_hash: int | str | bytes) -> str:
        """The data file path of a key in one base path."""
        l1, l2 = fanout(chunk_hash)
        return os.path.join(base, l1, l2, self.data_name(key_text))

    def candidate_paths(self, key_text: str, chunk_hash: int | str | bytes) -> list[tuple[str, str]]:
        """(base, data path) for every configured path, the write path first."""
        order = [self.write_path] + [p for p in self.unique_paths if p != self.write_path]
        return [(base, self.data_path(base, key_text, chunk_hash)) for base in order]

    def stem_of_data_name(self, name: str) -> str | None:
        """The stem of a data file name, or None when `name` is not a canonical data name."""
        if not name.endswith(self.data_suffix) or len(name) == len(self.data_suffix):
            return None
        if not name.isascii():  # every name written here is ASCII; others may not even be UTF-8
            return None
        stem = name[: -len(self.data_suffix)]
        if is_bounded_stem(stem):
            return stem if len(name.encode()) <= MAX_DATA_NAME else None
        # The scan runs this on every name: regular expressions decide ASCII keys (nearly all);
        # only keys with non-ASCII characters pay for an unquote/quote round trip.
        if not _QUOTED_RE.fullmatch(stem) or _NEEDLESS_ESCAPE_RE.search(stem):
            return None
        if _HIGH_ESCAPE_RE.search(stem):
            key = key_from_stem(stem)
            if key is None or urllib.parse.quote(key, safe="") != stem:
                return None
        return stem

    def stem_of_metadata_name(self, name: str) -> str | None:
        """The stem of a `.metadata` file name, or None."""
        if not name.endswith(self.metadata_suffix):
            return None
        return self.stem_of_data_name(name[: -len(METADATA_SUFFIX)])

    def key_text_of(self, name: str) -> str | None:
        """The key text a data file name was made from; None for a bounded name (its key is in
        the header's `__metadata__.key`) or a name this layout never writes."""
        stem = self.stem_of_data_name(name)
        return None if stem is None else key_from_stem(stem)


def _quote(key_text: str) -> str:
    """`urllib.parse.quote(key_text, safe="")`. Every lookup computes it, so a key made only of
    unreserved characters, "@", "/" and "%" (LMCache's keys are) is escaped by three C-speed
    replacements instead of `quote`'s per-character loop."""
    if _NOT_PLAIN_RE.search(key_text) is None:
        return key_text.replace("%", "%25").replace("/", "%2F").replace("@", "%40")
    try:
        return urllib.parse.quote(key_text, safe="", errors="strict")
    except UnicodeEncodeError as exc:
        raise InvalidKeyError(f"key text {key_text!r} is not encodable as UTF-8: {exc}") from None


def _fewer_fields_than_a_key(prefix: str) -> str:
    """`prefix` cut before its fourth quoted "@", so that LMCache's key parser rejects it with
    ValueError (see the module docstring)."""
    at = -1
    for _ in range(_KEY_FIELDS - 1):
        at = prefix.find(_QUOTED_AT, at + 1)
        if at == -1:
            return prefix
    return prefix[:at]


def key_from_stem(stem: str) -> str | None:
    """The key text of an ordinary stem; None for a bounded stem or undecodable name."""
    if is_bounded_stem(stem):
        return None
    try:
        return urllib.parse.unquote(stem, errors="strict")
    except UnicodeDecodeError:
        return None
