"""`pygds demo`: the README's main job, a KV-chunk round trip through the plugin's store."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pygds import memory
from pygds.cli.demo import chunk_shape
from pygds.cli.main import main

ROOT = Path(__file__).resolve().parents[1]


def test_chunk_shape_is_llama_3_1_8b_kv():
    shape = chunk_shape(256)
    assert shape == (2, 32, 256, 1024)
    assert 2 * shape[0] * shape[1] * shape[2] * shape[3] == 32 << 20  # bf16: 32 MiB per 256-token chunk


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
    assert "verified 2/2 chunks byte-exact" in out and "GiB/s" in out
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


def test_demo_on_the_standin_runs_cufile_with_device_memory(standin, tmp_path):
    """The stand-in gives a CUDA driver: the demo takes GPU memory and cuFile, as on a GPU machine."""
    done = subprocess.run([sys.executable, "-m", "pygds", "demo", "--dir", str(tmp_path / "cache"),
                           "--chunks", "2", "--tokens", "4", "--json"],
                          env=standin.env(), cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr + standin.log_text()
    report = json.loads(done.stdout)
    assert report["memory"] == "gpu" and report["verified"] == 2
    if report["fs_type"] in ("ext4", "xfs"):
        assert report["engine"]["used"] == "cufile", report["engine"]
