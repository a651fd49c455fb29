"""`pygds cache`: inspect and tidy an LMCache GDS cache (LMCache's on-disk format, which is ours).

An entry is `<base>/<h[:2]>/<h[2:4]>/<quoted key><suffix>` (suffix `.kvcache.safetensors`, or
`.weka1` on Weka) holding a 4 KiB header and the data, plus `<data file>.metadata`, a copy of the
header. Writers write `<final>.tmp<8 hex>` and rename it, data first and `.metadata` last.

Safe against a running backend: `stats`, `ls` and `verify` only read; `gc` removes temporary
files and orphaned `.metadata` only when older than `--min-age`, corrupt data files (which a
rename made final, so no writer still owns them), and rebuilds missing or bad `.metadata` from
the data file's own header; only `evict` removes complete entries, and never one younger than
`--min-age` whose `.metadata` has not appeared yet (a writer is still publishing it).
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import os
import shlex
import time
import urllib.parse
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

from lmcache_plugin.config import ConfigError, check_config, load_settings
from lmcache_plugin.format import HEADER_SIZE, CorruptEntryError, unpack_header
from lmcache_plugin.layout import (
    BOUNDED_MARK,
    DATA_SUFFIX,
    METADATA_SUFFIX,
    WEKA_DATA_SUFFIX,
    is_tmp_name,
    key_from_stem,
    parse_paths,
    tmp_path,
)
from lmcache_plugin.store import BOUNDED_KEY_FIELD, STATS_DIR

from . import CommandError, UsageError
from .output import count, duration_arg, format_duration, human_age, human_bytes, print_json, say, size_arg, table
from .progress import Progress

DEFAULT_MIN_AGE_S = 3600.0
_FAN_OUT_DEPTH = 2
_NAMED_UNKNOWN = 5  # unknown files named in the report; the rest are counted


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "cache", help="inspect and tidy an LMCache GDS cache: stats, ls, verify, gc, evict, check-config",
        description="Work on an LMCache GDS cache directory (LMCache's GdsBackend format, which the "
                    "lmcache_plugin shares). Safe while a backend runs: only 'evict' removes complete entries.",
        epilog="Exit status: 0 done, 1 problems found (verify, check-config) or the work failed, 2 bad arguments.")
    sub = p.add_subparsers(dest="cache_command", metavar="ACTION", required=True)

    where = argparse.ArgumentParser(add_help=False)
    where.add_argument("dirs", nargs="*", metavar="DIR", help="cache directories (gds_path entries), as --path")
    where.add_argument("--path", "-d", action="append", metavar="DIR",
                       help="a cache directory (gds_path entry); repeat for several")
    where.add_argument("--config", metavar="LMCACHE_YAML",
                       help="take the directories from this LMCache config's gds_path")
    where.add_argument("--json", action="store_true", help="print JSON on stdout")
    age = argparse.ArgumentParser(add_help=False)
    age.add_argument("--min-age", type=duration_arg, default=DEFAULT_MIN_AGE_S, metavar="DURATION",
                     help="temporary files and unpublished entries younger than this belong to a live writer and "
                          "are left alone (default 1h; e.g. 30m, 2h, 90s)")
    prog = argparse.ArgumentParser(add_help=False)
    prog.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                      help="force the progress bar on or off (default: on when stderr is a terminal)")

    s = sub.add_parser("stats", parents=[where], help="entries and bytes, per path and per model")
    s.set_defaults(func=run_stats, parser=s)

    ls = sub.add_parser("ls", parents=[where], help="list entries")
    ls.add_argument("--long", "-l", action="store_true", help="also read each header: shape, dtype, format, status")
    ls.add_argument("--model", help="only entries of this model (the key's first field)")
    ls.add_argument("--match", metavar="GLOB", help="only keys matching this shell pattern")
    ls.add_argument("--older-than", type=duration_arg, metavar="DURATION", help="only entries last used before this")
    ls.add_argument("--sort", choices=("key", "size", "age"), default="key", help="order (default key)")
    ls.set_defaults(func=run_ls, parser=ls)

    v = sub.add_parser("verify", parents=[where, age, prog],
                       help="check headers, sizes, .metadata companions and temporary leftovers (exit 1 on problems)")
    v.set_defaults(func=run_verify, parser=v)

    g = sub.add_parser("gc", parents=[where, age, prog],
                       help="remove stale temporary files, orphaned .metadata and corrupt entries; rebuild .metadata")
    g.add_argument("--dry-run", "-n", action="store_true", help="only say what would be done")
    g.set_defaults(func=run_gc, parser=g)

    e = sub.add_parser("evict", parents=[where, age],
                       help="remove least recently used entries down to a size per path, or older than an age")
    e.add_argument("--max-bytes", type=size_arg, metavar="SIZE",
                   help="keep at most SIZE of entries in each path (e.g. 500G), evicting least recently used first")
    e.add_argument("--older-than", type=duration_arg, metavar="DURATION",
                   help="evict entries last used longer ago than this (e.g. 7d)")
    e.add_argument("--dry-run", "-n", action="store_true", help="only say what would be evicted")
    e.set_defaults(func=run_evict, parser=e)

    c = sub.add_parser("check-config", help="validate an LMCache configuration for the gds plugin (exit 1 on problems)")
    c.add_argument("file", metavar="FILE", help="the LMCache YAML configuration")
    c.add_argument("--ignore-env", action="store_true",
                   help="check the file alone, without the LMCACHE_* environment variables LMCache would layer on it")
    c.add_argument("--json", action="store_true", help="print JSON on stdout")
    c.set_defaults(func=run_check_config, parser=c)
    return p


# ---------------------------------------------------------------------------------------------
# scanning


@dataclass
class Entry:
    """One data file and what is known about it."""

    base: str
    path: str
    suffix: str
    stem: str
    key: str | None
    model: str | None
    size: int
    mtime: float
    atime: float
    metadata_size: int | None = None  # None: no .metadata
    status: str = "unchecked"  # ok | publishing | missing-metadata | bad-metadata | corrupt
    problem: str = ""
    header: Any = None

    @property
    def metadata_path(self) -> str:
        return self.path + ".metadata"

    @property
    def last_used(self) -> float:
        return max(self.atime, self.mtime)

    @property
    def disk_bytes(self) -> int:
        return self.size + (self.metadata_size or 0)

    def as_dict(self) -> dict[str, Any]:
        out = {"path": self.path, "base": self.base, "key": self.key, "model": self.model, "size": self.size,
               "metadata": self.metadata_size is not None, "mtime": self.mtime, "atime": self.atime,
               "status": self.status}
        if self.problem:
            out["problem"] = self.problem
        if self.header is not None:
            out["header"] = {"shapes": [list(s) for s in self.header.shapes], "dtypes": list(self.header.dtypes),
                             "nbytes": self.header.nbytes, "fmt": self.header.fmt}
        return out


@dataclass
class Leftover:
    """A temporary file or an orphaned `.metadata`."""

    base: str
    path: str
    size: int
    age: float
    stale: bool

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "size": self.size, "age_s": round(self.age, 3), "stale": self.stale}


@dataclass
class Scan:
    """Everything found under the cache paths (listing and stat only, no file opened)."""

    paths: list[str]
    missing: list[str] = field(default_factory=list)
    entries: list[Entry] = field(default_factory=list)
    temps: list[Leftover] = field(default_factory=list)
    orphans: list[Leftover] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def model_of(key: str | None, stem: str) -> str | None:
    """The model name: the first field of LMCache's key text `model@world_size@worker@hash@dtype...`."""
    text = key
    if text is None:  # a bounded long-key name keeps a quoted prefix of the key
        text = urllib.parse.unquote(stem.split(BOUNDED_MARK, 1)[0])
    if "@" not in text:
        return None
    return text.split("@", 1)[0]


def _walk(base: str, errors: list[str]) -> Iterator[tuple[os.DirEntry, int]]:
    stack = [(base, 0)]
    while stack:
        directory, depth = stack.pop()
        try:
            with os.scandir(directory) as it:
                items = list(it)
        except FileNotFoundError:
            continue
        except OSError as exc:
            errors.append(f"cannot list {directory}: {exc.strerror or exc}")
            continue
        for item in items:
            try:
                if item.is_dir(follow_symlinks=False):
                    if depth < _FAN_OUT_DEPTH and item.name != STATS_DIR:
                        stack.append((item.path, depth + 1))
                elif item.is_file(follow_symlinks=False):
                    yield item, depth
            except OSError as exc:
                errors.append(f"cannot stat {item.path}: {exc.strerror or exc}")


def scan(paths: list[str], *, min_age: float = DEFAULT_MIN_AGE_S, now: float | None = None) -> Scan:
    """List the cache under `paths` (both data suffixes, duplicates of one directory once)."""
    now = time.time() if now is None else now
    unique: list[str] = []
    for p in paths:
        if os.path.realpath(p) not in {os.path.realpath(u) for u in unique}:
            unique.append(p)
    result = Scan(paths=unique)
    suffixes = (DATA_SUFFIX, WEKA_DATA_SUFFIX)
    for base in unique:
        if not os.path.isdir(base):
            result.missing.append(base)
            continue
        data: dict[str, Entry] = {}
        metas: dict[str, tuple[os.DirEntry, os.stat_result]] = {}
        for item, _depth in _walk(base, result.errors):
            name = item.name
            try:
                st = item.stat(follow_symlinks=False)
            except OSError:
                continue  # vanished while listing
            if is_tmp_name(name):
                age = now - st.st_mtime
                result.temps.append(Leftover(base, item.path, st.st_size, age, age > min_age))
                continue
            if name.endswith(METADATA_SUFFIX) and name[: -len(METADATA_SUFFIX)].endswith(suffixes):
                metas[item.path[: -len(METADATA_SUFFIX)]] = (item, st)
                continue
            suffix = next((s for s in suffixes if name.endswith(s) and len(name) > len(s)), None)
            if suffix is None:
                result.unknown.append(item.path)
                continue
            stem = name[: -len(suffix)]
            key = key_from_stem(stem)
            data[item.path] = Entry(base=base, path=item.path, suffix=suffix, stem=stem, key=key,
                                    model=model_of(key, stem), size=st.st_size, mtime=st.st_mtime,
                                    atime=st.st_atime)
        for data_path, (item, st) in metas.items():
            entry = data.get(data_path)
            if entry is None:
                age = now - st.st_mtime
                result.orphans.append(Leftover(base, item.path, st.st_size, age, age > min_age))
            else:
                entry.metadata_size = st.st_size
        result.entries.extend(sorted(data.values(), key=lambda e: e.path))
    return result


def check_entry(entry: Entry, *, min_age: float, now: float) -> None:
    """Read the header (and `.metadata`) of one entry and set its status and problem."""
    try:
        with open(entry.path, "rb") as f:
            head = f.read(HEADER_SIZE)
            size = os.fstat(f.fileno()).st_size
        entry.header = unpack_header(head, file_size=size)
    except FileNotFoundError:
        entry.status, entry.problem = "gone", "removed while checking"
        return
    except CorruptEntryError as exc:
        entry.status, entry.problem = "corrupt", exc.reason
        return
    except OSError as exc:
        entry.status, entry.problem = "corrupt", f"cannot read: {exc.strerror or exc}"
        return
    stored_key = entry.header.extra.get(BOUNDED_KEY_FIELD)
    if entry.key is None and isinstance(stored_key, str):  # a long key under a bounded name
        entry.key, entry.model = stored_key, model_of(stored_key, entry.stem)
    if entry.metadata_size is None:
        if now - entry.mtime <= min_age:
            entry.status = "publishing"  # its writer renames the .metadata in after the data
        else:
            entry.status = "missing-metadata"
            entry.problem = "no .metadata companion, so LMCache's start-up scan does not see this entry"
        return
    try:
        with open(entry.metadata_path, "rb") as f:
            meta = unpack_header(f.read(HEADER_SIZE + 1))
    except FileNotFoundError:
        entry.status, entry.problem = "missing-metadata", "the .metadata vanished while checking"
        return
    except CorruptEntryError as exc:
        entry.status, entry.problem = "bad-metadata", f".metadata is corrupt: {exc.reason}"
        return
    except OSError as exc:
        entry.status, entry.problem = "bad-metadata", f"cannot read .metadata: {exc.strerror or exc}"
        return
    if meta != entry.header:
        entry.status, entry.problem = "bad-metadata", ".metadata disagrees with the data file's header"
        return
    entry.status = "ok"


# what `pygds cache gc` does about each kind of problem
_FIXES = {
    "corrupt": "removes it",
    "missing-metadata": "rebuilds the .metadata from the data file's header",
    "bad-metadata": "rewrites the .metadata from the data file's header",
    "stale-temp": "removes it (left by a crashed writer)",
    "orphan-metadata": "removes it (its data file is gone)",
}


def _gc_command(args: argparse.Namespace) -> str:
    """The `pygds cache gc` that repairs what this run found: same directories, same --min-age
    (with the default, gc would leave the younger leftovers that a shorter --min-age reported)."""
    argv = ["pygds", "cache", "gc", *args.dirs]
    for p in args.path or []:
        argv += ["--path", p]
    if args.config:
        argv += ["--config", args.config]
    if args.min_age != DEFAULT_MIN_AGE_S:
        argv += ["--min-age", format_duration(args.min_age)]
    return shlex.join(argv)


def _named(paths: list[str]) -> str:
    """The first few paths, and how many more."""
    shown = ", ".join(paths[:_NAMED_UNKNOWN])
    rest = len(paths) - _NAMED_UNKNOWN
    return f"{shown} and {rest} more" if rest > 0 else shown


def config_paths(config: str) -> list[str]:
    """The gds_path entries of an LMCache YAML file, read the way the plugin reads them.

    The `LMCACHE_*` environment is layered on the file as LMCache does. Raises
    `lmcache_plugin.config.ConfigError` for a bad value.
    """
    settings = load_settings(None, environ={**os.environ, "LMCACHE_CONFIG_FILE": config}, create_dirs=False)
    return list(settings.paths)


def _paths(args: argparse.Namespace) -> list[str]:
    """DIR arguments, --path and --config's gds_path, absolute and `~`-expanded (`parse_paths`)."""
    paths = parse_paths([*args.dirs, *(args.path or [])])
    for p in paths:
        if not os.path.isdir(p):
            raise UsageError(f"{p}: no such directory; give an existing cache directory as DIR or --path DIR")
    if args.config:
        if not os.path.isfile(args.config):
            raise UsageError(f"--config {args.config}: no such file")
        try:
            paths += config_paths(args.config)
        except ConfigError as exc:
            raise CommandError(f"{args.config}: {exc}") from None
    if not paths:
        raise UsageError("give the cache directories as DIR arguments, with --path DIR (repeatable) or "
                         "--config LMCACHE_YAML")
    return paths


def _checked_scan(args: argparse.Namespace, *, now: float) -> Scan:
    result = scan(_paths(args), min_age=args.min_age, now=now)
    with Progress(len(result.entries), "checking", unit="entries", flag=args.progress) as progress:
        for entry in result.entries:
            check_entry(entry, min_age=args.min_age, now=now)
            progress.update()
    return result


def _remove(path: str) -> bool:
    """Unlink; False when it was already gone."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        return False
    return True


def _remove_entry(entry: Entry) -> bool:
    """Remove `.metadata` first (so no scan indexes a half-removed entry), then the data file.

    False, touching nothing, when the data file is gone or was replaced since the scan (a writer
    republished the key meanwhile).
    """
    try:
        st = os.stat(entry.path)
    except FileNotFoundError:
        return False
    if (st.st_mtime, st.st_size) != (entry.mtime, entry.size):
        return False
    if entry.metadata_size is not None:
        _remove(entry.metadata_path)
    return _remove(entry.path)


# ---------------------------------------------------------------------------------------------
# actions


def read_counters(paths: list[str]) -> list[dict]:
    """The counters running (or finished) stores published under each path's STATS_DIR."""
    records = []
    for base in paths:
        folder = os.path.join(base, STATS_DIR)
        try:
            names = sorted(n for n in os.listdir(folder) if n.endswith(".json"))
        except OSError:
            continue
        for name in names:
            try:
                with open(os.path.join(folder, name), encoding="utf-8") as f:
                    record = json.load(f)
            except (OSError, ValueError):
                continue
            if isinstance(record, dict):
                records.append(record)
    return records


_COUNTER_COLUMNS = ("hits", "misses", "bytes_read", "bytes_written", "put_errors", "read_errors",
                    "evictions", "scan_entries", "scan_seconds")


def run_stats(args: argparse.Namespace) -> int:
    result = scan(_paths(args))
    per_path: dict[str, dict[str, int]] = {p: {"entries": 0, "bytes": 0} for p in result.paths}
    per_model: dict[str, dict[str, int]] = defaultdict(lambda: {"entries": 0, "bytes": 0})
    for e in result.entries:
        for bucket in (per_path[e.base], per_model[e.model or "(unknown)"]):
            bucket["entries"] += 1
            bucket["bytes"] += e.disk_bytes
    report = {
        "paths": result.paths,
        "missing_paths": result.missing,
        "entries": len(result.entries),
        "bytes": sum(e.disk_bytes for e in result.entries),
        "data_bytes": sum(e.size for e in result.entries),
        "without_metadata": sum(e.metadata_size is None for e in result.entries),
        "oldest_mtime": min((e.mtime for e in result.entries), default=None),
        "newest_mtime": max((e.mtime for e in result.entries), default=None),
        "per_path": per_path,
        "per_model": dict(sorted(per_model.items())),
        "temp_files": {"count": len(result.temps), "bytes": sum(t.size for t in result.temps),
                       "stale": sum(t.stale for t in result.temps)},
        "orphaned_metadata": len(result.orphans),
        "unknown_files": len(result.unknown),
        "unknown_paths": result.unknown,
        "errors": result.errors,
        "counters": read_counters(result.paths),
    }
    if args.json:
        print_json(report)
        return 0
    say(f"{report['entries']} entries, {human_bytes(report['bytes'])} "
        f"({report['without_metadata']} without .metadata)")
    say(table(((p, v["entries"], human_bytes(v["bytes"])) for p, v in per_path.items()), ("path", "entries", "bytes")))
    say()
    say(table(((m, v["entries"], human_bytes(v["bytes"])) for m, v in report["per_model"].items()),
              ("model", "entries", "bytes")))
    tmp = report["temp_files"]
    say()
    say(f"temporary files: {tmp['count']} ({human_bytes(tmp['bytes'])}), {tmp['stale']} older than 1h; "
        f"orphaned .metadata: {report['orphaned_metadata']}; unknown files: {report['unknown_files']}"
        + (f" ({_named(result.unknown)})" if result.unknown else ""))
    if report["counters"]:
        say()
        say(table(((f"{c.get('host')}:{c.get('pid')}", *(c.get(k) for k in _COUNTER_COLUMNS),
                    time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(c.get("updated", 0))))
                   for c in report["counters"]), ("store", *_COUNTER_COLUMNS, "updated")))
    for p in result.missing:
        say(f"note: {p} does not exist")
    for err in result.errors:
        say(f"error: {err}")
    return 0


def run_ls(args: argparse.Namespace) -> int:
    now = time.time()
    result = scan(_paths(args), now=now)
    entries = result.entries
    if args.model is not None:
        entries = [e for e in entries if e.model == args.model]
    if args.match is not None:
        entries = [e for e in entries if fnmatch.fnmatchcase(e.key or e.stem, args.match)]
    if args.older_than is not None:
        entries = [e for e in entries if now - e.last_used > args.older_than]
    order = {"key": lambda e: (e.key or e.stem, e.path), "size": lambda e: (-e.size, e.path),
             "age": lambda e: (e.last_used, e.path)}[args.sort]
    entries.sort(key=order)
    if args.long:
        for e in entries:
            check_entry(e, min_age=DEFAULT_MIN_AGE_S, now=now)
    if args.json:
        print_json([e.as_dict() for e in entries])
        return 0
    if args.long:
        rows = [(e.key or e.stem, human_bytes(e.size), human_age(now - e.last_used), e.status,
                 "x".join(map(str, e.header.shape)) if e.header else "-", e.header.dtype if e.header else "-",
                 e.path) for e in entries]
        say(table(rows, ("key", "size", "used", "status", "shape", "dtype", "file")))
    else:
        say(table(((e.key or e.stem, human_bytes(e.size), human_age(now - e.last_used)) for e in entries),
                  ("key", "size", "used")))
    return 0


def _problems(result: Scan, gc: str) -> list[dict[str, Any]]:
    def fix(kind: str) -> str:
        return f"`{gc}` {_FIXES[kind]}"

    out = [{"path": e.path, "kind": e.status, "problem": e.problem, "fix": fix(e.status)}
           for e in result.entries if e.status in ("corrupt", "missing-metadata", "bad-metadata")]
    out += [{"path": t.path, "kind": "stale-temp", "problem": f"temporary file {human_age(t.age)} old",
             "fix": fix("stale-temp")} for t in result.temps if t.stale]
    out += [{"path": o.path, "kind": "orphan-metadata", "problem": ".metadata without its data file",
             "fix": fix("orphan-metadata")} for o in result.orphans if o.stale]
    return out


def run_verify(args: argparse.Namespace) -> int:
    now = time.time()
    result = _checked_scan(args, now=now)
    gc = _gc_command(args)
    problems = _problems(result, gc)
    counts: dict[str, int] = defaultdict(int)
    for e in result.entries:
        counts[e.status] += 1
    report = {"paths": result.paths, "missing_paths": result.missing, "entries": len(result.entries),
              "status": dict(counts), "fresh_temp_files": sum(not t.stale for t in result.temps),
              "problems": problems, "errors": result.errors}
    if args.json:
        print_json(report)
    else:
        say(f"{len(result.entries)} entries checked: " + (", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
                                                          or "none"))
        if report["fresh_temp_files"]:
            say(f"{report['fresh_temp_files']} temporary file(s) younger than --min-age: writes in progress, "
                "left alone")
        if problems:
            say(table(((p["kind"], p["path"], p["problem"]) for p in problems), ("problem", "file", "detail")))
            say(f"fix: run `{gc}` (add --dry-run to see what it would do)")
        else:
            say("no problems found")
        for err in result.errors:
            say(f"error: {err}")
    return 1 if problems or result.errors else 0


def _write_metadata(entry: Entry) -> None:
    """Publish `.metadata` from the data file's header: temporary file, then rename (as writers do)."""
    with open(entry.path, "rb") as f:
        head = f.read(HEADER_SIZE)
    tmp = tmp_path(entry.metadata_path)
    try:
        with open(tmp, "xb") as f:
            f.write(head)
        os.replace(tmp, entry.metadata_path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def run_gc(args: argparse.Namespace) -> int:
    now = time.time()
    result = _checked_scan(args, now=now)
    actions: list[dict[str, Any]] = []

    def act(action: str, path: str, why: str, nbytes: int, do: Callable[[], object]) -> None:
        try:
            done = True if args.dry_run else do()
        except OSError as exc:
            actions.append({"action": action, "path": path, "reason": why, "bytes": 0,
                            "error": exc.strerror or str(exc)})
            return
        if done is not False:
            actions.append({"action": action, "path": path, "reason": why, "bytes": nbytes})

    for t in result.temps:
        if t.stale:
            act("remove", t.path, f"stale temporary file ({human_age(t.age)} old)", t.size,
                lambda p=t.path: _remove(p))
    for o in result.orphans:
        if o.stale:
            act("remove", o.path, ".metadata without its data file", o.size, lambda p=o.path: _remove(p))
    for e in result.entries:
        if e.status == "corrupt":
            act("remove", e.path, f"corrupt entry: {e.problem}", e.disk_bytes, lambda e=e: _remove_entry(e))
        elif e.status in ("missing-metadata", "bad-metadata"):
            act("rebuild-metadata", e.metadata_path, e.problem, 0, lambda e=e: _write_metadata(e))
    freed = sum(a["bytes"] for a in actions if "error" not in a)
    failed = [a for a in actions if "error" in a]
    report = {"dry_run": args.dry_run, "actions": actions, "freed_bytes": freed, "errors": result.errors,
              "left_alone": {"fresh_temp_files": sum(not t.stale for t in result.temps),
                             "publishing_entries": sum(e.status == "publishing" for e in result.entries)}}
    if args.json:
        print_json(report)
    else:
        verb = "would" if args.dry_run else "did"
        for a in actions:
            failure = f" -- FAILED: {a['error']}" if "error" in a else ""
            say(f"{verb} {a['action']} {a['path']}: {a['reason']}{failure}")
        say(f"{count(len(actions) - len(failed), 'action')}, {human_bytes(freed)} {'would be ' if args.dry_run else ''}freed; "
            f"left alone: {count(report['left_alone']['fresh_temp_files'], 'fresh temporary file')}, "
            f"{count(report['left_alone']['publishing_entries'], 'entry', 'entries')} still being published")
    return 1 if failed else 0


def run_evict(args: argparse.Namespace) -> int:
    if args.max_bytes is None and args.older_than is None:
        raise UsageError("say what to evict: --max-bytes SIZE (per path) and/or --older-than DURATION")
    now = time.time()
    result = scan(_paths(args), min_age=args.min_age, now=now)
    remaining: dict[str, int] = dict.fromkeys(result.paths, 0)
    candidates: dict[str, list[Entry]] = defaultdict(list)
    for e in result.entries:
        remaining[e.base] += e.disk_bytes
        if e.metadata_size is None and now - e.mtime <= args.min_age:
            continue  # still being published by its writer
        candidates[e.base].append(e)
    evicted = []
    for base, entries in candidates.items():
        for e in sorted(entries, key=lambda e: (e.last_used, e.path)):
            if args.older_than is not None and now - e.last_used > args.older_than:
                reason = f"last used {human_age(now - e.last_used)} ago"
            elif args.max_bytes is not None and remaining[base] > args.max_bytes:
                reason = f"{base} holds {human_bytes(remaining[base])} > {human_bytes(args.max_bytes)}"
            else:
                continue
            if args.dry_run or _remove_entry(e):
                remaining[base] -= e.disk_bytes
                evicted.append({"path": e.path, "key": e.key, "bytes": e.disk_bytes, "reason": reason})
    report = {"dry_run": args.dry_run, "evicted": evicted, "freed_bytes": sum(x["bytes"] for x in evicted),
              "remaining_bytes": remaining}
    if args.json:
        print_json(report)
    else:
        verb = "would evict" if args.dry_run else "evicted"
        for x in evicted:
            say(f"{verb} {x['key'] or x['path']} ({human_bytes(x['bytes'])}): {x['reason']}")
        say(f"{verb} {count(len(evicted), 'entry', 'entries')}, {human_bytes(report['freed_bytes'])}")
    return 0


def run_check_config(args: argparse.Namespace) -> int:
    if not os.path.isfile(args.file):
        raise UsageError(f"{args.file}: no such file")
    notes: list[str] = []
    problems = check_config(args.file, None if args.ignore_env else dict(os.environ), notes)
    if args.json:
        print_json({"file": args.file, "ok": not problems, "problems": problems, "notes": notes})
        return 1 if problems else 0
    if problems:
        say(f"{args.file}: {len(problems)} problem(s)")
        for n, p in enumerate(problems, 1):
            say(f"{n:>3}. {p}")
    else:
        say(f"{args.file}: ok")
    for note in notes:
        say(f"note: {note}")
    return 1 if problems else 0
