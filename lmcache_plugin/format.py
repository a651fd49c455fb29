"""The 4 KiB entry header, byte for byte as LMCache's GdsBackend writes it.

A data file is this header followed by the raw bytes at offset `HEADER_SIZE`; the `.metadata`
companion is the header alone. The header is `struct.pack("<Q", n)` and `n` bytes of JSON padded
with spaces to `HEADER_SIZE - 8`:

    {"kvcache": {"dtype": "BF16", "shape": [...], "data_offsets": [0, nbytes], "fmt": 1,
                 "__metadata__": {"lmcache_version": "1"}}}

LMCache 0.5.6 writes one tensor; its main branch adds, for multi-group memory objects,
`"shapes"` and `"dtypes"` lists after `"__metadata__"` with `data_offsets[1]` the bytes of all
groups and `"dtype"`/`"shape"` those of group 0. Both generations are read and written here.

Entries this plugin writes also carry, in `"__metadata__"`, the full key text (`KEY_FIELD`) so a
reader can tell that a file holds the entry it asked for (a renamed file, or a name a
case-insensitive file system folds onto another), and a checksum of the data (`CHECKSUM_FIELD`,
`"xxh3_64:<16 hex>"`: the algorithm is named so that it can change). LMCache ignores both; entries
without them (LMCache's own) are read as before.

`unpack_header` trusts nothing: every fault is a `CorruptEntryError`, never another exception.
"""

from __future__ import annotations

import json
import math
import re
import struct
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Mapping, Sequence

import xxhash

HEADER_SIZE = 4096
"""Bytes reserved for the header; the data starts at this file offset."""

METADATA_VERSION = "1"
"""The `__metadata__.lmcache_version` LMCache writes and accepts."""

KEY_FIELD = "key"
"""`__metadata__` field holding the entry's full key text."""

CHECKSUM_FIELD = "checksum"
"""`__metadata__` field holding `"<algorithm>:<hex digest>"` of the entry's data."""

CHECKSUM_ALGORITHM = "xxh3_64"
"""The algorithm this version writes and verifies (xxHash XXH3, 64 bits: it runs at memory speed
and releases the GIL; see BENCHMARKS.md, "Entry checksums")."""

_CHECKSUM_PREFIX = CHECKSUM_ALGORITHM + ":"
_CHECKSUM_HEX = 16
_CHECKSUM_DIGEST = re.compile(f"[0-9a-f]{{{_CHECKSUM_HEX}}}")

_LEN = struct.Struct("<Q")
_JSON_MAX = HEADER_SIZE - _LEN.size

DTYPE_ITEMSIZE: dict[str, int] = {
    "F16": 2,
    "BF16": 2,
    "F32": 4,
    "F64": 8,
    "U8": 1,
    "U16": 2,
    "U32": 4,
    "U64": 8,
    "I8": 1,
    "I16": 2,
    "I32": 4,
    "I64": 8,
    "F8E4M3FN": 1,
    "F8E5M2": 1,
}
"""The dtype names LMCache's header knows, with their item sizes."""

_TORCH_NAMES = {
    "F16": "float16",
    "BF16": "bfloat16",
    "F32": "float32",
    "F64": "float64",
    "U8": "uint8",
    "U16": "uint16",
    "U32": "uint32",
    "U64": "uint64",
    "I8": "int8",
    "I16": "int16",
    "I32": "int32",
    "I64": "int64",
    "F8E4M3FN": "float8_e4m3fn",
    "F8E5M2": "float8_e5m2",
}


class CorruptEntryError(Exception):
    """A header or entry that cannot be trusted; `reason` says what is wrong with it."""

    def __init__(self, reason: str, path: str | None = None) -> None:
        self.reason = reason
        self.path = path
        where = f"{path}: " if path else ""
        super().__init__(f"{where}corrupt KV cache entry: {reason}")


def torch_dtype(name: str) -> Any:
    """The torch dtype for a header dtype name ("BF16" -> torch.bfloat16)."""
    import torch

    try:
        return getattr(torch, _TORCH_NAMES[name])
    except KeyError:
        raise ValueError(
            f"unknown header dtype {name!r}; known: {', '.join(DTYPE_ITEMSIZE)}"
        ) from None


def dtype_name(dtype: Any) -> str:
    """The header dtype name for a torch dtype or a name (torch.bfloat16 -> "BF16")."""
    if isinstance(dtype, str):
        if dtype in DTYPE_ITEMSIZE:
            return dtype
        raise ValueError(f"unknown header dtype {dtype!r}; known: {', '.join(DTYPE_ITEMSIZE)}")
    text = str(dtype).removeprefix("torch.")
    for name, torch_name in _TORCH_NAMES.items():
        if torch_name == text:
            return name
    if text == "half":
        return "F16"
    raise ValueError(
        f"dtype {dtype} cannot be stored in an LMCache GDS header; "
        f"supported: {', '.join(_TORCH_NAMES.values())}"
    )


def _fmt_int(fmt: Any) -> int:
    """A memory format as the header's integer (accepts LMCache's `MemoryFormat` enum)."""
    return int(getattr(fmt, "value", fmt))


def _group_nbytes(shape: Sequence[int], dtype: str) -> int:
    return math.prod(shape) * DTYPE_ITEMSIZE[dtype]


@dataclass(frozen=True)
class EntryHeader:
    """What the header says: per-group shapes and dtype names, total bytes, format, extras.

    `multi_group` selects main's header layout (with "shapes"/"dtypes" lists) even for a
    single group; False is the 0.5.6 layout, which holds exactly one group.
    """

    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[str, ...]
    nbytes: int
    fmt: int
    extra: Mapping[str, Any] = field(default_factory=lambda: {"lmcache_version": METADATA_VERSION})
    multi_group: bool = False

    @property
    def shape(self) -> tuple[int, ...]:
        """Group 0's shape (the header's top-level "shape")."""
        return self.shapes[0]

    @property
    def dtype(self) -> str:
        """Group 0's dtype name (the header's top-level "dtype")."""
        return self.dtypes[0]

    @property
    def key(self) -> str | None:
        """The key text the entry was stored under; None when its writer recorded none."""
        return self.extra.get(KEY_FIELD)

    @property
    def checksum(self) -> str | None:
        """The data's checksum text, when this version can verify it (else None)."""
        text = self.extra.get(CHECKSUM_FIELD)
        return text if isinstance(text, str) and text.startswith(_CHECKSUM_PREFIX) else None

    def with_checksum(self, checksum: str) -> EntryHeader:
        """This header naming `checksum` as its data's."""
        return replace(self, extra={**self.extra, CHECKSUM_FIELD: checksum})

    @classmethod
    def single(
        cls, shape: Iterable[int], dtype: Any, fmt: int, extra: Mapping[str, Any] | None = None
    ) -> EntryHeader:
        """A 0.5.6-style header for one tensor; `dtype` a torch dtype or a name."""
        shape_t = tuple(int(d) for d in shape)
        name = dtype_name(dtype)
        return cls(
            shapes=(shape_t,),
            dtypes=(name,),
            nbytes=_group_nbytes(shape_t, name),
            fmt=_fmt_int(fmt),
            extra=dict(extra) if extra is not None else {"lmcache_version": METADATA_VERSION},
        )

    @classmethod
    def groups(
        cls,
        shapes: Iterable[Iterable[int]],
        dtypes: Iterable[Any],
        fmt: int,
        extra: Mapping[str, Any] | None = None,
    ) -> EntryHeader:
        """A multi-group header (LMCache main); the data is the groups' bytes back to back."""
        shapes_t = tuple(tuple(int(d) for d in s) for s in shapes)
        names = tuple(dtype_name(d) for d in dtypes)
        if not shapes_t or len(shapes_t) != len(names):
            raise ValueError(
                f"a multi-group header needs one dtype per shape and at least one group; "
                f"got {len(shapes_t)} shapes and {len(names)} dtypes"
            )
        return cls(
            shapes=shapes_t,
            dtypes=names,
            nbytes=sum(_group_nbytes(s, d) for s, d in zip(shapes_t, names)),
            fmt=_fmt_int(fmt),
            extra=dict(extra) if extra is not None else {"lmcache_version": METADATA_VERSION},
            multi_group=True,
        )

    @classmethod
    def for_tensor(cls, tensor: Any, fmt: int) -> EntryHeader:
        """A 0.5.6-style header describing a torch tensor."""
        return cls.single(tuple(tensor.shape), tensor.dtype, fmt)


def checksum_of(pieces: Iterable[Any]) -> str:
    """The checksum text of the data given as consecutive buffer pieces (bytes-likes)."""
    hasher = xxhash.xxh3_64()
    for piece in pieces:
        hasher.update(piece)
    return _CHECKSUM_PREFIX + hasher.hexdigest()


def header_digest(raw: bytes) -> int:
    """A 128-bit xxh3 of a header's bytes: equal digests mean the same bytes, so a header checked
    once need not be parsed again when a file shows the same bytes."""
    return xxhash.xxh3_128_intdigest(raw)


def pack_header(header: EntryHeader) -> bytes:
    """The `HEADER_SIZE` bytes LMCache's `pack_metadata` writes for this header.

    Raises ValueError when the header is inconsistent or its JSON does not fit.
    """
    if not header.shapes or len(header.shapes) != len(header.dtypes):
        raise ValueError("header needs at least one group and one dtype per shape")
    if not header.multi_group and len(header.shapes) != 1:
        raise ValueError("a header with several groups must have multi_group=True")
    for name in header.dtypes:
        dtype_name(name)
    total = sum(_group_nbytes(s, d) for s, d in zip(header.shapes, header.dtypes))
    if total != header.nbytes:
        raise ValueError(f"header nbytes {header.nbytes} != {total} from its shapes and dtypes")
    meta: dict[str, Any] = {
        "dtype": header.dtypes[0],
        "shape": list(header.shapes[0]),
        "data_offsets": [0, header.nbytes],
        "fmt": header.fmt,
        "__metadata__": dict(header.extra),
    }
    if header.multi_group:
        meta["shapes"] = [list(s) for s in header.shapes]
        meta["dtypes"] = list(header.dtypes)
    text = json.dumps({"kvcache": meta}).encode("utf-8")
    if len(text) > _JSON_MAX:
        raise ValueError(
            f"header JSON is {len(text)} bytes, more than the {_JSON_MAX} the 4 KiB header holds "
            "(too many groups or too long extra metadata)"
        )
    return _LEN.pack(_JSON_MAX) + text + b" " * (_JSON_MAX - len(text))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _shape(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(_is_int(d) and d >= 0 for d in value):
        raise CorruptEntryError(f"{what} must be a list of non-negative integers, got {value!r}"[:200])
    return tuple(value)


def _dtype(value: Any, what: str) -> str:
    if not isinstance(value, str) or value not in DTYPE_ITEMSIZE:
        raise CorruptEntryError(f"{what} {value!r} is not a known dtype name"[:200])
    return value


def _check_identity_fields(extra: dict[str, Any]) -> None:
    """The key must be a non-empty string; a checksum must read "<algorithm>:<digest>", and one of
    this version's algorithm exactly `_CHECKSUM_HEX` lower-case hex digits (another algorithm, from
    a later writer, is kept and not verified)."""
    key = extra.get(KEY_FIELD)
    if KEY_FIELD in extra and (not isinstance(key, str) or not key):
        raise CorruptEntryError(f"key must be a non-empty string, got {key!r}"[:200])
    if CHECKSUM_FIELD not in extra:
        return
    text = extra[CHECKSUM_FIELD]
    algorithm, colon, digest = text.partition(":") if isinstance(text, str) else ("", "", "")
    if not (algorithm and colon and digest):
        raise CorruptEntryError(f'checksum must read "<algorithm>:<digest>", got {text!r}'[:200])
    if algorithm == CHECKSUM_ALGORITHM and not _CHECKSUM_DIGEST.fullmatch(digest):
        raise CorruptEntryError(
            f"{CHECKSUM_ALGORITHM} checksum must be {_CHECKSUM_HEX} lower-case hex digits, got "
            f"{digest!r}"[:200]
        )


def unpack_header(buf: bytes | bytearray | memoryview, *, file_size: int | None = None) -> EntryHeader:
    """Parse and validate a header; with `file_size`, also check the data file's length.

    Reads only within `buf`. Raises `CorruptEntryError(reason)` for every fault.
    """
    try:
        return _unpack(memoryview(buf).cast("B"), file_size)
    except CorruptEntryError:
        raise
    except (ValueError, TypeError, KeyError, OverflowError, RecursionError, MemoryError) as exc:
        raise CorruptEntryError(f"unreadable header ({type(exc).__name__}: {exc})"[:300]) from None


def _unpack(buf: memoryview, file_size: int | None) -> EntryHeader:
    if len(buf) < _LEN.size:
        raise CorruptEntryError(f"header truncated to {len(buf)} bytes")
    (length,) = _LEN.unpack_from(buf, 0)
    if length > _JSON_MAX:
        raise CorruptEntryError(f"header length field {length} exceeds {_JSON_MAX}")
    if _LEN.size + length > len(buf):
        raise CorruptEntryError(
            f"header length field {length} runs past the {len(buf)} bytes available"
        )
    raw = bytes(buf[_LEN.size : _LEN.size + length]).rstrip(b" ")
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise CorruptEntryError(f"header is not valid JSON ({exc})"[:200]) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("kvcache"), dict):
        raise CorruptEntryError('header JSON has no "kvcache" object')
    meta = doc["kvcache"]
    dtype = _dtype(meta.get("dtype"), "dtype")
    shape = _shape(meta.get("shape"), "shape")
    offsets = meta.get("data_offsets")
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(_is_int(o) for o in offsets)
        or offsets[0] != 0
        or offsets[1] < 0
    ):
        raise CorruptEntryError(f"data_offsets must be [0, nbytes], got {offsets!r}"[:200])
    nbytes = offsets[1]
    fmt = meta.get("fmt")
    if not _is_int(fmt) or fmt < 0:
        raise CorruptEntryError(f"fmt must be a non-negative integer, got {fmt!r}"[:200])
    extra = meta.get("__metadata__")
    if not isinstance(extra, dict):
        raise CorruptEntryError('"__metadata__" must be an object')
    version = extra.get("lmcache_version")
    if version != METADATA_VERSION:
        raise CorruptEntryError(
            f"lmcache_version {version!r} is not the supported {METADATA_VERSION!r}"[:200]
        )
    _check_identity_fields(extra)
    has_shapes, has_dtypes = "shapes" in meta, "dtypes" in meta
    if has_shapes != has_dtypes:
        raise CorruptEntryError('multi-group header needs both "shapes" and "dtypes"')
    if has_shapes:
        shapes_raw, dtypes_raw = meta["shapes"], meta["dtypes"]
        if (
            not isinstance(shapes_raw, list)
            or not isinstance(dtypes_raw, list)
            or not shapes_raw
            or len(shapes_raw) != len(dtypes_raw)
        ):
            raise CorruptEntryError('"shapes" and "dtypes" must be non-empty lists of equal length')
        shapes = tuple(_shape(s, "shapes item") for s in shapes_raw)
        dtypes = tuple(_dtype(d, "dtypes item") for d in dtypes_raw)
    else:
        shapes, dtypes = (shape,), (dtype,)
    expected = sum(_group_nbytes(s, d) for s, d in zip(shapes, dtypes))
    if expected != nbytes:
        raise CorruptEntryError(
            f"data_offsets say {nbytes} bytes but shapes and dtypes make {expected}"
        )
    if file_size is not None and file_size != HEADER_SIZE + nbytes:
        raise CorruptEntryError(
            f"file is {file_size} bytes, header says {HEADER_SIZE} + {nbytes} = "
            f"{HEADER_SIZE + nbytes}"
        )
    return EntryHeader(
        shapes=shapes, dtypes=dtypes, nbytes=nbytes, fmt=fmt, extra=extra, multi_group=has_shapes
    )
