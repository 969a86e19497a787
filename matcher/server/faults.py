"""Named crash points for the crash tests (SQLite-style fault injection).

``point(name)`` does nothing unless the environment variable ``MATCHER_CRASH_AT`` names it; then
the process dies on the spot with ``os._exit`` (no cleanup, no flush: what kill -9 leaves). The
tests start a real server with the variable set, run a job into the point, restart the server on
the same database and check that the log, the ε ledger and the job states agree.
"""

from __future__ import annotations

import os

CRASHED = 137  # the exit status a crash point dies with


def point(name: str) -> None:
    if os.environ.get("MATCHER_CRASH_AT") == name:
        os._exit(CRASHED)
