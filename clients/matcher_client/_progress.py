"""Progress of a job's long steps, for a person (rich bars with rates and ETA) or for a program
(one JSON object per line), both on stderr so that stdout holds only the result.

The API reports ``progress(phase, done, total)`` (see :data:`matcher_client.api.Progress`); here each
phase gets the short name the user sees: normalize, hash & blind, stream, return, match.

A JSON progress line (``--progress json``, the default with ``--json -``)::

    {"phase": "normalize", "done": 65536, "total": 200000, "rate": 21845.3, "eta_s": 6.1}

``total``, ``rate`` (items a second) and ``eta_s`` are null when unknown; the last line of a phase
has ``done == total``. Lines come at most every quarter second per phase, plus each phase's last.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import (BarColumn, MofNCompleteColumn, Progress, ProgressColumn, SpinnerColumn, TextColumn,
                           TimeElapsedColumn, TimeRemainingColumn)
from rich.text import Text

MODES = ("bar", "json", "none")
# The API's phase -> what the user sees (in the order a job goes through them).
PHASES = {"reading": "normalize", "blinding": "hash & blind", "matching": "stream", "returning": "return",
          "waiting for the report": "match", "waiting for the server": "server busy, retrying"}
_EVERY = 0.25  # seconds between two JSON lines of one phase

Notify = Callable[[str, int, "int | None"], None]


class RateColumn(ProgressColumn):
    """Items per second, e.g. ``21.8k/s`` (rich's own speed column counts bytes)."""

    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        if not speed:
            return Text("", style="progress.data.speed")
        for unit, scale in (("M", 1e6), ("k", 1e3), ("", 1)):
            if speed >= scale:
                return Text(f"{speed / scale:.1f}{unit}/s", style="progress.data.speed")
        return Text(f"{speed:.1f}/s", style="progress.data.speed")


@contextlib.contextmanager
def progress(mode: str, console: Console) -> Iterator[Notify]:
    """A ``notify(phase, done, total)`` that shows progress as ``mode`` says (bar, json or none)."""
    if mode == "json":
        yield _JsonLines(sys.stderr)
        return
    with Progress(SpinnerColumn(), TextColumn("{task.description:<12}"), BarColumn(), MofNCompleteColumn(),
                  RateColumn(), TimeElapsedColumn(), TextColumn("eta"), TimeRemainingColumn(),
                  console=console, disable=mode == "none", transient=False) as bars:
        tasks: dict[str, int] = {}

        def notify(phase: str, done: int, total: int | None) -> None:
            if phase == "done":  # the report is in: the server's matching is over
                if "match" in tasks:
                    bars.update(tasks["match"], total=1, completed=1)
                return
            name = PHASES.get(phase, phase)
            if name not in tasks:
                tasks[name] = bars.add_task(name, total=total)
            bars.update(tasks[name], completed=done, total=total)

        yield notify


class _JsonLines:
    def __init__(self, stream):
        self._stream = stream
        self._phases: dict[str, tuple[float, float]] = {}  # phase -> (started, last line written)

    def __call__(self, phase: str, done: int, total: int | None) -> None:
        if phase == "done":
            phase, done, total = "waiting for the report", 1, 1
        name = PHASES.get(phase, phase)
        now = time.monotonic()
        started, last = self._phases.get(name, (now, 0.0))
        finished = total is not None and done >= total
        if not finished and now - last < _EVERY:
            return
        self._phases[name] = (started, now)
        elapsed = now - started
        rate = done / elapsed if elapsed > 0 and done else None
        eta = (total - done) / rate if rate and total is not None else None
        line = {"phase": name, "done": done, "total": total, "rate": round(rate, 1) if rate else None,
                "eta_s": round(eta, 1) if eta is not None else None}
        self._stream.write(json.dumps(line) + "\n")
        self._stream.flush()
