"""Crash tests in the SQLite style: a real `matcher serve` dies (os._exit, as kill -9 leaves it) at
each named point of a job's start, release and failure; a server restarted on the same database
must leave the log, the ε ledger and the job states in agreement, the log must verify, and the
next job must be exact (issue 14, items 1 and 2)."""

from __future__ import annotations

import json
import os
import random
import subprocess

import grpc
import pytest

from matcher.server import faults
from matcher.errors import MatcherError
from matcher.protocol.secure_merchant import SecureMerchantSession
from matcher_client import api
from matcher_client.audit import GrpcLogSource, verify
from tests.conftest import ground_truth, phone
from tests.test_cli import BIN, free_port, wait_serving

# (crash point, protocol, how the job ends if nothing crashes)
POINTS = [
    ("job.opened", "secure", "released"),
    ("job.accepted", "secure", "released"),
    ("release.before_log", "secure", "released"),
    ("log.append.before_commit", "secure", "released"),
    ("log.append.after_then", "secure", "released"),
    ("release.after_log", "secure", "released"),
    ("fail.before_log", "secure", "failed"),
    ("log.append.before_commit", "secure", "failed"),
    ("job.accepted", "activation", "activated"),
    ("log.append.after_then", "activation", "activated"),
    ("release.after_log", "activation", "activated"),
    ("job.opened", "semi_honest", "released"),
    ("release.before_log", "semi_honest", "released"),
    ("log.append.after_then", "semi_honest", "released"),
]


def serve_process(db, port: int, crash_at: str | None = None) -> subprocess.Popen:
    env = {key: value for key, value in os.environ.items() if key != "MATCHER_CRASH_AT"}
    if crash_at:
        env["MATCHER_CRASH_AT"] = crash_at
    return subprocess.Popen([str(BIN / "matcher"), "serve", "--db", str(db), "--listen", f"127.0.0.1:{port}",
                             "--executor", "inline", "--stream-slots", "0", "--randomness-pool", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def started(process: subprocess.Popen, port: int) -> str:
    with grpc.insecure_channel(f"127.0.0.1:{port}") as chan:
        wait_serving(chan)
    return f"127.0.0.1:{port}"


def run(address: str, token: str, customers, protocol: str):
    if protocol == "activation":
        return api.activate(address, token, api.prepare_rows(customers, id_type="phone"), name="crash", where="member",
                            timeout=60)
    return api.match(address, token, rows=customers, id_type="phone", protocol=protocol, timeout=60)


def agreement(store) -> None:
    """No job left running; every finished job's log entry names its state and exactly the ε the
    ledger holds for it (committed), and refunded ε is logged as 0."""
    assert store.db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    jobs = dict(store.db.execute("SELECT id, state FROM jobs"))
    assert "running" not in jobs.values()
    ledger = {job_id: (state, eps) for job_id, state, eps in store.db.execute("SELECT job_id, state, epsilon FROM budget")}
    logged = {}
    for _, data in store.log_entries(0, store.log_size()):
        entry = json.loads(data)
        if entry.get("type") == "job":
            assert entry["job_id"] not in logged, "a job ended twice in the log"
            logged[entry["job_id"]] = entry
    assert set(logged) == set(jobs), "every job the ledger saw start ends in the log"
    for job_id, state in jobs.items():
        entry = logged[job_id]
        assert entry["decision"] == ("activated" if state == "released" and "activation" in entry else state)
        budget_state, eps = ledger[job_id]
        assert budget_state in ("committed", "refunded")
        assert entry["epsilon_spent"] == (eps if budget_state == "committed" else 0.0)


@pytest.mark.parametrize("point, protocol, outcome", POINTS)
def test_a_crash_at_any_point_leaves_log_ledger_and_jobs_in_agreement(operator, monkeypatch, point, protocol, outcome):
    # Noise on, so jobs are charged; ε large, so the next job's noisy count is close to the truth.
    members, token = operator.seed(300, random.Random(3), noise="discrete_laplace", k="0", epsilon_per_job="10",
                                   epsilon_budget="100", semi_honest_match="on", audit_rows="64")
    auditor = operator.token("auditor", "alice")
    customers = [(phone(i), "all") for i in range(100, 400)]
    if outcome == "failed":  # a client whose return fails the audit: the job ends in job.fail
        original = SecureMerchantSession.transform_returned
        monkeypatch.setattr(SecureMerchantSession, "transform_returned",
                            lambda self, index, values: original(self, index, values)[1:])
    port = free_port()
    server = serve_process(operator.db, port, crash_at=point)
    try:
        address = started(server, port)
        with pytest.raises(MatcherError):
            run(address, token, customers, protocol)
        assert server.wait(timeout=60) == faults.CRASHED, server.stdout.read()
    finally:
        if server.poll() is None:
            server.kill()
    monkeypatch.undo()

    restarted = serve_process(operator.db, port)
    try:
        address = started(restarted, port)
        agreement(operator.store)
        with GrpcLogSource(address, auditor) as source:
            verify(source)
        report = api.match(address, token, rows=customers, id_type="phone",
                           protocol="semi_honest" if protocol == "semi_honest" else "secure")
        agreement(operator.store)
        if protocol == "activation":  # an activation the crash interrupted stored nothing; a new one works
            handles = {r[0]: r[1] for r in operator.store.db.execute("SELECT handle, job_id FROM activations")}
            jobs = dict(operator.store.db.execute("SELECT id, state FROM jobs"))
            assert all(jobs[job_id] == "activated" or jobs[job_id] == "released" for job_id in handles.values())
            assert run(address, token, customers, protocol)["noisy_size"] >= 0
    finally:
        restarted.terminate()
        restarted.wait(timeout=30)
    exact = ground_truth(members, customers)["all"]["matched"]
    assert abs(report["labels"]["all"]["matched"] - exact) < 30  # noisy (scale 0.6), about the truth


def test_a_crash_while_a_stream_slot_is_written_leaves_no_half_slot(operator):
    """Idle-time precomputation writes a slot in many transactions; killed in between, the restarted
    server deletes the half-made slot, makes a whole one, and jobs stay exact."""
    members, token = operator.seed(3_000, random.Random(5))
    port = free_port()
    server = subprocess.Popen([str(BIN / "matcher"), "serve", "--db", str(operator.db), "--listen", f"127.0.0.1:{port}",
                               "--executor", "inline", "--stream-slots", "1", "--randomness-pool", "0"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              env={**os.environ, "MATCHER_CRASH_AT": "slot.pieces_written"})
    assert server.wait(timeout=120) == faults.CRASHED
    store = operator.store
    assert store.db.execute("SELECT count(*) FROM stream_slots WHERE ready = 0").fetchone() == (1,)
    restarted = serve_process(operator.db, port)
    try:
        address = started(restarted, port)
        assert store.db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        assert store.db.execute("SELECT count(*) FROM stream_slots WHERE ready = 0").fetchone() == (0,)
        customers = [(phone(i), "all") for i in range(2_000, 4_000)]
        assert api.match(address, token, rows=customers, id_type="phone")["labels"] == ground_truth(members, customers)
    finally:
        restarted.terminate()
        restarted.wait(timeout=30)
