"""`pygds demo`: the README's main job, a KV-chunk round trip through the plugin's store."""
from __future__ import annotations

import contextlib
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import xxhash

from lmcache_plugin.format import HEADER_SIZE, unpack_header
from pygds import memory
from lmcache_plugin.commands.demo import chunk_shape
from pygds.cli.main import main

ROOT = Path(__file__).resolve().parents[1]


def test_the_files_the_demo_keeps_hold_what_it_reports(capsys, tmp_path):
    """256 tokens of Llama-3.1-8B KV in bf16 are 32 MiB: the entries on disk have that shape, that
    size and the bytes their checksum names, one distinct chunk per file."""
    cache = tmp_path / "cache"
    assert main(["demo", "--dir", str(cache), "--chunks", "2", "--tokens", "256", "--keep", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["chunk_shape"] == list(chunk_shape(256)) == [2, 32, 256, 1024]
    assert report["chunk_bytes"] == 32 << 20 and report["verified"] == 2
    files = sorted(cache.rglob("*.kvcache.safetensors"))
    assert len(files) == 2
    payloads = []
    for path in files:
        data = path.read_bytes()
        header = unpack_header(data[:HEADER_SIZE], file_size=len(data))
        assert header.shapes == ((2, 32, 256, 1024),) and header.dtypes == ("BF16",)
        assert len(data) - HEADER_SIZE == header.nbytes == report["chunk_bytes"]
        algorithm, digest = header.extra["checksum"].split(":")
        assert algorithm == "xxh3_64" and xxhash.xxh3_64_hexdigest(data[HEADER_SIZE:]) == digest
        payloads.append(data[HEADER_SIZE:])
    assert payloads[0] != payloads[1] and report["write"]["bytes"] == sum(map(len, payloads))


def test_python_dash_m_pygds_demo_round_trips_in_a_temporary_directory(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "pygds", "demo", "--chunks", "3", "--tokens", "8", "--json"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["ok"] and report["verified"] == 3 and report["chunk_bytes"] == 8 * 128 * 1024
    assert report["engine"]["used"] in ("posix", "cufile", "hipfile") and report["engine"]["reason"]
    assert report["write"]["bytes"] == report["read"]["bytes"] == 3 * report["chunk_bytes"]
    assert report["write"]["gib_per_s"] > 0 and report["read"]["gib_per_s"] > 0
    assert report["store_stats"]["puts"] == 3 and report["store_stats"]["hits"] == 3
    assert os.listdir(tmp_path) == []  # the temporary cache directory is gone


@pytest.mark.skipif(memory.cuda_available(), reason="CUDA is usable here: the demo uses GPU memory")
def test_demo_on_cpu_says_posix_and_why(capsys, tmp_path):
    assert main(["demo", "--dir", str(tmp_path / "cache"), "--chunks", "2", "--tokens", "4"]) == 0
    out = capsys.readouterr().out
    assert "engine: posix with host memory" in out and "CUDA" in out
    assert "verified 2/2 chunks byte-exact" in out
    assert re.search(r"^write  1\.0 MiB in \d+\.\d{3} s = \d+\.\d (B|KiB|MiB|GiB|TiB)/s$", out, re.MULTILINE), out
    assert list((tmp_path / "cache").rglob("*.kvcache.safetensors")) == []  # removed without --keep


def test_demo_keep_leaves_a_valid_cache_and_can_run_again(capsys, tmp_path):
    cache = tmp_path / "cache"
    for _ in range(2):  # the second run replaces what the first one kept
        assert main(["demo", "--dir", str(cache), "--chunks", "2", "--tokens", "4", "--keep", "--json"]) == 0
        assert json.loads(capsys.readouterr().out)["verified"] == 2
    assert main(["cache", "verify", "--path", str(cache), "--json"]) == 0
    verify = json.loads(capsys.readouterr().out)
    assert verify["status"] == {"ok": 2}
    assert main(["cache", "stats", "--path", str(cache), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["per_model"]["meta-llama/Llama-3.1-8B"]["entries"] == 2


@pytest.mark.skipif(memory.cuda_available(), reason="CUDA is usable here")
def test_demo_asked_for_cufile_without_a_gpu_uses_posix_as_the_plugin_does(capsys, tmp_path):
    assert main(["demo", "--dir", str(tmp_path), "--chunks", "1", "--tokens", "1", "--engine", "cufile",
                 "--json"]) == 0
    engine = json.loads(capsys.readouterr().out)["engine"]
    assert engine["requested"] == "cufile" and engine["used"] == "posix"
    assert engine["reason"].startswith("--engine cufile overridden") and "CUDA" in engine["reason"]


@pytest.mark.parametrize("argv, words", [
    (["--keep"], "--keep needs --dir"),
    (["--chunks", "0"], "at least 1"),
    (["--tokens", "x"], "invalid integer"),
    (["--engine", "fast"], "invalid choice"),
])
def test_bad_arguments_exit_2(capsys, argv, words):
    assert main(["demo", *argv]) == 2
    err = capsys.readouterr().err
    assert "usage:" in err and words in err


def test_dir_that_is_a_file_is_a_usage_error(capsys, tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    assert main(["demo", "--dir", str(f)]) == 2
    assert "not a directory" in capsys.readouterr().err


@pytest.mark.parametrize(("engine", "gds_mode", "expected"), [
    ("auto", False, "posix"), ("auto", True, "cufile"), ("cufile", False, "cufile"), ("posix", False, "posix")])
def test_the_engine_the_demo_reports_is_the_one_that_ran(standin, tmp_path, engine, gds_mode, expected):
    """The stand-in gives a CUDA driver and GPU memory. Without nvidia-fs cuFile would run its
    compatibility mode, so `auto` takes pygds's POSIX engine; with the shim presenting nvidia-fs
    (GDS mode) `auto` takes cuFile. libcufile logs its driver's start, so its log shows whether
    cuFile really ran: "cufile" has it, "posix" none."""
    standin.clear_log()
    done = subprocess.run([sys.executable, "-m", "pygds", "demo", "--dir", str(tmp_path / "cache"),
                           "--chunks", "2", "--tokens", "4", "--engine", engine, "--json"],
                          env=standin.env(nvidia_fs=gds_mode), cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr + standin.log_text()
    report = json.loads(done.stdout)
    assert report["memory"] == "gpu" and report["verified"] == 2
    used = report["engine"]["used"]
    if report["fs_type"] in ("ext4", "xfs"):
        assert used == expected, report["engine"]
    log = standin.log_text()
    if used == "cufile":
        assert "running in compatible mode" in log, log
    else:
        assert log == "", log


def test_progress_ends_on_the_rates_the_summary_prints(capsys, tmp_path):
    """One bar per phase, on the summary's clock: the last rate each bar shows is the summary's."""
    assert main(["demo", "--dir", str(tmp_path), "--chunks", "3", "--tokens", "4", "--progress"]) == 0
    captured = capsys.readouterr()
    lines = re.split(r"[\r\n]", captured.err.replace("\x1b[K", ""))
    for phase in ("write", "read"):
        bar = [line for line in lines if line.startswith(f"demo {phase} [")][-1]
        summary = next(line for line in captured.out.splitlines() if line.startswith(f"{phase} "))
        assert "100.0%" in bar and bar.rsplit("  ", 1)[1] == summary.rsplit(" = ", 1)[1], (bar, summary)


def test_dir_is_left_as_it_was_found(capsys, tmp_path):
    """Without --keep the demo removes its entries, the fan-out directories it made and a --dir
    it created; directories that were there before stay."""
    cache = tmp_path / "new" / "cache"
    assert main(["demo", "--dir", str(cache), "--chunks", "3", "--tokens", "4"]) == 0
    assert list(tmp_path.iterdir()) == []
    existing = tmp_path / "existing"
    (existing / "other").mkdir(parents=True)
    assert main(["demo", "--dir", str(existing), "--chunks", "3", "--tokens", "4"]) == 0
    assert [p.name for p in existing.iterdir()] == ["other"]
    capsys.readouterr()


def _full_pipe() -> tuple[int, int]:
    """A pipe whose buffer is full: a write into it blocks until the read end is drained."""
    r, w = os.pipe()
    os.set_blocking(w, False)
    for size in (4096, 1):
        with contextlib.suppress(BlockingIOError):
            while True:
                os.write(w, b"." * size)
    os.set_blocking(w, True)
    return r, w


class BlockedDemo:
    """`pygds demo --progress` whose stderr is a full pipe: the first line of its progress bar
    blocks it in the middle of its writes until `release()` drains stderr. So a test acts while
    the demo is surely at work, whatever the machine's speed."""

    def __init__(self, argv: list[str], env: dict[str, str], nohup: bool = False) -> None:
        self._err_r, err_w = _full_pipe()
        command = [sys.executable, "-m", "pygds", "demo", "--chunks", "4", "--tokens", "16", "--progress", *argv]
        self.proc = subprocess.Popen(["nohup", *command] if nohup else command, env=env, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=err_w, text=True)
        os.close(err_w)
        self.err = b""
        self._drain: threading.Thread | None = None

    def header(self, timeout: float = 60) -> str:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        assert ready, "the demo printed no header while at work"
        return self.proc.stdout.readline()

    def wait_for_data(self, root: Path, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not list(root.rglob("*.kvcache.safetensors")):
            assert time.monotonic() < deadline and self.proc.poll() is None, "no chunk written"
            time.sleep(0.02)

    def release(self) -> None:
        def drain() -> None:
            with os.fdopen(self._err_r, "rb") as pipe:
                self.err = pipe.read()

        self._drain = threading.Thread(target=drain, daemon=True)
        self._drain.start()

    def finish(self, timeout: float = 60) -> tuple[int, str, str]:
        out = self.proc.communicate(timeout=timeout)[0]
        self._drain.join(timeout)
        return self.proc.returncode, out, self.err.decode(errors="replace").lstrip(".")


@pytest.fixture
def blocked_demo():
    """Starts `BlockedDemo`s; any still running when the test ends is killed."""
    started: list[BlockedDemo] = []

    def start(argv: list[str], env: dict[str, str], **kwargs: bool) -> BlockedDemo:
        started.append(BlockedDemo(argv, env, **kwargs))
        return started[-1]

    yield start
    for demo in started:
        if demo.proc.poll() is None:
            demo.proc.kill()
            demo.proc.wait()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_a_terminated_demo_removes_its_temporary_directory(blocked_demo, tmp_path, sig):
    demo = blocked_demo([], {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(tmp_path)})
    assert demo.header().startswith("pygds demo: 4 KV chunks")  # the header comes before the work
    demo.wait_for_data(tmp_path)
    demo.proc.send_signal(sig)
    demo.release()
    status, _, err = demo.finish()
    assert status == 128 + sig, err
    assert f"pygds: terminated by {signal.Signals(sig).name}" in err
    assert list(tmp_path.iterdir()) == []


def test_a_terminated_demo_removes_what_it_wrote_in_dir(blocked_demo, tmp_path):
    cache = tmp_path / "cache"
    demo = blocked_demo(["--dir", str(cache)], {**os.environ, "PYTHONPATH": str(ROOT)})
    demo.header()
    demo.wait_for_data(cache)
    demo.proc.send_signal(signal.SIGTERM)
    demo.release()
    status, _, err = demo.finish()
    assert status == 128 + signal.SIGTERM, err
    assert not cache.exists()


def test_an_ignored_sighup_stays_ignored(blocked_demo, tmp_path):
    """Started under nohup (SIGHUP ignored), the demo keeps running through a hang-up."""
    if shutil.which("nohup") is None:
        pytest.skip("no nohup here")
    demo = blocked_demo([], {**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(tmp_path)}, nohup=True)
    demo.header()
    demo.wait_for_data(tmp_path)
    demo.proc.send_signal(signal.SIGHUP)
    demo.release()
    status, out, err = demo.finish()
    assert status == 0, err
    assert "verified 4/4 chunks byte-exact" in out and list(tmp_path.iterdir()) == []
