"""`pygds cache check-config FILE`, and the checker `pygds info --config` calls (`check`)."""
from __future__ import annotations

import argparse
import os
from typing import Any, Mapping

from pygds.cli import UsageError
from pygds.cli.output import print_json, say

from ..config import ConfigError, check_config, load_settings


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    c = subparsers.add_parser("check-config",
                              help="validate an LMCache configuration for the gds plugin (exit 1 on problems)")
    c.add_argument("file", metavar="FILE", help="the LMCache YAML configuration")
    c.add_argument("--ignore-env", action="store_true",
                   help="check the file alone, without the LMCACHE_* environment variables LMCache would layer on it")
    c.add_argument("--json", action="store_true", help="print JSON on stdout")
    c.set_defaults(func=run, parser=c)
    return c


def config_paths(config: str, environ: Mapping[str, str]) -> list[str]:
    """The gds_path entries of an LMCache YAML file, read the way the plugin reads them, with
    `environ`'s `LMCACHE_*` variables layered on it as LMCache does. Raises `ConfigError`."""
    settings = load_settings(None, environ={**environ, "LMCACHE_CONFIG_FILE": config}, create_dirs=False)
    return list(settings.paths)


def check(config_path: str, environ: Mapping[str, str]) -> tuple[list[str], list[str]]:
    """(the cache paths the configuration names, its problems as "cause. Fix: fix" messages);
    the `pygds.config` entry point `lmcache`, for `pygds info --config`."""
    problems = check_config(config_path, environ)
    try:
        paths = config_paths(config_path, environ)
    except ConfigError:
        paths = []  # check_config has reported it
    return paths, problems


def run(args: argparse.Namespace) -> int:
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
