"""The `pygds` command: `info`, `bench`, `cache` and `demo` (entry point `pygds.cli.main:main`).

Subcommands raise `UsageError` for arguments that parse but make no sense together (exit code 2,
as argparse's own errors) and `CommandError` for work that could not be done (exit code 1).
"""
from __future__ import annotations


class UsageError(Exception):
    """Arguments that cannot work together; `main` prints usage and exits with 2."""


class CommandError(Exception):
    """The command could not do its work; `main` prints the message (cause and fix) and exits with 1."""
