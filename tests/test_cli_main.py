"""The `pygds` command's own behaviour, in real processes: no arguments, and output piped into `head`."""
from __future__ import annotations

import ast
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


def _dist_with_commands(tmp_path: Path, commands: dict[str, str]) -> Path:
    """A real installed-distribution record (`*.dist-info` on the path) registering `commands` in
    the `pygds.commands` entry-point group, as a package's `pip install` writes it."""
    site = tmp_path / "site"
    info = site / "pygds_extra-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: pygds-extra\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[pygds.commands]\n" + "".join(f"{name} = {module}\n" for name, module in commands.items()))
    return site


def test_a_broken_plugin_command_is_listed_and_breaks_nothing_else(tmp_path):
    site = _dist_with_commands(tmp_path, {"broken": "pygds_extra_module_that_is_not_installed"})
    env = {**ENV, "PYTHONPATH": f"{ROOT}{os.pathsep}{site}"}
    listing = subprocess.run([sys.executable, "-m", "pygds"], env=env, capture_output=True, text=True, timeout=60)
    assert listing.returncode == 0, listing.stderr
    assert "\n    broken " in listing.stdout and "unavailable: ModuleNotFoundError" in listing.stdout
    for command in ("info", "bench", "cache", "demo"):
        assert f"\n    {command} " in listing.stdout
    info = subprocess.run([sys.executable, "-m", "pygds", "info", "--no-driver", "--json", str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=60)
    assert info.returncode == 0 and info.stdout.lstrip().startswith("{"), info.stderr
    broken = subprocess.run([sys.executable, "-m", "pygds", "broken", "x"], env=env, capture_output=True, text=True,
                            timeout=60)
    assert broken.returncode == 1 and "cannot be loaded" in broken.stderr and "Fix: " in broken.stderr
    assert "Traceback" not in broken.stderr


def test_pygds_runs_without_the_plugin_and_never_imports_it(tmp_path):
    """With `lmcache_plugin` unimportable, `pygds info` works and the plugin's commands say why
    they cannot run; no module of pygds imports the plugin."""
    code = ("import sys; sys.modules['lmcache_plugin'] = None\n"
            "from pygds.cli.main import main\n"
            "sys.exit(main(sys.argv[1:]))\n")
    info = subprocess.run([sys.executable, "-c", code, "info", "--no-driver", str(tmp_path)], env=ENV,
                          capture_output=True, text=True, timeout=60)
    assert info.returncode == 0, info.stderr
    demo = subprocess.run([sys.executable, "-c", code, "demo"], env=ENV, capture_output=True, text=True, timeout=60)
    assert demo.returncode == 1 and "'demo' command (lmcache_plugin.commands.demo) cannot be loaded" in demo.stderr
    importers = []
    for path in sorted((ROOT / "pygds").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(n == "lmcache_plugin" or n.startswith("lmcache_plugin.") for n in names):
                importers.append(str(path.relative_to(ROOT)))
    assert importers == []
