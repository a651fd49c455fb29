"""`pygds` command-line entry point: argument parsing, logging to stderr, signals, exit codes.

Exit codes: 0 success (and `pygds` alone, which prints the help), 1 the work failed or found
problems (where a subcommand says so), 2 bad arguments (argparse's and our own checks alike),
128 + N when ended by signal N: 129 SIGHUP, 130 interrupted (Ctrl-C), 141 stdout closed early
(`pygds ... | head`, quietly, as coreutils end on SIGPIPE), 143 SIGTERM. SIGTERM and SIGHUP end a
command the way Ctrl-C does, so its `finally` blocks remove what it made (temporary directories,
files); a second one ends the process at once.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import logging
import os
import signal
import sys
import threading
from typing import Iterator, Sequence

from .. import __version__
from ..errors import PygdsError
from . import CommandError, UsageError, bench, cache, demo, info

log = logging.getLogger(__name__)

TERMINATING_SIGNALS = (signal.SIGTERM, signal.SIGHUP)
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE


class Terminated(BaseException):
    """Raised in the main thread by SIGTERM or SIGHUP; a BaseException, as KeyboardInterrupt is, so
    no `except Exception` swallows it before the `finally` blocks have cleaned up."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pygds",
        description="GPU-Direct-Storage for Python: diagnostics, a gdsio-class benchmark, LMCache GDS cache "
                    "management and a KV-cache demo.",
        epilog="Exit codes: 0 success, 1 failure (or problems found by 'cache verify' / 'cache check-config'), "
               "2 bad arguments, 128+N ended by signal N (130 Ctrl-C, 141 output closed early, 143 SIGTERM). "
               "Logs go to stderr; --json output is the only thing on stdout.")
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


def _raise_terminated(signum: int, _frame: object) -> None:
    for sig in TERMINATING_SIGNALS:  # a second signal ends the process at once, cleanup or not
        signal.signal(sig, signal.SIG_DFL)
    raise Terminated(signum)


@contextlib.contextmanager
def _terminating_signals_raise() -> Iterator[None]:
    """SIGTERM and SIGHUP raise `Terminated` while the command runs (main thread only); a signal
    that is ignored (`nohup`) stays ignored. The previous handlers come back afterwards."""
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in TERMINATING_SIGNALS:
            old = signal.getsignal(sig)
            if old is not signal.SIG_IGN:
                previous[sig] = signal.SIG_DFL if old is None else old
                signal.signal(sig, _raise_terminated)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _stderr(text: str) -> None:
    try:
        sys.stderr.write(text)
        sys.stderr.flush()
    except OSError:  # a hung-up terminal (SIGHUP) or a closed pipe: nobody to tell
        pass


def _discard_stdout() -> None:
    """Point stdout's descriptor at /dev/null, so the interpreter's last flush cannot fail again."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, ValueError, io.UnsupportedOperation):
        return  # not a real descriptor (a test's capture): nothing is flushed at exit
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


def _run(parser: argparse.ArgumentParser, argv: list[str]) -> int:
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
        _stderr(f"{sub.prog}: error: {exc}\n")
        return 2
    except CommandError as exc:
        _stderr(f"{sub.prog}: error: {exc}\n")
        return 1
    except BrokenPipeError:
        raise  # the reader of stdout went away: `main` ends quietly
    except (PygdsError, OSError) as exc:  # failures of the work itself: message, no traceback
        log.debug("%s failed", sub.prog, exc_info=True)
        _stderr(f"{sub.prog}: error: {exc}\n")
        return 1


def main(argv: Sequence[str] | None = None) -> int:
    """Run the `pygds` command with `argv` (default `sys.argv[1:]`); returns the exit code."""
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if not argv:  # a newcomer typing `pygds`: the commands, not an error
            parser.print_help(sys.stdout)
            code = 0
        else:
            with _terminating_signals_raise():
                code = _run(parser, argv)
        sys.stdout.flush()  # a closed pipe shows here rather than as a traceback at exit
        return code
    except KeyboardInterrupt:
        _stderr("pygds: interrupted\n")
        return 128 + signal.SIGINT
    except Terminated as exc:
        _stderr(f"pygds: terminated by {exc}\n")
        return 128 + exc.signum
    except BrokenPipeError:
        _discard_stdout()
        return EXIT_BROKEN_PIPE


if __name__ == "__main__":
    sys.exit(main())
