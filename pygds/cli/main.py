"""`pygds` command-line entry point: argument parsing, logging to stderr, exit codes.

Exit codes: 0 success, 1 the work failed or found problems (where a subcommand says so),
2 bad arguments (argparse's and our own checks alike), 130 interrupted.
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Sequence

from .. import __version__
from ..errors import PygdsError
from . import CommandError, UsageError, bench, cache, demo, info

log = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pygds",
        description="GPU-Direct-Storage for Python: diagnostics, a gdsio-class benchmark, LMCache GDS cache "
                    "management and a KV-cache demo.",
        epilog="Exit codes: 0 success, 1 failure (or problems found by 'cache verify' / 'cache check-config'), "
               "2 bad arguments. Logs go to stderr; --json output is the only thing on stdout.")
    parser.add_argument("--version", action="version", version=f"pygds {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="log more to stderr (-v info, -vv debug)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (info, bench, cache, demo):
        module.add_parser(subparsers)
    return parser


def _setup_logging(verbosity: int) -> None:
    if not logging.getLogger().handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        logging.getLogger().addHandler(handler)
    if verbosity:
        level = logging.INFO if verbosity == 1 else logging.DEBUG
        for name in ("pygds", "lmcache_plugin"):
            logging.getLogger(name).setLevel(level)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `pygds` command with `argv` (default `sys.argv[1:]`); returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) and usage errors (2)
        return exc.code if isinstance(exc.code, int) else 2
    _setup_logging(args.verbose)
    sub: argparse.ArgumentParser = args.parser
    try:
        return int(args.func(args))
    except UsageError as exc:
        sub.print_usage(sys.stderr)
        sys.stderr.write(f"{sub.prog}: error: {exc}\n")
        return 2
    except CommandError as exc:
        sys.stderr.write(f"{sub.prog}: error: {exc}\n")
        return 1
    except (PygdsError, OSError) as exc:  # failures of the work itself: message, no traceback
        log.debug("%s failed", sub.prog, exc_info=True)
        sys.stderr.write(f"{sub.prog}: error: {exc}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write(f"{sub.prog}: interrupted\n")
        return 130


if __name__ == "__main__":
    sys.exit(main())
