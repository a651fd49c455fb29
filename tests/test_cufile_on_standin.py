"""Run the cuFile test set (tests/cufile_suite) on the CUDA driver stand-in, in one subprocess.

The real libcufile runs its compatibility mode there; every test in the folder must pass and
none may be skipped, so a missing piece of the stand-in cannot hide behind a skip. When the
inner run fails, the assertion message starts with the inner tests that failed, erred or were
skipped, or, when the process died (a crash in native code), the test it was running.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

from standin.build import REPO_ROOT, Standin

SUMMARY_COUNT = re.compile(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed|deselected)")
# `-v` prints a test's node id before running it and its outcome after: a node id without an
# outcome on the last such line is the test that was running when the process died
STARTED = re.compile(r"^(\S+::\S+)(?: (PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b)?")
SHORT_SUMMARY = re.compile(r"^(FAILED|ERROR|SKIPPED) ")


def summary_counts(output: str) -> dict[str, int]:
    """The counts of pytest's last summary line, e.g. {'passed': 12, 'skipped': 1}."""
    for line in reversed(output.strip().splitlines()):
        found = SUMMARY_COUNT.findall(line)
        if found:
            return {kind.rstrip("s") if kind.startswith("error") else kind: int(n)
                    for n, kind in found}
    return {}


def run_inner_pytest(target: str, env: Mapping[str, str], cwd: Path) -> subprocess.CompletedProcess:
    """pytest on `target` in a subprocess, verbose (node ids as they start) with the short summary
    of failures, errors and skips (`-rfEs`)."""
    return subprocess.run(
        [sys.executable, "-m", "pytest", target, "-v", "-rfEs", "-p", "no:cacheprovider"],
        env=dict(env), cwd=cwd, capture_output=True, text=True, timeout=600, check=False)


def inner_failures(output: str, returncode: int) -> str:
    """What went wrong in an inner pytest run, in a few lines: the test it was running when it died
    (killed by a signal, a crash in native code), else its FAILED / ERROR / SKIPPED summary lines."""
    lines = output.splitlines()
    started = [m for m in map(STARTED.match, lines) if m]
    how = f"signal {-returncode}" if returncode < 0 else f"exit status {returncode}"
    if started and started[-1].group(2) is None:
        return f"inner pytest died ({how}) while running {started[-1].group(1)}"
    listed = [line for line in lines if SHORT_SUMMARY.match(line)]
    return "\n".join(listed) or f"inner pytest: {how}; no failed, erred or skipped test listed"


def test_summary_counts_parses_pytest_lines() -> None:
    assert summary_counts("x\n3 passed, 1 skipped, 2 errors in 1.2s\n") == {
        "passed": 3, "skipped": 1, "error": 2}
    assert summary_counts("no tests ran in 0.01s") == {}


_INNER = '''
import ctypes

def test_fine():
    pass

def test_wrong():
    assert 1 == 2

def test_zz_crash():
    {crash}
'''


def test_inner_failures_are_named(tmp_path: Path) -> None:
    """A real inner run: the failing test is named first; a crash names the test that crashed."""
    (tmp_path / "test_inner.py").write_text(_INNER.format(crash="pass"))
    done = run_inner_pytest("test_inner.py", os.environ, tmp_path)
    headline = inner_failures(f"{done.stdout}\n{done.stderr}", done.returncode)
    assert done.returncode == 1
    assert "FAILED test_inner.py::test_wrong" in headline and "test_fine" not in headline

    (tmp_path / "test_inner.py").write_text(_INNER.format(crash="ctypes.string_at(0)"))
    done = run_inner_pytest("test_inner.py", os.environ, tmp_path)
    headline = inner_failures(f"{done.stdout}\n{done.stderr}", done.returncode)
    assert done.returncode != 0
    assert headline.startswith("inner pytest died (signal 11) while running test_inner.py::test_zz_crash")


def test_cufile_tests_pass_on_the_standin(standin: Standin) -> None:
    stray_log = REPO_ROOT / "cufile.log"
    had_log = stray_log.exists()
    standin.clear_log()
    done = run_inner_pytest("tests/cufile_suite", standin.env(), REPO_ROOT)
    output = f"{done.stdout}\n{done.stderr}"
    shown = (f"{inner_failures(output, done.returncode)}\n--- pytest output\n{output}\n"
             f"--- cufile.log\n{standin.log_text()}")
    assert done.returncode == 0, shown
    counts = summary_counts(done.stdout)
    assert counts.get("passed", 0) >= 1, shown
    assert counts.get("skipped", 0) == 0, shown
    assert had_log or not stray_log.exists(), "libcufile wrote cufile.log into the repository"
