"""Finding and loading libcufile: real discovery of the wheel, explicit paths, search order, failures,
and lazily resolved symbols. `cufile()` caches per process, so tests of it run in subprocesses."""
from __future__ import annotations

import ctypes
import ctypes.util
import dataclasses
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pygds import _cufile_abi as abi
from pygds._lib import CUFILE_SPEC, CuFileLib, find_library, version_string
from pygds.errors import LibraryNotFoundError, NotSupportedError

REPO = Path(__file__).resolve().parent.parent
WHEEL_ONLY = dataclasses.replace(CUFILE_SPEC, home_vars=(), glob_patterns=())


def _wheel_version() -> int:
    major, minor = importlib.metadata.version("nvidia-cufile").split(".")[:2]
    return 1000 * int(major) + 10 * int(minor)


@pytest.fixture(scope="module")
def wheel_lib() -> str:
    return find_library(WHEEL_ONLY, environ={}, use_loader=False).path


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYGDS_CUFILE_LIB", "CUDA_HOME", "CUDA_PATH")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def _run(script: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)


DESCRIBE = ("import json; from pygds._lib import cufile; lib = cufile(); "
            "print(json.dumps(dict(path=lib.path, source=lib.source, version=lib.version, "
            "version_string=lib.version_string, cached=cufile() is lib)))")


def test_the_wheel_library_is_found_and_loaded(wheel_lib: str) -> None:
    run = _run(DESCRIBE, _clean_env())
    assert run.returncode == 0, run.stderr
    lib = json.loads(run.stdout)
    assert lib["source"] == "wheel"
    assert lib["path"] == wheel_lib and wheel_lib.endswith(("nvidia/cu13/lib/libcufile.so.0",
                                                              "nvidia/cufile/lib/libcufile.so.0"))
    assert lib["version"] == _wheel_version() == 1200
    assert lib["version_string"] == "1.20.0"
    assert lib["cached"] is True


def test_an_explicit_path_wins(wheel_lib: str, tmp_path: Path) -> None:
    copy = tmp_path / "libcufile.so.0"
    shutil.copy(wheel_lib, copy)
    run = _run(DESCRIBE, _clean_env(PYGDS_CUFILE_LIB=str(copy)))
    assert run.returncode == 0, run.stderr
    lib = json.loads(run.stdout)
    assert (lib["path"], lib["source"], lib["version"]) == (str(copy), "PYGDS_CUFILE_LIB", _wheel_version())


def test_a_bogus_explicit_path_is_an_error_not_a_fallback(tmp_path: Path) -> None:
    run = _run(DESCRIBE, _clean_env(PYGDS_CUFILE_LIB="/nonexistent/libcufile.so.0"))
    assert run.returncode != 0
    assert "LibraryNotFoundError: PYGDS_CUFILE_LIB=/nonexistent/libcufile.so.0 does not name a loadable " \
           "libcufile: no such file" in run.stderr

    not_a_library = tmp_path / "libcufile.so.0"
    not_a_library.write_text("not an ELF file\n")
    with pytest.raises(LibraryNotFoundError) as info:
        find_library(environ={"PYGDS_CUFILE_LIB": str(not_a_library)})
    message = str(info.value)
    assert str(not_a_library) in message and "unset it" in message
    assert "invalid ELF header" in message or "file too short" in message


def test_an_explicit_folder_is_searched_for_the_library(wheel_lib: str, tmp_path: Path) -> None:
    _plant(tmp_path / "libcufile.so.0", wheel_lib)
    found = find_library(environ={"PYGDS_CUFILE_LIB": str(tmp_path)})
    assert (found.path, found.source) == (str(tmp_path / "libcufile.so.0"), "PYGDS_CUFILE_LIB")


def test_nothing_found_lists_every_place(tmp_path: Path) -> None:
    if ctypes.util.find_library("cufile"):
        pytest.skip("libcufile is on this system's loader path, so the search cannot come up empty")
    site_dir = tmp_path / "site-packages"
    (site_dir / "nvidia" / "cu13" / "lib").mkdir(parents=True)
    (tmp_path / "cuda-12.4" / "lib64").mkdir(parents=True)
    # A fresh process: once any libcufile.so.0 is loaded, dlopen by soname finds it again.
    script = ("import dataclasses, json, sys; from pygds._lib import CUFILE_SPEC, find_library\n"
              "from pygds.errors import LibraryNotFoundError\n"
              f"spec = dataclasses.replace(CUFILE_SPEC, glob_patterns=({str(tmp_path / 'cuda*')!r},))\n"
              "try:\n"
              f"    find_library(spec, environ={{'CUDA_HOME': {str(tmp_path / 'home')!r}}}, "
              f"site_dirs=[{str(site_dir)!r}])\n"
              "except LibraryNotFoundError as exc:\n"
              "    print(json.dumps(dict(message=str(exc), library=exc.library, searched=exc.searched)))\n")
    run = _run(script, _clean_env())
    assert run.returncode == 0 and run.stdout, run.stderr
    error = json.loads(run.stdout)
    message = error["message"]
    assert message.startswith("libcufile not found. Looked in:\n  PYGDS_CUFILE_LIB: not set\n")
    for place in (f"wheel: {site_dir}/nvidia/cu13/lib/{{libcufile.so.0,libcufile.so}}: not found",
                  f"wheel: {site_dir}/nvidia/cufile/lib/",
                  f"CUDA_HOME: {tmp_path}/home/lib64/", f"CUDA_HOME: {tmp_path}/home/targets/sbsa-linux/lib/",
                  f"{tmp_path}/cuda*: {tmp_path}/cuda-12.4/lib64/",
                  "dynamic loader: libcufile.so.0: ", "dynamic loader: libcufile.so: "):
        assert place in message
    assert "pip install 'pygds[cuda13]'" in message and "PYGDS_CUFILE_LIB=" in message
    assert error["library"] == "libcufile"
    assert len(error["searched"]) == 1 + 3 + 4 + 4 + 2


def _plant(link: Path, target: str) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target)


def test_search_order(wheel_lib: str, tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / "lib64").mkdir(parents=True)
    (home / "lib64" / "libcufile.so.0").write_text("broken\n")  # found first, fails to load, skipped
    _plant(tmp_path / "cuda-12.9" / "lib64" / "libcufile.so.0", wheel_lib)
    _plant(tmp_path / "cuda-13.0" / "targets" / "x86_64-linux" / "lib" / "libcufile.so.0", wheel_lib)
    _plant(tmp_path / "cuda" / "lib64" / "libcufile.so.0", wheel_lib)
    spec = dataclasses.replace(CUFILE_SPEC, glob_patterns=(str(tmp_path / "cuda*"),))
    site_dir = tmp_path / "site"
    site_dir.mkdir()

    found = find_library(spec, environ={"CUDA_HOME": str(home)}, site_dirs=[str(site_dir)], use_loader=False)
    assert found.path == str(tmp_path / "cuda-13.0" / "targets" / "x86_64-linux" / "lib" / "libcufile.so.0")
    assert found.source == str(tmp_path / "cuda*")

    _plant(home / "lib" / "libcufile.so", wheel_lib)
    found = find_library(spec, environ={"CUDA_HOME": str(home)}, site_dirs=[str(site_dir)], use_loader=False)
    assert (found.path, found.source) == (str(home / "lib" / "libcufile.so"), "CUDA_HOME")

    _plant(site_dir / "nvidia" / "cufile" / "lib" / "libcufile.so.0", wheel_lib)  # the cu12 wheel's layout
    found = find_library(spec, environ={"CUDA_HOME": str(home)}, site_dirs=[str(site_dir)], use_loader=False)
    assert (found.path, found.source) == (str(site_dir / "nvidia" / "cufile" / "lib" / "libcufile.so.0"), "wheel")


def test_the_dynamic_loader_rule_reports_the_real_file() -> None:
    spec = dataclasses.replace(CUFILE_SPEC, name="libc", env_var="PYGDS_TEST_UNSET_LIB", sonames=("libc.so.6",),
                               wheel_subdirs=(), home_vars=(), glob_patterns=(), symbol="printf")
    found = find_library(spec, environ={}, site_dirs=[])
    assert found.source == "dynamic loader"
    assert os.path.isabs(found.path) and os.path.isfile(found.path) and "libc" in os.path.basename(found.path)


def test_import_loads_no_library() -> None:
    run = _run("import pygds, pygds._lib, pygds.errors, pygds._cufile_abi; "
               "print('libcufile' in open('/proc/self/maps').read(), pygds._lib._instance)", _clean_env())
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["False", "None"]


def test_lib_resolves_every_prototype_lazily(wheel_lib: str) -> None:
    lib = CuFileLib(wheel_lib, source="wheel")
    assert lib.version == _wheel_version() and lib.path == wheel_lib
    assert "cuFileRead" not in vars(lib)
    read = lib.cuFileRead
    assert read is lib.cuFileRead and "cuFileRead" in vars(lib)
    assert read.restype is ctypes.c_ssize_t
    assert read.argtypes == [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int64, ctypes.c_int64]
    for name, (restype, argtypes) in abi.PROTOTYPES.items():
        assert lib.has(name), name  # 1.20 exports every function of its header
        fn = getattr(lib, name)
        assert fn.restype is restype and fn.argtypes == argtypes
    with pytest.raises(AttributeError, match="not a function of cufile.h"):
        lib.cuFileNoSuchThing  # noqa: B018


def test_a_missing_symbol_raises_not_supported_when_used(tmp_path: Path) -> None:
    compiler = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not compiler:
        pytest.skip("no C compiler to build a stand-in for an old libcufile")
    (tmp_path / "old.c").write_text(
        "typedef struct { int err; int cu_err; } CUfileError_t;\n"
        "CUfileError_t cuFileGetVersion(int *v) { CUfileError_t s = {0, 0}; *v = 1110; return s; }\n")
    path = tmp_path / "libcufile.so.0"
    subprocess.run([compiler, "-shared", "-fPIC", "-o", str(path), str(tmp_path / "old.c")], check=True)

    lib = CuFileLib(path, source="test")  # loading never touches the missing symbols
    assert (lib.version, lib.version_string) == (1110, "1.11.0")
    assert not lib.has("cuFileReadv")
    with pytest.raises(NotSupportedError) as info:
        lib.cuFileReadv  # noqa: B018
    assert str(info.value).startswith(
        f"cuFileReadv is not supported by libcufile 1.11.0 at {path} (it first appears in libcufile 1.19.0)")


def test_loading_a_bogus_file_directly(tmp_path: Path) -> None:
    with pytest.raises(LibraryNotFoundError, match="cannot load libcufile from"):
        CuFileLib(tmp_path / "missing.so")


def test_version_string() -> None:
    assert version_string(1200) == "1.20.0"
    assert version_string(1141) == "1.14.1"
    assert version_string(0) == "unknown"
