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
import importlib.metadata
import io
import logging
import os
import signal
import sys
import threading
from types import ModuleType
from typing import Any, Iterator, Sequence

from .. import __version__
from ..errors import PygdsError
from . import CommandError, UsageError, bench, info

log = logging.getLogger(__name__)

COMMANDS_GROUP = "pygds.commands"
"""Entry-point group of commands other packages add to `pygds`: each names a module with
`add_parser(subparsers)` (the LMCache plugin adds `cache` and `demo` this way)."""
TERMINATING_SIGNALS = (signal.SIGTERM, signal.SIGHUP)
EXIT_BROKEN_PIPE = 128 + signal.SIGPIPE


class Terminated(BaseException):
    """Raised in the main thread by SIGTERM or SIGHUP; a BaseException, as KeyboardInterrupt is, so
    no `except Exception` swallows it before the `finally` blocks have cleaned up."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def plugin_commands() -> list[tuple[importlib.metadata.EntryPoint, ModuleType | Exception]]:
    """The `pygds.commands` entry points, each with its module, or the error loading it raised
    (a broken plugin must not take the other commands down)."""
    found: dict[str, importlib.metadata.EntryPoint] = {}
    for ep in importlib.metadata.entry_points(group=COMMANDS_GROUP):
        found.setdefault(ep.name, ep)
    out: list[tuple[importlib.metadata.EntryPoint, ModuleType | Exception]] = []
    for name in sorted(found):
        ep = found[name]
        try:
            out.append((ep, ep.load()))
        except Exception as exc:  # whatever the plugin's import raised
            log.debug("cannot load the %r command from %s", name, ep.value, exc_info=True)
            out.append((ep, exc))
    return out


def _add_unavailable(subparsers: Any, ep: importlib.metadata.EntryPoint, exc: Exception) -> None:
    """A command whose module cannot be loaded: listed, and running it says why (exit 1)."""
    why = f"{type(exc).__name__}: {exc}"
    p = subparsers.add_parser(ep.name, help=f"(unavailable: {why})", add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER)

    def unavailable(_args: argparse.Namespace) -> int:
        dist = ep.dist.name if ep.dist is not None else "the package that provides it"
        raise CommandError(f"the {ep.name!r} command ({ep.value}) cannot be loaded: {why}. "
                           f"Fix: install what the error names, or reinstall {dist}")

    p.set_defaults(func=unavailable, parser=p)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pygds",
        description="GPU-Direct-Storage for Python: diagnostics and a gdsio-class benchmark, plus the commands "
                    "installed packages add (the LMCache plugin: cache management and a KV-cache demo).",
        epilog="Exit codes: 0 success, 1 failure (or problems found by 'cache verify' / 'cache check-config'), "
               "2 bad arguments, 128+N ended by signal N (130 Ctrl-C, 141 output closed early, 143 SIGTERM). "
               "Logs go to stderr; --json output is the only thing on stdout.")
    parser.add_argument("--version", action="version", version=f"pygds {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="log more to stderr (-v info, -vv debug)")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (info, bench):
        module.add_parser(subparsers)
    for ep, loaded in plugin_commands():
        if isinstance(loaded, Exception):
            _add_unavailable(subparsers, ep, loaded)
            continue
        try:
            loaded.add_parser(subparsers)
        except Exception as exc:  # a plugin's parser that cannot be built
            _add_unavailable(subparsers, ep, exc)
    return parser


def _setup_logging(verbosity: int) -> None:
    if not logging.getLogger().handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
        logging.getLogger().addHandler(handler)
    if verbosity:
        level = logging.INFO if verbosity == 1 else logging.DEBUG
        names = {"pygds"} | {ep.value.split(".", 1)[0] for ep in importlib.metadata.entry_points(group=COMMANDS_GROUP)}
        for name in names:
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
