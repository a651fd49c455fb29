"""Proves `pygds._cufile_abi` against the real cufile.h of the installed nvidia-cufile wheel.

A C probe generated from the Python declarations is compiled against the header (with a two-line
stand-in for cuda.h) and prints every struct size, alignment and field offset, every enum and
#define value and every error string; all are compared with ctypes. The header text is then parsed
so that every name it declares must exist in Python, and every prototype must match its C types.
"""
from __future__ import annotations

import ctypes
import dataclasses
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from pygds import _cufile_abi as abi
from pygds import errors
from pygds._lib import CUFILE_SPEC, find_library

CUDA_H_STANDIN = "typedef int CUresult;\ntypedef struct CUstream_st *CUstream;\n"

# Function-like macros and the static inline of cufile.h, and where pygds provides each.
HEADER_HELPERS = {
    "IS_CUFILE_ERR": (errors, "error_name"),
    "CUFILE_ERRSTR": (errors, "explain"),
    "IS_CUDA_ERR": (errors, "CuFileError"),
    "CU_FILE_CUDA_ERR": (errors, "CuFileError"),
    "CUFILE_OP": (abi, "CUFILEOP_STATUS_ENTRIES"),
    "cufileop_status_error": (errors, "explain"),
}
# Object-like #defines that are not constants: the include guard, the X-macro table, the rename.
NON_CONSTANT_DEFINES = {"__CUFILE_H_", "CUFILEOP_STATUS_ENTRIES", "cuFileDriverClose"}
# Prototypes that deliberately take `void *` for a typed pointer (the layout depends on the version).
VOID_POINTER_ARGS = {"cuFileGetStatsL1", "cuFileGetStatsL2", "cuFileGetStatsL3"}


@pytest.fixture(scope="module")
def compiler() -> str:
    for name in ("cc", "gcc", "clang"):
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no C compiler (cc, gcc or clang) on PATH; the ABI probe needs one")


@pytest.fixture(scope="module")
def header() -> Path:
    # Only the wheel rule: the header ships next to the library in site-packages.
    spec = dataclasses.replace(CUFILE_SPEC, home_vars=(), glob_patterns=())
    lib = Path(find_library(spec, environ={}, use_loader=False).path)
    path = lib.parent.parent / "include" / "cufile.h"
    assert path.is_file(), f"the nvidia-cufile wheel at {lib.parent.parent} has no include/cufile.h"
    return path


@pytest.fixture(scope="module")
def include_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("cuda_include")
    (d / "cuda.h").write_text(CUDA_H_STANDIN)
    return d


def _fields(ctype: type, prefix: str = "", base: int = 0):
    """(path, offset, size) of every field, nested structs and unions included."""
    for name, ftype in ctype._fields_:
        desc = getattr(ctype, name)
        path = prefix + name
        yield path, base + desc.offset, desc.size
        if isinstance(ftype, type) and issubclass(ftype, (ctypes.Structure, ctypes.Union)):
            yield from _fields(ftype, path + ".", base + desc.offset)


def _c_enum_type(name: str) -> str:
    return "enum CUfileFileHandleType" if name == "CUfileFileHandleType" else name


def _probe_source() -> str:
    lines = ["#include <stdio.h>", "#include <stddef.h>", "#include <cufile.h>", "int main(void) {"]
    for cname in abi.STRUCTS:
        lines.append(f'printf("size {cname} %zu\\n", sizeof({cname}));')
        lines.append(f'printf("align {cname} %zu\\n", (size_t)_Alignof({cname}));')
        for path, _, _ in _fields(abi.STRUCTS[cname]):
            lines.append(f'printf("offset {cname} {path} %zu\\n", offsetof({cname}, {path}));')
            lines.append(f'printf("fieldsize {cname} {path} %zu\\n", sizeof((({cname} *)0)->{path}));')
    for ename, enum in abi.ENUMS.items():
        lines.append(f'printf("enumsize {ename} %zu\\n", sizeof({_c_enum_type(ename)}));')
        for member in enum.__members__:
            lines.append(f'printf("value {member} %lld\\n", (long long)({member}));')
    for name in abi.DEFINES:
        lines.append(f'printf("value {name} %lld\\n", (long long)({name}));')
    for code, _, _ in abi.CUFILEOP_STATUS_ENTRIES:
        lines.append(f'printf("errstr {code} %s\\n", cufileop_status_error((CUfileOpError){code}));')
    lines += ["return 0;", "}"]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def probe(compiler: str, header: Path, include_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    d = tmp_path_factory.mktemp("abi_probe")
    (d / "probe.c").write_text(_probe_source())
    build = subprocess.run([compiler, "-std=gnu11", "-I", str(include_dir), "-I", str(header.parent),
                            str(d / "probe.c"), "-o", str(d / "probe")], capture_output=True, text=True)
    assert build.returncode == 0, f"the probe does not compile against {header}:\n{build.stderr}"
    run = subprocess.run([str(d / "probe")], capture_output=True, text=True, check=True)
    out: dict = {"size": {}, "align": {}, "offset": {}, "fieldsize": {}, "enumsize": {}, "value": {}, "errstr": {}}
    for line in run.stdout.splitlines():
        kind, rest = line.split(" ", 1)
        if kind == "errstr":
            code, text = rest.split(" ", 1)
            out[kind][int(code)] = text
        elif kind in ("offset", "fieldsize"):
            cname_and_path, value = rest.rsplit(" ", 1)
            out[kind][cname_and_path] = int(value)
        else:
            name, value = rest.rsplit(" ", 1)
            out[kind][name] = int(value)
    return out


@pytest.fixture(scope="module")
def preprocessed(compiler: str, header: Path, include_dir: Path) -> str:
    """The preprocessed lines that come from cufile.h itself (no system headers, no directives)."""
    run = subprocess.run([compiler, "-E", "-std=gnu11", "-I", str(include_dir), str(header)],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    kept, in_header = [], False
    for line in run.stdout.splitlines():
        marker = re.match(r'# \d+ "([^"]*)"', line)
        if marker:
            in_header = Path(marker.group(1)).name == "cufile.h"
        elif in_header and not line.startswith("#"):
            kept.append(line)
    return "\n".join(kept)


@pytest.fixture(scope="module")
def header_text(header: Path) -> str:
    text = header.read_text()
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    return re.sub(r"//[^\n]*", " ", text)


# --- layouts and values ----------------------------------------------------------------------
def test_struct_sizes_and_alignments(probe: dict) -> None:
    for cname, ctype in abi.STRUCTS.items():
        assert probe["size"][cname] == ctypes.sizeof(ctype), cname
        assert probe["align"][cname] == ctypes.alignment(ctype), cname


def test_every_field_offset_and_size(probe: dict) -> None:
    checked = 0
    for cname, ctype in abi.STRUCTS.items():
        for path, offset, size in _fields(ctype):
            key = f"{cname} {path}"
            assert probe["offset"][key] == offset, f"offsetof({cname}, {path})"
            assert probe["fieldsize"][key] == size, f"sizeof({cname}.{path})"
            checked += 1
    assert checked > 200


def test_the_layout_facts_libcufile_depends_on(probe: dict) -> None:
    # Measured the hard way: the handle union holds a pointer, so it sits at offset 8.
    assert probe["offset"]["CUfileDescr_t handle"] == 8 == abi.CUfileDescr_t.handle.offset
    assert probe["offset"]["CUfileDescr_t fs_ops"] == 16
    assert probe["offset"]["CUfileIOParams_t u.batch.size"] == abi.CUfileIOParams_t.u.offset + 24
    assert abi.CUFILE_BATCH == 1 and abi.CUFILE_COMPLETE == 0x10


def test_every_enum_value_and_define(probe: dict) -> None:
    for ename, enum in abi.ENUMS.items():
        assert probe["enumsize"][ename] == ctypes.sizeof(ctypes.c_int), ename
        for member, value in enum.__members__.items():
            assert probe["value"][member] == value, member
            assert getattr(abi, member) == value and type(getattr(abi, member)) is int, member
    for name, value in abi.DEFINES.items():
        assert probe["value"][name] == value, name


def test_error_table_matches_the_header_strings(probe: dict) -> None:
    assert probe["errstr"] == {code: text for code, _, text in abi.CUFILEOP_STATUS_ENTRIES}
    assert probe["value"]["CU_FILE_INTERNAL_ERROR"] == 5030


def test_legacy_stats_layout_is_the_new_one_without_its_tail() -> None:
    old, new = abi.CUfileStatsLevel1_v1150_t, abi.CUfileStatsLevel1_t
    assert new._fields_[: len(old._fields_)] == old._fields_
    assert new._fields_[len(old._fields_)][0] == "readv_ops"
    grown = ctypes.sizeof(new) - ctypes.sizeof(old)
    assert grown == 10 * 8 + 2 * 16  # ten uint64 values plus two (ok, err) counters
    hist_new, hist_old = abi.CUfileStatsLevel2_t.read_size_kb_hist, abi.CUfileStatsLevel2_v1150_t.read_size_kb_hist
    assert hist_new.offset - hist_old.offset == grown
    assert ctypes.sizeof(abi.CUfileStatsLevel3_t) - ctypes.sizeof(abi.CUfileStatsLevel3_v1150_t) == grown


# --- every name of the header is declared, and every prototype matches ---------------------------------
def _typedef_names(text: str) -> set[str]:
    names = set()
    for m in re.finditer(r"\btypedef\b", text):
        i = m.end()
        brace, semi = text.find("{", i), text.find(";", i)
        if brace != -1 and brace < semi:
            depth, j = 0, brace
            while True:
                depth += {"{": 1, "}": -1}.get(text[j], 0)
                if depth == 0:
                    break
                j += 1
            names.add(re.match(r"\s*(\w+)\s*;", text[j + 1:]).group(1))
        else:
            names.add(re.findall(r"\w+", text[i:semi])[-1])
    return names


def test_every_typedef_and_enum_tag_is_declared(header_text: str) -> None:
    names = _typedef_names(header_text)
    names |= set(re.findall(r"^\s*enum\s+(\w+)\s*\{", header_text, flags=re.M))
    assert {"CUfileError_t", "CUfileStatsLevel3_t", "CUfileFileHandleType", "CUfileHandle_t"} <= names
    missing = sorted(n for n in names if not hasattr(abi, n))
    assert not missing, f"cufile.h declares types pygds lacks: {missing}"


def test_every_enumerator_is_declared_and_none_invented(preprocessed: str) -> None:
    in_header = set()
    for body in re.findall(r"\benum\s*\w*\s*\{([^}]*)\}", preprocessed):
        in_header |= {m for m in re.findall(r"(?:^|,)\s*([A-Za-z_]\w*)", body)}
    declared = {m for enum in abi.ENUMS.values() for m in enum.__members__}
    assert len(in_header) > 100
    assert in_header == declared


def test_every_define_is_declared_and_none_invented(header_text: str) -> None:
    defines = re.findall(r"^\s*#\s*define\s+(\w+)(\()?", header_text, flags=re.M)
    function_like = {name for name, paren in defines if paren}
    constants = {name for name, paren in defines if not paren} - NON_CONSTANT_DEFINES
    assert function_like == set(HEADER_HELPERS) - {"cufileop_status_error"}
    for module, attr in HEADER_HELPERS.values():
        assert hasattr(module, attr)
    assert constants == set(abi.DEFINES)


def _declarations(preprocessed: str) -> dict[str, tuple[str, list[str]]]:
    out = {}
    for statement in re.split(r"[;{}]", preprocessed):
        m = re.fullmatch(r"\s*([\w\s\*]+?)\s*\b(cuFile\w+)\s*\((.*)\)\s*", statement, flags=re.S)
        if m:
            params = [p.strip() for p in m.group(3).split(",")]
            params = [] if params == ["void"] else [re.sub(r"\w+$", "", p).strip() for p in params]
            out[m.group(2)] = (m.group(1), params)
    return out


_SCALARS = {
    "void": None, "int": ctypes.c_int, "unsigned": ctypes.c_uint, "unsigned int": ctypes.c_uint,
    "long": ctypes.c_long, "size_t": ctypes.c_size_t, "ssize_t": ctypes.c_ssize_t, "off_t": ctypes.c_int64,
    "_Bool": ctypes.c_bool, "CUfileHandle_t": ctypes.c_void_p, "CUfileBatchHandle_t": ctypes.c_void_p,
    "CUstream": ctypes.c_void_p, "struct timespec": abi.timespec,
    **{name: ctypes.c_int for name in abi.ENUMS}, **abi.STRUCTS,
}


def _expected_ctype(c_type: str):
    c_type = re.sub(r"\bconst\b", "", c_type)
    stars = c_type.count("*")
    base = " ".join(c_type.replace("*", " ").split())
    if stars == 0:
        return _SCALARS[base]
    assert stars == 1, c_type
    if base == "void":
        return ctypes.c_void_p
    if base == "char":
        return ctypes.c_char_p
    return ctypes.POINTER(_SCALARS[base])


def test_every_function_has_a_matching_prototype(preprocessed: str) -> None:
    declared = _declarations(preprocessed)
    assert "cuFileDriverClose" in declared and "cuFileDriverClose_v2" in declared
    assert set(declared) == set(abi.PROTOTYPES)
    assert set(abi.FUNCTION_SINCE) == set(abi.PROTOTYPES)
    for name, (ret, params) in declared.items():
        restype, argtypes = abi.PROTOTYPES[name]
        assert restype is _expected_ctype(ret), f"{name} returns {ret}"
        assert len(argtypes) == len(params), name
        for i, (c_type, ctype) in enumerate(zip(params, argtypes)):
            if name in VOID_POINTER_ARGS:
                assert "*" in c_type and ctype is ctypes.c_void_p
                continue
            assert ctype is _expected_ctype(c_type), f"{name} argument {i}: {c_type}"
