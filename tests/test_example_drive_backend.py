"""`examples/drive_backend.py` where LMCache and torch are not installed (pygds alone)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "drive_backend.py"


def test_without_the_lmcache_extra_it_says_what_to_install():
    # -S: no site-packages, so neither torch nor lmcache can be imported, as in an environment
    # where only pygds was installed
    done = subprocess.run([sys.executable, "-S", str(EXAMPLE)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr, done.stderr
    assert "No module named 'torch'" in done.stderr
    assert "pip install 'pygds[lmcache]'" in done.stderr and "pip install -e '.[lmcache]'" in done.stderr
