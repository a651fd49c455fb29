"""The `pygds` command's own behaviour, in real processes: no arguments, and output piped into `head`."""
from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path

from pygds.cli.main import main

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
PIPE_BYTES = 4096  # the smallest pipe Linux makes


def test_no_arguments_print_the_commands_on_stdout():
    done = subprocess.run([sys.executable, "-m", "pygds"], env=ENV, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stderr == ""
    assert done.stdout.startswith("usage: pygds ")
    for command in ("info", "bench", "cache", "demo"):
        assert f"\n    {command} " in done.stdout, done.stdout


def test_no_arguments_in_process(capsys):
    assert main([]) == 0
    assert "COMMAND" in capsys.readouterr().out


def test_output_piped_into_head_ends_quietly_with_141(tmp_path):
    """`pygds info ... | head -1`: head reads one line and exits while pygds still writes; pygds
    ends at once, silently, with 128 + SIGPIPE as coreutils do. The pipe is made as small as Linux
    allows and the report is several times larger, so the reader is surely gone before the end."""
    paths = [str(tmp_path / f"cache{i}") for i in range(60)]
    read_end, write_end = os.pipe()
    fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
    head = subprocess.Popen(["head", "-1"], stdin=read_end, stdout=subprocess.PIPE, text=True)
    os.close(read_end)
    pygds = subprocess.Popen([sys.executable, "-m", "pygds", "info", "--no-driver", *paths], env=ENV,
                             stdout=write_end, stderr=subprocess.PIPE, text=True)
    os.close(write_end)
    first_line = head.communicate(timeout=60)[0]
    err = pygds.communicate(timeout=60)[1]
    assert first_line.startswith("pygds ") and first_line.count("\n") == 1
    assert pygds.returncode == 141, err
    assert "Broken pipe" not in err and "Traceback" not in err and "Exception ignored" not in err, err
    full = subprocess.run([sys.executable, "-m", "pygds", "info", "--no-driver", *paths], env=ENV,
                          capture_output=True, text=True, timeout=60)
    assert full.returncode == 0 and len(full.stdout) > 4 * PIPE_BYTES  # the premise: far more than two reads
