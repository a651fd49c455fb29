"""cuFile's never-hang guard and the `auto` engine choice, against the real libcufile."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

import pygds
from pygds.engines.cufile import check_proc_modules

ROOT = Path(__file__).resolve().parents[1]


def run_py(script: str, env: dict[str, str], timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", script], env={**env, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=timeout)


def test_proc_modules_check_opens_the_file(tmp_path):
    good = tmp_path / "modules"
    good.write_text("nvidia 1 0 - Live 0x0\n")
    assert check_proc_modules(str(good)).ok
    bad = check_proc_modules(str(tmp_path / "absent"))
    assert not bad.ok and "spin forever" in bad.reason and "POSIX" in bad.fix


@pytest.mark.skipif(os.path.exists("/proc/modules"), reason="this machine has /proc/modules; the hang cannot occur")
def test_driver_refuses_fast_where_libcufile_would_hang():
    """Here /proc/modules is absent: cuFileDriverOpen would spin forever; pygds refuses within a second."""
    script = (
        "import time, pygds\n"
        "t = time.monotonic()\n"
        "try:\n    pygds.Driver()\nexcept pygds.DriverUnavailableError as e:\n"
        "    print('REFUSED', round(time.monotonic() - t, 3), e)\n"
    )
    start = time.monotonic()
    out = run_py(script, dict(os.environ), timeout=20)
    assert out.stdout.startswith("REFUSED"), out.stdout + out.stderr
    assert "/proc/modules" in out.stdout
    assert float(out.stdout.split()[1]) < 1.5
    assert time.monotonic() - start < 20


def test_auto_falls_back_to_posix_with_reason_logged_once(tmp_path, caplog, monkeypatch):
    monkeypatch.delenv("PYGDS_ENGINE", raising=False)
    choice = pygds.choose_engine("auto")
    if choice.name != "posix":
        pytest.skip(f"cuFile is usable here ({choice.reason})")
    pygds.reset_fallback_log()
    with caplog.at_level("WARNING", logger="pygds.engines.registry"):
        for i in range(3):
            with pygds.File(tmp_path / f"{i}.bin", "w") as f:
                assert f.engine == "posix"
                f.write(b"abc")
    warnings = [r for r in caplog.records if "POSIX engine" in r.getMessage()]
    assert len(warnings) == 1


def test_explicit_cufile_is_an_error_not_a_fallback(tmp_path, monkeypatch):
    if pygds.choose_engine("auto").name == "cufile":
        pytest.skip("cuFile is usable here")
    with pytest.raises(pygds.PygdsError):
        pygds.File(tmp_path / "x.bin", "w", engine="cufile")
    monkeypatch.setenv("PYGDS_ENGINE", "cufile")
    with pytest.raises(pygds.PygdsError):
        pygds.File(tmp_path / "y.bin", "w")


def test_engine_env_is_validated(monkeypatch):
    monkeypatch.setenv("PYGDS_ENGINE", "fast")
    with pytest.raises(pygds.InvalidArgumentError, match="PYGDS_ENGINE"):
        pygds.choose_engine()


_OPEN_DRIVER = (
    "import time, pygds\n"
    "t = time.monotonic()\n"
    "try:\n    pygds.Driver().close()\n    print('OPENED')\n"
    "except pygds.DriverUnavailableError as e:\n    print('REFUSED', round(time.monotonic() - t, 3), e)\n"
    "print('AUTO', pygds.choose_engine('auto').name)\n"
)


def test_guard_against_real_libcufile_with_proc_modules_absent(standin):
    """The stand-in driver is present and usable, but /proc/modules is not: refuse, never hang."""
    out = run_py(_OPEN_DRIVER, standin.env(proc_modules=False), timeout=20)
    assert out.stdout.startswith("REFUSED"), out.stdout + out.stderr
    assert "/proc/modules" in out.stdout and float(out.stdout.split()[1]) < 1.5
    assert "AUTO posix" in out.stdout


def test_guard_against_real_libcufile_with_proc_modules_present(standin):
    """The driver opens; `auto` then picks by GDS mode: without nvidia-fs (compatibility mode, as
    here) the POSIX engine, with it (presented by the sandbox shim) cuFile."""
    out = run_py(_OPEN_DRIVER, standin.env(), timeout=30)
    assert out.stdout.startswith("OPENED"), out.stdout + out.stderr
    assert "AUTO posix" in out.stdout
    out = run_py(_OPEN_DRIVER, standin.env(nvidia_fs=True), timeout=30)
    assert out.stdout.startswith("OPENED"), out.stdout + out.stderr
    assert "AUTO cufile" in out.stdout


_CHOICE = (
    "import logging, sys, pygds\n"
    "logging.basicConfig(level=logging.INFO, stream=sys.stdout, format='%(levelname)s %(message)s')\n"
    "with pygds.File(sys.argv[1], 'w') as f:\n"
    "    print('ENGINE', f.engine)\n"
    "    print('REASON', f.engine_reason)\n"
    "with pygds.File(sys.argv[1], 'r') as f:\n"
    "    pass\n"
)
_NO_CUDA_PYTHON = "import sys\nsys.modules['cuda'] = None  # as if cuda-python were not installed\n"


def run_choice(env: dict[str, str], path: Path, prelude: str = "") -> str:
    out = subprocess.run([sys.executable, "-c", prelude + _CHOICE, str(path)], env={**env, "PYTHONPATH": str(ROOT)},
                         check=False,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def test_auto_picks_posix_where_cufile_would_run_compat_mode(standin, tmp_path):
    """No nvidia-fs: libcufile would only do POSIX I/O through its own bounce buffers; pygds's POSIX
    engine does it faster, and `engine_reason` and the log (once, INFO) say why."""
    out = run_choice(standin.env(), tmp_path / "a.bin")
    assert "ENGINE posix" in out
    reason = out.split("REASON ", 1)[1].splitlines()[0]
    assert "cuFile is usable" in reason and "nvidia-fs is not loaded" in reason and "compatibility mode" in reason
    logged = [line for line in out.splitlines() if "engine 'auto' uses posix" in line]
    assert len(logged) == 1 and logged[0].startswith("INFO")


def test_auto_keeps_cufile_in_gds_mode(standin, tmp_path):
    out = run_choice(standin.env(nvidia_fs=True), tmp_path / "a.bin")
    assert "ENGINE cufile" in out and "GDS mode" in out.split("REASON ", 1)[1]


def test_auto_keeps_cufile_for_device_memory_without_cuda_python(standin, tmp_path):
    """Without cuda-python pygds cannot copy device memory itself: cuFile stays the only way to it."""
    out = run_choice(standin.env(), tmp_path / "a.bin", _NO_CUDA_PYTHON)
    assert "ENGINE cufile" in out
    assert "without cuda-python" in out.split("REASON ", 1)[1]


def test_guard_refuses_without_cuda_devices(standin):
    out = run_py(_OPEN_DRIVER, standin.env(devices=0), timeout=20)
    assert out.stdout.startswith("REFUSED"), out.stdout + out.stderr
    assert "cuInit" in out.stdout or "no CUDA device" in out.stdout
    assert "AUTO posix" in out.stdout


def test_guard_refuses_without_libcuda(standin):
    env = standin.env()
    env["LD_LIBRARY_PATH"] = ""
    out = run_py(_OPEN_DRIVER, env, timeout=20)
    assert out.stdout.startswith("REFUSED"), out.stdout + out.stderr
    assert "libcuda.so.1" in out.stdout
