"""Jobs and the privacy-budget ledger: each job's row and the ε it reserved, committed or got back."""

from __future__ import annotations

import json
import sqlite3
from typing import Sequence

from matcher import policy as policy_mod
from matcher.errors import LimitExceeded, NotFound
from matcher.server.store.db import Database
from matcher.server.store.principals import Principal


class LedgerTables(Database):
    """A job's life in the store: opened with its ε reserved, then released (ε committed) or failed
    (ε refunded, unless committed at acceptance); refusals are recorded without a charge."""

    def budget_spent(self, merchant_id: int, period_seconds: float, now: float | None = None) -> float:
        now = self._clock() if now is None else now
        row = self.db.execute("SELECT coalesce(sum(epsilon), 0) FROM budget WHERE merchant_id = ? "
                              "AND state IN ('reserved', 'committed') AND at > ?",
                              [merchant_id, now - period_seconds]).fetchone()
        return float(row[0])

    def open_job(self, job_id: str, merchant: Principal, *, pol: policy_mod.Policy, epsilon: float,
                 list_size: int, labels: int, label_sizes: Sequence[int] = (), protocol: str = "") -> None:
        """Record the job and reserve its ε in one IMMEDIATE transaction: two concurrent jobs can
        never both see the same remaining budget. Raises LimitExceeded (nothing written) when the
        rate or the budget would be exceeded."""
        now = self._clock()
        with self.transaction() as conn:
            recent = conn.execute("SELECT count(*) FROM jobs WHERE merchant_id = ? AND created > ? AND state != 'refused'",
                                  [merchant.id, now - 3600]).fetchone()[0]
            if recent >= pol.jobs_per_hour:
                raise LimitExceeded(f"rate limit: {recent} jobs in the last hour (limit {pol.jobs_per_hour})",
                                    reason="rate_limited", hint="wait and retry later")
            spent = conn.execute("SELECT coalesce(sum(epsilon), 0) FROM budget WHERE merchant_id = ? "
                                 "AND state IN ('reserved', 'committed') AND at > ?",
                                 [merchant.id, now - pol.budget_period_seconds]).fetchone()[0]
            if spent + epsilon > pol.epsilon_budget + 1e-9:
                raise LimitExceeded(
                    f"privacy budget exhausted: {spent:g} of {pol.epsilon_budget:g} spent in the last "
                    f"{pol.budget_period}, this job needs {epsilon:g}",
                    reason="budget_exhausted", hint="the budget returns as old jobs leave the period")
            conn.execute("INSERT INTO jobs (id, merchant_id, state, created, list_size, labels, policy_json, label_sizes, "
                         "protocol) VALUES (?, ?, 'running', ?, ?, ?, ?, ?, ?)",
                         [job_id, merchant.id, now, list_size, labels, json.dumps(pol.to_dict(), sort_keys=True),
                          json.dumps(sorted(int(n) for n in label_sizes)), protocol])
            conn.execute("INSERT INTO budget (job_id, merchant_id, epsilon, state, at) VALUES (?, ?, ?, 'reserved', ?)",
                         [job_id, merchant.id, epsilon, now])

    def record_refusal(self, job_id: str, merchant: Principal, reason: str, list_size: int, labels: int) -> None:
        with self.transaction() as conn:
            conn.execute("INSERT INTO jobs (id, merchant_id, state, reason, created, finished, list_size, labels) "
                         "VALUES (?, ?, 'refused', ?, ?, ?, ?, ?)",
                         [job_id, merchant.id, reason, self._clock(), self._clock(), list_size, labels])

    def finish_job(self, job_id: str, *, released: bool, report_json: str | None = None, reason: str | None = None,
                   leaf_index: int | None = None) -> None:
        """Commit the reserved ε when something was released, refund it otherwise."""
        with self.transaction() as conn:
            self.finish_job_in(conn, job_id, released=released, report_json=report_json, reason=reason,
                               leaf_index=leaf_index)

    def finish_job_in(self, conn: sqlite3.Connection, job_id: str, *, released: bool, report_json: str | None = None,
                      reason: str | None = None, leaf_index: int | None = None) -> None:
        """:meth:`finish_job` inside the caller's transaction (the one that logs the job's end)."""
        conn.execute("UPDATE jobs SET state = ?, reason = ?, finished = ?, report_json = ?, leaf_index = ? WHERE id = ?",
                     ["released" if released else "failed", reason, self._clock(), report_json, leaf_index, job_id])
        conn.execute("UPDATE budget SET state = ? WHERE job_id = ? AND state = 'reserved'",
                     ["committed" if released else "refunded", job_id])

    def commit_budget(self, job_id: str) -> None:
        """Spend a running job's reserved ε now, whatever happens next: called before anything that
        depends on the platform's data leaves the server (secure protocol), so no failure, crash or
        disconnect afterwards can give it back."""
        with self.transaction() as conn:
            conn.execute("UPDATE budget SET state = 'committed' WHERE job_id = ? AND state = 'reserved'", [job_id])

    def job(self, job_id: str, merchant: Principal) -> dict:
        """A merchant sees only its own jobs; another merchant's id looks exactly like an unknown one."""
        row = self.db.execute("SELECT id, state, reason, report_json, epsilon_state FROM ("
                              " SELECT j.id, j.state, j.reason, j.report_json, b.state AS epsilon_state, j.merchant_id"
                              " FROM jobs j LEFT JOIN budget b ON b.job_id = j.id) WHERE id = ? AND merchant_id = ?",
                              [job_id, merchant.id]).fetchone()
        if row is None:
            raise NotFound(f"no job '{job_id}'")
        return dict(zip(("job_id", "state", "reason", "report_json", "budget_state"), row))

    def running_jobs(self) -> list[dict]:
        """Jobs still marked running (at start-up: the ones a crash interrupted), with what their
        log entry needs: merchant, sizes, policy, protocol, start time and the ε state."""
        columns = ("job_id", "merchant", "list_size", "label_sizes", "policy_json", "protocol", "created",
                   "epsilon", "budget_state")
        rows = self.db.execute(
            "SELECT j.id, p.name, j.list_size, j.label_sizes, j.policy_json, j.protocol, j.created, b.epsilon, b.state "
            "FROM jobs j JOIN principals p ON p.id = j.merchant_id LEFT JOIN budget b ON b.job_id = j.id "
            "WHERE j.state = 'running' ORDER BY j.created").fetchall()
        return [dict(zip(columns, row)) for row in rows]

    def recent_jobs(self, limit: int = 50) -> list[dict]:
        """The latest jobs, newest first, as the operator console shows them: merchant, state, kind
        (``activation`` when the job stored a slice, else ``match``), protocol, sizes, times, ε and its
        ledger state, reason. Never the report: released counts stay in the audit log."""
        columns = ("job_id", "merchant", "state", "kind", "protocol", "list_size", "labels", "created", "finished",
                   "epsilon", "budget_state", "reason")
        rows = self.db.execute(
            "SELECT j.id, p.name, j.state, CASE WHEN EXISTS (SELECT 1 FROM activations a WHERE a.job_id = j.id) "
            "THEN 'activation' ELSE 'match' END, j.protocol, j.list_size, j.labels, j.created, j.finished, "
            "b.epsilon, b.state, j.reason FROM jobs j JOIN principals p ON p.id = j.merchant_id "
            "LEFT JOIN budget b ON b.job_id = j.id ORDER BY j.created DESC LIMIT ?", [limit]).fetchall()
        return [dict(zip(columns, row)) for row in rows]

    def job_counts(self, since: float, bucket_seconds: float) -> list[tuple[float, str, int]]:
        """(bucket start, state, jobs) for jobs created since ``since``, in buckets of ``bucket_seconds``."""
        return [(float(r[0]), r[1], r[2]) for r in self.db.execute(
            "SELECT CAST((created - ?) / ? AS INTEGER) * ? + ?, state, count(*) FROM jobs WHERE created >= ? "
            "GROUP BY 1, 2 ORDER BY 1", [since, bucket_seconds, bucket_seconds, since, since])]

    def fail_jobs_in(self, conn: sqlite3.Connection, job_ids: Sequence[str], reason: str) -> None:
        """Mark jobs a crash interrupted failed: reserved ε goes back (nothing was released), ε a
        secure job committed before its data left the server stays spent."""
        for job_id in job_ids:
            self.finish_job_in(conn, job_id, released=False, reason=reason)
