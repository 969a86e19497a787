"""A hypothesis state machine over the job lifecycle (issue 14): jobs start, advance message by
message, get messages out of order, are cancelled, and the server "crashes" (every job object is
dropped without cleanup, and a new runner recovers the store). After every step: the log only
grows, every ended job is in the log once with exactly the ε the ledger holds for it, no job is
left running unless it is in flight, and no merchant's committed ε exceeds its budget."""

from __future__ import annotations

import json
import random
import tempfile
from pathlib import Path

import hypothesis.strategies as st
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from matcher import policy as policy_mod
from matcher.crypto.kernels import Kernels
from matcher.errors import MatcherError
from matcher.server.jobs import JobRunner
from matcher.server.auditlog import AuditLog
from matcher.protocol.messages import SECURE, JobStart
from matcher.protocol.secure_merchant import SecureMerchantSession
from tests.conftest import exact_policy, match_key, new_operator, phone

MERCHANTS = ("m0", "m1")
BUDGET, PER_JOB = 0.3, 0.1


class _Flight:
    """One job in flight: the platform's job object and the merchant's session, and how far they got."""

    def __init__(self, job, session):
        self.job, self.session = job, session
        self.stream, self.phase = 0, "list"   # list -> stream -> return -> (next stream) ... -> release

    def advance(self) -> bool:
        """One protocol step; True once the job has released."""
        job, session, s = self.job, self.session, self.stream
        if self.phase == "list":
            for chunk in session.blinded_chunks(s):
                job.receive_blinded(chunk, stream=s)
            job.finish_list(stream=s, merchant_base=session.merchant_base(s))
            self.phase = "stream"
        elif self.phase == "stream":
            for points in job.stream(s):
                session.receive_stream(s, points)
            self.phase = "return"
        elif self.phase == "return":
            for points in session.returned_chunks(s):
                job.receive_returned(points, stream=s)
            job.finish_stream(s)
            self.stream += 1
            self.phase = "list" if self.stream < len(session.stream_names) else "release"
        else:
            job.finish_count()
            return True
        return False


class JobLifecycle(RuleBasedStateMachine):
    @initialize()
    def open_store(self):
        self._dir = tempfile.TemporaryDirectory()
        operator = new_operator(Path(self._dir.name) / "op.db")
        self.keys, self.store = operator.keys, operator.store
        operator.add_members({phone(i): i % 4 for i in range(40)})
        exact_policy(self.store, noise="discrete_laplace", epsilon_per_job=str(PER_JOB), epsilon_budget=str(BUDGET),
                     jobs_per_hour="1000", audit_rows="4", dummies="off")
        self.principals = {name: self.store.authenticate(operator.token("merchant", name)) for name in MERCHANTS}
        self.runner = self._new_runner()
        self.flights: list[_Flight] = []
        self.log_seen: list[bytes] = []

    def _new_runner(self) -> JobRunner:
        return JobRunner(self.store, self.keys, AuditLog.for_store(self.store, self.keys.signer), kernels=Kernels(),
                         noise=policy_mod.OpenDPNoise(), max_concurrent_jobs=3)

    def teardown(self):
        self.store.close()
        self._dir.cleanup()

    @rule(merchant=st.sampled_from(MERCHANTS), size=st.integers(10, 30), segments=st.booleans())
    def start(self, merchant, size, segments):
        keys = [match_key(phone(i)) for i in range(20, 20 + size)]
        session = SecureMerchantSession(keys, ["all"] * size, id_kind="phone", rng=random.Random(size).randbytes)
        start: JobStart = session.start(all_segments=segments)
        try:
            job = self.runner.begin(self.principals[merchant], start, protocol=SECURE)
        except MatcherError:
            return  # refused (budget, server busy): nothing to follow
        session.accept(job.accepted)
        self.flights.append(_Flight(job, session))

    @precondition(lambda self: self.flights)
    @rule(pick=st.integers(0, 99))
    def step(self, pick):
        flight = self.flights[pick % len(self.flights)]
        try:
            if flight.advance():
                self.flights.remove(flight)
        except MatcherError as err:  # as the servicer does
            flight.job.fail(err)
            self.flights.remove(flight)

    @precondition(lambda self: self.flights)
    @rule(pick=st.integers(0, 99))
    def out_of_order(self, pick):
        flight = self.flights[pick % len(self.flights)]
        try:
            flight.job.finish_count()  # too early unless every stream is back
        except MatcherError as err:
            flight.job.fail(err)
        self.flights.remove(flight)

    @precondition(lambda self: self.flights)
    @rule(pick=st.integers(0, 99))
    def cancel(self, pick):
        flight = self.flights.pop(pick % len(self.flights))
        flight.job.abort("the client went away")

    @rule()
    def crash_and_restart(self):
        """Every job in flight is dropped without cleanup, as a kill -9 leaves it; a new runner recovers."""
        self.flights = []
        self.runner = self._new_runner()
        self.runner.recover_interrupted("server restarted during the job")

    @invariant()
    def log_only_grows(self):
        if not hasattr(self, "store"):
            return
        now = [data for _, data in self.store.log_entries(0, self.store.log_size())]
        assert now[:len(self.log_seen)] == self.log_seen
        self.log_seen = now

    @invariant()
    def log_ledger_and_jobs_agree(self):
        if not hasattr(self, "store"):
            return
        flying = {flight.job.job_id for flight in self.flights}
        jobs = dict(self.store.db.execute("SELECT id, state FROM jobs"))
        assert {j for j, state in jobs.items() if state == "running"} <= flying
        ledger = {j: (state, eps) for j, state, eps in self.store.db.execute("SELECT job_id, state, epsilon FROM budget")}
        logged: dict[str, dict] = {}
        for _, data in self.store.log_entries(0, self.store.log_size()):
            entry = json.loads(data)
            if entry.get("type") == "job" and entry["decision"] != "refused":
                assert entry["job_id"] not in logged, "a job ended twice"
                logged[entry["job_id"]] = entry
        ended = {j for j, state in jobs.items() if state in ("released", "failed")}
        assert set(logged) == ended
        for job_id in ended:
            state, eps = ledger[job_id]
            assert logged[job_id]["decision"] == jobs[job_id]
            assert logged[job_id]["epsilon_spent"] == (eps if state == "committed" else 0.0)

    @invariant()
    def budget_never_exceeded(self):
        if not hasattr(self, "store"):
            return
        for merchant in MERCHANTS:
            spent = self.store.budget_spent(self.principals[merchant].id, 365 * 86400)
            assert spent <= BUDGET + 1e-9


JobLifecycle.TestCase.settings = settings(max_examples=25, stateful_step_count=30, deadline=None,
                                          suppress_health_check=[HealthCheck.too_slow])
test_job_lifecycle = JobLifecycle.TestCase
