"""`pygds bench` on CPU with host buffers against real files (small sizes: behaviour, not speed)."""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from pygds import memory
from pygds.cli.bench import _percentile
from pygds.cli.main import main

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--block-size", "64K", "--total", "1M"]


def bench_json(capsys, *argv: str) -> dict:
    rc = main(["bench", *argv, "--json"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    return json.loads(captured.out)


def test_default_runs_write_then_read_with_a_baseline(capsys, tmp_path):
    report = bench_json(capsys, *SMALL, "--files", "2", "--threads", "2", "--path", str(tmp_path))
    runs = [(r["phase"], r["impl"]) for r in report["results"]]
    assert runs == [("write", "pygds"), ("write", "posix-baseline"), ("read", "pygds"), ("read", "posix-baseline")]
    for r in report["results"]:
        assert r["bytes"] == 1 << 20 and r["ops"] == 16 and r["seconds"] > 0 and r["runs"] == 3
        assert r["gib_per_s"] > 0 and r["iops"] > 0
        lat = r["latency_ms"]
        assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert set(report["ratios"]) == {"write", "read"} and all(v > 0 for v in report["ratios"].values())
    assert report["engine"]["used"] in ("posix", "cufile", "hipfile") and report["engine"]["reason"]
    assert report["paths"][0]["fs_type"] and report["config"]["baseline_workers"] == 2
    assert os.listdir(tmp_path) == []  # temporary files removed


def test_read_only_mixed_and_queue_depth(capsys, tmp_path):
    report = bench_json(capsys, *SMALL, "--read", "--qd", "4", "--threads", "2", "--path", str(tmp_path))
    assert [r["phase"] for r in report["results"]] == ["read", "read"]
    assert report["config"]["baseline_workers"] == 8
    report = bench_json(capsys, *SMALL, "--mixed", "0.5", "--qd", "2", "--no-baseline", "--path", str(tmp_path))
    assert [(r["phase"], r["impl"]) for r in report["results"]] == [("mixed", "pygds")]
    assert report["ratios"] == {} and report["config"]["read_fraction"] == 0.5
    assert os.listdir(tmp_path) == []


def test_files_spread_over_several_paths_and_o_direct(capsys, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    report = bench_json(capsys, "--block-size", "8K", "--total", "64K", "--files", "2", "--direct",
                        "--path", str(a), "--path", str(b))
    assert [p["path"] for p in report["paths"]] == [str(a), str(b)]
    assert report["config"]["direct"] is True and report["config"]["total"] == 64 << 10
    assert os.listdir(a) == [] and os.listdir(b) == []


def test_human_output_has_the_table_and_the_ratio(capsys, tmp_path):
    assert main(["bench", *SMALL, "--write", "--path", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "GiB/s" in out and "p99 ms" in out and "write: pygds / POSIX baseline =" in out
    assert "(median of 3 paired round(s): " in out


def test_progress_bar_goes_to_stderr_when_forced(capsys, tmp_path):
    assert main(["bench", *SMALL, "--write", "--no-baseline", "--progress", "--path", str(tmp_path), "--json"]) == 0
    captured = capsys.readouterr()
    json.loads(captured.out)
    assert "100.0%" in captured.err and "3.0 MiB / 3.0 MiB" in captured.err  # 3 rounds of 1 MiB
    assert "write pygds (round 3/3) [" in captured.err


def test_write_runs_of_both_contenders_start_from_fresh_files_in_alternating_order(capsys, tmp_path):
    """The baseline must not overwrite files pygds just allocated (nor the other way round): every
    write run starts from empty files, and the contenders take turns at going first."""
    report = bench_json(capsys, *SMALL, "--write", "--files", "2", "--rounds", "4", "--path", str(tmp_path))
    runs = report["runs"]
    assert [(r["round"], r["impl"]) for r in runs] == [
        (0, "pygds"), (0, "posix-baseline"), (1, "posix-baseline"), (1, "pygds"),
        (2, "pygds"), (2, "posix-baseline"), (3, "posix-baseline"), (3, "pygds")]
    assert all(r["phase"] == "write" and r["file_bytes_at_start"] == 0 for r in runs)
    assert report["config"]["rounds"] == 4 and os.listdir(tmp_path) == []


def test_read_and_mixed_runs_use_the_same_full_files(capsys, tmp_path):
    for phase in (["--read"], ["--mixed", "0.5"]):
        report = bench_json(capsys, *SMALL, *phase, "--rounds", "2", "--path", str(tmp_path))
        assert len(report["runs"]) == 4 and all(r["file_bytes_at_start"] == 1 << 20 for r in report["runs"])


def test_ratio_is_the_median_of_the_rounds_paired_ratios(capsys, tmp_path):
    report = bench_json(capsys, *SMALL, "--rounds", "3", "--path", str(tmp_path))
    for phase in ("write", "read"):
        rate = {(r["round"], r["impl"]): r["gib_per_s"] for r in report["runs"] if r["phase"] == phase}
        paired = [rate[(n, "pygds")] / rate[(n, "posix-baseline")] for n in range(3)]
        assert report["ratio_rounds"][phase] == [round(x, 3) for x in paired]
        assert report["ratios"][phase] == round(statistics.median(paired), 3)
        summary = next(r for r in report["results"] if (r["phase"], r["impl"]) == (phase, "pygds"))
        assert summary["gib_per_s"] == statistics.median(rate[(n, "pygds")] for n in range(3))
        assert summary["gib_per_s_range"] == [min(rate[(n, "pygds")] for n in range(3)),
                                              max(rate[(n, "pygds")] for n in range(3))]


@pytest.mark.skipif(memory.cuda_available(), reason="CUDA is usable here")
def test_gpu_memory_without_a_gpu_is_a_clear_error(capsys, tmp_path):
    assert main(["bench", *SMALL, "--mem", "gpu", "--path", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "--mem gpu needs a usable CUDA driver" in err and "--mem host" in err
    assert os.listdir(tmp_path) == []


@pytest.mark.skipif(os.path.exists("/proc/modules"), reason="/proc/modules exists: cuFile might open here")
def test_cufile_engine_where_it_cannot_run_fails_cleanly(capsys, tmp_path):
    assert main(["bench", *SMALL, "--engine", "cufile", "--path", str(tmp_path)]) == 1
    assert "/proc/modules" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


def test_hipfile_engine_where_hipfile_cannot_run_is_a_clear_error(capsys, tmp_path):
    from pygds.engines import hipfile

    if hipfile.usable().ok:
        pytest.skip("hipFile is usable here")
    assert main(["bench", *SMALL, "--engine", "hipfile", "--path", str(tmp_path)]) == 1
    assert "libhipfile" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("extra, words", [
    (["--block-size", "12Q"], "invalid size"),
    (["--block-size", "0"], "greater than zero"),
    (["--total", "64K", "--block-size", "64K", "--files", "2"], "less than one block"),
    (["--mixed", "1.5"], "between 0 and 1"),
    (["--read", "--write"], "not allowed with"),
    (["--direct", "--block-size", "1000", "--total", "8000"], "multiple of 4096"),
    (["--threads", "0"], "at least 1"),
    (["--rounds", "0"], "at least 1"),
    (["--engine", "magic"], "invalid choice"),
    (["--path", "/nonexistent/dir"], "no such directory"),
])
def test_bad_arguments_exit_2(capsys, extra, words):
    assert main(["bench", *SMALL, *extra]) == 2
    err = capsys.readouterr().err
    assert "usage:" in err and words in err


def test_percentile_is_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert _percentile(values, 50) == 50 and _percentile(values, 99) == 99 and _percentile(values, 100) == 100
    assert _percentile([7.0], 90) == 7.0 and _percentile([], 50) == 0.0


def test_python_dash_m_bench_json_is_clean_stdout(tmp_path):
    done = subprocess.run([sys.executable, "-m", "pygds", "bench", *SMALL, "--path", str(tmp_path), "--json"],
                          env={**os.environ, "PYTHONPATH": str(ROOT), "PYGDS_PROGRESS": "1"},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)  # logs and the progress bar went to stderr
    assert len(report["results"]) == 4 and "100.0%" in done.stderr


@pytest.mark.parametrize("engine, mem", [("cufile", "gpu"), ("posix", "pinned")])
def test_bench_on_the_standin_with_cuda_memory(standin, tmp_path, engine, mem):
    """The stand-in's CUDA driver: device and pinned buffers, cuFile against the real libcufile."""
    done = subprocess.run([sys.executable, "-m", "pygds", "bench", "--engine", engine, "--mem", mem,
                           "--block-size", "256K", "--total", "2M", "--threads", "2", "--qd", "2",
                           "--path", str(tmp_path), "--json"],
                          env=standin.env(), cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr + standin.log_text()
    report = json.loads(done.stdout)
    assert report["engine"]["used"] == engine and report["config"]["mem"] == mem
    assert [r["bytes"] for r in report["results"]] == [2 << 20] * 4
    assert os.listdir(tmp_path) == []


def test_sizes_and_durations_parse_with_binary_suffixes():
    from pygds.cli.output import parse_duration, parse_size

    assert parse_size("32M") == 32 << 20 and parse_size("1G") == 1 << 30 and parse_size("4096") == 4096
    assert parse_size("64k") == 64 << 10 and parse_size("1.5GiB") == 3 << 29 and parse_size("2 MB") == 2 << 20
    assert parse_duration("90") == 90 and parse_duration("30m") == 1800 and parse_duration("2d") == 172800
    assert parse_duration("500ms") == 0.5
    for bad in ("", "M", "1X", "-1M"):
        with pytest.raises(ValueError, match="invalid size"):
            parse_size(bad)


def test_progress_bar_draws_only_on_a_terminal_unless_forced(monkeypatch):
    import io

    from pygds.cli.progress import Progress

    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    monkeypatch.delenv("PYGDS_PROGRESS", raising=False)
    for stream, flag, drawn in ((io.StringIO(), None, False), (Tty(), None, True), (io.StringIO(), True, True),
                                (Tty(), False, False)):
        with Progress(10, "job", unit="items", flag=flag, stream=stream) as bar:
            bar.update(4)
            bar.update(6)
        assert ("job [" in stream.getvalue()) is drawn
        if drawn:
            assert stream.getvalue().endswith("100.0%  10/10 items\x1b[K\n")
    monkeypatch.setenv("PYGDS_PROGRESS", "0")
    tty = Tty()
    with Progress(1, "job", stream=tty) as bar:
        bar.update(1)
    assert tty.getvalue() == ""
