"""`pygds cache`: inspect and tidy an LMCache GDS cache (LMCache's on-disk format, which is ours).

An entry is `<base>/<h[:2]>/<h[2:4]>/<quoted key><suffix>` (suffix `.kvcache.safetensors`, or
`.weka1` on Weka) holding a 4 KiB header and the data, plus `<data file>.metadata`, a copy of the
header. Writers write `<final>.tmp<8 hex>` and rename it, data first and `.metadata` last.

It is built on the store's own parts: the scan's listing and naming rules (`scan.walk`,
`scan.sort_names`), the index's `Entry`, the store's reader (`reader.verify_file`: header, key,
length and checksum) and its publish and removal steps (`publish.py`).

Safe against a running backend: `stats`, `ls` and `verify` only read; `gc` removes temporary
files and orphaned `.metadata` only when older than `--min-age`, corrupt data files (which a
rename made final, so no writer still owns them), and rebuilds missing or bad `.metadata` from
the data file's own header; only `evict` removes complete entries, and never one younger than
`--min-age` whose `.metadata` has not appeared yet (a writer is still publishing it).
"""
from __future__ import annotations

import argparse
import fnmatch
import os
import shlex
import stat
import time
import urllib.parse
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable

from pygds.cli import CommandError, UsageError
from pygds.cli.output import count, duration_arg, format_duration, human_age, human_bytes, print_json, say, size_arg, table
from pygds.cli.progress import Progress

from ..config import ConfigError
from ..counters import read_published
from ..format import HEADER_SIZE, CorruptEntryError, EntryHeader, unpack_header
from ..index import Entry
from ..l2_names import parse_mp_key_text
from ..layout import BOUNDED_MARK, DATA_SUFFIX, WEKA_DATA_SUFFIX, Layout, key_from_stem, metadata_path, parse_paths
from ..publish import delete_entry_files, publish_bytes
from ..reader import read_header, verify_file
from ..scan import sort_names, walk
from . import check_config

DEFAULT_MIN_AGE_S = 3600.0
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

    check_config.add_parser(sub)
    return p


# ---------------------------------------------------------------------------------------------
# scanning


@dataclass
class Found:
    """A data file the listing found: the index's `Entry` (stem, base, path, bytes on disk, key,
    header) and what `pygds cache` adds: times, the `.metadata`'s size and the check's verdict."""

    entry: Entry
    layout: Layout
    size: int  # of the data file
    mtime: float
    atime: float
    metadata_size: int | None = None  # None: no .metadata
    status: str = "unchecked"  # ok | publishing | missing-metadata | bad-metadata | corrupt | unreadable | gone
    problem: str = ""

    @property
    def path(self) -> str:
        return self.entry.path

    @property
    def base(self) -> str:
        return self.entry.base

    @property
    def key(self) -> str | None:
        return self.entry.key_text

    @property
    def header(self) -> EntryHeader | None:
        return self.entry.header

    @property
    def model(self) -> str | None:
        return model_of(self.key, self.entry.stem)

    @property
    def needs_metadata(self) -> bool:
        """Whether the entry is complete only with its `.metadata`: entries of LMCache's
        multiprocess-mode L2 adapter are published as the data file alone (no GdsBackend reads
        them), in-process ones with the companion LMCache's start-up scan reads."""
        return self.key is None or parse_mp_key_text(self.key) is None

    @property
    def metadata_path(self) -> str:
        return metadata_path(self.path)

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
    entries: list[Found] = field(default_factory=list)
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


def _regular(path: str) -> os.stat_result | None:
    """lstat of a regular file; None for anything else, or a file that vanished."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return st if stat.S_ISREG(st.st_mode) else None


def scan(paths: list[str], *, min_age: float = DEFAULT_MIN_AGE_S, now: float | None = None) -> Scan:
    """List the cache under `paths` (both data suffixes, duplicates of one directory once), with
    the store's own listing and naming rules."""
    now = time.time() if now is None else now
    layouts = [Layout(paths, data_suffix=suffix) for suffix in (DATA_SUFFIX, WEKA_DATA_SUFFIX)]
    result = Scan(paths=list(layouts[0].unique_paths))

    def listing_failed(directory: str, exc: OSError) -> None:
        if not isinstance(exc, FileNotFoundError):
            result.errors.append(f"cannot list {directory}: {exc.strerror or exc}")

    def leftover(base: str, path: str, st: os.stat_result) -> Leftover:
        age = now - st.st_mtime
        return Leftover(base, path, st.st_size, age, age > min_age)

    for base in result.paths:
        if not os.path.isdir(base):
            result.missing.append(base)
            continue
        found: list[Found] = []
        for directory, names in walk(base, listing_failed):
            sorted_ = sort_names(names, layouts)
            for name in sorted_.temps:
                path = os.path.join(directory, name)
                if (st := _regular(path)) is not None:
                    result.temps.append(leftover(base, path, st))
            data: dict[str, Found] = {}
            for name, (stem, layout) in sorted_.data.items():
                path = os.path.join(directory, name)
                if (st := _regular(path)) is not None:
                    entry = Entry(stem, base, path, st.st_size, False, key_text=key_from_stem(stem))
                    data[name] = Found(entry, layout, st.st_size, st.st_mtime, st.st_atime)
            for name in sorted_.metadata:
                path = metadata_path(os.path.join(directory, name))
                if (st := _regular(path)) is None:
                    continue
                if name in data:
                    data[name].metadata_size = st.st_size
                    data[name].entry.size = data[name].disk_bytes
                    data[name].entry.has_metadata = True
                elif any(layout.stem_of_data_name(name) for layout in layouts):
                    result.orphans.append(leftover(base, path, st))
                else:
                    result.unknown.append(path)
            result.unknown += [p for p in (os.path.join(directory, n) for n in sorted_.others) if _regular(p)]
            found += data.values()
        result.entries.extend(sorted(found, key=lambda e: e.path))
    return result


def check_entry(entry: Found, *, min_age: float, now: float, whole: bool = True) -> None:
    """Check one entry as the store's reader does and set its status and problem: its header,
    the key it names and its length, and with `whole` all of its data and its checksum; then
    its `.metadata`."""
    try:
        if whole:
            header = verify_file(entry.path, entry.entry.stem, entry.layout)
        else:
            with open(entry.path, "rb", buffering=0) as f:
                header, _ = read_header(f.fileno(), entry.entry.stem, None, entry.layout)
    except FileNotFoundError:
        entry.status, entry.problem = "gone", "removed while checking"
        return
    except CorruptEntryError as exc:
        entry.status, entry.problem = "corrupt", exc.reason
        return
    except OSError as exc:  # not proven bad: permissions, a failing device, a network hiccup
        entry.status, entry.problem = "unreadable", f"cannot read: {exc.strerror or exc}"
        return
    entry.entry.header = header
    if entry.key is None:  # a long key under a bounded name: only the header records it
        entry.entry.key_text = header.key
    if entry.metadata_size is None and not entry.needs_metadata:
        entry.status = "ok"
        return
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
            paths += check_config.config_paths(args.config, os.environ)
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


def _remove_entry(entry: Found) -> bool:
    """Remove the entry as the store does (`.metadata` first, so no scan indexes a half-removed
    entry, then the data file). False, touching nothing, when the data file is gone or was
    replaced since the scan (a writer republished the key meanwhile)."""
    try:
        st = os.stat(entry.path)
    except FileNotFoundError:
        return False
    if (st.st_mtime, st.st_size) != (entry.mtime, entry.size):
        return False
    removed, error = delete_entry_files(entry.path)
    if error is not None:
        raise error
    return removed


# ---------------------------------------------------------------------------------------------
# actions


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
        "counters": read_published(result.paths),
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
            check_entry(e, min_age=DEFAULT_MIN_AGE_S, now=now, whole=False)
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


_UNREADABLE_FIX = ("check the file's permissions and the device (dmesg), then verify again; gc never removes "
                   "an entry it could not read, only one proven bad by its header, length or checksum")


def _problems(result: Scan, gc: str) -> list[dict[str, Any]]:
    def fix(kind: str) -> str:
        return f"`{gc}` {_FIXES[kind]}"

    out = [{"path": e.path, "kind": e.status, "problem": e.problem, "fix": fix(e.status)}
           for e in result.entries if e.status in ("corrupt", "missing-metadata", "bad-metadata")]
    out += [{"path": e.path, "kind": e.status, "problem": e.problem, "fix": _UNREADABLE_FIX}
            for e in result.entries if e.status == "unreadable"]
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


def _write_metadata(entry: Found) -> None:
    """Publish `.metadata` from the data file's header, as the store rebuilds it."""
    with open(entry.path, "rb") as f:
        head = f.read(HEADER_SIZE)
    publish_bytes(entry.metadata_path, head)


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
                             "publishing_entries": sum(e.status == "publishing" for e in result.entries),
                             "unreadable_entries": sum(e.status == "unreadable" for e in result.entries)}}
    if args.json:
        print_json(report)
    else:
        verb = "would" if args.dry_run else "did"
        for a in actions:
            failure = f" -- FAILED: {a['error']}" if "error" in a else ""
            say(f"{verb} {a['action']} {a['path']}: {a['reason']}{failure}")
        say(f"{count(len(actions) - len(failed), 'action')}, {human_bytes(freed)} {'would be ' if args.dry_run else ''}freed; "
            f"left alone: {count(report['left_alone']['fresh_temp_files'], 'fresh temporary file')}, "
            f"{count(report['left_alone']['publishing_entries'], 'entry', 'entries')} still being published, "
            f"{count(report['left_alone']['unreadable_entries'], 'entry', 'entries')} that could not be read")
    return 1 if failed else 0


def run_evict(args: argparse.Namespace) -> int:
    if args.max_bytes is None and args.older_than is None:
        raise UsageError("say what to evict: --max-bytes SIZE (per path) and/or --older-than DURATION")
    now = time.time()
    result = scan(_paths(args), min_age=args.min_age, now=now)
    remaining: dict[str, int] = dict.fromkeys(result.paths, 0)
    candidates: dict[str, list[Found]] = defaultdict(list)
    for e in result.entries:
        remaining[e.base] += e.disk_bytes
        if e.metadata_size is None and e.needs_metadata and now - e.mtime <= args.min_age:
            continue  # still being published by its writer
        candidates[e.base].append(e)
    evicted, failed = [], []
    for base, entries in candidates.items():
        for e in sorted(entries, key=lambda e: (e.last_used, e.path)):
            if args.older_than is not None and now - e.last_used > args.older_than:
                reason = f"last used {human_age(now - e.last_used)} ago"
            elif args.max_bytes is not None and remaining[base] > args.max_bytes:
                reason = f"{base} holds {human_bytes(remaining[base])} > {human_bytes(args.max_bytes)}"
            else:
                continue
            try:
                removed = args.dry_run or _remove_entry(e)
            except OSError as exc:  # this entry stays; the next one is taken instead
                failed.append({"path": e.path, "key": e.key, "error": exc.strerror or str(exc)})
                continue
            if removed:
                remaining[base] -= e.disk_bytes
                evicted.append({"path": e.path, "key": e.key, "bytes": e.disk_bytes, "reason": reason})
    report = {"dry_run": args.dry_run, "evicted": evicted, "freed_bytes": sum(x["bytes"] for x in evicted),
              "remaining_bytes": remaining, "failed": failed}
    if args.json:
        print_json(report)
    else:
        verb = "would evict" if args.dry_run else "evicted"
        for x in evicted:
            say(f"{verb} {x['key'] or x['path']} ({human_bytes(x['bytes'])}): {x['reason']}")
        for x in failed:
            say(f"cannot evict {x['key'] or x['path']}: {x['error']} ({x['path']}); it stays in the cache")
        say(f"{verb} {count(len(evicted), 'entry', 'entries')}, {human_bytes(report['freed_bytes'])}"
            + (f"; {count(len(failed), 'entry', 'entries')} could not be deleted" if failed else ""))
    return 1 if failed else 0
