"""Everything the console page shows, read in one go through a read-only :class:`~matcher.server.store.Store`.

What is deliberately *not* here: member or list IDs, tokens or their hashes, principals' row
ids, and any count a job computed (released reports stay in the audit log, where the policy put
them; unreleased values are nowhere). Jobs appear as sizes, states and ε only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from matcher.server.store import Store

# The jobs chart: at most this many bars, each one of these widths (seconds), the smallest that fits.
CHART_BARS = 24
_BUCKETS = (60, 300, 900, 3600, 6 * 3600, 86400, 7 * 86400)
# How far back the jobs chart looks at most.
_CHART_HORIZON = 30 * 86400
RECENT_JOBS = 50


@dataclass(frozen=True)
class MerchantBudget:
    name: str
    disabled: bool
    epsilon_used: float     # reserved or committed in the merchant's current budget period
    epsilon_budget: float
    budget_period: str

    @property
    def epsilon_left(self) -> float:
        return max(0.0, self.epsilon_budget - self.epsilon_used)


@dataclass(frozen=True)
class JobRow:
    job_id: str
    merchant: str
    state: str
    kind: str
    protocol: str
    list_size: int | None
    labels: int | None
    created: float
    duration: float | None  # seconds; None while running
    epsilon: float | None
    budget_state: str | None
    reason: str | None


@dataclass(frozen=True)
class JobBuckets:
    """Jobs created per time bucket and state, for the chart."""
    start: float
    bucket_seconds: int
    counts: list[dict[str, int]]  # one per bucket: state -> jobs


@dataclass(frozen=True)
class Snapshot:
    taken_at: float
    origin: str | None
    audience: dict[str, Any]           # id_kind, segments, members
    audience_version: str
    merchants: list[MerchantBudget]
    auditors: int
    jobs: list[JobRow]
    jobs_by_state: dict[str, int]
    job_buckets: JobBuckets
    policy: dict[str, Any]             # the operator default in force
    policy_set: dict[str, str]         # what the operator set explicitly
    overrides: dict[str, dict[str, str]]  # merchant -> its own settings
    precomputation: dict[str, Any]
    activations: dict[str, int]        # state -> activations
    log_size: int
    checkpoint: str | None             # the latest signed note, as published


def take(store: Store) -> Snapshot:
    """Read the page's data; only Store read methods, so a read-only store serves it."""
    now = store.now()
    status = store.status()
    merchants, overrides = [], {}
    for m in store.list_principals("merchant"):
        pol = store.effective_policy(m["name"])
        used = store.budget_spent(store.principal("merchant", m["name"]).id, pol.budget_period_seconds, now)
        merchants.append(MerchantBudget(m["name"], bool(m["disabled"]), used, pol.epsilon_budget, pol.budget_period))
        if own := store.policy_settings(m["name"]):
            overrides[m["name"]] = own
    latest = store.latest_checkpoint()
    return Snapshot(
        taken_at=now, origin=store.get_meta("origin"), audience=status["audience"],
        audience_version=store.get_meta("audience_version", "") or "", merchants=merchants,
        auditors=status["auditors"], jobs=[_job(j) for j in store.recent_jobs(RECENT_JOBS)],
        jobs_by_state=status["jobs"], job_buckets=_buckets(store, now), policy=store.effective_policy().to_dict(),
        policy_set=store.policy_settings(""), overrides=overrides,
        precomputation={key: status[key] for key in (
            "stream_slots_ready", "segment_stream_slots_ready", "stream_slot_rows_in_progress",
            "randomness_pool_batches", "preprocessing_ready", "unbalanced_copies")},
        activations=status["activations"], log_size=status["audit_log_entries"],
        checkpoint=latest[1] if latest else None)


def _job(row: dict) -> JobRow:
    finished = row["finished"]
    return JobRow(job_id=row["job_id"], merchant=row["merchant"], state=row["state"], kind=row["kind"],
                  protocol=row["protocol"] or "", list_size=row["list_size"], labels=row["labels"],
                  created=row["created"], duration=None if finished is None else max(0.0, finished - row["created"]),
                  epsilon=row["epsilon"], budget_state=row["budget_state"], reason=row["reason"])


def _buckets(store: Store, now: float) -> JobBuckets:
    """The narrowest bucket width whose CHART_BARS bars, ending now, hold every job of the horizon."""

    def jobs_since(at: float) -> int:
        return sum(n for _, _, n in store.job_counts(at, _CHART_HORIZON))

    everything = jobs_since(now - _CHART_HORIZON)
    for width in _BUCKETS:
        start = (math.floor(now / width) + 1 - CHART_BARS) * width
        if width == _BUCKETS[-1] or jobs_since(start) == everything:
            break
    counts: list[dict[str, int]] = [{} for _ in range(CHART_BARS)]
    for at, state, n in store.job_counts(start, width):
        slot = round((at - start) / width)
        if 0 <= slot < CHART_BARS:
            counts[slot][state] = counts[slot].get(state, 0) + n
    return JobBuckets(start=start, bucket_seconds=width, counts=counts)
