"""Key texts for LMCache multiprocess-mode (MP) keys, and back (no LMCache import).

An MP key (`ObjectKey`: chunk hash bytes, model, kv_rank, object group, cache salt) is stored by
`l2_adapter.py` under the key text

    <model>@mp@0x<kv_rank:08x>@g<object group:x>@<chunk hash hex>[@<cache salt>]

(the salt field only when the salt is not empty), and `KVStore` names its files from that text as
it names every key (`layout.py`). The model comes first, as in LMCache's own key texts, so
`pygds cache ls --model` selects MP entries too.

Why an MP key text never equals an in-process one. The in-process plugin stores LMCache's
`CacheEngineKey.to_string()`, `model@world_size@worker_id@chunk_hash@dtype[@layer][@tag%value...]`,
whose model and tags may hold any character, "@" included. Split at "@" into fields f0..fn, such
a text has, for some k >= 0, `f(k+1)` and `f(k+2)` written by `str(int)` (only an optional "-"
and decimal digits) and at least two more fields after them, so `k + 4 <= n`. An MP text has at
most six fields (`n <= 5`: LMCache forbids "@" in the model and the salt, and `mp_key_text`
refuses it too), so `k + 1` is 1 or 2; `f1` is "mp" and `f2` starts with "0x" (or "-0x"), and
neither is a `str(int)`. So no text is both, file names are made from key texts injectively
(quoted, or bounded by a hash of the whole text), and no file of one kind can hold the other.
The same shape makes LMCache's own `CacheEngineKey.from_string` reject an MP text with
ValueError (`int("mp")`), which LMCache's GdsBackend start-up scan skips.

Round trip: `parse_mp_key_text` accepts exactly the texts `mp_key_text` writes (it re-formats what
it parsed and compares), so the start-up scan and the `pygds cache` tools can turn file names and
header keys back into keys, and any other text, in-process keys included, is None.
"""

from __future__ import annotations

from typing import NamedTuple

MARK = "mp"
"""Field 1 of every MP key text."""
SEP = "@"
_SALT_FORBIDDEN = frozenset("@/\\\x00")
_SALT_MAX = 128


class MpKey(NamedTuple):
    """The fields of an MP key, in `ObjectKey`'s order."""

    chunk_hash: bytes
    model_name: str
    kv_rank: int
    object_group_id: int = 0
    cache_salt: str = ""


def mp_key_text(key: MpKey) -> str:
    """The key text of an MP key; ValueError for fields LMCache's `ObjectKey` also refuses."""
    if not isinstance(key.chunk_hash, bytes) or not key.chunk_hash:
        raise ValueError(f"chunk_hash must be non-empty bytes, got {key.chunk_hash!r}")
    if not isinstance(key.model_name, str) or not key.model_name or SEP in key.model_name:
        raise ValueError(f"model_name must be a non-empty string without '@', got {key.model_name!r}")
    if isinstance(key.kv_rank, bool) or not isinstance(key.kv_rank, int):
        raise ValueError(f"kv_rank must be an integer, got {key.kv_rank!r}")
    group = key.object_group_id
    if isinstance(group, bool) or not isinstance(group, int) or group < 0:
        raise ValueError(f"object_group_id must be an integer >= 0, got {group!r}")
    salt = key.cache_salt
    if not isinstance(salt, str) or len(salt) > _SALT_MAX or _SALT_FORBIDDEN & set(salt):
        raise ValueError(f"cache_salt must be at most {_SALT_MAX} characters without @ / \\ NUL, "
                         f"got {salt!r}")
    fields = [key.model_name, MARK, f"{key.kv_rank:#010x}", f"g{group:x}", key.chunk_hash.hex()]
    if salt:
        fields.append(salt)
    return SEP.join(fields)


def parse_mp_key_text(text: str) -> MpKey | None:
    """The MP key a text names, or None when `mp_key_text` would not have written it."""
    fields = text.split(SEP) if isinstance(text, str) else []
    if len(fields) not in (5, 6) or fields[1] != MARK or not fields[3].startswith("g"):
        return None
    try:
        key = MpKey(
            chunk_hash=bytes.fromhex(fields[4]),
            model_name=fields[0],
            kv_rank=int(fields[2], 16),
            object_group_id=int(fields[3][1:], 16),
            cache_salt=fields[5] if len(fields) == 6 else "",
        )
        canonical = mp_key_text(key)
    except ValueError:
        return None
    return key if canonical == text else None


FANOUT_DIRS = tuple(f"{i:02x}" for i in range(256))
"""The fan-out directories of MP entries in each path: one level, named by the first byte of the
chunk hash. The adapter creates all of them at start, so that no store pays for a `mkdir` (it
cost more than writing 256 KiB of data), and a start-up scan lists 256 directories per path."""


def fanout_hash(key: MpKey) -> str:
    """The chunk hash as `KVStore` takes it for the fan-out directories: its first byte in
    lower-case hex, which `layout.fanout` turns into the single level `<base>/<xx>/`."""
    return key.chunk_hash[:1].hex()
