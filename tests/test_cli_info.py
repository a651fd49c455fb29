"""`pygds info` (and the command's entry point): real libcufile, real mount table, real files."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pygds import cuda, fsinfo
from pygds.cli.main import main

ROOT = Path(__file__).resolve().parents[1]
NO_PROC_MODULES = not os.path.exists("/proc/modules")


def run_json(capsys, *argv: str) -> dict:
    rc = main(list(argv))
    out = capsys.readouterr().out
    assert rc == 0, out
    return json.loads(out)


def test_info_json_reports_library_checks_paths_and_engine(capsys, tmp_path):
    new = tmp_path / "not" / "yet"
    report = run_json(capsys, "info", "--json", str(tmp_path), str(new))
    lib = report["libcufile"]
    assert lib["found"] and os.path.basename(lib["path"]).startswith("libcufile.so") and lib["version"] >= 1000
    assert set(report["checks"]) == {"proc_modules", "cuda_driver", "nvidia_fs", "run_udev"}
    paths = {p["path"]: p for p in report["paths"]}
    here = paths[str(tmp_path)]
    assert here["exists"] and here["fs_type"] == fsinfo.fs_type(tmp_path) and here["free_bytes"] > 0
    assert paths[str(new)]["exists"] is False and paths[str(new)]["probed_at"] == str(tmp_path)
    assert any(p["topic"] == f"path {new}" and "does not exist" in p["problem"] for p in report["problems"])
    assert report["auto_engine"]["name"] in ("cufile", "hipfile", "posix") and report["auto_engine"]["reason"]
    assert all(p["fix"] for p in report["problems"])
    assert not new.parent.exists()
    hip = report["hipfile"]
    topics = {r["topic"] for r in hip["requirements"]}
    assert {"libhipfile", "HIP runtime", "amdgpu", "kernel P2PDMA"} <= topics
    assert f"path {tmp_path}: file system" in topics
    assert all(r["fix"] for r in hip["requirements"] if r["ok"] is False)


@pytest.mark.skipif(not NO_PROC_MODULES, reason="/proc/modules exists here; the hang hazard is absent")
def test_info_explains_the_hang_hazard_and_does_not_open_the_driver(capsys, tmp_path):
    report = run_json(capsys, "info", "--json", str(tmp_path))
    assert report["checks"]["proc_modules"]["ok"] is False
    assert report["driver"]["opened"] is False and "guard" in report["driver"]["skipped"]
    assert report["mode"].startswith("unavailable")
    hang = [p for p in report["problems"] if p["topic"] == "/proc/modules"]
    assert hang and "spin forever" in hang[0]["problem"] and "POSIX" in hang[0]["fix"]
    assert report["auto_engine"]["name"] == "posix"


@pytest.mark.skipif(os.path.isdir("/run/udev/data"), reason="/run/udev/data exists here")
def test_info_diagnoses_missing_run_udev_for_block_device_paths(capsys, tmp_path):
    report = run_json(capsys, "info", "--json", str(tmp_path))
    assert report["checks"]["run_udev"]["ok"] is False and "5027" in report["checks"]["run_udev"]["reason"]
    facts = fsinfo.probe_path(tmp_path)
    udev = [p for p in report["problems"] if "/run/udev" in p["problem"] or "/run/udev" in p["fix"]]
    assert udev and all("/run/udev:ro" in p["fix"] for p in udev)
    if facts.block_device and facts.gds_supported:
        assert any(p["topic"] == f"path {tmp_path}" and f"b{facts.device}" in p["problem"] for p in udev)


@pytest.mark.skipif(fsinfo.fs_type("/dev/shm") != "tmpfs", reason="/dev/shm is not a tmpfs here")
def test_info_flags_tmpfs_as_not_gds(capsys):
    report = run_json(capsys, "info", "--json", "/dev/shm")
    shm = report["paths"][0]
    assert shm["fs_type"] == "tmpfs" and shm["gds_supported"] is False
    assert any(p["topic"] == "path /dev/shm" and "tmpfs" in p["problem"] for p in report["problems"])


def test_info_reads_gds_paths_from_an_lmcache_config(capsys, tmp_path):
    config = tmp_path / "lmcache.yaml"
    config.write_text(textwrap.dedent(f"""\
        chunk_size: 256
        gds_path: " {tmp_path}/a , {tmp_path}/b ,"
        """))
    report = run_json(capsys, "info", "--json", "--config", str(config))
    assert [p["path"] for p in report["paths"]] == [f"{tmp_path}/a", f"{tmp_path}/b"]
    # the file does not register the plugin: check_config's finding comes through, with its fix
    assert any(p["topic"] == f"config {config}" and "storage_plugins" in p["problem"] for p in report["problems"])


_CHECKER = '''
def check(config_path, environ):
    with open(config_path) as f:
        paths = f.read().split()
    return paths, [f"{config_path} names {len(paths)} paths, {environ.get('CHECKER_MOOD', 'calm')}. Fix: relax"]
'''


def run_info_isolated(tmp_path: Path, *argv: str, site: Path | None = None) -> subprocess.CompletedProcess:
    """`pygds info` from a copy of the pygds package alone, in a Python that sees nothing else (and
    `site`, when given): `-S` keeps the installed distributions, and so their entry points, out of
    sight, and lmcache_plugin is not there to import. It also reports what of lmcache_plugin was imported."""
    alone = tmp_path / "pygds-alone"
    shutil.copytree(ROOT / "pygds", alone / "pygds", ignore=shutil.ignore_patterns("__pycache__"))
    script = ("import sys\nfrom pygds.cli.main import main\nrc = main(sys.argv[1:])\n"
              "print('PLUGIN', sorted(m for m in sys.modules if m.startswith('lmcache_plugin')), file=sys.stderr)\n"
              "sys.exit(rc)\n")
    path = os.pathsep.join([str(alone)] + ([str(site)] if site else []))
    return subprocess.run([sys.executable, "-S", "-c", script, "info", *argv],
                          env={**os.environ, "PYTHONPATH": path, "CHECKER_MOOD": "grumpy"},
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)


def test_info_config_is_checked_by_the_entry_point_checkers(tmp_path):
    """A checker installed as a `pygds.config` entry point (a real dist-info on the path) reads the
    file: its paths are examined, its problems are findings split at "Fix:", and pygds imports no
    plugin of its own accord."""
    site = tmp_path / "site"
    (site / "demo_checker-1.0.dist-info").mkdir(parents=True)
    (site / "demo_checker-1.0.dist-info" / "METADATA").write_text("Metadata-Version: 2.1\nName: demo-checker\n"
                                                                   "Version: 1.0\n")
    (site / "demo_checker-1.0.dist-info" / "entry_points.txt").write_text("[pygds.config]\n"
                                                                          "demo = demo_checker:check\n")
    (site / "demo_checker.py").write_text(_CHECKER)
    config = tmp_path / "cache.conf"
    config.write_text(f"{tmp_path}/a {tmp_path}/b\n")
    done = run_info_isolated(tmp_path, "--json", "--config", str(config), site=site)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert [p["path"] for p in report["paths"]] == [f"{tmp_path}/a", f"{tmp_path}/b"]
    found = [p for p in report["problems"] if p["topic"] == f"config {config}"]
    assert found == [{"topic": f"config {config}", "problem": f"{config} names 2 paths, grumpy.", "fix": "relax",
                      "severity": "error"}]
    assert "PLUGIN []" in done.stderr


def test_info_config_without_a_checker_names_the_package_to_install(tmp_path):
    config = tmp_path / "lmcache.yaml"
    config.write_text("chunk_size: 256\n")
    done = run_info_isolated(tmp_path, "--json", "--config", str(config))
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    found = [p for p in report["problems"] if p["topic"] == f"config {config}"]
    assert len(found) == 1 and "pygds.config" in found[0]["problem"]
    assert "pip install 'pygds[lmcache]'" in found[0]["fix"]
    assert report["paths"] == [] and "PLUGIN []" in done.stderr


@pytest.mark.skipif(not NO_PROC_MODULES, reason="/proc/modules exists here; this is the sandbox's state")
def test_info_human_output_explains_posix_and_each_fix_in_this_sandbox(capsys, tmp_path):
    """No /proc/modules and no CUDA driver here: auto falls back to POSIX and says why, and each
    cause is a numbered problem with its fix."""
    assert main(["info", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "proc_modules  NO  /proc/modules cannot be read" in out
    assert "cuFile driver not opened: the never-hang guard did not pass" in out
    auto = next(line for line in out.splitlines() if line.startswith("engine 'auto' chooses "))
    assert auto.startswith("engine 'auto' chooses posix: ") and "/proc/modules cannot be read" in auto
    problems = out[out.index(" problem(s):"):]
    assert re.search(r"\d+\. \[error\] /proc/modules: /proc/modules cannot be read.*\n\s+fix: run where "
                     r"/proc/modules is readable", problems)
    if not cuda.check_driver().ok:  # no libcuda in this sandbox either
        assert re.search(r"\[error\] CUDA driver: .*\n\s+fix: install the NVIDIA driver", problems)


def test_info_human_output_on_the_standin_says_why_auto_takes_posix(standin, tmp_path):
    """With a CUDA driver and /proc/modules (the stand-in) but no nvidia-fs, the mode is
    compatibility, auto takes the POSIX engine and says why, and the one machine problem is
    nvidia-fs, with its fix."""
    done = subprocess.run([sys.executable, "-m", "pygds", "info", str(tmp_path)], env=standin.env(),
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert re.search(r"^engine 'auto' chooses posix: cuFile is usable \(libcufile \d+\.\d+\.\d+ at "
                     r"\S+libcufile\.so\S* and a usable CUDA driver\) but nvidia-fs is not loaded .*compatibility "
                     r"mode.*POSIX engine is faster", out, re.MULTILINE), out
    assert "mode          compatibility: nvidia-fs is absent" in out and "cuFile driver opened" in out
    assert "'auto' takes pygds's own POSIX engine" in out
    assert re.search(r"\[warning\] nvidia-fs: .*\n\s+fix: install and load the nvidia-fs kernel module", out)
    assert "[error] /proc/modules" not in out and "[error] CUDA driver" not in out


def test_info_in_gds_mode_chooses_cufile(standin, tmp_path):
    """With nvidia-fs loaded (presented by the sandbox shim) the mode is GDS and auto takes cuFile."""
    done = subprocess.run([sys.executable, "-m", "pygds", "info", "--json", str(tmp_path)],
                          env=standin.env(nvidia_fs=True), cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["checks"]["nvidia_fs"]["ok"] and report["mode"].startswith("GDS")
    assert report["auto_engine"]["name"] == "cufile" and "GDS mode" in report["auto_engine"]["reason"]
    assert not any(p["topic"] == "nvidia-fs" for p in report["problems"])


def test_info_never_repeats_a_name_before_its_own_message(capsys, tmp_path):
    """Messages that already start with their subject are not prefixed with it again
    ("libhipfile.so.0: libhipfile.so.0: cannot open ...", "cuFile: cuFile cannot be used")."""
    assert main(["info", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert not re.findall(r"\b([\w.]+): \1\b", out), out


@pytest.mark.skipif(os.path.isdir("/run/udev/data"), reason="/run/udev/data exists here")
def test_gds_column_says_no_where_handle_registration_fails_with_5027(capsys, tmp_path):
    facts = fsinfo.probe_path(tmp_path)
    if not (facts.block_device and facts.gds_supported):
        pytest.skip(f"{tmp_path} is not on a GDS file system on a block device here")
    report = run_json(capsys, "info", "--json", str(tmp_path))
    assert report["paths"][0]["gds_supported"] is True and report["paths"][0]["gds_ready"] is False
    assert main(["info", str(tmp_path)]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if line.startswith(f"{tmp_path} "))
    assert row.split()[1:5] == [facts.fs_type, facts.mount_point, "no", "(5027)"]


def test_info_warns_when_paths_share_one_file_system(capsys, tmp_path):
    a, b = tmp_path / "nvme0", tmp_path / "nvme1"
    a.mkdir()
    report = run_json(capsys, "info", "--json", str(a), str(b))
    shared = [p for p in report["problems"] if p["topic"] == "paths"]
    assert len(shared) == 1 and shared[0]["severity"] == "warning"
    assert f"{a}, {b} are on one file system ({fsinfo.fs_type(a)} at {fsinfo.mount_of(a).mount_point}" \
        in shared[0]["problem"]
    assert "its own drive or file system" in shared[0]["fix"]
    report = run_json(capsys, "info", "--json", str(a))
    assert not [p for p in report["problems"] if p["topic"] == "paths"]


@pytest.mark.skipif(fsinfo.fs_type("/dev/shm") != "tmpfs", reason="/dev/shm is not a tmpfs here")
def test_paths_on_different_file_systems_are_not_flagged(capsys, tmp_path):
    if os.stat(tmp_path).st_dev == os.stat("/dev/shm").st_dev:
        pytest.skip("the temporary directory is on /dev/shm's file system")
    report = run_json(capsys, "info", "--json", str(tmp_path), "/dev/shm")
    assert not [p for p in report["problems"] if p["topic"] == "paths"]


@pytest.mark.parametrize("argv", [["info", "--config", "/nonexistent.yaml"], ["info", "--bogus"],
                                  ["nope"], ["-v"]])
def test_bad_arguments_exit_2_with_usage(capsys, argv):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "usage:" in err and "error:" in err


def test_version_and_help_exit_0(capsys):
    assert main(["--version"]) == 0
    assert "pygds" in capsys.readouterr().out
    assert main(["info", "--help"]) == 0
    assert "Exit status" in capsys.readouterr().out


def test_python_dash_m_pygds_runs_info_json(tmp_path):
    done = subprocess.run([sys.executable, "-m", "pygds", "info", "--json", str(tmp_path)],
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)  # stdout holds the JSON and nothing else
    assert report["paths"][0]["path"] == str(tmp_path)


def test_info_opens_the_driver_on_the_standin(standin, tmp_path):
    """With a CUDA driver and /proc/modules (the stand-in), info opens cuFile and reads it out."""
    done = subprocess.run([sys.executable, "-m", "pygds", "info", "--json", str(tmp_path)], env=standin.env(),
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["checks"]["proc_modules"]["ok"] and report["checks"]["cuda_driver"]["ok"]
    driver = report["driver"]
    assert driver["opened"], driver
    assert driver["properties"]["max_batch_io_size"] > 0 and "control_flags" in driver["properties"]
    assert driver["parameters"]["CUFILE_PARAM_PROPERTIES_IO_BATCHSIZE"] > 0
    assert report["mode"].startswith("compatibility")  # no nvidia-fs under the stand-in
    assert report["auto_engine"]["name"] == "posix" and "compatibility mode" in report["auto_engine"]["reason"]
    assert not (tmp_path / "cufile.log").exists()


def test_the_installed_pygds_script(tmp_path):
    script = shutil.which("pygds", path=os.path.dirname(sys.executable))
    if script is None:
        pytest.skip("the pygds script is not installed next to this Python (pip install . installs it)")
    done = subprocess.run([script, "info", "--no-driver", "--json", str(tmp_path)], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["paths"][0]["path"] == str(tmp_path) and report["driver"]["opened"] is False
