"""Run the cuFile test set (tests/cufile_suite) on the CUDA driver stand-in, in one subprocess.

The real libcufile runs its compatibility mode there; every test in the folder must pass and
none may be skipped, so a missing piece of the stand-in cannot hide behind a skip.
"""

from __future__ import annotations

import re
import subprocess
import sys

from standin.build import REPO_ROOT, Standin

SUMMARY_COUNT = re.compile(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed|deselected)")


def summary_counts(output: str) -> dict[str, int]:
    """The counts of pytest's last summary line, e.g. {'passed': 12, 'skipped': 1}."""
    for line in reversed(output.strip().splitlines()):
        found = SUMMARY_COUNT.findall(line)
        if found:
            return {kind.rstrip("s") if kind.startswith("error") else kind: int(n)
                    for n, kind in found}
    return {}


def test_summary_counts_parses_pytest_lines() -> None:
    assert summary_counts("x\n3 passed, 1 skipped, 2 errors in 1.2s\n") == {
        "passed": 3, "skipped": 1, "error": 2}
    assert summary_counts("no tests ran in 0.01s") == {}


def test_cufile_tests_pass_on_the_standin(standin: Standin) -> None:
    stray_log = REPO_ROOT / "cufile.log"
    had_log = stray_log.exists()
    standin.clear_log()
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "tests/cufile_suite", "-q", "-p", "no:cacheprovider"],
        env=standin.env(), cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)
    output = f"{done.stdout}\n{done.stderr}"
    shown = f"--- pytest output\n{output}\n--- cufile.log\n{standin.log_text()}"
    assert done.returncode == 0, shown
    counts = summary_counts(done.stdout)
    assert counts.get("passed", 0) >= 1, shown
    assert counts.get("skipped", 0) == 0, shown
    assert had_log or not stray_log.exists(), "libcufile wrote cufile.log into the repository"
