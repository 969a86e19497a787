"""What every matcher command line shares: matcher errors become one readable line and an exit
code, never a traceback."""

from __future__ import annotations

import datetime

import click
from rich.console import Console
from rich.markup import escape

from matcher.errors import MatcherError

stderr = Console(stderr=True)


def report_error(err: MatcherError) -> None:
    # soft_wrap: a long path stays one line to copy (the terminal wraps it for the eye); escape: a
    # path or value with [brackets] is text, not rich markup.
    stderr.print(f"[bold red]error:[/] {escape(err.message)}", highlight=False, soft_wrap=True)
    if err.hint:
        stderr.print(f"[dim]hint: {escape(err.hint)}[/]", highlight=False, soft_wrap=True)


def when(timestamp: float) -> str:
    """A stored time as every table shows it: to the minute, in UTC."""
    return datetime.datetime.fromtimestamp(timestamp, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


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
