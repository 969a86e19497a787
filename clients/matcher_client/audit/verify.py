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
6. **Policy**, for every new entry (:mod:`matcher_client.audit.rules`, which says exactly what
   is and is not checkable from the log).

What a log cannot show, and this verifier therefore cannot catch: a job that was never logged
(merchants can prove their own reports are logged with :func:`prove`); a history rewritten
*before* the first time anyone saved a checkpoint, when the operator also deleted the old
checkpoints (no signed evidence is left; an auditor's saved state or a merchant's report
checkpoint catches it afterwards); a policy changed without a ``policy`` entry (every job
records its full policy and is checked against it; a change nobody announced is reported as a
warning, since only ``matcher policy set`` logs changes).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Sequence

from matcher.errors import InputError, MatcherError, VerificationError
from matcher.log.checkpoint import Checkpoint, open_checkpoint, parse_verifier_key
from matcher.log.merkle import (MemoryNodeStore, MerkleTree, hash_leaf, perfect_subtrees, verify_consistency,
                                verify_inclusion)
from matcher_client.audit.rules import MerchantSummary, ReleaseCheck, check_entries, summaries
from matcher_client.audit.source import LogSource, served
from matcher_client.audit.state import AuditState

__all__ = ["AuditResult", "CheckpointCheck", "verify"]

# When recomputed roots disagree, at most this many inclusion proofs are spent naming the entry.
_MAX_PINPOINT = 256


@dataclass(frozen=True)
class CheckpointCheck:
    """A signed checkpoint this run verified (its signature by the pinned key, its root against the entries)."""
    origin: str
    size: int
    root: str
    note: str


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
    compact = [[level, index, nodes.nodes[(level, index)].hex()] for level, index in perfect_subtrees(0, tree.size)]

    found = check_entries(st, previous_size, entries)

    st.verifier_key, st.origin = key, origin
    st.size, st.root = latest.size, latest.root.hex()
    st.checkpoint = checkpoints[-1].note if checkpoints else st.checkpoint
    st.compact = compact
    return AuditResult(
        origin=origin, verifier_key=key, key_pinned_now=pinned_now, previous_size=previous_size, size=latest.size,
        root=latest.root.hex(), checkpoints_verified=len(checkpoints), entries_checked=len(entries), jobs=found.jobs,
        merchants=summaries(st), warnings=found.warnings, state=st,
        checkpoints=[CheckpointCheck(origin, c.size, c.root.hex(), c.note) for c in checkpoints],
        releases=found.releases)


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


def _fetch_entries(source: LogSource, start: int, end: int) -> list[bytes]:
    """Entries [start, end) in order; fewer when the log serves fewer (the caller names what is missing)."""
    entries: list[bytes] = []
    with served(f"entries {start}..{end - 1}"):
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
    with served("consistency proofs"):
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
            with served(f"an inclusion proof for entry {index}"):
                proof = source.inclusion_proof(index, cp.size)
            verify_inclusion(hash_leaf(entries[index - first]), index, cp.size, proof, cp.root)
        except VerificationError:
            raise VerificationError(
                f"entry {index} is not the entry the log signed: it is not included under the signed root of "
                f"checkpoint size {cp.size} (edited or replaced entry)") from None
    raise VerificationError(f"entries {matched}..{cp.size - 1} do not hash to the signed root of checkpoint size "
                            f"{cp.size} ({tree.root(cp.size).hex()} != {cp.root.hex()}): entries were edited, "
                            f"deleted or inserted")
