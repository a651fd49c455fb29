"""Compile the fault-injection shim (`fault_shim.c`) and give the environment that runs a process
under it.

`build_fault_shim(dest)` builds `libpygds_fault_shim.so` with the system C compiler (the same
finder as the CUDA stand-in). `FaultShim.env(prefix, ...)` is the environment of a subprocess
whose libc I/O on files under `prefix` fails with a chosen errno; the building process never loads
the shim.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Mapping

from standin.build import REPO_ROOT, _compile, _prepend, find_compiler

HERE = Path(__file__).resolve().parent
SHIM_SOURCE = HERE / "fault_shim.c"

ERRNO_NAMES = ("ENOSPC", "EDQUOT", "EIO", "EACCES", "EPERM", "EROFS", "EFBIG", "ENOMEM")
OPS = ("write", "read", "open", "create", "unlink", "rename", "fsync")
ACTIONS = ("fail", "eof", "crash-after")
_CRASHABLE = {"unlink", "rename", "fsync"}
_VARIABLES = ("PYGDS_FAULT_PREFIX", "PYGDS_FAULT_MATCH", "PYGDS_FAULT_OPS", "PYGDS_FAULT_ERRNO",
              "PYGDS_FAULT_SKIP", "PYGDS_FAULT_AFTER_BYTES", "PYGDS_FAULT_TIMES", "PYGDS_FAULT_ACTION")


@dataclasses.dataclass(frozen=True)
class FaultShim:
    """A built shim and the environment that arms it."""

    path: Path

    def env(self, prefix: str | os.PathLike, *, errno: str = "EIO", ops: str = "write",
            match: str = "", skip: int = 0, after_bytes: int | None = None, times: int = 0,
            action: str = "fail", base: Mapping[str, str] | None = None) -> dict[str, str]:
        """The environment of a subprocess whose I/O under `prefix` fails (see fault_shim.c).

        `ops`: comma list of write, read, open, create, unlink, rename, fsync. `skip`: calls that
        pass first. `after_bytes`: bytes that pass before failing (the crossing call is short).
        `times`: at most this many faults, then the fault is lifted (0: never lifted). `action`:
        "fail", "eof" (reads past the limit return 0) or "crash-after" (unlink, rename, fsync:
        SIGKILL right after the call). `base` defaults to `os.environ`; the repository goes first
        on PYTHONPATH.
        """
        if errno not in ERRNO_NAMES and not errno.isdigit():
            raise ValueError(f"errno {errno!r} is not one of {', '.join(ERRNO_NAMES)} or a number")
        chosen = [op.strip() for op in ops.split(",")]
        unknown = [op for op in chosen if op not in OPS]
        if unknown:
            raise ValueError(f"unknown fault ops {unknown}; use a comma list of {', '.join(OPS)}")
        if action not in ACTIONS:
            raise ValueError(f"unknown fault action {action!r}; use one of {', '.join(ACTIONS)}")
        if action == "crash-after" and not _CRASHABLE.issuperset(chosen):
            raise ValueError(f"action crash-after applies to {', '.join(sorted(_CRASHABLE))} only, "
                             f"not {ops!r}")
        env = {k: v for k, v in (os.environ if base is None else base).items() if k not in _VARIABLES}
        env["LD_PRELOAD"] = _prepend(str(self.path), env.get("LD_PRELOAD"))
        env["PYTHONPATH"] = _prepend(str(REPO_ROOT), env.get("PYTHONPATH"))
        env.update(PYGDS_FAULT_PREFIX=os.fspath(prefix), PYGDS_FAULT_ERRNO=errno, PYGDS_FAULT_OPS=ops,
                   PYGDS_FAULT_MATCH=match, PYGDS_FAULT_SKIP=str(skip), PYGDS_FAULT_TIMES=str(times),
                   PYGDS_FAULT_ACTION=action)
        if after_bytes is not None:
            env["PYGDS_FAULT_AFTER_BYTES"] = str(after_bytes)
        return env


def build_fault_shim(dest_dir: Path) -> FaultShim:
    """Compile the shim into `dest_dir` (raises `standin.build.CompilerMissing` without a compiler)."""
    compiler = find_compiler()
    root = Path(dest_dir).resolve()
    root.mkdir(parents=True, exist_ok=True)
    shim = FaultShim(root / "libpygds_fault_shim.so")
    _compile(compiler, SHIM_SOURCE, shim.path, ["-fvisibility=hidden", "-ldl", "-lpthread"])
    return shim
