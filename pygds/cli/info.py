"""`pygds info`: what GPU-direct storage can do on this machine and on given paths, like `gdscheck -p`.

It never calls anything that can hang: the never-hang guard runs first and the cuFile driver is
opened only when the guard passes. Problems are findings, each with its fix; the command exits 0
whenever it could produce the report (use the findings, or `--json`'s "problems", in scripts).

`--config FILE` is checked by the checkers other packages register in the entry point group
`pygds.config` (the LMCache plugin registers one for LMCache YAML files); pygds itself knows no
configuration format. Each entry point loads a callable `check(config_path, environ)` returning
(the cache paths the file names, problems as "cause. Fix: fix" messages).
"""
from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from importlib.metadata import entry_points
from typing import Any

from .. import __version__, cuda, fsinfo
from .._lib import cufile
from .._probe import Check
from ..driver import Driver
from ..engines import hipfile, registry
from ..engines.cufile import check_proc_modules, gds_mode
from ..engines.cufile.check import NVIDIA_FS
from ..errors import PygdsError
from . import UsageError
from .hipfile_requirements import requirements
from .output import human_bytes, print_json, say, table

ConfigChecker = Callable[[str, Mapping[str, str]], "tuple[list[str], list[str]]"]
CONFIG_CHECKERS = "pygds.config"  # the entry point group of configuration checkers
CONFIG_PROVIDER = "pip install 'pygds[lmcache]' (the LMCache plugin checks LMCache YAML files)"

UDEV_DIR = "/run/udev"
LOW_FREE_BYTES = 10 << 30
UDEV_FIX = ("mount the host's /run/udev read-only into the container (docker run -v /run/udev:/run/udev:ro, "
            "as NVIDIA's GDS container guidance does)")


@dataclass(frozen=True)
class Finding:
    """A problem found, where it was found, and how to fix it."""

    topic: str
    problem: str
    fix: str
    severity: str = "warning"  # "error": the thing cannot work; "warning": it works, but worse


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "info", help="diagnose GPU-direct storage on this machine and for given paths",
        description="Report which libcufile was found, whether a CUDA driver and devices are usable, "
                    "the cuFile driver's properties and parameters, GDS or compatibility mode, and for "
                    "each path its file system, GDS support, O_DIRECT and free space; then the engine "
                    "'auto' would choose. Every problem comes with its fix.",
        epilog="Exit status: 0 when the report was produced (problems are findings, listed under "
               "'problems'), 2 for bad arguments.")
    p.add_argument("paths", nargs="*", metavar="PATH", help="paths to examine (they need not exist yet)")
    p.add_argument("--config", metavar="FILE",
                   help="a configuration file (an LMCache YAML with the plugin installed): check it with the "
                        f"checkers registered under the {CONFIG_CHECKERS!r} entry points and examine each cache "
                        "path it names")
    p.add_argument("--no-driver", action="store_true",
                   help="do not open the cuFile driver (skip its properties and parameters)")
    p.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    p.set_defaults(func=run, parser=p)
    return p


def _library_report() -> dict[str, Any]:
    try:
        lib = cufile()
    except PygdsError as exc:
        return {"found": False, "error": str(exc), "searched": list(getattr(exc, "searched", ()))}
    return {"found": True, "path": lib.path, "source": lib.source, "version": lib.version,
            "version_string": lib.version_string}


def _hipfile_report(paths: list[str]) -> dict[str, Any]:
    """Whether hipFile can run, and each documented requirement (ROCm, amdgpu-dkms, P2PDMA,
    file system, local NVMe) as far as it can be told from here."""
    check = hipfile.usable()
    return {"usable": check.ok, "reason": check.reason, "fix": check.fix,
            "requirements": [asdict(r) for r in requirements(paths)]}


def _check_dict(check: Check) -> dict[str, Any]:
    return {"ok": check.ok, "reason": check.reason, "fix": check.fix}


def _udev_check() -> dict[str, Any]:
    data = os.path.join(UDEV_DIR, "data")
    if os.path.isdir(data):
        return {"ok": True, "reason": f"{data} is present"}
    return {"ok": False, "reason": f"{data} is missing: libcufile classifies block devices through "
                                   f"{UDEV_DIR}/data/b<major>:<minor>, so cuFileHandleRegister fails with 5027 "
                                   "(CU_FILE_HANDLE_NOT_REGISTERED) on ext4/xfs files", "fix": UDEV_FIX}


def _open_driver(findings: list[Finding]) -> dict[str, Any]:
    try:
        with Driver("cufile") as drv:
            props = drv.properties.as_dict()
            params = drv.parameters()
    except PygdsError as exc:
        findings.append(Finding("cuFile driver", f"opening it failed: {exc}",
                                "check the cuFile log (CUFILE_LOGFILE_PATH, else ./cufile.log) and cufile.json "
                                "(CUFILE_ENV_PATH_JSON, else /etc/cufile.json); or use the POSIX engine", "error"))
        return {"opened": False, "error": str(exc)}
    return {"opened": True, "properties": props, "parameters": params}


def _config_paths(config: str, findings: list[Finding]) -> list[str]:
    """The cache paths `config` names, by every installed checker; their problems become findings."""
    topic = f"config {config}"
    checkers = list(entry_points(group=CONFIG_CHECKERS))
    if not checkers:
        findings.append(Finding(topic, f"no installed package checks configuration files (none registers a "
                                       f"{CONFIG_CHECKERS!r} entry point)", CONFIG_PROVIDER, "error"))
        return []
    paths: list[str] = []
    for entry in checkers:
        try:
            check: ConfigChecker = entry.load()
            found, problems = check(config, dict(os.environ))
        except Exception as exc:  # noqa: BLE001 - a broken checker is a finding, not a crash of info
            findings.append(Finding(topic, f"the {entry.name!r} checker ({entry.value}) failed: "
                                           f"{type(exc).__name__}: {exc}", "reinstall the package that provides it",
                                    "error"))
            continue
        for message in problems:
            problem, _, fix = message.partition(" Fix: ")
            findings.append(Finding(topic, problem, fix or "see the problem", "error"))
        paths += [p for p in found if p not in paths]
    return paths


def _udev_record(device: str | None) -> str | None:
    """The udev database record libcufile reads to classify a block device ("8:1" -> /run/udev/data/b8:1)."""
    return os.path.join(UDEV_DIR, "data", f"b{device}") if device else None


def _path_findings(facts: fsinfo.PathFacts) -> list[Finding]:
    topic = f"path {facts.path}"
    out = []
    if not facts.exists:
        out.append(Finding(topic, f"does not exist yet; judged by its nearest existing ancestor {facts.probed_at}",
                           "create it (the LMCache plugin creates its gds_path directories at start-up)"))
    if not facts.gds_supported:
        out.append(Finding(topic, f"{facts.fs_type} at {facts.mount_point}: {facts.gds_note}",
                           "put the cache on a GDS-capable file system (ext4/xfs on NVMe, or Lustre, WekaFS, "
                           "GPFS, BeeGFS, NFS over RDMA)"))
    if facts.o_direct is False:
        out.append(Finding(topic, f"O_DIRECT does not work here ({facts.o_direct_detail})",
                           "do not enable use_direct_io / --direct for this path, or use a file system "
                           "that supports O_DIRECT"))
    elif facts.o_direct is None:
        out.append(Finding(topic, f"O_DIRECT {facts.o_direct_detail}", "check the directory's permissions"))
    if facts.free_bytes is not None and facts.free_bytes < LOW_FREE_BYTES:
        out.append(Finding(topic, f"only {human_bytes(facts.free_bytes)} free on {facts.mount_point}",
                           "free space or pick a larger file system for the cache"))
    if _udev_blocks(facts):
        out.append(Finding(topic, f"{facts.fs_type} on block device {facts.device} but "
                                  f"{_udev_record(facts.device)} is missing: cuFileHandleRegister will fail "
                                  "with 5027 on files here", UDEV_FIX, "error"))
    return out


def _udev_blocks(facts: fsinfo.PathFacts) -> bool:
    """Whether libcufile will refuse files here with 5027 because the device's udev record is missing."""
    record = _udev_record(facts.device)
    return bool(facts.block_device and facts.gds_supported and record and not os.path.exists(record))


def _shared_file_systems(all_facts: list[fsinfo.PathFacts]) -> list[Finding]:
    """Paths on one file system: as gds_path entries they share its drives, so the extra ones add
    neither bandwidth nor space."""
    groups: dict[int, list[fsinfo.PathFacts]] = {}
    for facts in all_facts:
        try:
            groups.setdefault(os.stat(facts.probed_at).st_dev, []).append(facts)
        except OSError:
            continue  # vanished since it was probed; its own findings say what is wrong
    out = []
    for group in groups.values():
        if len(group) > 1:
            first = group[0]
            names = ", ".join(f.path for f in group)
            out.append(Finding("paths", f"{names} are on one file system ({first.fs_type} at {first.mount_point}"
                                        f", {first.source}): as gds_path entries they share its drives, so "
                                        "the extra paths add no bandwidth or space",
                               "give each gds_path entry its own drive or file system (one per NVMe drive), "
                               "or list just one of them"))
    return out


def collect(paths: list[str], config: str | None = None, *, open_driver: bool = True) -> dict[str, Any]:
    """The whole report as a dict (what `--json` prints)."""
    findings: list[Finding] = []
    library = _library_report()
    if not library["found"]:
        findings.append(Finding("libcufile", library["error"].splitlines()[0],
                                "pip install 'pygds[cuda13]' (or [cuda12]), or set PYGDS_CUFILE_LIB"))
    proc_modules = check_proc_modules()
    cuda_driver = cuda.check_driver()
    for name, check in (("/proc/modules", proc_modules), ("CUDA driver", cuda_driver)):
        if not check.ok:
            findings.append(Finding(name, check.reason, check.fix, "error"))
    nvfs = gds_mode().ok
    udev = _udev_check()
    checks = {"proc_modules": _check_dict(proc_modules), "cuda_driver": _check_dict(cuda_driver),
              "nvidia_fs": {"ok": nvfs, "reason": f"{NVIDIA_FS} {'present' if nvfs else 'absent'}"},
              "run_udev": udev}
    safe = library["found"] and proc_modules.ok and cuda_driver.ok
    if not safe:
        driver: dict[str, Any] = {"opened": False, "skipped": "the never-hang guard did not pass (see checks)"
                                  if library["found"] else "libcufile was not found"}
    elif not open_driver:
        driver = {"opened": False, "skipped": "--no-driver"}
    else:
        driver = _open_driver(findings)
    if not safe:
        mode = "unavailable: cuFile cannot run here"
    elif nvfs:
        mode = "GDS: nvidia-fs is loaded, cuFile moves data by DMA between storage and GPU memory"
    else:
        mode = ("compatibility: nvidia-fs is absent, cuFile goes through host memory (POSIX underneath), so "
                "engine 'auto' takes pygds's own POSIX engine where it can copy device memory itself")
        findings.append(Finding("nvidia-fs", f"{NVIDIA_FS} is absent: cuFile runs in compatibility mode",
                                "install and load the nvidia-fs kernel module (modprobe nvidia_fs), or enable "
                                "PCI P2PDMA mode in cufile.json on a supported kernel"))
    paths = list(paths)
    if config:
        paths += _config_paths(config, findings)
    udev_ok = bool(udev["ok"])
    path_reports = []
    all_facts = []
    for path in paths:
        facts = fsinfo.probe_path(path)
        record = _udev_record(facts.device) if facts.block_device else None
        path_reports.append({**facts.as_dict(), "udev_record": record,
                             "udev_record_present": os.path.exists(record) if record else None,
                             "gds_ready": facts.gds_supported and not _udev_blocks(facts)})
        findings += _path_findings(facts)
        all_facts.append(facts)
    findings += _shared_file_systems(all_facts)
    if not udev_ok and not any(f.topic.startswith("path ") and UDEV_DIR in f.problem for f in findings):
        findings.append(Finding("/run/udev", udev["reason"], UDEV_FIX))
    choice = registry.choose_engine("auto")
    return {
        "pygds_version": __version__,
        "libcufile": library,
        "hipfile": _hipfile_report(paths),
        "checks": checks,
        "mode": mode,
        "driver": driver,
        "paths": path_reports,
        "auto_engine": {"name": choice.name, "reason": choice.reason},
        "problems": [asdict(f) for f in findings],
    }


def _short(value: Any, width: int = 90) -> str:
    text = str(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def _gds_cell(path: dict[str, Any]) -> str:
    """The path table's GDS column: "yes" only where cuFile can register files (see the problems)."""
    if path["gds_ready"]:
        return "yes"
    return "no (5027)" if path["gds_supported"] else "no"


def _print(report: dict[str, Any]) -> None:
    lib = report["libcufile"]
    say(f"pygds {report['pygds_version']}")
    if lib["found"]:
        say(f"libcufile     {lib['version_string']} at {lib['path']} (found via {lib['source']})")
    else:
        say("libcufile     not found")
        for place in lib["searched"]:
            say(f"                looked in {place}")
    hip = report["hipfile"]
    say(f"hipFile       {'usable' if hip['usable'] else 'not usable'}: {hip['reason']}")
    amd_here = any(r["ok"] for r in hip["requirements"] if r["topic"] in ("libhipfile", "HIP runtime"))
    for req in hip["requirements"] if amd_here else ():  # all of them in --json
        state = {True: "ok ", False: "NO ", None: "?  "}[req["ok"]]
        say(f"  {state} {req['topic']}: {req['detail']}" + (f" (fix: {req['fix']})" if req["ok"] is False else ""))
    for name, check in report["checks"].items():
        say(f"{name:<13} {'ok ' if check['ok'] else 'NO '} {check['reason']}")
    say(f"mode          {report['mode']}")
    driver = report["driver"]
    if driver.get("opened"):
        props = driver["properties"]
        say("cuFile driver opened")
        say(table(((k, _short(v)) for k, v in props.items()), ("property", "value")))
        say(table(((k, _short(v)) for k, v in driver["parameters"].items()), ("parameter", "value")))
    else:
        say(f"cuFile driver not opened: {driver.get('skipped') or driver.get('error')}")
    if report["paths"]:
        rows = [(p["path"], p["fs_type"], p["mount_point"], _gds_cell(p),
                 {True: "yes", False: "no", None: "?"}[p["o_direct"]], human_bytes(p["free_bytes"]))
                for p in report["paths"]]
        say()
        say(table(rows, ("path", "fs", "mount", "GDS", "O_DIRECT", "free")))
    auto = report["auto_engine"]
    say()
    say(f"engine 'auto' chooses {auto['name']}: {auto['reason']}")
    problems = report["problems"]
    say()
    if not problems:
        say("no problems found")
        return
    say(f"{len(problems)} problem(s):")
    for n, f in enumerate(problems, 1):
        say(f"{n:>3}. [{f['severity']}] {f['topic']}: {f['problem']}")
        say(f"     fix: {f['fix']}")


def run(args: argparse.Namespace) -> int:
    if args.config and not os.path.isfile(args.config):
        raise UsageError(f"--config {args.config}: no such file")
    report = collect(args.paths, args.config, open_driver=not args.no_driver)
    if args.json:
        print_json(report)
    else:
        _print(report)
    return 0
