"""What every matcher command line shares: matcher errors become one readable line and an exit
code, never a traceback."""

from __future__ import annotations

import click
from rich.console import Console

from matcher.errors import MatcherError

stderr = Console(stderr=True)


def report_error(err: MatcherError) -> None:
    stderr.print(f"[bold red]error:[/] {err.message}", highlight=False)
    if err.hint:
        stderr.print(f"[dim]hint: {err.hint}[/]", highlight=False)


class ErrorReportingGroup(click.Group):
    """A click group that prints a :class:`MatcherError` and exits with ``error_exit_code``."""

    error_exit_code = 1

    def handle(self, err: MatcherError) -> int:
        """Say what went wrong; return the exit code."""
        report_error(err)
        return self.error_exit_code

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except MatcherError as err:
            raise SystemExit(self.handle(err)) from None
