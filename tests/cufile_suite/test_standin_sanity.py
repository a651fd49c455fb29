"""The cuFile test process is set up as intended: the real libcufile opens its driver, and under
the stand-in it has loaded the stand-in `libcuda.so.1` with the sandbox shim preloaded."""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

import pytest

from standin.build import find_libcufile


class CUfileError(ctypes.Structure):
    _fields_ = [("err", ctypes.c_int), ("cu_err", ctypes.c_int)]


def loaded_libraries() -> list[str]:
    with open("/proc/self/maps") as maps:
        return sorted({line.split()[-1] for line in maps if "/" in line})


def test_driver_opens() -> None:
    lib = ctypes.CDLL(str(find_libcufile()))
    lib.cuFileDriverOpen.restype = CUfileError
    lib.cuFileDriverClose_v2.restype = CUfileError
    opened = lib.cuFileDriverOpen()
    assert (opened.err, opened.cu_err) == (0, 0)
    closed = lib.cuFileDriverClose_v2()
    assert (closed.err, closed.cu_err) == (0, 0)


@pytest.mark.skipif("PYGDS_STANDIN_DEVICES" not in os.environ,
                    reason="not running under the CUDA driver stand-in")
def test_runs_under_the_standin() -> None:
    shim = os.environ["LD_PRELOAD"].replace(":", " ").split()[0]
    assert Path(shim).name == "libpygds_sandbox_shim.so" and Path(shim).is_file()
    standin_lib = Path(os.environ["LD_LIBRARY_PATH"].split(os.pathsep)[0]) / "libcuda.so.1"
    lib = ctypes.CDLL(str(find_libcufile()))
    lib.cuFileDriverOpen.restype = CUfileError
    assert lib.cuFileDriverOpen().err == 0
    loaded = loaded_libraries()
    assert str(standin_lib.resolve()) in loaded, loaded  # libcufile took the stand-in driver
    assert shim in loaded
    assert not any(Path(p).name.startswith("libcuda.so") and p != str(standin_lib.resolve())
                   for p in loaded), loaded
