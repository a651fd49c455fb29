"""The 4 KiB entry header: byte-identical to LMCache's, both generations, and hostile input."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmcache_plugin.format import (
    DTYPE_ITEMSIZE,
    HEADER_SIZE,
    CorruptEntryError,
    EntryHeader,
    checksum_of,
    dtype_name,
    pack_header,
    torch_dtype,
    unpack_header,
)

gds = pytest.importorskip("lmcache.v1.storage_backend.gds_backend")
from lmcache.v1.memory_management import MemoryFormat  # noqa: E402

DTYPES = sorted(DTYPE_ITEMSIZE)
shapes_st = st.lists(st.integers(0, 70), min_size=0, max_size=4)
fmts_st = st.sampled_from(list(MemoryFormat))


def _raw(doc: object, *, length: int | None = None) -> bytes:
    text = json.dumps(doc).encode()
    body = text + b" " * (HEADER_SIZE - 8 - len(text))
    return struct.pack("<Q", len(body) if length is None else length) + body


def _valid_doc(**changes: object) -> dict:
    meta = {
        "dtype": "BF16",
        "shape": [2, 3],
        "data_offsets": [0, 12],
        "fmt": 1,
        "__metadata__": {"lmcache_version": "1"},
    }
    meta.update(changes)
    return {"kvcache": meta}


@settings(max_examples=150, deadline=None)
@given(dtype=st.sampled_from(DTYPES), shape=shapes_st, fmt=fmts_st)
def test_pack_is_byte_identical_to_lmcache(dtype, shape, fmt):
    tensor = torch.empty(shape, dtype=torch_dtype(dtype))
    theirs = gds.pack_metadata(tensor, fmt=fmt, lmcache_version="1")
    ours = pack_header(EntryHeader.for_tensor(tensor, fmt))
    assert ours == theirs
    assert len(ours) == HEADER_SIZE


@settings(max_examples=100, deadline=None)
@given(dtype=st.sampled_from(DTYPES), shape=shapes_st, fmt=fmts_st)
def test_each_side_reads_the_other(dtype, shape, fmt):
    tensor = torch.empty(shape, dtype=torch_dtype(dtype))
    theirs = gds.pack_metadata(tensor, fmt=fmt, lmcache_version="1")
    header = unpack_header(theirs, file_size=HEADER_SIZE + tensor.nbytes)
    assert header == EntryHeader.single(shape, dtype, fmt.value)
    assert header.dtype == dtype and header.shape == tuple(shape) and not header.multi_group

    size, tdtype, nbytes, tfmt, extra = gds.unpack_metadata(pack_header(header))
    assert (list(size), tdtype, nbytes, tfmt, extra) == (
        shape, tensor.dtype, tensor.nbytes, fmt, {"lmcache_version": "1"}
    )


def test_multi_group_header_is_mains_layout():
    header = EntryHeader.groups([(2, 3), (4,)], [torch.bfloat16, "F32"], MemoryFormat.KV_2LTD)
    assert header.nbytes == 2 * 3 * 2 + 4 * 4 and header.multi_group
    raw = pack_header(header)
    expected = (
        '{"kvcache": {"dtype": "BF16", "shape": [2, 3], "data_offsets": [0, 28], "fmt": 1, '
        '"__metadata__": {"lmcache_version": "1"}, "shapes": [[2, 3], [4]], "dtypes": ["BF16", "F32"]}}'
    ).encode()
    assert raw == struct.pack("<Q", HEADER_SIZE - 8) + expected + b" " * (HEADER_SIZE - 8 - len(expected))
    assert unpack_header(raw, file_size=HEADER_SIZE + 28) == header
    # LMCache 0.5.6 reads the header of a multi-group entry as group 0 plus all bytes.
    size, tdtype, nbytes, fmt, _ = gds.unpack_metadata(raw)
    assert (tuple(size), tdtype, nbytes, fmt) == ((2, 3), torch.bfloat16, 28, MemoryFormat.KV_2LTD)


@settings(max_examples=100, deadline=None)
@given(
    groups=st.lists(st.tuples(shapes_st, st.sampled_from(DTYPES)), min_size=1, max_size=6),
    fmt=st.integers(0, 9),
)
def test_multi_group_round_trip(groups, fmt):
    header = EntryHeader.groups([s for s, _ in groups], [d for _, d in groups], fmt)
    raw = pack_header(header)
    assert unpack_header(raw, file_size=HEADER_SIZE + header.nbytes) == header
    assert pack_header(unpack_header(raw)) == raw


def test_dtype_names_round_trip_through_torch():
    for name in DTYPES:
        dt = torch_dtype(name)
        assert dtype_name(dt) == name
        assert torch.empty(1, dtype=dt).element_size() == DTYPE_ITEMSIZE[name]
    assert dtype_name(torch.half) == "F16"
    with pytest.raises(ValueError, match="supported"):
        dtype_name(torch.complex64)
    with pytest.raises(ValueError, match="known"):
        torch_dtype("F12")


def test_pack_refuses_inconsistent_headers():
    with pytest.raises(ValueError, match="nbytes"):
        pack_header(EntryHeader(shapes=((2,),), dtypes=("F32",), nbytes=7, fmt=1))
    with pytest.raises(ValueError, match="multi_group"):
        pack_header(EntryHeader(shapes=((1,), (1,)), dtypes=("U8", "U8"), nbytes=2, fmt=1))
    many = EntryHeader.groups([(1000, 1000)] * 300, ["F32"] * 300, 1)
    with pytest.raises(ValueError, match="4 KiB"):
        pack_header(many)


CORRUPT = {
    "truncated": pack_header(EntryHeader.single((2, 3), "BF16", 1))[:7],
    "length past buffer": pack_header(EntryHeader.single((2, 3), "BF16", 1))[:200],
    "huge length": _raw(_valid_doc(), length=1 << 62),
    "length over 4088": _raw(_valid_doc(), length=HEADER_SIZE - 7),
    "zero length": _raw(_valid_doc(), length=0),
    "invalid json": struct.pack("<Q", 20) + b'{"kvcache": {"dtype"' + b" " * 100,
    "not utf-8": struct.pack("<Q", 4) + b"\xff\xfe\xfd\xfc",
    "not an object": _raw([1, 2, 3]),
    "no kvcache": _raw({"other": {}}),
    "unknown dtype": _raw(_valid_doc(dtype="F12")),
    "negative shape": _raw(_valid_doc(shape=[-2, -3], data_offsets=[0, 12])),
    "bool in shape": _raw(_valid_doc(shape=[True, 12], data_offsets=[0, 24])),
    "float in shape": _raw(_valid_doc(shape=[2.0, 3])),
    "nbytes mismatch": _raw(_valid_doc(data_offsets=[0, 13])),
    "offset not zero": _raw(_valid_doc(data_offsets=[4, 16])),
    "offsets not pair": _raw(_valid_doc(data_offsets=[0])),
    "negative fmt": _raw(_valid_doc(fmt=-1)),
    "string fmt": _raw(_valid_doc(fmt="1")),
    "no __metadata__": _raw({"kvcache": {k: v for k, v in _valid_doc()["kvcache"].items() if k != "__metadata__"}}),
    "other version": _raw(_valid_doc(__metadata__={"lmcache_version": "2"})),
    "shapes without dtypes": _raw(_valid_doc(shapes=[[2, 3]])),
    "groups disagree": _raw(_valid_doc(shapes=[[2, 3], [1]], dtypes=["BF16"])),
    "group bytes mismatch": _raw(_valid_doc(shapes=[[2, 3], [1]], dtypes=["BF16", "F64"])),
    "deep nesting": struct.pack("<Q", 4000) + b"[" * 4000 + b" " * 88,
}


@pytest.mark.parametrize("case", sorted(CORRUPT))
def test_corrupt_headers_raise_corrupt_entry_error(case):
    with pytest.raises(CorruptEntryError) as info:
        unpack_header(CORRUPT[case])
    assert info.value.reason


def test_file_size_must_match_header():
    raw = pack_header(EntryHeader.single((2, 3), "BF16", 1))
    assert unpack_header(raw, file_size=HEADER_SIZE + 12).nbytes == 12
    for size in (HEADER_SIZE + 11, HEADER_SIZE + 13, 0, HEADER_SIZE):
        with pytest.raises(CorruptEntryError, match="file is"):
            unpack_header(raw, file_size=size)


def _check_consistent(header: EntryHeader) -> None:
    total = 0
    for shape, dtype in zip(header.shapes, header.dtypes, strict=True):
        assert all(isinstance(d, int) and d >= 0 for d in shape)
        n = DTYPE_ITEMSIZE[dtype]
        for d in shape:
            n *= d
        total += n
    assert total == header.nbytes


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=HEADER_SIZE + 16))
def test_fuzz_arbitrary_bytes(data):
    try:
        header = unpack_header(data)
    except CorruptEntryError:
        return
    _check_consistent(header)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=8),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids, max_size=4),
    max_leaves=20,
)


@settings(max_examples=400, deadline=None)
@given(
    field=st.sampled_from(["dtype", "shape", "data_offsets", "fmt", "__metadata__", "shapes", "dtypes"]),
    value=json_values,
    size=st.one_of(st.none(), st.integers(0, 10**6)),
)
def test_fuzz_field_values(field, value, size):
    raw = _raw(_valid_doc(**{field: value}))
    try:
        header = unpack_header(raw, file_size=size)
    except CorruptEntryError:
        return
    _check_consistent(header)
    if size is not None:
        assert size == HEADER_SIZE + header.nbytes


@settings(max_examples=300, deadline=None)
@given(pos=st.integers(0, 300), byte=st.integers(0, 255), cut=st.integers(0, HEADER_SIZE))
def test_fuzz_mutated_and_truncated_headers(pos, byte, cut):
    raw = bytearray(pack_header(EntryHeader.groups([(3, 4), (5,)], ["F16", "I64"], 2)))
    raw[pos] = byte
    try:
        header = unpack_header(bytes(raw[:cut]))
    except CorruptEntryError:
        return
    _check_consistent(header)


def test_memoryview_and_bytearray_inputs():
    raw = pack_header(EntryHeader.single((4,), "I32", 0))
    assert unpack_header(bytearray(raw)) == unpack_header(memoryview(raw)) == unpack_header(raw)


def _with_extra(**fields: object) -> bytes:
    return _raw(_valid_doc(__metadata__={"lmcache_version": "1", **fields}))


def test_key_and_checksum_fields_are_read_and_checked():
    digest = "xxh3_64:" + "0123456789abcdef"
    header = unpack_header(_with_extra(key="m@1@0@a@bf16", checksum=digest))
    assert header.key == "m@1@0@a@bf16" and header.checksum == digest
    plain = unpack_header(_with_extra())
    assert plain.key is None and plain.checksum is None
    later = unpack_header(_with_extra(checksum="blake3:00ff"))  # another algorithm: kept, not verified
    assert later.checksum is None and later.extra["checksum"] == "blake3:00ff"
    for bad in ({"key": 7}, {"key": ""}, {"checksum": 5}, {"checksum": "xxh3_64"}, {"checksum": ":00"},
                {"checksum": "xxh3_64:0123"}, {"checksum": "xxh3_64:0123456789ABCDEF"}):
        with pytest.raises(CorruptEntryError, match="key must|checksum must"):
            unpack_header(_with_extra(**bad))


def test_checksum_of_is_xxh3_64_over_the_pieces_in_order():
    import xxhash

    data = bytes(range(256)) * 3
    assert checksum_of([data]) == "xxh3_64:" + xxhash.xxh3_64_hexdigest(data)
    assert checksum_of([data[:100], memoryview(data)[100:]]) == checksum_of([data])
    assert checksum_of([]) == "xxh3_64:" + xxhash.xxh3_64_hexdigest(b"")
