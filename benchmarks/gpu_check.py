"""The whole GPU check in one command, for a lent GPU machine with little time.

Steps, in order, each in its own process under its own timeout, all inside one time budget (420 s
by default), going on past failures:

  install        the carried wheels (`.whl`, from `bash ../shared/tools/device-wheels.sh`) into a
                 private folder put first on PYTHONPATH
  libcufile      an unversioned `libcufile.so` link to the wheel's `libcufile.so.0`, in a folder
                 put first on LD_LIBRARY_PATH (LMCache GdsBackend's `cufile-python` loads that
                 name), then `import cufile`
  environment    versions, `/proc/modules`, file systems, nvidia-smi, `python -m pygds info`
  gpu-tests      `PYGDS_TEST_GPU=1 python -m pytest -m gpu`
  cufile-suite   `PYGDS_TEST_CUFILE=1 python -m pytest tests/cufile_suite` on the real driver
  bench-cufile   `benchmarks/bench_cufile.py --no-standin`
  bench-plugin   `benchmarks/bench_plugin.py --device cuda --baseline gds`: against LMCache
                 GdsBackend on a CUDA destination (in a dry run: its CPU run)
  bench-kvikio   `benchmarks/bench_kvikio.py --no-standin`: pygds vs KvikIO, device and host memory
  bench-plugin-cpu  `benchmarks/bench_plugin.py --device cpu`: the plugin against LMCache's
                 LocalDiskBackend on this machine's CPUs and disk (skipped in a dry run, whose
                 bench-plugin step is this comparison)
  bench-l2-256k, bench-l2-4m  `benchmarks/bench_l2.py`: the MP-mode L2 adapter against LMCache's
                 `fs_native` with 256 KiB and 4 MiB entries (host memory only; the cold pair as root)
  bench-l2-floor `benchmarks/bench_l2_floor.py`: the adapter's 256 KiB loads against the least a
                 pure-Python adapter does per key

Where `/proc/modules` cannot be read (a gVisor-style sandbox, where libcufile would spin forever
in `cuFileDriverOpen`) every step runs with the sandbox shim of `tests/standin` preloaded, which
hands libcufile an empty file instead; where `/run/udev/data` is missing the shim also answers
libcufile's udev look-up (any block device: ext4). The summary says which applied.

Everything goes under `--out` (default `$OUT`): `summary.md` (each step with its exit code, status
and seconds first; rewritten after every step, so a cut-off run still leaves one), `steps.log`
(every step's output, then libcufile's log) and `results.json` (each benchmark's JSON under its step's
name, also rewritten after every step: a lent machine hands back only a few files). `--dry-run` runs the same
commands here against the CUDA driver stand-in of `tests/standin`, with this environment's
packages instead of the wheels, to prove the script on CPU; `--quick` shrinks every step.

    python3 benchmarks/gpu_check.py [--dry-run] [--quick] [--out DIR] [--budget 420] [--only a,b]
"""
from __future__ import annotations

import argparse
import datetime
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))  # the stand-in and shim builders

from standin.build import (  # noqa: E402
    CUFILE_CONFIG,
    UDEV_RECORD,
    BuildError,
    CompilerMissing,
    build_shim,
    build_standin,
    find_libcufile,
)

PY = sys.executable
KVIKIO_INSTALL = "pip install 'kvikio-cu13==26.10.*'"
PLUGIN_CUDA_FLAGS = ["--device", "cuda", "--baseline", "gds"]
MIN_STEP_SECONDS = 10  # no step starts with less of the budget left
TIMED_OUT = 124


@dataclass
class Step:
    """One step: a command and/or an in-process action, its timeout; what it did once run."""

    name: str
    timeout: float
    command: list[str] | None = None
    env: dict[str, str] = field(default_factory=dict)  # on top of the common environment
    action: Callable[[], str | None] | None = None  # runs first, here; returns why it failed, or None
    skip: str | None = None  # why it is not run, decided before the run
    note: str = ""  # said after the status, e.g. what a benchmark could not compare
    codes: dict[int, str] = field(default_factory=dict)  # non-zero exit codes that still count as a run
    exit_code: int | None = None
    status: str = "pending"
    seconds: float = 0.0


@dataclass
class Context:
    """What the steps share: folders, the common environment, the log, facts for the summary."""

    dry_run: bool
    quick: bool
    out: Path
    work: Path
    data: Path
    env: dict[str, str]
    cufile_log: Path
    facts: list[str] = field(default_factory=list)

    def result(self, step: str) -> str:
        """Where `step`'s benchmark writes its JSON; `collect_results` gathers them into one file."""
        return str(self.work / "results" / f"{step}.json")

    @property
    def log(self) -> Path:
        return self.out / "steps.log"


# -- the environment ----------------------------------------------------------------------------
def _prepend(env: dict[str, str], var: str, first: str) -> None:
    env[var] = f"{first}{os.pathsep}{env[var]}" if env.get(var) else first


def proc_modules_readable() -> bool:
    try:
        with open("/proc/modules", "rb") as fh:
            fh.read(1)
        return True
    except OSError:
        return False


def real_driver_environment(work: Path, facts: list[str]) -> tuple[dict[str, str], Path]:
    """The common environment on a GPU machine: libcufile's configuration and log in `work`, and
    the sandbox shim where the sandbox lacks what libcufile reads. Returns it and the log's path."""
    env = dict(os.environ)
    cufile_json, cufile_log = work / "cufile.json", work / "cufile.log"
    cufile_json.write_text(json.dumps(CUFILE_CONFIG, indent=2) + "\n")
    env.update(CUFILE_ENV_PATH_JSON=str(cufile_json), CUFILE_LOGFILE_PATH=str(cufile_log))
    facts.append("driver: the machine's own CUDA driver")
    needs = []
    if not proc_modules_readable():
        (work / "proc_modules").write_text("")
        env["PYGDS_SHIM_PROC_MODULES"] = str(work / "proc_modules")
        needs.append("/proc/modules unreadable: libcufile reads an empty file instead")
    if not os.path.isdir("/run/udev/data"):
        (work / "udev_record").write_text(UDEV_RECORD)
        env["PYGDS_SHIM_UDEV_RECORD"] = str(work / "udev_record")
        needs.append("/run/udev/data missing: udev look-ups answer ext4")
    if not needs:
        facts.append("sandbox shim: not needed (/proc/modules readable, /run/udev/data present)")
        return env, cufile_log
    try:
        _prepend(env, "LD_PRELOAD", str(build_shim(work / "shim")))
        facts.append("sandbox shim preloaded: " + "; ".join(needs))
    except (CompilerMissing, BuildError) as exc:
        facts.append(f"sandbox shim needed ({'; '.join(needs)}) but not built: {exc}")
    return env, cufile_log


def make_context(args: argparse.Namespace) -> Context:
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="pygds-gpu-check-"))
    data = Path(args.data_dir).resolve() if args.data_dir else work / "data"
    data.mkdir(parents=True, exist_ok=True)
    (work / "results").mkdir()
    facts: list[str] = []
    if args.dry_run:
        standin = build_standin(work / "standin")
        env, cufile_log = standin.env(), standin.log_path
        facts.append(f"driver: the CUDA driver stand-in (dry run, no GPU), built in {standin.root}")
    else:
        env, cufile_log = real_driver_environment(work, facts)
    _prepend(env, "PYTHONPATH", str(REPO))
    env["PYTHONUNBUFFERED"] = "1"
    facts.append(f"work folder {work}; benchmark data in {data}")
    return Context(args.dry_run, args.quick, out, work, data, env, cufile_log, facts)


# -- the steps -------------------------------------------------------------------------------------
def install_step(ctx: Context) -> Step:
    site = ctx.work / "site"
    _prepend(ctx.env, "PYTHONPATH", str(site))  # first: the carried wheels win over the image's
    step = Step("install", 120)
    if ctx.dry_run:
        step.skip = "dry run: this environment's packages are used (the wheels are for the GPU image)"
        return step
    wheels = sorted(glob.glob(str(REPO / ".whl" / "*.whl")))
    if not wheels:
        step.action = lambda: ("no wheels in .whl: run `bash ../shared/tools/device-wheels.sh` in the "
                               "repository root before the device call, and carry .whl")
        return step
    _prepend(ctx.env, "PATH", str(site / "bin"))  # the wheels' commands (`lmcache` for bench-l2)
    step.command = [PY, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                    "--no-cache-dir", "--upgrade", "--target", str(site), *wheels]
    return step


def libcufile_step(ctx: Context) -> Step:
    """Link `libcufile.so` to the wheel's library (the installed wheels first, then the image's)."""
    step = Step("libcufile", 60, command=[PY, "-c", "import cufile.bindings as b; "
                                         "print('cufile-python loaded', b.libcufile._name)"])

    def link() -> str | None:
        try:
            target = find_libcufile([ctx.work / "site"])
        except FileNotFoundError as exc:
            return str(exc)
        folder = ctx.work / "lib"
        folder.mkdir(exist_ok=True)
        (folder / "libcufile.so").unlink(missing_ok=True)
        (folder / "libcufile.so").symlink_to(target)
        _prepend(ctx.env, "LD_LIBRARY_PATH", str(folder))
        ctx.facts.append(f"libcufile.so -> {target}")
        return None

    step.action = link
    return step


def environment_step(ctx: Context) -> Step:
    return Step("environment", 60, [PY, "benchmarks/gpu_check.py", "--report-environment", str(ctx.data),
                                    str(ctx.work)])


def report_environment(paths: list[str]) -> int:
    """What the steps run with: versions, the variables set here, file systems, nvidia-smi, and
    `pygds info` (whose exit code this returns)."""
    import importlib
    import platform

    from benchmarks.common import mount_of

    print("python", platform.python_version(), sys.executable, flush=True)
    for name in ("torch", "cuda.bindings", "cupy", "numpy", "kvikio", "lmcache", "cufile", "pygds"):
        try:
            module = importlib.import_module(name)
            print(f"{name}: {getattr(module, '__version__', '?')} from {os.path.dirname(module.__file__)}")
        except Exception as exc:  # every failure is a fact to report
            print(f"{name}: cannot import ({type(exc).__name__}: {exc})")
    try:
        import torch

        print("torch.cuda.is_available():", torch.cuda.is_available(),
              torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
    except Exception as exc:
        print("torch.cuda:", exc)
    for var in ("LD_PRELOAD", "LD_LIBRARY_PATH", "PYTHONPATH", "CUFILE_ENV_PATH_JSON"):
        print(f"{var}={os.environ.get(var, '')}")
    for path in paths:
        print(f"file system of {path}: {mount_of(path)}")
    print("/proc/modules readable:", proc_modules_readable(), flush=True)
    if shutil.which("nvidia-smi"):
        subprocess.run(["nvidia-smi"], check=False, timeout=30)
    else:
        print("nvidia-smi: not found", flush=True)
    return subprocess.run([PY, "-m", "pygds", "info"], check=False, timeout=30).returncode


def gpu_tests_step(ctx: Context) -> Step:
    """Only the files that hold `gpu` tests are collected, so a module that cannot be imported
    there for another reason does not fail this step. In a dry run they skip with their reason."""
    files = sorted(str(p.relative_to(REPO)) for p in (REPO / "tests").rglob("test_*.py")
                   if "pytest.mark.gpu" in p.read_text(errors="replace"))
    return Step("gpu-tests", 120, [PY, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", *files],
                env={"PYGDS_TEST_GPU": "0" if ctx.dry_run else "1"})


def cufile_suite_step(ctx: Context) -> Step:
    where = "tests/cufile_suite/test_binding.py" if ctx.quick else "tests/cufile_suite"
    return Step("cufile-suite", 150, [PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", where],
                env={"PYGDS_TEST_CUFILE": "1"})


GOAL_MISSED = {1: "ran; a goal was missed"}


def bench_cufile_step(ctx: Context) -> Step:
    sizes = ["--runs", "2", "--small-calls", "500", "--large-reads", "1"] if ctx.quick else ["--runs", "7"]
    return Step("bench-cufile", 120, [PY, "benchmarks/bench_cufile.py", "--no-standin", "--dir", str(ctx.data),
                                      "--json", ctx.result("bench-cufile"), *sizes], codes=GOAL_MISSED)


def bench_plugin_step(ctx: Context) -> Step:
    """Against LMCache GdsBackend on a CUDA destination; in a dry run, the CPU comparison."""
    sizes = (["--chunks", "2", "--runs", "1", "--no-cold", "--no-ceiling"] if ctx.quick
             else ["--chunks", "8", "--runs", "3"])
    command = [PY, "benchmarks/bench_plugin.py", "--dir", str(ctx.data), "--json", ctx.result("bench-plugin"),
               *sizes]
    step = Step("bench-plugin", 150, command, codes=GOAL_MISSED)
    if ctx.dry_run:
        step.note = "dry run: CPU destination (no CUDA here)"
    else:
        command[2:2] = PLUGIN_CUDA_FLAGS
    return step


def bench_kvikio_step(ctx: Context) -> Step:
    sizes = ["--quick", "--runs", "1", "--volume", "8M", "--sizes", "4K,1M"] if ctx.quick else ["--runs", "5"]
    step = Step("bench-kvikio", 150, [PY, "benchmarks/bench_kvikio.py", "--no-standin", "--dir", str(ctx.data),
                                      "--json", ctx.result("bench-kvikio"), *sizes], codes=GOAL_MISSED)
    if ctx.dry_run:
        probe = subprocess.run([PY, "-c", "import kvikio"], env=ctx.env, capture_output=True, text=True,
                               timeout=120, check=False)
        if probe.returncode != 0:
            last = (probe.stderr.strip().splitlines() or ["?"])[-1]
            step.skip = f"KvikIO is not installed here ({last}); {KVIKIO_INSTALL}"
    return step


def bench_plugin_cpu_step(ctx: Context) -> Step:
    """The CPU comparison on the lent machine's cores and disk (a dry run's bench-plugin is this)."""
    step = Step("bench-plugin-cpu", 120, [PY, "benchmarks/bench_plugin.py", "--device", "cpu", "--dir", str(ctx.data),
                                          "--json", ctx.result("bench-plugin-cpu"), "--chunks", "8",
                                          "--runs", "3"], codes=GOAL_MISSED)
    if ctx.dry_run:
        step.skip = "dry run: the bench-plugin step ran this comparison"
    return step


def bench_l2_step(size_kb: int, name: str) -> Callable[[Context], Step]:
    def make(ctx: Context) -> Step:
        if ctx.quick:
            sizes = ["--modes", "defaults", "--num-keys", "4", "--rounds", "1", "--runs", "1"]
        else:
            sizes = ["--runs", "1", *(["--cold"] if os.geteuid() == 0 else [])]
        return Step(name, 200, [PY, "benchmarks/bench_l2.py", "--data-size-kb", str(size_kb), "--dir", str(ctx.data),
                                "--json", ctx.result(name), *sizes],
                    codes=GOAL_MISSED)
    return make


def bench_l2_floor_step(ctx: Context) -> Step:
    sizes = ["--keys", "16", "--runs", "1"] if ctx.quick else ["--keys", "256", "--runs", "7"]
    return Step("bench-l2-floor", 90, [PY, "benchmarks/bench_l2_floor.py", "--dir", str(ctx.data),
                                       "--json", ctx.result("bench-l2-floor"), *sizes])


STEPS = (install_step, libcufile_step, environment_step, gpu_tests_step, cufile_suite_step, bench_cufile_step,
         bench_plugin_step, bench_kvikio_step, bench_plugin_cpu_step, bench_l2_step(256, "bench-l2-256k"),
         bench_l2_step(4096, "bench-l2-4m"), bench_l2_floor_step)
ALWAYS = ("install", "libcufile")  # the other steps need them


# -- running -------------------------------------------------------------------------------------------
def run_command(ctx: Context, step: Step, timeout: float) -> int:
    """The step's command with its output appended to the log; its process group is killed at the
    timeout (TIMED_OUT is returned then)."""
    with open(ctx.log, "ab") as log:
        proc = subprocess.Popen(step.command, cwd=REPO, env={**ctx.env, **step.env}, stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            for sig, grace in ((signal.SIGTERM, 5), (signal.SIGKILL, 30)):
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    proc.wait(timeout=grace)
                    break
                except subprocess.TimeoutExpired:
                    continue
            return TIMED_OUT


def log_line(ctx: Context, text: str) -> None:
    with open(ctx.log, "a") as log:
        log.write(text + "\n")


def run_step(ctx: Context, step: Step, deadline: float) -> None:
    log_line(ctx, f"\n===== {step.name}: {' '.join(step.command or [])}")
    if step.skip:
        step.status = f"skipped: {step.skip}"
        return
    left = deadline - time.monotonic()
    if left < MIN_STEP_SECONDS:
        step.status = "not run: the time budget is spent"
        return
    timeout = min(step.timeout, left)
    start = time.monotonic()
    failure = step.action() if step.action else None
    if failure:
        step.exit_code, step.status = 1, f"failed: {failure}"
        log_line(ctx, step.status)
    elif step.command:
        step.exit_code = run_command(ctx, step, timeout - (time.monotonic() - start))
        if step.exit_code == 0:
            step.status = "ok"
        elif step.exit_code == TIMED_OUT:
            step.status = f"timed out after {timeout:.0f} s"
        else:
            step.status = step.codes.get(step.exit_code, f"failed (exit {step.exit_code})")
    else:
        step.exit_code, step.status = 0, "ok"
    step.seconds = time.monotonic() - start
    if step.note:
        step.status += f"; {step.note}"


def collect_results(ctx: Context) -> None:
    """Every benchmark JSON written so far, as one `results.json` ({step: its JSON}): a lent
    machine hands back only a few files."""
    found = {p.stem: json.loads(p.read_text()) for p in sorted((ctx.work / "results").glob("*.json"))}
    (ctx.out / "results.json").write_text(json.dumps(found, indent=1) + "\n")


def write_summary(ctx: Context, steps: list[Step], started: str, elapsed: float, budget: float) -> None:
    mode = "dry run on the CUDA driver stand-in" if ctx.dry_run else "lent GPU"
    lines = [f"# pygds GPU check ({mode}{', quick' if ctx.quick else ''})", "",
             "| step | exit | status | seconds |", "|---|---|---|---|"]
    for s in steps:
        code = "-" if s.exit_code is None else str(s.exit_code)
        lines.append(f"| {s.name} | {code} | {s.status} | {s.seconds:.1f} |")
    lines += ["", f"Started {started} (UTC), {elapsed:.0f} s of a {budget:.0f} s budget used.", ""]
    lines += [f"- {fact}" for fact in ctx.facts]
    lines += ["", "Commands (run in the repository root; output in steps.log):", ""]
    lines += [f"- {s.name}: `{' '.join(s.command)}`" for s in steps if s.command]
    (ctx.out / "summary.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dry-run", action="store_true", help="run every step here against the CUDA driver stand-in")
    p.add_argument("--quick", action="store_true", help="shrink every step (a smoke run)")
    p.add_argument("--out", default=os.environ.get("OUT"), help="where results and logs go (default: $OUT)")
    p.add_argument("--data-dir", help="where the benchmarks' data files go (default: in the work folder under "
                                      "the temporary directory)")
    p.add_argument("--budget", type=float, default=420, help="seconds for all steps together (default 420)")
    p.add_argument("--only", help=f"comma-separated steps to run ({', '.join(ALWAYS)} always run)")
    p.add_argument("--report-environment", nargs="*", metavar="PATH",
                   help="only print what the steps run with (the environment step runs this)")
    args = p.parse_args(argv)
    if args.report_environment is not None:
        return report_environment(args.report_environment)
    if not args.out:
        p.error("no output folder: pass --out DIR (on the lent GPU machine $OUT is set)")
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    begin = time.monotonic()
    deadline = begin + args.budget
    ctx = make_context(args)
    try:
        ctx.log.write_text("")
        steps: list[Step] = []
        for make in STEPS:  # made in order: each may read what the ones before it set up
            step = make(ctx)
            steps.append(step)
        wanted = set(args.only.split(",")) | set(ALWAYS) if args.only else None
        unknown = (wanted or set()) - {s.name for s in steps}
        if unknown:
            p.error(f"--only: unknown steps {', '.join(sorted(unknown))}; "
                    f"the steps are {', '.join(s.name for s in steps)}")
        for step in steps:
            if wanted is not None and step.name not in wanted:
                step.skip = "not asked for (--only)"
        for step in steps:
            run_step(ctx, step, deadline)
            print(f"[gpu-check] {step.name}: {step.status} ({step.seconds:.1f} s)", flush=True)
            write_summary(ctx, steps, started, time.monotonic() - begin, args.budget)
            collect_results(ctx)
        log_line(ctx, f"\n===== libcufile's log ({ctx.cufile_log})")
        if ctx.cufile_log.exists():
            with open(ctx.log, "a") as log:
                log.write(ctx.cufile_log.read_text(errors="replace")[-200_000:])
    finally:
        shutil.rmtree(ctx.work, ignore_errors=True)
    print((ctx.out / "summary.md").read_text(), flush=True)
    fine = ("ok", "ran; a goal was missed", "skipped")
    return 0 if all(s.status.startswith(fine) for s in steps) else 1


if __name__ == "__main__":
    sys.exit(main())
