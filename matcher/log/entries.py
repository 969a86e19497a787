"""The audit log's entries: their canonical bytes, their types, and the builders the server writes them with.

An entry is a JSON object stored as canonical JSON (sorted keys, no spaces, UTF-8), so the bytes
a verifier hashes are the bytes any honest writer would produce from the same object. Both sides
import this module: the server builds entries with the functions below, the verifier
(``matcher_client.audit``) re-checks the form and knows from :data:`CHECKED_TYPES` and
:data:`RECORDED_TYPES` what each type means to it. A new entry type goes in one of the two.

Every entry the operator's CLI writes also gets a ``time`` when it is appended
(``AuditLog.record``); job entries carry their own.
"""

from __future__ import annotations

import json
from typing import Any, Sequence

from matcher.policy import Policy

__all__ = ["CHECKED_TYPES", "JOB_DECISIONS", "KNOWN_TYPES", "RECORDED_TYPES", "RELEASING", "activation_entry",
           "audience_entry", "audience_segments_entry", "canonical_json", "job_entry", "policy_entry", "principal_entry"]

JOB_DECISIONS = ("released", "activated", "refused", "failed")
# Decisions that let something out (a report, or an activated slice's noisy size) and spend ε.
RELEASING = ("released", "activated")
# Types the verifier checks against the release rules (a job's decision, a policy change, a merchant
# losing or regaining access).
CHECKED_TYPES = ("job", "policy", "merchant_disabled", "merchant_enabled")
# Operator actions that change no release rule: logged so auditors see them, and only counted.
RECORDED_TYPES = ("merchant_added", "auditor_added", "merchant_token_rotated", "auditor_token_rotated",
                  "auditor_disabled", "auditor_enabled", "activation_exported", "activation_deleted",
                  "activation_expired", "audience_segments", "audience_changed")
KNOWN_TYPES = CHECKED_TYPES + RECORDED_TYPES


def canonical_json(value: Any) -> bytes:
    """The one byte form of a JSON value: what the log stores, hashes and signs."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def job_entry(decision: str, job_id: str, merchant: str, pol: Policy, label_sizes: Sequence[int], now: float, *,
              protocol: str, started: float | None = None, charged: bool = False, reason: str | None = None,
              epsilon: float = 0.0, report_digest: str | None = None, released: dict | None = None,
              audience_version: str | None = None) -> dict:
    """A job's decision (one of :data:`JOB_DECISIONS`) with the full policy it was held to, and for
    a release the audience version it counted (see :func:`audience_entry`)."""
    entry = {
        "type": "job",
        "decision": decision,
        "job_id": job_id,
        "merchant": merchant,
        "list_size": sum(label_sizes),
        "label_sizes": sorted(label_sizes),
        "policy": pol.to_dict(),
        "policy_digest": pol.digest(),
        "epsilon_spent": epsilon,
        "time": round(now, 3),
        # When the budget was reserved: the verifier's budget windows are exact with it.
        "started": round(now if started is None else started, 3),
        "protocol": protocol,
    }
    if charged:
        entry["charged"] = True
    if reason is not None:
        entry["reason"] = reason
    if report_digest is not None:
        entry["report_digest"] = report_digest
        entry["released"] = released
    if audience_version is not None:
        entry["audience_version"] = audience_version
    return entry


AUDIENCE_CHANGES = ("import", "replace", "remove")


def audience_entry(change: str, audience_version: str | None) -> dict:
    """The audience changed (one of :data:`AUDIENCE_CHANGES`): releases from here on name this
    version. No count: how many joined or left is the platform's own business, not the log's."""
    if change not in AUDIENCE_CHANGES:
        raise ValueError(f"unknown audience change {change!r}")
    return {"type": "audience_changed", "change": change, "audience_version": audience_version}


def policy_entry(key: str, value: str, merchant: str | None, effective: Policy) -> dict:
    """``matcher policy set``: the setting as typed and the whole policy now in force for its scope."""
    return {"type": "policy", "key": key, "value": value, "merchant": merchant,
            "policy": effective.to_dict(), "policy_digest": effective.digest()}


def principal_entry(role: str, event: str, name: str, *, reason: str | None = None) -> dict:
    """A merchant or auditor ``added``, ``token_rotated``, ``disabled`` or ``enabled``."""
    entry = {"type": f"{role}_{event}", "name": name}
    if reason is not None:
        entry["reason"] = reason
    return entry


def activation_entry(event: str, handle: str, *, rows: int | None = None) -> dict:
    """An activated audience ``exported`` (with its row count), ``deleted`` or ``expired``."""
    entry: dict[str, Any] = {"type": f"activation_{event}", "activation": handle}
    if rows is not None:
        entry["rows"] = rows
    return entry


def audience_segments_entry(segments: Sequence[str], added: Sequence[str], removed: Sequence[str],
                            audience_version: str | None) -> dict:
    """The segments a report can name changed, from this audience version on."""
    return {"type": "audience_segments", "segments": list(segments), "added": list(added), "removed": list(removed),
            "audience_version": audience_version}
