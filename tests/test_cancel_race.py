"""A cancelled job stream is recorded as cancelled even when gRPC first shows the cancel as the end
of the requests, with the call still active for a moment (a flaky test_observability run under
load: the server saw a truncated stream and recorded the hung-up job as failed)."""

from __future__ import annotations

import threading
import time

from matcher.errors import InputError
from matcher.server import service


class _Context:
    """A server call context that goes inactive ``after`` seconds (None: never)."""

    def __init__(self, after: float | None):
        self._gone = threading.Event()
        if after is not None:
            threading.Timer(after, self._gone.set).start()

    def is_active(self) -> bool:
        return not self._gone.is_set()


def test_a_stream_that_ended_as_the_call_is_cancelled_counts_as_gone():
    ended = service._StreamEnded("the stream ended while the server waited for blinded")
    assert service._went_away(_Context(after=0.1), ended)


def test_a_stream_the_client_closed_early_is_not_a_cancel():
    started = time.monotonic()
    assert not service._went_away(_Context(after=None), service._StreamEnded("ended"))
    assert time.monotonic() - started >= service._CANCEL_SETTLE_S


def test_other_errors_are_decided_at_once():
    started = time.monotonic()
    assert not service._went_away(_Context(after=0.1), InputError("unknown segment"))
    assert time.monotonic() - started < 0.05
