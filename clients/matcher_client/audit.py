"""The auditor's verifier: check, trusting only the operator's Ed25519 key and SHA-256, that the audit
log never rewrote history and that every logged release obeyed the policy it records.

    with GrpcLogSource("platform.example:50051", token) as source:
        result = verify(source, state=AuditState.load(path), pinned_key=None)
    result.state.save(path)      # only after a fully successful verification

``verify`` raises :class:`~matcher.errors.VerificationError`, naming the entry index or the
checkpoint size and what is wrong, on any lie. It runs in this order, so the first message is
the most specific one:

1. **Key.** The pinned key is ``pinned_key`` (the operator's published key), else the one in
   the state, else the server's own (trust on first use, then pinned in the state). A server
   key that differs from the pinned key is a violation (a swapped signing key).
2. **Checkpoints.** Every checkpoint the log lists (all of them on a first run; those at or
   above the saved size afterwards: the older ones were proven consistent with the saved one
   already) must carry a valid signature by the pinned key for the right origin. Two roots for
   one size, a latest checkpoint the list hides, or a log smaller than the saved size are
   violations.
3. **Entries.** Only the new entries ``[saved size, latest size)`` are fetched; a log that
   cannot produce every entry its checkpoints signed (a deleted entry) is a violation.
4. **Consistency.** RFC 9162 consistency proofs from the saved checkpoint to the first new one
   and between every two consecutive checkpoints: a fork, or a truncate-and-regrow, is caught.
5. **Roots.** The Merkle root is recomputed from the new entries on top of the saved compact
   range (the right-edge perfect-subtree hashes of the saved tree) and must equal every new
   signed root, so an edited or deleted entry is caught even by a first-time auditor, without
   trusting the server's hashes. A mismatch is narrowed to the entry with inclusion proofs.
6. **Policy**, for every new entry; see :func:`_check_job` for exactly what is and is not
   checkable from the log.

What a log cannot show, and this verifier therefore cannot catch: a job that was never logged
(merchants can prove their own reports are logged with :func:`prove`); a history rewritten
*before* the first time anyone saved a checkpoint, when the operator also deleted the old
checkpoints (no signed evidence is left; an auditor's saved state or a merchant's report
checkpoint catches it afterwards); a policy changed without a ``policy`` entry (every job
records its full policy and is checked against it; a change nobody announced is reported as a
warning, since only ``matcher policy set`` logs changes).
"""

from __future__ import annotations

import bisect
import collections
import contextlib
import copy
import functools
import hashlib
import hmac
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Protocol, Sequence

from matcher.errors import CryptoError, InputError, MatcherError, NotFound, ProtocolError, VerificationError
from matcher.log.checkpoint import Checkpoint, open_checkpoint, parse_verifier_key
from matcher.log.merkle import EMPTY_ROOT, MemoryNodeStore, MerkleTree, hash_leaf, verify_consistency, verify_inclusion
from matcher.policy import Policy, job_epsilon

__all__ = ["AuditResult", "AuditState", "CheckpointCheck", "GrpcLogSource", "LogSource", "ProofResult", "ReleaseCheck",
           "prove", "verify"]

STATE_VERSION = 1
# Floating-point slack for ε sums; the server allows the same 1e-9 over the budget.
_EPS_TOLERANCE = 1e-9
# When recomputed roots disagree, at most this many inclusion proofs are spent naming the entry.
_MAX_PINPOINT = 256
# Consistency-proof calls kept in flight at once by GrpcLogSource.
_IN_FLIGHT = 4
_JOB_DECISIONS = ("released", "activated", "refused", "failed")
# Decisions that let something out (a report, or an activated slice's noisy size) and spend ε.
_RELEASING = ("released", "activated")
_KNOWN_TYPES = ("job", "policy", "merchant_added", "auditor_added", "merchant_disabled", "merchant_enabled",
                "activation_exported", "activation_deleted", "activation_expired",
                # Operator actions that change no release rule: recorded so auditors see them, not checked.
                "merchant_token_rotated", "auditor_token_rotated", "auditor_disabled", "auditor_enabled",
                "audience_segments")


# ---------------------------------------------------------------------------
# Where the log comes from
# ---------------------------------------------------------------------------


class LogSource(Protocol):
    """What the verifier asks of a log: the AuditService RPCs, one method each.

    Every answer is treated as hostile. Errors that mean "the server answered, but not with
    what was asked" (NotFound, InputError, ...) become VerificationErrors when the log owes
    the answer; connection and authentication errors pass through unchanged.
    """

    def verifier_key(self) -> tuple[str, str]:
        """(verifier key, origin) as the server publishes them."""
        ...

    def latest_checkpoint(self) -> tuple[int, str] | None:
        """(size, signed note) of the newest checkpoint; None when the log is empty."""
        ...

    def checkpoints(self, min_size: int) -> list[tuple[int, str]]:
        """Every checkpoint with size >= min_size as (size, signed note)."""
        ...

    def entries(self, start: int, end: int) -> Iterable[tuple[int, bytes]]:
        """Entries [start, end) as (index, canonical JSON bytes)."""
        ...

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        ...

    def consistency_proofs(self, pairs: Sequence[tuple[int, int]]) -> list[list[bytes]]:
        """One consistency proof per (old_size, new_size) pair; batched so a remote source can pipeline."""
        ...


class GrpcLogSource:
    """A :class:`LogSource` over a matcher server's AuditService. Use as a context manager (or call close)."""

    def __init__(self, address: str, token: str, tls_ca: str | None = None, *, timeout: float = 60.0):
        import grpc

        from matcher.v1 import audit_pb2_grpc
        from matcher_client._rpc import _OPTIONS

        if tls_ca:
            creds = grpc.ssl_channel_credentials(root_certificates=Path(tls_ca).read_bytes())
            self._channel = grpc.secure_channel(address, creds, options=_OPTIONS)
        else:
            self._channel = grpc.insecure_channel(address, options=_OPTIONS)
        self._stub = audit_pb2_grpc.AuditServiceStub(self._channel)
        self._metadata = [("authorization", f"Bearer {token}")]
        self._timeout = timeout

    def __enter__(self) -> GrpcLogSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self._channel.close()

    def _call(self, method, request):
        from matcher_client._rpc import rpc_errors

        with rpc_errors():
            return method(request, metadata=self._metadata, timeout=self._timeout)

    def verifier_key(self) -> tuple[str, str]:
        from matcher.v1 import audit_pb2

        reply = self._call(self._stub.GetVerifierKey, audit_pb2.GetVerifierKeyRequest())
        return reply.key, reply.origin

    def latest_checkpoint(self) -> tuple[int, str] | None:
        from matcher.v1 import audit_pb2

        try:
            reply = self._call(self._stub.GetCheckpoint, audit_pb2.GetCheckpointRequest())
        except NotFound:
            return None
        return reply.size, reply.note

    def checkpoints(self, min_size: int) -> list[tuple[int, str]]:
        from matcher.v1 import audit_pb2
        from matcher_client._rpc import rpc_errors

        with rpc_errors():
            stream = self._stub.ListCheckpoints(audit_pb2.ListCheckpointsRequest(min_size=min_size),
                                                metadata=self._metadata, timeout=self._timeout)
            return [(c.size, c.note) for c in stream]

    def entries(self, start: int, end: int) -> Iterator[tuple[int, bytes]]:
        from matcher.v1 import audit_pb2
        from matcher_client._rpc import rpc_errors

        with rpc_errors():
            stream = self._stub.GetEntries(audit_pb2.GetEntriesRequest(start=start, end=end),
                                           metadata=self._metadata, timeout=self._timeout)
            for e in stream:
                yield e.index, bytes(e.data)

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        from matcher.v1 import audit_pb2

        reply = self._call(self._stub.GetInclusionProof, audit_pb2.InclusionProofRequest(index=index, tree_size=size))
        return [bytes(h) for h in reply.hashes]

    def consistency_proofs(self, pairs: Sequence[tuple[int, int]]) -> list[list[bytes]]:
        from matcher.v1 import audit_pb2
        from matcher_client._rpc import rpc_errors

        # A few calls in flight hide the round trips (a first audit needs one proof per checkpoint)
        # while staying far under the server's concurrent-RPC limit, which merchants' jobs share.
        proofs: list[list[bytes]] = []
        pending: collections.deque = collections.deque()
        with rpc_errors():
            for old, new in pairs:
                if len(pending) == _IN_FLIGHT:
                    proofs.append([bytes(h) for h in pending.popleft().result().hashes])
                pending.append(self._stub.GetConsistencyProof.future(
                    audit_pb2.ConsistencyProofRequest(old_size=old, new_size=new),
                    metadata=self._metadata, timeout=self._timeout))
            proofs.extend([bytes(h) for h in f.result().hashes] for f in pending)
        return proofs


# ---------------------------------------------------------------------------
# What the auditor remembers between runs
# ---------------------------------------------------------------------------


@dataclass
class AuditState:
    """Everything needed to continue verification without refetching old entries; a JSON file.

    ``compact`` holds the right-edge perfect subtrees of the verified tree as
    ``[level, index, hex hash]``; with them new entries extend the tree exactly as the log does.
    ``merchants`` holds, per merchant, the ε ledger of released jobs (``[time, ε, period seconds,
    budget, entry index]``, only jobs that spent ε) that budget windows still need, the policy
    last seen in force and running counts. The file is trusted: keep it where the operator
    cannot write.
    """

    verifier_key: str | None = None
    origin: str | None = None
    checkpoint: str | None = None
    size: int = 0
    root: str = EMPTY_ROOT.hex()
    compact: list[list] = field(default_factory=list)
    merchants: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Entry index of the latest `policy` entry per scope ("" = operator default, else a merchant).
    policy_announced: dict[str, int] = field(default_factory=dict)
    entry_types: dict[str, int] = field(default_factory=dict)

    @classmethod
    def load(cls, path: str | Path) -> AuditState:
        """The saved state, or a fresh one when the file does not exist yet."""
        path = Path(path)
        if not path.exists():
            return cls()
        try:
            data = json.loads(path.read_text())
            if data.get("version") != STATE_VERSION:
                raise InputError(f"{path} is audit state version {data.get('version')}, expected {STATE_VERSION}")
            data.pop("version")
            return cls(**data)
        except (ValueError, TypeError, AttributeError) as err:
            raise InputError(f"{path} is not a matcher-audit state file: {err}",
                             hint="pass another --state file, or delete it to start over") from None

    def save(self, path: str | Path) -> None:
        """Atomically: a crash mid-write must not leave a state that trusts nothing (or too much)."""
        path = Path(path)
        data = {"version": STATE_VERSION, **{k: getattr(self, k) for k in self.__dataclass_fields__}}
        fd, tmp = tempfile.mkstemp(dir=path.parent or ".", prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(data, f, indent=1, sort_keys=True)
                f.write("\n")
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


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
class CheckpointCheck:
    """A signed checkpoint this run verified (its signature by the pinned key, its root against the entries)."""
    origin: str
    size: int
    root: str
    note: str


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


@dataclass(frozen=True)
class AuditResult:
    origin: str
    verifier_key: str
    key_pinned_now: bool  # first use: the server's key was pinned by this run
    previous_size: int
    size: int
    root: str
    checkpoints_verified: int
    entries_checked: int
    jobs: dict[str, int]  # decision -> count among the entries checked by this run
    merchants: dict[str, MerchantSummary]  # cumulative, over every verified entry
    warnings: list[str]
    state: AuditState
    checkpoints: list[CheckpointCheck] = field(default_factory=list)  # the new ones, by size
    releases: list[ReleaseCheck] = field(default_factory=list)  # among the entries checked by this run


@dataclass(frozen=True)
class ProofResult:
    job_id: str
    leaf_index: int
    checkpoint_size: int
    latest_size: int
    report_digest: str
    key_source: str  # "pinned" or "server (not pinned)"


# ---------------------------------------------------------------------------
# verify
# ---------------------------------------------------------------------------


def verify(source: LogSource, *, state: AuditState | None = None, pinned_key: str | None = None) -> AuditResult:
    """Verify everything new in the log since ``state`` (everything, without state); see the module doc.

    Returns the result with the new state in ``result.state``; the given state is never modified,
    so a failed run leaves it exactly as it was.
    """
    st = copy.deepcopy(state) if state is not None else AuditState()
    key, origin, pinned_now = _pin_key(source, st, pinned_key)
    previous_size = st.size
    previous_root = bytes.fromhex(st.root)

    checkpoints = _verified_checkpoints(source, key, origin, st, previous_root)
    latest = checkpoints[-1] if checkpoints else Checkpoint(origin, previous_size, previous_root)

    tree, nodes = _tree_from_state(st)
    entries = _fetch_entries(source, previous_size, latest.size)
    if len(entries) < latest.size - previous_size:
        _missing_entries(tree, checkpoints, entries, latest.size)
    _check_consistency(source, checkpoints, previous_size, previous_root)
    tree.append(entries)
    _check_roots(source, tree, checkpoints, entries, previous_size)
    compact = [[level, index, nodes.nodes[(level, index)].hex()] for level, index in _right_edge(tree.size)]

    warnings: list[str] = []
    jobs = {d: 0 for d in _JOB_DECISIONS}
    new_ledger: dict[str, list[list]] = {}
    releases: list[ReleaseCheck] = []
    for index, data in zip(range(previous_size, latest.size), entries):
        _check_entry(st, index, data, jobs, new_ledger, warnings, releases)
    for merchant, added in new_ledger.items():
        _check_budget(merchant, st.merchants[merchant]["ledger"], min(item[0] for item in added))

    st.verifier_key, st.origin = key, origin
    st.size, st.root = latest.size, latest.root.hex()
    st.checkpoint = checkpoints[-1].note if checkpoints else st.checkpoint
    st.compact = compact
    return AuditResult(
        origin=origin, verifier_key=key, key_pinned_now=pinned_now, previous_size=previous_size, size=latest.size,
        root=latest.root.hex(), checkpoints_verified=len(checkpoints), entries_checked=len(entries), jobs=jobs,
        merchants={name: _summary(m) for name, m in sorted(st.merchants.items())}, warnings=warnings, state=st,
        checkpoints=[CheckpointCheck(origin, c.size, c.root.hex(), c.note) for c in checkpoints], releases=releases)


def _pin_key(source: LogSource, st: AuditState, pinned_key: str | None) -> tuple[str, str, bool]:
    if pinned_key is not None:
        parse_verifier_key(pinned_key)  # a malformed --key is the user's InputError, not a violation
        if st.verifier_key is not None and st.verifier_key != pinned_key:
            raise InputError(f"the given key {pinned_key} is not the key {st.verifier_key} pinned in the state file",
                             hint="if the operator really rotated its key, start a new state file")
    server_key, server_origin = source.verifier_key()
    pinned = pinned_key or st.verifier_key
    if pinned is not None and server_key != pinned:
        raise VerificationError(
            f"the server's verifier key {server_key} is not the pinned key {pinned}: the signing key was swapped")
    try:
        parse_verifier_key(server_key)
    except InputError as err:
        raise VerificationError(f"the server's verifier key is unusable: {err}") from None
    origin = st.origin or server_origin
    if server_origin != origin:
        raise VerificationError(f"the server now calls its log {server_origin!r}; the state has {origin!r}")
    return server_key, origin, pinned is None


@dataclass(frozen=True)
class _SignedCheckpoint:
    size: int
    root: bytes
    note: str


def _verified_checkpoints(source: LogSource, key: str, origin: str, st: AuditState,
                          previous_root: bytes) -> list[_SignedCheckpoint]:
    """Signature-checked checkpoints at or above the saved size, by size, without duplicates."""

    def opened(size: int, note: str, what: str) -> _SignedCheckpoint:
        try:
            cp = open_checkpoint(note, key, origin)
        except VerificationError as err:
            raise VerificationError(f"{what} (size {size}) does not verify with the pinned key: "
                                    f"{err.message}") from None
        if cp.size != size:
            raise VerificationError(f"{what} is listed as size {size} but its signed note says {cp.size}")
        return _SignedCheckpoint(cp.size, cp.root, note)

    # The latest first, the list second: a job appended in between only makes the list longer.
    latest = source.latest_checkpoint()
    listed = source.checkpoints(st.size)
    by_size: dict[int, _SignedCheckpoint] = {}
    for size, note in listed:
        cp = opened(size, note, "checkpoint")
        seen = by_size.setdefault(size, cp)
        if seen.root != cp.root:
            raise VerificationError(f"the log forked: two checkpoints of size {size} are signed with different "
                                    f"roots, {seen.root.hex()} and {cp.root.hex()}")
    if latest is not None:
        cp = opened(*latest, "the latest checkpoint")
        if by_size.get(cp.size, cp).root != cp.root or (cp.size >= st.size and cp.size not in by_size):
            raise VerificationError(f"the latest checkpoint (size {cp.size}) is not among the checkpoints the log "
                                    f"lists: the log shows different histories to different callers")
    if st.size and latest is not None and latest[0] < st.size:
        raise VerificationError(f"the log shrank: its latest checkpoint has size {latest[0]}, below the size "
                                f"{st.size} you verified before (truncated?)")
    if st.size and not by_size:
        raise VerificationError(f"the log no longer lists any checkpoint at or above the size {st.size} you "
                                f"verified before (truncated?)")
    saved = by_size.get(st.size)
    if st.size and saved is not None and saved.root != previous_root:
        raise VerificationError(f"the log forked: its checkpoint of size {st.size} has root {saved.root.hex()}, "
                                f"but the checkpoint of that size you verified before has root {previous_root.hex()}")
    return [by_size[s] for s in sorted(by_size) if s > st.size]


@contextlib.contextmanager
def _served(what: str) -> Iterator[None]:
    """The server answered, but refused what its own signed checkpoints promise: that is a lie too.
    Connection and authentication errors are not caught; they are not evidence about the log."""
    try:
        yield
    except (InputError, NotFound, ProtocolError, CryptoError) as err:
        raise VerificationError(f"the log cannot serve {what}, which its signed checkpoints cover: "
                                f"{err.message}") from None


def _fetch_entries(source: LogSource, start: int, end: int) -> list[bytes]:
    """Entries [start, end) in order; fewer when the log serves fewer (the caller names what is missing)."""
    entries: list[bytes] = []
    with _served(f"entries {start}..{end - 1}"):
        for index, data in source.entries(start, end):
            expected = start + len(entries)
            if index != expected or index >= end:
                raise VerificationError(f"the log returned entry {index} where entry {expected} was due "
                                        f"(entries deleted or renumbered?)")
            entries.append(data)
    return entries


def _missing_entries(tree: MerkleTree, checkpoints: Sequence[_SignedCheckpoint], entries: Sequence[bytes],
                     end: int) -> None:
    """The log serves fewer entries than it signed: say where the served ones leave the signed tree."""
    start = tree.size
    served = start + len(entries)
    where = ""
    tree.append(entries)
    matched = start
    for cp in checkpoints:
        if cp.size > served:
            break
        if tree.root(cp.size) != cp.root:
            where = (f"; the served entries leave the signed tree between entries {matched} and {cp.size - 1}"
                     if cp.size - 1 > matched else f"; the served entries leave the signed tree at entry {matched}")
            break
        matched = cp.size
    raise VerificationError(f"the log has signed {end} entries but serves only {served}: "
                            f"an entry was deleted{where}")


def _check_consistency(source: LogSource, checkpoints: Sequence[_SignedCheckpoint], previous_size: int,
                       previous_root: bytes) -> None:
    chain = [(previous_size, previous_root)] + [(c.size, c.root) for c in checkpoints]
    pairs = [(a, b) for (a, _), (b, _) in zip(chain, chain[1:]) if 0 < a < b]
    with _served("consistency proofs"):
        proofs = iter(source.consistency_proofs(pairs)) if pairs else iter(())
    for (old, old_root), (new, new_root) in zip(chain, chain[1:]):
        if not 0 < old < new:
            continue
        try:
            verify_consistency(old, new, next(proofs), old_root, new_root)
        except VerificationError as err:
            if old == previous_size:
                raise VerificationError(f"the log forked: its checkpoint of size {new} is not consistent with the "
                                        f"checkpoint of size {old} you verified before ({err.message})") from None
            raise VerificationError(f"the log was rewritten: its signed checkpoints of size {old} and {new} are not "
                                    f"consistent ({err.message})") from None


def _tree_from_state(st: AuditState) -> tuple[MerkleTree, MemoryNodeStore]:
    """The saved tree as its compact range: enough to append to and to compute every later root."""
    nodes = MemoryNodeStore()
    nodes.put_nodes({(level, index): bytes.fromhex(h) for level, index, h in st.compact})
    tree = MerkleTree(nodes, st.size)
    try:
        ok = tree.root() == bytes.fromhex(st.root)
    except MatcherError:
        ok = False
    if not ok:
        raise InputError("the state file's compact range does not fold to its saved root",
                         hint="the state file is corrupt; verify from scratch with a new --state file")
    return tree, nodes


def _check_roots(source: LogSource, tree: MerkleTree, checkpoints: Sequence[_SignedCheckpoint],
                 entries: Sequence[bytes], first: int) -> None:
    """Every new signed root must be the root of the entries themselves, recomputed here."""
    matched = first
    for cp in checkpoints:
        if tree.root(cp.size) != cp.root:
            _pinpoint(source, tree, cp, entries, first, matched)
        matched = cp.size


def _pinpoint(source: LogSource, tree: MerkleTree, cp: _SignedCheckpoint, entries: Sequence[bytes],
              first: int, matched: int) -> None:
    """Entries [first, matched) are proven; name the one in [matched, cp.size) the signed root does not cover."""
    for index in range(matched, min(cp.size, matched + _MAX_PINPOINT)):
        try:
            with _served(f"an inclusion proof for entry {index}"):
                proof = source.inclusion_proof(index, cp.size)
            verify_inclusion(hash_leaf(entries[index - first]), index, cp.size, proof, cp.root)
        except VerificationError:
            raise VerificationError(
                f"entry {index} is not the entry the log signed: it is not included under the signed root of "
                f"checkpoint size {cp.size} (edited or replaced entry)") from None
    raise VerificationError(f"entries {matched}..{cp.size - 1} do not hash to the signed root of checkpoint size "
                            f"{cp.size} ({tree.root(cp.size).hex()} != {cp.root.hex()}): entries were edited, "
                            f"deleted or inserted")


def _right_edge(size: int) -> list[tuple[int, int]]:
    edge, begin = [], 0
    while begin < size:
        level = (size - begin).bit_length() - 1
        edge.append((level, begin >> level))
        begin += 1 << level
    return edge


# ---------------------------------------------------------------------------
# Policy checks
# ---------------------------------------------------------------------------


def _violation(index: int, entry: dict | None, problem: str) -> VerificationError:
    who = ""
    if isinstance(entry, dict) and entry.get("type") == "job":
        who = f" (job {entry.get('job_id')}, merchant {entry.get('merchant')!r})"
    return VerificationError(f"entry {index}{who}: {problem}")


def _check_entry(st: AuditState, index: int, data: bytes, jobs: dict[str, int], new_ledger: dict[str, list],
                 warnings: list[str], releases: list[ReleaseCheck]) -> None:
    try:
        entry = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise _violation(index, None, "is not JSON") from None
    if not isinstance(entry, dict):
        raise _violation(index, None, "is not a JSON object")
    if _canonical(entry) != bytes(data):
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
    elif kind in _KNOWN_TYPES:
        pass
    else:
        warnings.append(f"entry {index} has type {kind!r}, which this matcher-audit does not know: not checked")


def _canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


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


def _check_job(st: AuditState, index: int, entry: dict, jobs: dict[str, int], new_ledger: dict[str, list],
               warnings: list[str], releases: list[ReleaseCheck]) -> None:
    """Check one job decision against the policy it records.

    Checkable, and checked, for every job: the recorded policy is valid and ``policy_digest`` is
    its digest; sizes are counts. Refused and failed jobs released nothing (no ``released``, no
    ``report_digest``) and spent ε 0 — except a failed job marked ``charged`` (secure protocol: it
    failed after data-dependent messages had left the server), which spent exactly the policy's
    per-job ε, counted in the merchant's budget windows like a release. Released jobs and activations: the list size is within
    [min_list_size, max_list_size], labels are at most max_labels and each holds at least
    min_list_size IDs, the label sizes add up to the list size, every released cell is a
    non-negative integer or null (suppressed), ε spent equals ``job_epsilon(policy)``, and the
    merchant's ε over every budget_period window stays within epsilon_budget (see
    :func:`_check_budget`). A released job has one cell set per label and a report digest; an
    activation has one cell set, its slice.

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
    if decision not in _JOB_DECISIONS:
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

    if decision not in _RELEASING:
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


def _add_to_ledger(merchant: dict, new_ledger: dict[str, list], entry: dict, index: int, eps: float,
                   pol: Policy) -> None:
    merchant["epsilon_total"] += eps
    if eps > 0:
        # The server reserves ε when a job starts; `started` (if a log records it) is that moment.
        at = entry.get("started", entry["time"])
        item = [float(at), eps, pol.budget_period_seconds, pol.epsilon_budget, index]
        merchant["ledger"].append(item)
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


def _check_budget(name: str, ledger: list[list], since: float) -> None:
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
    ordered = sorted(ledger, key=lambda item: (item[0], item[4]))
    times = [item[0] for item in ordered]
    prefix = [0.0]
    for item in ordered:
        prefix.append(prefix[-1] + item[1])
    for at, _eps, period, budget, index in ordered:
        if at < since:
            continue
        lo = bisect.bisect_right(times, at - period)
        hi = bisect.bisect_right(times, at)
        spent = prefix[hi] - prefix[lo]
        if spent > budget + _EPS_TOLERANCE:
            raise VerificationError(
                f"entry {index} (merchant {name!r}): ε over budget: {spent:g} spent in the {period:g} s budget period "
                f"ending at this job, the policy allows {budget:g}")


def _summary(m: dict[str, Any]) -> MerchantSummary:
    window = 0.0
    if m["ledger"]:
        latest = max(m["ledger"], key=lambda item: item[0])
        window = sum(item[1] for item in m["ledger"] if latest[0] - latest[2] < item[0] <= latest[0])
    pol = m["policy"] or {}
    return MerchantSummary(released=m["released"], activated=m["activated"], refused=m["refused"], failed=m["failed"],
                           epsilon_spent=m["epsilon_total"], epsilon_window=window, policy_digest=m["policy_digest"],
                           epsilon_budget=pol.get("epsilon_budget"), budget_period=pol.get("budget_period"))


# ---------------------------------------------------------------------------
# prove
# ---------------------------------------------------------------------------


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
    with _served(f"an inclusion proof for entry {index}"):
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
        with _served("a consistency proof"):
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
