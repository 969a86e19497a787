"""The auditor's verifier and the merchant's proof, trusting only the operator's Ed25519 key and SHA-256.

    with GrpcLogSource("platform.example:50051", token) as source:
        result = verify(source, state=AuditState.load(path), pinned_key=None)
    result.state.save(path)      # only after a fully successful verification

Modules: :mod:`.source` fetches the log (checkpoints, entries, proofs); :mod:`.verify` checks its
history (signatures, consistency, recomputed roots) and runs :mod:`.rules`, the policy and budget
re-checks of every entry; :mod:`.state` is the file that lets the next run start where this one
ended; :mod:`.prove` is a merchant's check that its own report is logged.
"""

from matcher_client.audit.prove import ProofResult, prove
from matcher_client.audit.rules import MerchantSummary, ReleaseCheck
from matcher_client.audit.source import GrpcLogSource, LogSource
from matcher_client.audit.state import AuditState
from matcher_client.audit.verify import AuditResult, CheckpointCheck, verify

__all__ = ["AuditResult", "AuditState", "CheckpointCheck", "GrpcLogSource", "LogSource", "MerchantSummary",
           "ProofResult", "ReleaseCheck", "prove", "verify"]
