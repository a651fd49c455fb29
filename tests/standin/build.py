"""Compile the CUDA driver stand-in and the sandbox shim, and give the environment that runs the
real libcufile on them.

`build_standin(dest)` builds `libcuda.so.1` (from `cuda_standin.c`) and the `LD_PRELOAD` shim
(from `sandbox_shim.c`) with the system C compiler, and writes the files the shim redirects to:
an empty `/proc/modules`, a udev record that classifies any block device as ext4, a directory that
stands for `/proc/driver/nvidia-fs` when a test presents GDS mode to pygds, and a `cufile.json` so
a host's `/etc/cufile.json` cannot change what the tests see. `Standin.env()` is the environment
for a subprocess; the process that builds the stand-in never loads it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path
from typing import Mapping, Sequence

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent.parent
STANDIN_SOURCE = HERE / "cuda_standin.c"
SHIM_SOURCE = HERE / "sandbox_shim.c"

# What libcufile needs from udev to classify the block device of a file as a local file system.
UDEV_RECORD = "E:ID_FS_TYPE=ext4\nE:ID_FS_USAGE=filesystem\n"
CUFILE_CONFIG = {
    "logging": {"level": "ERROR"},  # NOTICE lines ("running in compatible mode") are always kept
    "properties": {"allow_compat_mode": True},
}
NVIDIA_FS_ENV = "PYGDS_SHIM_NVIDIA_FS"
"""The shim's variable: a directory opened instead of `/proc/driver/nvidia-fs`. Set (also at run time,
in a process the shim is loaded into) it presents GDS mode to pygds's engine choice, while libcufile
still runs its compatibility mode (it opens only the files inside, which stay absent)."""
COMPILE_FLAGS = ("-shared", "-fPIC", "-O2", "-Wall")
# Where the nvidia-cufile wheels put the library (CUDA 13, then CUDA 12 layouts).
LIBCUFILE_WHEEL_PATHS = ("nvidia/cu13/lib/libcufile.so.0", "nvidia/cu12/lib/libcufile.so.0",
                         "nvidia/cufile/lib/libcufile.so.0")


class CompilerMissing(RuntimeError):
    """No C compiler: callers skip with `str(exc)` as the reason."""


class BuildError(RuntimeError):
    """The compiler ran and failed; the message holds its command and output."""


@dataclasses.dataclass(frozen=True)
class Standin:
    """A built stand-in: where its pieces lie, and the environment that uses them."""

    root: Path
    lib_dir: Path  # holds libcuda.so.1 and nothing else: it goes first on LD_LIBRARY_PATH
    libcuda: Path
    shim: Path
    proc_modules: Path  # empty file read instead of /proc/modules
    missing_proc_modules: Path  # never exists: /proc/modules is redirected here when "absent"
    nvidia_fs: Path  # an empty directory opened instead of /proc/driver/nvidia-fs (GDS mode presented)
    udev_record: Path
    cufile_json: Path
    log_path: Path

    def env(self, base: Mapping[str, str] | None = None, *, proc_modules: bool = True,
            devices: int = 1, nvidia_fs: bool = False) -> dict[str, str]:
        """The full environment of a subprocess that runs libcufile on the stand-in.

        `base` defaults to `os.environ`. `proc_modules=False` makes `/proc/modules` impossible
        to open on any host, as in a gVisor-style sandbox: libcufile's `cuFileDriverOpen` then
        spins forever, so run such a process only under a hard timeout. `devices` is the number
        of stand-in GPUs (0: `cuInit` fails with CUDA_ERROR_NO_DEVICE). `nvidia_fs=True` presents
        GDS mode to pygds (see `NVIDIA_FS_ENV`); by default nvidia-fs is absent, as it is here.
        """
        if devices < 0:
            raise ValueError(f"devices must be >= 0, got {devices}")
        env = dict(os.environ if base is None else base)
        env["LD_LIBRARY_PATH"] = _prepend(str(self.lib_dir), env.get("LD_LIBRARY_PATH"))
        env["LD_PRELOAD"] = _prepend(str(self.shim), env.get("LD_PRELOAD"))
        env["PYGDS_SHIM_PROC_MODULES"] = str(self.proc_modules if proc_modules
                                             else self.missing_proc_modules)
        env["PYGDS_SHIM_UDEV_RECORD"] = str(self.udev_record)
        if nvidia_fs:
            env[NVIDIA_FS_ENV] = str(self.nvidia_fs)
        else:
            env.pop(NVIDIA_FS_ENV, None)
        env["PYGDS_STANDIN_DEVICES"] = str(devices)
        env["CUFILE_ENV_PATH_JSON"] = str(self.cufile_json)
        env["CUFILE_LOGFILE_PATH"] = str(self.log_path)
        env["PYTHONPATH"] = _prepend(str(REPO_ROOT), env.get("PYTHONPATH"))
        env["PYGDS_TEST_CUFILE"] = "1"
        env.pop("PYGDS_CUFILE_LIB", None)  # pygds must find the wheel's libcufile itself
        return env

    def log_text(self) -> str:
        """What libcufile has written to its log (it appends; see `clear_log`)."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def clear_log(self) -> None:
        """Empty the log, so a test reads only what its own subprocess wrote."""
        self.log_path.write_text("")


def _prepend(first: str, rest: str | None) -> str:
    return f"{first}{os.pathsep}{rest}" if rest else first


def find_libcufile(first: Sequence[str | Path] = ()) -> Path:
    """The wheel's libcufile, for tests that call it with raw ctypes; `first`: folders searched
    before this interpreter's site-packages and `sys.path` (e.g. a `pip install --target`)."""
    folders = [*map(str, first), *site.getsitepackages(), *sys.path]
    for folder in folders:
        for rel in LIBCUFILE_WHEEL_PATHS:
            candidate = Path(folder or ".") / rel
            if candidate.is_file():
                return candidate.resolve()
    raise FileNotFoundError(
        f"libcufile not found under {', '.join(LIBCUFILE_WHEEL_PATHS)} in {folders}; install the "
        "test extras: pip install -e '.[test]'")


def find_compiler() -> str:
    """The C compiler to use: `$CC`, else `cc`, `gcc` or `clang` on PATH."""
    candidates = [os.environ["CC"]] if os.environ.get("CC") else []
    candidates += ["cc", "gcc", "clang"]
    for name in candidates:
        path = shutil.which(name)
        if path:
            return path
    raise CompilerMissing(
        f"no C compiler found (tried {', '.join(candidates)} on PATH); install gcc or set CC "
        "to build the CUDA driver stand-in that runs the cuFile tests")


def _compile(compiler: str, source: Path, output: Path, extra: list[str]) -> None:
    cmd = [compiler, *COMPILE_FLAGS, *extra, "-o", str(output), str(source)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise BuildError(f"building {source.name} failed ({' '.join(cmd)}):\n"
                         f"{done.stdout}{done.stderr}")


SHIM_FLAGS = ["-fvisibility=hidden", "-ldl"]


def build_shim(dest_dir: Path) -> Path:
    """Only the sandbox shim, for the real driver in a sandbox without `/proc/modules` or
    `/run/udev` (see `sandbox_shim.c` for its variables); returns its path."""
    dest = Path(dest_dir).resolve()
    dest.mkdir(parents=True, exist_ok=True)
    shim = dest / "libpygds_sandbox_shim.so"
    _compile(find_compiler(), SHIM_SOURCE, shim, SHIM_FLAGS)
    return shim


def build_standin(dest_dir: Path) -> Standin:
    """Compile both libraries into `dest_dir` and write the files they use."""
    compiler = find_compiler()
    root = Path(dest_dir).resolve()
    lib_dir = root / "lib"
    log_dir = root / "log"
    for folder in (root, lib_dir, log_dir):
        folder.mkdir(parents=True, exist_ok=True)
    standin = Standin(
        root=root,
        lib_dir=lib_dir,
        libcuda=lib_dir / "libcuda.so.1",
        shim=root / "libpygds_sandbox_shim.so",
        proc_modules=root / "proc_modules",
        missing_proc_modules=root / "proc_modules.absent",
        nvidia_fs=root / "nvidia-fs",
        udev_record=root / "udev_record",
        cufile_json=root / "cufile.json",
        log_path=log_dir / "cufile.log",
    )
    _compile(compiler, STANDIN_SOURCE, standin.libcuda,
             ["-fvisibility=hidden", "-Wl,-soname,libcuda.so.1", "-lpthread"])
    _compile(compiler, SHIM_SOURCE, standin.shim, SHIM_FLAGS)
    standin.proc_modules.write_text("")
    standin.missing_proc_modules.unlink(missing_ok=True)
    standin.nvidia_fs.mkdir(exist_ok=True)
    standin.udev_record.write_text(UDEV_RECORD)
    standin.cufile_json.write_text(json.dumps(CUFILE_CONFIG, indent=2) + "\n")
    standin.clear_log()
    return standin
