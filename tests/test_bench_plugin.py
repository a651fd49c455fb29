"""benchmarks/bench_plugin.py's command line: the CPU run with its contenders (the plugin with and
without its checksum, LocalDiskBackend, the plain ceiling) under O_DIRECT, checked byte for byte by
the script itself; the CUDA-only choices refused at once, with the cause, on a machine without
CUDA; and gpu_check.py handing a lent GPU's run the CUDA flags."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from benchmarks.gpu_check import PLUGIN_CUDA_FLAGS, Context, bench_plugin_step
from standin.build import REPO_ROOT

BENCH = [sys.executable, "benchmarks/bench_plugin.py"]


def test_a_direct_io_run_compares_every_contender_with_o_direct(tmp_path: Path) -> None:
    out = tmp_path / "plugin.json"
    done = subprocess.run([*BENCH, "--chunks", "1", "--runs", "1", "--no-cold", "--direct-io", "--dir", str(tmp_path),
                           "--json", str(out)], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode in (0, 1), done.stdout + done.stderr[-3000:]
    result = json.loads(out.read_text())
    names = ["gds plugin", "gds plugin [checksum=off]", "LocalDiskBackend", "plain POSIX ceiling"]
    assert list(result["engines"]) == names
    assert all(engine.endswith("O_DIRECT") for engine in result["engines"].values()), result["engines"]
    assert "checksum auto" in result["engines"]["gds plugin"]
    assert "checksum off" in result["engines"]["gds plugin [checksum=off]"]
    assert (result["device"], result["baseline"], result["direct_io"]) == ("cpu", "LocalDiskBackend", True)
    assert result["goals"] == {"LocalDiskBackend": 1.0, "plain POSIX ceiling": 0.95}
    assert set(result["paired_ratio"]) == {"LocalDiskBackend", "plain POSIX ceiling"}
    assert result["paired_ratio"]["plain POSIX ceiling"]["plain POSIX ceiling"]["put"] == 1.0
    assert set(result["verdicts"]) == {"gds plugin", "gds plugin [checksum=off]"}
    assert done.returncode == (0 if result["verdicts"]["gds plugin"] else 1)
    assert "O_DIRECT, baseline LocalDiskBackend" in done.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: --device cuda would run")
def test_cuda_choices_are_refused_at_once_without_cuda() -> None:
    for args, cause in ((["--device", "cuda", "--baseline", "gds"], "torch.cuda.is_available() is False"),
                        (["--baseline", "gds"], "--baseline gds needs --device cuda")):
        start = time.monotonic()
        done = subprocess.run([*BENCH, *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False)
        assert done.returncode == 2 and cause in done.stderr, done.stderr
        assert "use --device cpu" in done.stderr or "use --baseline localdisk" in done.stderr
        assert time.monotonic() - start < 60  # nothing was built or measured


def test_gpu_check_runs_the_plugin_against_gds_backend_on_a_lent_gpu(tmp_path: Path) -> None:
    ctx = Context(dry_run=False, quick=False, out=tmp_path, work=tmp_path, data=tmp_path, env={},
                  cufile_log=tmp_path / "cufile.log")
    step = bench_plugin_step(ctx)
    assert step.command is not None and step.command[2:6] == PLUGIN_CUDA_FLAGS, step.command
    assert step.note == ""
