"""benchmarks/gpu_check.py, the one command for a lent GPU, proven on CPU: its dry run runs every
step against the CUDA driver stand-in and lists each in the summary with its exit code and status;
a failing or hanging step is recorded and the next one still runs."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks.gpu_check import TIMED_OUT, Context, Step, run_step
from standin.build import REPO_ROOT, CompilerMissing, find_compiler

STEPS = ("install", "libcufile", "environment", "gpu-tests", "cufile-suite", "bench-cufile", "bench-plugin",
         "bench-kvikio", "bench-plugin-cpu", "bench-l2-256k", "bench-l2-4m", "bench-l2-floor")
BENCHMARKS = ("bench-cufile", "bench-plugin", "bench-kvikio", "bench-l2-256k", "bench-l2-4m", "bench-l2-floor")
RAN = ("ok", "ran; a goal was missed")


def summary_rows(text: str) -> dict[str, tuple[str, str]]:
    """step -> (exit code, status) from summary.md's table."""
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0] not in ("step", "---"):
            rows[cells[0]] = (cells[1], cells[2])
    return rows


def test_dry_run_runs_every_step_on_the_standin(tmp_path: Path) -> None:
    try:
        find_compiler()
    except CompilerMissing as exc:
        pytest.skip(str(exc))
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--dry-run", "--quick", "--out", str(out)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    summary = (out / "summary.md").read_text()
    log = (out / "steps.log").read_text(errors="replace")
    shown = f"--- summary.md\n{summary}\n--- steps.log (end)\n{log[-6000:]}\n--- stderr\n{done.stderr[-3000:]}"
    assert summary.startswith("# pygds GPU check (dry run on the CUDA driver stand-in, quick)\n"), shown
    rows = summary_rows(summary)
    assert tuple(rows) == STEPS, shown
    assert rows["install"] == ("-", rows["install"][1]) and rows["install"][1].startswith("skipped: dry run"), shown
    kvikio = importlib.util.find_spec("kvikio") is not None
    results = json.loads((out / "results.json").read_text())
    assert sorted(p.name for p in out.iterdir()) == ["results.json", "steps.log", "summary.md"], shown
    for name in STEPS[1:]:
        code, status = rows[name]
        if name == "bench-kvikio" and not kvikio:  # only this step needs KvikIO
            assert status.startswith("skipped: KvikIO is not installed"), shown
            continue
        if name == "bench-plugin-cpu":  # the dry run's bench-plugin step is this comparison
            assert code == "-" and status.startswith("skipped: dry run"), shown
            continue
        assert code in ("0", "1") and status.startswith(RAN), f"{name}: {code} {status}\n{shown}"
        assert f"===== {name}:" in log
        if name in BENCHMARKS:
            assert results[name], shown
    assert "dry run: CPU destination" in rows["bench-plugin"][1], shown
    if kvikio:
        cases = results["bench-kvikio"]["cases"]
        assert sorted(c["name"] for c in cases) == sorted(f"{m} {op} {s}" for m in ("host", "device")
                                                           for op in ("read", "write") for s in ("4 KiB", "1 MiB"))
        assert all(set(c["times"]) == {"pygds", "KvikIO"} for c in cases)
    assert done.returncode == 0, shown
    assert "libcufile's log" in log


def _context(tmp_path: Path) -> Context:
    out = tmp_path / "out"
    out.mkdir()
    return Context(dry_run=True, quick=True, out=out, work=tmp_path, data=tmp_path, env=dict(os.environ),
                   cufile_log=tmp_path / "cufile.log")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_hanging_step_is_killed_with_its_children_and_a_failing_one_recorded(tmp_path: Path) -> None:
    ctx = _context(tmp_path)
    pid_file = tmp_path / "child.pid"
    hang = Step("hang", 2, [sys.executable, "-c",
                            "import subprocess, sys, time\n"
                            "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
                            f"open({str(pid_file)!r}, 'w').write(str(child.pid))\n"
                            "print('hanging', flush=True); time.sleep(120)"])
    fail = Step("fail", 30, [sys.executable, "-c", "import sys; print('failing'); sys.exit(3)"])
    goal = Step("goal", 30, [sys.executable, "-c", "import sys; sys.exit(1)"], codes={1: "ran; a goal was missed"})
    start = time.monotonic()
    for step in (hang, fail, goal):
        run_step(ctx, step, deadline=time.monotonic() + 300)
    assert time.monotonic() - start < 60
    assert (hang.exit_code, hang.status) == (TIMED_OUT, "timed out after 2 s")
    assert not _alive(int(pid_file.read_text()))
    assert (fail.exit_code, fail.status) == (3, "failed (exit 3)")
    assert (goal.exit_code, goal.status) == (1, "ran; a goal was missed")
    log = ctx.log.read_text()
    assert "hanging" in log and "failing" in log


def test_no_step_starts_once_the_budget_is_spent(tmp_path: Path) -> None:
    ctx = _context(tmp_path)
    step = Step("late", 30, [sys.executable, "-c", "open('ran', 'w')"])
    run_step(ctx, step, deadline=time.monotonic() + 1)
    assert step.status == "not run: the time budget is spent" and step.exit_code is None
    assert not (REPO_ROOT / "ran").exists()
