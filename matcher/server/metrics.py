"""Prometheus metrics of ``matcher serve --metrics HOST:PORT``: what the operator watches.

Two kinds of numbers, kept apart on purpose:

* **events** — jobs ended (by state, kind, protocol), refusals (by reason), phase durations — are
  counted by a :class:`Recorder` the job runner calls once per refusal and once per job end. The
  plain :class:`Recorder` does nothing: a server built without ``--metrics`` runs exactly as before.
* **state** — audience size and version, audit-log size, ε spent per merchant, precomputed stream
  slots and randomness, active jobs — is read from the store (and the runner) at scrape time by
  :class:`_StateCollector`, so it is right after a restart and needs no bookkeeping.

What is never exported: an ID, a token, a job id, or a count the policy has not released — no
match count, no overlap or slice size, no unnoised aggregate. Sizes the platform sees anyway (its
own audience, its own log) are exported; merchant names label the ε gauges (operator-facing).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from typing import TYPE_CHECKING, Callable, Mapping
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Histogram, make_wsgi_app
from prometheus_client.core import GaugeMetricFamily

from matcher.crypto import pool
from matcher.errors import InputError

if TYPE_CHECKING:  # the runner imports this module, not the other way round
    from matcher.server.jobs import JobRunner

# Phases of a job, in order (see PhaseClock's callers in matcher.server.jobs). A job of several streams
# (secure protocol: one per segment) goes through list, stream and return once per stream; a
# phase's duration is the sum over them.
PHASES = ("admit", "list", "stream", "return", "release")
# Seconds: a small count-only job takes a tenth of a second, a big first unbalanced job minutes.
_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


class PhaseClock:
    """Splits one job's wall time into phases: ``enter(phase)`` closes the phase running so far and
    opens the next; ``stop()`` closes the last and returns seconds by phase, plus "total"."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._started = self._since = clock()
        self._current: str | None = None
        self._seconds: dict[str, float] = {}

    def enter(self, phase: str) -> None:
        now = self._clock()
        if self._current is not None:
            self._seconds[self._current] = self._seconds.get(self._current, 0.0) + now - self._since
        self._current, self._since = phase, now

    def stop(self) -> dict[str, float]:
        self.enter("")
        self._current = None
        return {**{phase: s for phase, s in self._seconds.items() if phase}, "total": self._clock() - self._started}


class Recorder:
    """The job runner's events. This base records nothing (a server without ``--metrics``)."""

    def job_refused(self, *, kind: str, protocol: str, reason: str) -> None:
        """A job refused before it started (policy, budget, rate, a busy server): nothing was charged."""

    def job_ended(self, *, kind: str, protocol: str, state: str, reason: str | None,
                  phases: Mapping[str, float]) -> None:
        """A started job ended: ``state`` released, refused (a refusal after the crypto, e.g. an
        activation's slice under k: charged), failed or cancelled (the client or the server went away)."""


class PrometheusRecorder(Recorder):
    """Counts events into its own registry (not prometheus_client's global one: tests and several
    servers in one process must not share counters), which :meth:`watch` extends with the store's state."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry(auto_describe=True)
        self._jobs = Counter("matcher_jobs", "Jobs by final state, kind and protocol.",
                             ("state", "kind", "protocol"), registry=self.registry)
        self._refusals = Counter("matcher_job_refusals", "Refused jobs by the policy's reason code.",
                                 ("reason",), registry=self.registry)
        self._phases = Histogram("matcher_job_phase_seconds",
                                 "Wall time of each phase of released jobs (phase total: the whole job).",
                                 ("phase", "protocol"), buckets=_BUCKETS, registry=self.registry)

    def job_refused(self, *, kind: str, protocol: str, reason: str) -> None:
        self._jobs.labels("refused", kind, protocol).inc()
        self._refusals.labels(reason).inc()

    def job_ended(self, *, kind: str, protocol: str, state: str, reason: str | None,
                  phases: Mapping[str, float]) -> None:
        self._jobs.labels(state, kind, protocol).inc()
        if state == "refused" and reason:
            self._refusals.labels(reason).inc()
        if state == "released":  # failed jobs' phases end wherever they broke: they would blur the timings
            for phase, seconds in phases.items():
                self._phases.labels(phase, protocol).observe(seconds)

    def watch(self, runner: "JobRunner", *, stream_slots: int, randomness_pool: int) -> None:
        """Export ``runner``'s store and load at scrape time; the two numbers are the configured targets."""
        self.registry.register(_StateCollector(runner, stream_slots, randomness_pool))


class _StateCollector:
    """Gauges read from the store when Prometheus scrapes (a few small queries, one per merchant for ε)."""

    def __init__(self, runner: "JobRunner", stream_slots: int, randomness_pool: int):
        self._runner, self._slots, self._pool = runner, stream_slots, randomness_pool
        # Counting 10^9 members takes SQLite minutes: the count is kept per audience snapshot (every
        # import batch gives the audience a new version), so a scrape counts only after a change.
        self._members: tuple[str, int] | None = None

    def _audience_members(self, version: str) -> int:
        if self._members is None or self._members[0] != version:
            self._members = (version, self._runner.store.audience_info()["members"])
        return self._members[1]

    def describe(self):
        return []  # no description up front: registering must not query the store

    def collect(self):
        runner, store = self._runner, self._runner.store
        version = store.get_meta("audience_version", "")
        segments = json.loads(store.get_meta("segments", "[]"))
        yield _gauge("matcher_active_jobs", "Jobs running now.", runner.active_jobs)
        yield _gauge("matcher_audience_members", "Members in the platform's audience.", self._audience_members(version))
        yield _gauge("matcher_audience_version", "Whole audience imports so far (changes with each import).",
                     int(store.get_meta("audience_seq", "0") or 0))
        yield _gauge("matcher_audit_log_entries", "Leaves of the audit log.", store.log_size())

        ready = GaugeMetricFamily("matcher_stream_slots_ready", "Precomputed job streams ready for the current "
                                  "audience (segment '': every member).", labels=("segment",))
        for segment in ("", *segments):
            ready.add_metric((segment,), store.stream_slots(version, segment))
        yield ready
        yield _gauge("matcher_stream_slots_configured", "Precomputed job streams to keep ready per stream "
                     "(serve --stream-slots).", self._slots)
        yield _gauge("matcher_randomness_pool_values", "Precomputed Paillier randomness ready, in values.",
                     store.pool_batches(runner.pool_key_id) * pool.BATCH)
        yield _gauge("matcher_randomness_pool_configured_values", "Paillier randomness to keep ready "
                     "(serve --randomness-pool).", self._pool)

        spent = GaugeMetricFamily("matcher_merchant_epsilon_spent", "ε a merchant has spent (and reserved) in "
                                  "its current budget period, as the budget check counts it.", labels=("merchant",))
        budget = GaugeMetricFamily("matcher_merchant_epsilon_budget", "ε a merchant may spend per budget period.",
                                   labels=("merchant",))
        for row in store.list_principals("merchant"):
            merchant = store.principal("merchant", row["name"])
            pol = store.effective_policy(merchant.name)
            spent.add_metric((merchant.name,), store.budget_spent(merchant.id, pol.budget_period_seconds))
            budget.add_metric((merchant.name,), pol.epsilon_budget)
        yield spent
        yield budget


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


class _QuietHandler(WSGIRequestHandler):
    # A scraper that connects and sends nothing must not hold the (single) serving thread for long.
    timeout = 10

    def log_message(self, format, *args):  # wsgiref's signature
        pass  # wsgiref writes every request to stderr; the server's logs are for jobs


class _Server(WSGIServer):
    address_family = socket.AF_INET


class _Server6(WSGIServer):
    address_family = socket.AF_INET6


class MetricsEndpoint:
    """``GET /metrics`` (any path) on HOST:PORT, on one thread started by :meth:`start`.

    One thread, not prometheus_client's threading server: the collector reads the store, which
    keeps one SQLite connection per thread for the store's lifetime, so a thread per scrape would
    leak a connection per scrape.
    """

    def __init__(self, registry: CollectorRegistry, listen: str):
        host, _, port = listen.rpartition(":")
        host = host.strip("[]")
        if not host or not port.isdigit() or int(port) > 65535:
            raise InputError(f"--metrics wants HOST:PORT, not {listen!r}", hint="e.g. --metrics 127.0.0.1:9464")
        try:
            self._httpd = make_server(host, int(port), make_wsgi_app(registry),
                                      server_class=_Server6 if ":" in host else _Server, handler_class=_QuietHandler)
        except OSError as err:
            raise InputError(f"cannot serve metrics on {listen}: {err.strerror or err}",
                             hint="pick another --metrics HOST:PORT") from None
        self.port = self._httpd.server_port
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="matcher-metrics", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Idempotent; also fine when never started (the port is closed either way)."""
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=10)
            self._thread = None
        self._httpd.server_close()
