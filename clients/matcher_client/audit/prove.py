"""The merchant's check that its report is in the log: :func:`prove`."""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass

from matcher.errors import InputError, VerificationError
from matcher.log.checkpoint import open_checkpoint
from matcher.log.merkle import hash_leaf, verify_consistency, verify_inclusion
from matcher_client.audit.source import LogSource, served

__all__ = ["ProofResult", "prove"]


@dataclass(frozen=True)
class ProofResult:
    job_id: str
    leaf_index: int
    checkpoint_size: int
    latest_size: int
    report_digest: str
    key_source: str  # "pinned" or "server (not pinned)"


def prove(report: dict, source: LogSource, *, pinned_key: str | None = None) -> ProofResult:
    """Prove a merchant's report (the dict ``matcher_client.api.match`` returns, or its JSON file) is logged.

    Checks: the report's counts are the ones in its ``report_json``; sha256(report_json) is the
    ``report_digest`` of its log entry, which names the same job and a release; the entry is
    included at ``leaf_index`` under the root of the report's checkpoint, whose signature
    verifies; and that checkpoint is consistent with the log's latest one (the log did not
    drop or rewrite the entry since). Without ``pinned_key`` the server's key is used, which
    proves inclusion in the log that server signs, not that it is the operator's published log.
    """
    for name in ("job_id", "checkpoint", "leaf_index", "report_json", "log_entry"):
        if name not in report:
            raise InputError(f"the report has no {name!r}", hint="use the JSON `matcher-client match --json` wrote")
    server_key, origin = source.verifier_key()
    if pinned_key is not None and server_key != pinned_key:
        raise VerificationError(f"the server's verifier key {server_key} is not the pinned key {pinned_key}")
    key = pinned_key or server_key

    report_json = report["report_json"]
    try:
        released = json.loads(report_json)
        entry = json.loads(report["log_entry"])
    except (TypeError, ValueError):
        raise VerificationError("the report's report_json or log_entry is not JSON text") from None
    if not isinstance(released, dict) or not isinstance(report["log_entry"], str):
        raise VerificationError("the report's report_json is not a JSON object, or its log_entry is not text")
    digest = hashlib.sha256(report_json.encode()).hexdigest()
    if not isinstance(entry, dict) or entry.get("type") != "job" or entry.get("decision") != "released":
        raise VerificationError("the report's log entry is not a released job")
    if entry.get("job_id") != report["job_id"] or released.get("job_id") != report["job_id"]:
        raise VerificationError(f"the log entry is for job {entry.get('job_id')}, the report for {report['job_id']}")
    if not hmac.compare_digest(str(entry.get("report_digest")), digest):
        raise VerificationError(f"sha256 of the report is {digest}, the log entry records "
                                f"{entry.get('report_digest')}: "
                                f"the report is not the one that was logged")
    if released.get("labels") != entry.get("released"):
        raise VerificationError("the released counts in report_json differ from the ones in the log entry")
    for name in ("labels", "list_size", "epsilon_spent"):
        if name in report and report[name] != released.get(name):
            raise VerificationError(f"the report's {name!r} field does not match the report_json it carries, "
                                    f"whose digest is logged: the report was edited")

    cp = open_checkpoint(report["checkpoint"], key, origin)
    index = report["leaf_index"]
    if not isinstance(index, int) or isinstance(index, bool):
        raise InputError(f"leaf_index {index!r} is not an integer")
    with served(f"an inclusion proof for entry {index}"):
        proof = source.inclusion_proof(index, cp.size)
    try:
        verify_inclusion(hash_leaf(report["log_entry"].encode()), index, cp.size, proof, cp.root)
    except VerificationError as err:
        raise VerificationError(f"the log entry is not at leaf {index} of the report's checkpoint "
                                f"(size {cp.size}): {err.message}") from None

    latest_raw = source.latest_checkpoint()
    if latest_raw is None:
        raise VerificationError("the log is empty, but the report's checkpoint covers "
                                f"{cp.size} entries (truncated?)")
    latest = open_checkpoint(latest_raw[1], key, origin)
    if latest.size < cp.size:
        raise VerificationError(f"the log shrank: its latest checkpoint has size {latest.size}, below the report's "
                                f"{cp.size} (truncated?)")
    if latest.size > cp.size:
        with served("a consistency proof"):
            (proof,) = source.consistency_proofs([(cp.size, latest.size)])
    else:
        proof = []
    try:
        verify_consistency(cp.size, latest.size, proof, cp.root, latest.root)
    except VerificationError as err:
        raise VerificationError(f"the log forked after the report was logged: the latest checkpoint (size "
                                f"{latest.size}) is not consistent with the report's (size {cp.size}): "
                                f"{err.message}") from None
    return ProofResult(job_id=report["job_id"], leaf_index=index, checkpoint_size=cp.size, latest_size=latest.size,
                       report_digest=digest, key_source="pinned" if pinned_key else "server (not pinned)")
