"""The release rules, re-checked for every new entry: each job against the policy it records, each
merchant's ε against its budget windows. See :func:`_check_job` for exactly what is and is not
checkable from the log.

:func:`check_entries` is the one entry point; it updates the auditor's state (per-merchant
ledgers, counts, the policy last seen) in place.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

from matcher.errors import InputError, VerificationError
from matcher.log.entries import JOB_DECISIONS, RECORDED_TYPES, RELEASING, canonical_json
from matcher.policy import Policy, job_epsilon
from matcher_client.audit.state import AuditState

__all__ = ["EntryChecks", "LedgerItem", "MerchantSummary", "ReleaseCheck", "check_entries", "summaries"]

# Floating-point slack for ε sums; the server allows the same 1e-9 over the budget.
_EPS_TOLERANCE = 1e-9


@dataclass(frozen=True)
class LedgerItem:
    """One job that spent ε, where the budget windows count it. In the state file it is the row
    ``[at, epsilon, period, budget, index]`` (:meth:`row`, :meth:`from_row`)."""
    at: float  # when the server reserved the ε: the entry's ``started`` when logged, else its decision ``time``
    epsilon: float
    period: float  # the job's budget_period, in seconds
    budget: float  # the job's epsilon_budget
    index: int  # of the job's log entry

    @classmethod
    def of_job(cls, entry: dict, index: int, epsilon: float, pol: Policy) -> LedgerItem:
        # The server reserves ε when a job starts; `started` (if a log records it) is that moment.
        return cls(float(entry.get("started", entry["time"])), epsilon, pol.budget_period_seconds,
                   pol.epsilon_budget, index)

    @classmethod
    def from_row(cls, row: Sequence) -> LedgerItem:
        at, epsilon, period, budget, index = row
        return cls(at, epsilon, period, budget, index)

    def row(self) -> list:
        return [self.at, self.epsilon, self.period, self.budget, self.index]


@dataclass(frozen=True)
class MerchantSummary:
    released: int
    activated: int
    refused: int
    failed: int
    epsilon_spent: float  # all released jobs ever seen
    epsilon_window: float  # in the budget period ending at the merchant's latest job
    policy_digest: str | None
    epsilon_budget: float | None = None  # of the policy last seen in force
    budget_period: str | None = None


@dataclass(frozen=True)
class ReleaseCheck:
    """One released job or activation this run checked, the policy it was held to, and what passed."""
    index: int
    job_id: str
    merchant: str
    decision: str
    time: float
    epsilon: float
    policy: dict[str, Any]
    checks: tuple[str, ...]


@dataclass
class EntryChecks:
    """What checking one run's new entries found."""
    jobs: dict[str, int]  # decision -> count
    warnings: list[str] = field(default_factory=list)
    releases: list[ReleaseCheck] = field(default_factory=list)


def check_entries(st: AuditState, first: int, entries: Sequence[bytes]) -> EntryChecks:
    """Check entries ``first, first + 1, ...`` against the release rules, updating ``st`` in place;
    raises VerificationError, naming the entry, on the first broken rule."""
    found = EntryChecks(jobs={d: 0 for d in JOB_DECISIONS})
    new_ledger: dict[str, list[LedgerItem]] = {}
    for index, data in enumerate(entries, first):
        _check_entry(st, index, data, found.jobs, new_ledger, found.warnings, found.releases)
    for merchant, added in new_ledger.items():
        _check_budget(merchant, st.merchants[merchant]["ledger"], min(item.at for item in added))
    return found


def summaries(st: AuditState) -> dict[str, MerchantSummary]:
    """Per merchant, by name: cumulative over every entry the state has verified."""
    return {name: _summary(m) for name, m in sorted(st.merchants.items())}


def _violation(index: int, entry: dict | None, problem: str) -> VerificationError:
    who = ""
    if isinstance(entry, dict) and entry.get("type") == "job":
        who = f" (job {entry.get('job_id')}, merchant {entry.get('merchant')!r})"
    return VerificationError(f"entry {index}{who}: {problem}")


def _check_entry(st: AuditState, index: int, data: bytes, jobs: dict[str, int],
                 new_ledger: dict[str, list[LedgerItem]], warnings: list[str], releases: list[ReleaseCheck]) -> None:
    try:
        entry = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise _violation(index, None, "is not JSON") from None
    if not isinstance(entry, dict):
        raise _violation(index, None, "is not a JSON object")
    if canonical_json(entry) != bytes(data):
        raise _violation(index, entry, "is not in canonical JSON form (sorted keys, no spaces)")
    kind = entry.get("type")
    st.entry_types[str(kind)] = st.entry_types.get(str(kind), 0) + 1
    if kind == "job":
        _check_job(st, index, entry, jobs, new_ledger, warnings, releases)
    elif kind == "policy":
        _check_policy_entry(index, entry)
        scope = entry.get("merchant") or ""
        st.policy_announced[scope] = index
    elif kind in ("merchant_disabled", "merchant_enabled"):
        name = entry.get("name")
        if not isinstance(name, str):
            raise _violation(index, entry, f"{kind} entry without a merchant name")
        merchant = _merchant(st, name)
        merchant["disabled_at"] = index if kind == "merchant_disabled" else None
    elif kind in RECORDED_TYPES:
        pass
    else:
        warnings.append(f"entry {index} has type {kind!r}, which this matcher-audit does not know: not checked")


def _merchant(st: AuditState, name: str) -> dict[str, Any]:
    return st.merchants.setdefault(name, {
        "ledger": [], "policy": None, "policy_digest": None, "last_job_index": None, "disabled_at": None,
        "released": 0, "activated": 0, "refused": 0, "failed": 0, "epsilon_total": 0.0})


def _recorded_policy(index: int, entry: dict) -> Policy:
    raw = entry.get("policy")
    if not isinstance(raw, dict):
        raise _violation(index, entry, "records no policy")
    try:
        pol, digest = _parse_policy(json.dumps(raw, sort_keys=True, separators=(",", ":")))
    except (InputError, TypeError) as err:
        raise _violation(index, entry, f"records an invalid policy: {err}") from None
    if entry.get("policy_digest") != digest:
        raise _violation(index, entry, f"policy_digest {entry.get('policy_digest')!r} is not the digest "
                                       f"{digest} of the policy it records")
    return pol


@functools.lru_cache(maxsize=64)
def _parse_policy(canonical: str) -> tuple[Policy, str]:
    """The policy (missing settings take defaults) and the digest of the dict *as recorded*.

    Policy.digest() hashes exactly this canonical JSON of to_dict(), so the two agree for every
    entry the server writes; hashing what was recorded, rather than the re-parsed policy, keeps
    old entries verifiable after a release adds a policy setting (which changes to_dict()).
    Cached: thousands of jobs share a handful of policies.
    """
    pol = Policy.from_dict(json.loads(canonical))
    return pol, hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _check_policy_entry(index: int, entry: dict) -> None:
    pol = _recorded_policy(index, entry)
    key = entry.get("key")
    if not isinstance(key, str) or key not in pol.to_dict():
        raise _violation(index, entry, f"policy change of unknown setting {key!r}")
    try:
        announced = Policy().with_setting(key, str(entry.get("value")))
    except InputError as err:
        raise _violation(index, entry, f"policy change to an invalid value: {err}") from None
    if getattr(announced, key) != getattr(pol, key):
        raise _violation(index, entry, f"announces {key} = {entry.get('value')!r} but records a policy with "
                                       f"{key} = {getattr(pol, key)!r}")


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_job(st: AuditState, index: int, entry: dict, jobs: dict[str, int],
               new_ledger: dict[str, list[LedgerItem]], warnings: list[str], releases: list[ReleaseCheck]) -> None:
    """Check one job decision against the policy it records.

    Checkable, and checked, for every job: the recorded policy is valid and ``policy_digest`` is
    its digest; sizes are counts. Refused and failed jobs released nothing (no ``released``, no
    ``report_digest``) and spent ε 0 — except a failed job marked ``charged`` (secure protocol: it
    failed after data-dependent messages had left the server), which spent exactly the policy's
    per-job ε, counted in the merchant's budget windows like a release. Released jobs and
    activations: the list size is within [min_list_size, max_list_size], labels are at most
    max_labels and each holds at least min_list_size IDs, the label sizes add up to the list
    size, every released cell is a non-negative integer or null (suppressed), ε spent equals
    ``job_epsilon(policy)``, and the merchant's ε over every budget_period window stays within
    epsilon_budget (see :func:`_check_budget`). A released job has one cell set per label and a
    report digest; an activation has one cell set, its slice.

    With noise ``none`` the released values are the true counts, so: every released cell is at
    least k; a segment count never exceeds its label's matched count (each summed row adds 1 to
    the count slot and at most 1 to each segment); a suppressed matched count suppresses every
    segment of that label (their true counts are smaller still).

    Not checkable from the log, with noise on: whether a released cell's *true* count was at
    least k, or whether a null cell really was under k. The released value is true count plus
    noise, clamped at 0, so a released 3 under k 50 is a possible honest outcome; only the
    shape (non-negative integers or null) is checked. Never checkable (with any noise): that the
    counts are the true counts of the lists; the log holds no IDs by design.
    """
    decision = entry.get("decision")
    if decision not in JOB_DECISIONS:
        raise _violation(index, entry, f"unknown job decision {decision!r}")
    for name, ok in (("job_id", isinstance(entry.get("job_id"), str)),
                     ("merchant", isinstance(entry.get("merchant"), str)),
                     ("list_size", _is_count(entry.get("list_size"))),
                     ("label_sizes", isinstance(entry.get("label_sizes"), list)
                      and all(_is_count(s) for s in entry["label_sizes"])),
                     ("epsilon_spent", _is_number(entry.get("epsilon_spent"))),
                     ("time", _is_number(entry.get("time")))):
        if not ok:
            raise _violation(index, entry, f"missing or malformed field {name!r}")
    pol = _recorded_policy(index, entry)
    merchant = _merchant(st, entry["merchant"])
    jobs[decision] += 1
    merchant[decision] += 1
    eps = float(entry["epsilon_spent"])
    _note_policy(st, index, entry, merchant, pol, warnings)

    if decision not in RELEASING:
        if "released" in entry or "report_digest" in entry:
            raise _violation(index, entry, f"a {decision} job carries released cells or a report digest")
        if decision == "failed" and entry.get("charged") is True:
            # Secure protocol: once data-dependent messages left the server a failed job is charged in full.
            expected = _job_epsilon(pol)
            if not math.isclose(eps, expected, rel_tol=0, abs_tol=_EPS_TOLERANCE):
                raise _violation(index, entry, f"a charged failed job spent ε {eps:g}, but its policy charges "
                                               f"{expected:g} per job")
            _add_to_ledger(merchant, new_ledger, entry, index, eps, pol)
            return
        if eps != 0:
            raise _violation(index, entry, f"a {decision} job spent ε {eps:g}; it must spend 0")
        return

    if merchant["disabled_at"] is not None:
        # Not a violation on its own: a job that started before the merchant was disabled may end after.
        warnings.append(f"entry {index}: released a report to merchant {entry['merchant']!r}, disabled at entry "
                        f"{merchant['disabled_at']}")
    sizes = entry["label_sizes"]
    if not pol.min_list_size <= entry["list_size"] <= pol.max_list_size:
        raise _violation(index, entry, f"released a job on a list of {entry['list_size']} IDs, outside the policy's "
                                       f"[{pol.min_list_size}, {pol.max_list_size}]")
    if sum(sizes) != entry["list_size"]:
        raise _violation(index, entry, f"label sizes add up to {sum(sizes)}, not to the list size {entry['list_size']}")
    if not 1 <= len(sizes) <= pol.max_labels:
        raise _violation(index, entry, f"released {len(sizes)} labels; the policy allows 1 to {pol.max_labels}")
    small = [s for s in sizes if s < pol.min_list_size]
    if small:
        raise _violation(index, entry, f"released a label of {min(small)} IDs, below the policy's min_list_size "
                                       f"{pol.min_list_size}")
    if decision == "released":
        digest = entry.get("report_digest")
        if not (isinstance(digest, str) and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)):
            raise _violation(index, entry, "a released job without a SHA-256 report_digest")
    _check_cells(index, entry, pol, len(sizes) if decision == "released" else 1)
    expected = _job_epsilon(pol)
    if not math.isclose(eps, expected, rel_tol=0, abs_tol=_EPS_TOLERANCE):
        raise _violation(index, entry, f"spent ε {eps:g}, but its policy charges {expected:g} per job")
    _add_to_ledger(merchant, new_ledger, entry, index, eps, pol)
    releases.append(ReleaseCheck(index=index, job_id=entry["job_id"], merchant=entry["merchant"], decision=decision,
                                 time=float(entry["time"]), epsilon=eps, policy=pol.to_dict(),
                                 checks=_release_checks(decision, entry, pol, eps)))


def _release_checks(decision: str, entry: dict, pol: Policy, eps: float) -> tuple[str, ...]:
    """What :func:`_check_job` (and, for every entry, the root and budget checks) established for a release."""
    sizes = entry["label_sizes"]
    checks = [
        "policy_digest is the digest of the recorded policy",
        f"list size {entry['list_size']} within [{pol.min_list_size}, {pol.max_list_size}]",
        f"{len(sizes)} label(s) (at most {pol.max_labels}), each of at least {pol.min_list_size} IDs, "
        f"adding up to the list size",
    ]
    if decision == "released":
        checks.append("carries a SHA-256 report digest")
    checks.append("every released cell is a non-negative integer or suppressed")
    if pol.noise == "none":
        checks.append(f"noise none: every released cell at least k = {pol.k}, no segment above its matched count")
    checks += [f"ε {eps:g} is the policy's per-job charge",
               f"ε within the budget of {pol.epsilon_budget:g} in every {pol.budget_period} period",
               "included under every signed checkpoint that covers it"]
    return tuple(checks)


def _add_to_ledger(merchant: dict, new_ledger: dict[str, list[LedgerItem]], entry: dict, index: int, eps: float,
                   pol: Policy) -> None:
    merchant["epsilon_total"] += eps
    if eps > 0:
        item = LedgerItem.of_job(entry, index, eps, pol)
        merchant["ledger"].append(item.row())
        new_ledger.setdefault(entry["merchant"], []).append(item)


@functools.lru_cache(maxsize=64)
def _job_epsilon(pol: Policy) -> float:
    return job_epsilon(pol)


def _check_cells(index: int, entry: dict, pol: Policy, n_labels: int) -> None:
    released = entry.get("released")
    if not isinstance(released, dict) or len(released) != n_labels:
        raise _violation(index, entry, f"released cells for {len(released) if isinstance(released, dict) else 'no'} "
                                       f"labels, but the job had {n_labels}")
    segment_names = None
    for label, cells in released.items():
        if (not isinstance(cells, dict) or set(cells) != {"matched", "segments"}
                or not isinstance(cells["segments"], dict)):
            raise _violation(index, entry, f"label {label!r}: released cells are not {{matched, segments}}")
        names = sorted(cells["segments"])
        if segment_names is None:
            segment_names = names
        elif names != segment_names:
            raise _violation(index, entry, f"label {label!r} has segments {names}, other labels {segment_names}")
        matched = cells["matched"]
        for cell, value in [("matched", matched)] + [(f"segment {s!r}", v) for s, v in cells["segments"].items()]:
            if value is not None and not _is_count(value):
                raise _violation(index, entry, f"label {label!r}, {cell}: released value {value!r} is not a "
                                               f"non-negative integer")
            if pol.noise == "none" and value is not None and value < pol.k:
                raise _violation(index, entry, f"label {label!r}, {cell}: released {value}, below the policy's "
                                               f"k = {pol.k} with noise none (a release below k)")
        if pol.noise == "none":
            for s, v in cells["segments"].items():
                if v is not None and (matched is None or v > matched):
                    raise _violation(index, entry, f"label {label!r}: segment {s!r} released {v} but matched is "
                                                   f"{matched}; with noise none a segment cannot exceed matched")


def _note_policy(st: AuditState, index: int, entry: dict, merchant: dict, pol: Policy, warnings: list[str]) -> None:
    digest = entry["policy_digest"]  # already checked to be the digest of pol
    last = merchant["last_job_index"]
    if merchant["policy_digest"] not in (None, digest):
        announced = max(st.policy_announced.get("", -1), st.policy_announced.get(entry["merchant"], -1))
        if announced < last:
            warnings.append(f"entry {index}: the policy for merchant {entry['merchant']!r} changed since entry "
                            f"{last} (digest {merchant['policy_digest'][:12]} -> {digest[:12]}) with no policy "
                            f"entry in the log announcing it")
    merchant.update(policy=pol.to_dict(), policy_digest=digest, last_job_index=index)


def _check_budget(name: str, rows: list[list], since: float) -> None:
    """Per merchant: in every window (t - budget_period, t] ending at one of its released jobs, the ε
    of its released jobs stays within that job's epsilon_budget (the server's own check, made with the
    policy of the job being admitted). Only windows ending at or after ``since`` (the earliest new job)
    can contain a new job, so earlier windows, checked by earlier runs, are not checked again.

    Jobs are placed at ``started`` when the log records it, else at their decision ``time``. The server
    reserves ε when a job starts, so on a log without ``started`` the windows are shifted by each
    job's running time: a job can fall into (or out of) a neighbour's window by at most that long.
    With budget periods of hours or days and jobs of seconds the difference only shows for jobs
    decided within seconds of a window's edge; the exact check needs ``started`` in the entries.
    """
    ordered = sorted(map(LedgerItem.from_row, rows), key=lambda item: (item.at, item.index))
    times = [item.at for item in ordered]
    prefix = [0.0]
    for item in ordered:
        prefix.append(prefix[-1] + item.epsilon)
    for item in ordered:
        if item.at < since:
            continue
        lo = bisect.bisect_right(times, item.at - item.period)
        hi = bisect.bisect_right(times, item.at)
        spent = prefix[hi] - prefix[lo]
        if spent > item.budget + _EPS_TOLERANCE:
            raise VerificationError(
                f"entry {item.index} (merchant {name!r}): ε over budget: {spent:g} spent in the {item.period:g} s "
                f"budget period ending at this job, the policy allows {item.budget:g}")


def _summary(m: dict[str, Any]) -> MerchantSummary:
    window = 0.0
    if m["ledger"]:
        ledger = [LedgerItem.from_row(row) for row in m["ledger"]]
        latest = max(ledger, key=lambda item: item.at)
        window = sum(item.epsilon for item in ledger if latest.at - latest.period < item.at <= latest.at)
    pol = m["policy"] or {}
    return MerchantSummary(released=m["released"], activated=m["activated"], refused=m["refused"], failed=m["failed"],
                           epsilon_spent=m["epsilon_total"], epsilon_window=window, policy_digest=m["policy_digest"],
                           epsilon_budget=pol.get("epsilon_budget"), budget_period=pol.get("budget_period"))
