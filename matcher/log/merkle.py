"""RFC 9162 (Certificate Transparency v2) Merkle tree over SHA-256.

Sections mirror the RFC: 2.1.1 hashing, 2.1.3 inclusion proofs, 2.1.4 consistency
proofs. The tree itself is append-only and keeps only *perfect* subtrees: node
``(level, index)`` is the hash of leaves ``[index * 2**level, (index + 1) * 2**level)``
and is written once, when its last leaf arrives, and never changes. Every other hash
(roots of sizes that are not powers of two, the right edge of a proof) is recomputed
from the O(log n) perfect subtrees it decomposes into, so one stored node set answers
questions about every past tree size; that is what lets the log prove history.

Each public query reads its nodes with a single ``NodeStore.get_nodes`` call, because
the SQLite store makes one query per call.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping, Sequence
from typing import Protocol

from matcher.errors import InputError, StoreError, VerificationError

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "MemoryNodeStore",
    "MerkleTree",
    "NodeID",
    "NodeStore",
    "hash_children",
    "hash_leaf",
    "perfect_subtrees",
    "root_from_inclusion",
    "verify_consistency",
    "verify_inclusion",
]

NodeID = tuple[int, int]  # (level, index); level 0 holds leaf hashes

HASH_SIZE = 32

# ---------------------------------------------------------------------------
# 2.1.1 Definition of the Merkle Tree
# ---------------------------------------------------------------------------

EMPTY_ROOT: bytes = hashlib.sha256(b"").digest()


def hash_leaf(entry: bytes) -> bytes:
    """MTH({d(0)}) = HASH(0x00 || d(0))."""
    return hashlib.sha256(b"\x00" + bytes(entry)).digest()


def hash_children(left: bytes, right: bytes) -> bytes:
    """HASH(0x01 || MTH(left) || MTH(right)); the prefix keeps leaves and nodes apart."""
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """k, the largest power of two smaller than n (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


def perfect_subtrees(begin: int, end: int) -> list[NodeID]:
    """The perfect subtrees, largest first, whose right fold is MTH(D[begin:end]).

    ``perfect_subtrees(0, size)`` is the compact range of a tree: its right edge, all that is
    needed to append to it and compute every later root.

    Only valid for ranges the RFC recursion produces: ``begin`` is a multiple of a
    power of two that is at least ``end - begin``, so the binary decomposition of the
    length, laid out from ``begin``, consists of aligned (storable) nodes.
    """
    nodes = []
    while begin < end:
        level = (end - begin).bit_length() - 1
        nodes.append((level, begin >> level))
        begin += 1 << level
    return nodes


def _fold(hashes: Sequence[bytes]) -> bytes:
    # MTH(D[a:b]) = HASH(P1, HASH(P2, ... Pj)): the split point k always lands on the
    # boundary of the largest perfect subtree, so the fold runs right to left.
    acc = hashes[-1]
    for h in reversed(hashes[:-1]):
        acc = hash_children(h, acc)
    return acc


class NodeStore(Protocol):
    """Persistence of perfect-subtree hashes, keyed by (level, index)."""

    def get_nodes(self, keys: Sequence[NodeID]) -> dict[NodeID, bytes]:
        """Return the hashes of those keys that are stored (missing keys are omitted)."""
        ...

    def put_nodes(self, nodes: Mapping[NodeID, bytes]) -> None:
        """Store these node hashes; a node is never rewritten with a different value."""
        ...


class MemoryNodeStore:
    """Dict-backed NodeStore, for tests and for verifiers that rebuild a tree locally."""

    def __init__(self) -> None:
        self.nodes: dict[NodeID, bytes] = {}
        # Counted so tests can hold the tree to its O(log n), one-call-per-query promise.
        self.get_calls = 0
        self.reads = 0
        self.writes = 0

    def get_nodes(self, keys: Sequence[NodeID]) -> dict[NodeID, bytes]:
        self.get_calls += 1
        self.reads += len(keys)
        return {k: self.nodes[k] for k in keys if k in self.nodes}

    def put_nodes(self, nodes: Mapping[NodeID, bytes]) -> None:
        self.writes += len(nodes)
        self.nodes.update(nodes)


class MerkleTree:
    """An append-only RFC 9162 tree whose perfect subtrees live in a NodeStore.

    ``size`` is trusted: the owner (the log store) persists it atomically with the
    nodes. Queries about any size up to ``size`` are answered from the same nodes.
    """

    def __init__(self, store: NodeStore, size: int):
        if size < 0:
            raise InputError(f"tree size must be non-negative, got {size}")
        self.store = store
        self.size = size

    # -- reading ---------------------------------------------------------------

    def _read(self, ranges: Sequence[tuple[int, int]]) -> list[bytes]:
        """MTH of each range, all nodes fetched with one get_nodes call."""
        per_range = [perfect_subtrees(b, e) for b, e in ranges]
        wanted = list(dict.fromkeys(k for ids in per_range for k in ids))
        if not wanted:
            return []
        got = self.store.get_nodes(wanted)
        missing = [k for k in wanted if k not in got]
        if missing:
            raise StoreError(
                f"Merkle node(s) {missing[:3]} missing from the store for a tree of size {self.size}",
                hint="the log database is incomplete or corrupt",
            )
        return [_fold([got[k] for k in ids]) for ids in per_range]

    def _check_size(self, size: int) -> None:
        if not 0 <= size <= self.size:
            raise InputError(f"tree size {size} is outside 0..{self.size}")

    def leaf_hash(self, index: int) -> bytes:
        if not 0 <= index < self.size:
            raise InputError(f"leaf index {index} is outside 0..{self.size - 1}")
        return self._read([(index, index + 1)])[0]

    def root(self, size: int | None = None) -> bytes:
        """MTH(D[0:size]), from the at most log2(size)+1 perfect subtrees of the binary decomposition of size."""
        size = self.size if size is None else size
        self._check_size(size)
        if size == 0:
            return EMPTY_ROOT
        return self._read([(0, size)])[0]

    # -- writing ---------------------------------------------------------------

    def append(self, entries: Sequence[bytes]) -> int:
        """Append leaves, store every perfect subtree they complete, return the new size.

        Writes per leaf: the leaf plus one node per subtree it completes (amortised 2,
        at most log2(n) + 1), all in one put_nodes call.
        """
        if isinstance(entries, (bytes, bytearray, str)):
            raise InputError("append() takes a sequence of entries, not a single entry")
        if not entries:
            return self.size
        # The right border of the current tree: exactly the nodes a new leaf can be merged with.
        border_ids = perfect_subtrees(0, self.size)
        got = self.store.get_nodes(border_ids) if border_ids else {}
        missing = [k for k in border_ids if k not in got]
        if missing:
            raise StoreError(
                f"Merkle node(s) {missing[:3]} missing from the store for a tree of size {self.size}",
                hint="the log database is incomplete or corrupt",
            )
        border = [got[k] for k in border_ids]  # largest subtree first
        new: dict[NodeID, bytes] = {}
        n = self.size
        for entry in entries:
            if not isinstance(entry, (bytes, bytearray, memoryview)):
                raise InputError(f"Merkle entries must be bytes, got {type(entry).__name__}")
            h = hash_leaf(entry)
            new[(0, n)] = h
            level, index = 0, n
            # A set low bit of index means a left sibling is waiting on the border.
            while index & 1:
                h = hash_children(border.pop(), h)
                level, index = level + 1, index >> 1
                new[(level, index)] = h
            border.append(h)
            n += 1
        self.store.put_nodes(new)
        self.size = n
        return n

    # -- 2.1.3 Merkle Inclusion Proofs ---------------------------------------------

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        """PATH(index, D[0:size]) of RFC 9162 2.1.3.1, ordered from the leaf up."""
        self._check_size(size)
        if not 0 <= index < size:
            raise InputError(f"leaf index {index} is outside 0..{size - 1}")
        ranges = []
        lo, hi = 0, size
        while hi - lo > 1:  # PATH(m, D[lo:hi]), walking down from the root
            k = _split(hi - lo)
            if index < lo + k:
                ranges.append((lo + k, hi))
                hi = lo + k
            else:
                ranges.append((lo, lo + k))
                lo += k
        ranges.reverse()  # the recursion appends the sibling after the deeper path
        return self._read(ranges)

    # -- 2.1.4 Merkle Consistency Proofs ---------------------------------------------

    def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        """PROOF(old_size, D[0:new_size]) of RFC 9162 2.1.4.1.

        Empty when old_size is 0 or equal to new_size: there is nothing to prove.
        """
        self._check_size(new_size)
        if not 0 <= old_size <= new_size:
            raise InputError(f"old size {old_size} is outside 0..{new_size}")
        if old_size in (0, new_size):
            return []
        ranges = []
        lo, hi, b = 0, new_size, True
        while True:  # SUBPROOF(m, D[lo:hi], b)
            if old_size == hi:
                if not b:
                    ranges.append((lo, hi))
                break
            k = _split(hi - lo)
            if old_size - lo <= k:
                ranges.append((lo + k, hi))
                hi = lo + k
            else:
                ranges.append((lo, lo + k))
                lo, b = lo + k, False
        ranges.reverse()
        return self._read(ranges)


# ---------------------------------------------------------------------------
# Verification. These never trust the prover: every length and size is checked,
# and errors say which check failed so an auditor's report is actionable.
# ---------------------------------------------------------------------------


def _check_hash(what: str, h: bytes) -> None:
    if not isinstance(h, (bytes, bytearray)) or len(h) != HASH_SIZE:
        n = len(h) if isinstance(h, (bytes, bytearray)) else type(h).__name__
        raise VerificationError(f"{what} is not a {HASH_SIZE}-byte SHA-256 hash (got {n})")


def root_from_inclusion(leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes]) -> bytes:
    """The root an inclusion proof leads to (RFC 9162 2.1.3.2 steps 1-4, 5 except the root compare)."""
    if not 0 <= index < size:
        raise VerificationError(f"leaf index {index} is not below tree size {size}")
    _check_hash("leaf hash", leaf_hash)
    fn, sn, r = index, size - 1, bytes(leaf_hash)
    for i, p in enumerate(proof):
        _check_hash(f"inclusion proof element {i}", p)
        if sn == 0:
            raise VerificationError(
                f"inclusion proof for leaf {index} in tree size {size} is too long: "
                f"{len(proof)} elements, element {i} is extra"
            )
        if fn & 1 or fn == sn:
            r = hash_children(p, r)
            if not fn & 1:
                # fn is the last node on its level: climb until it is a right child or the root.
                while fn and not fn & 1:
                    fn, sn = fn >> 1, sn >> 1
        else:
            r = hash_children(r, p)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise VerificationError(
            f"inclusion proof for leaf {index} in tree size {size} is too short: {len(proof)} elements"
        )
    return r


def verify_inclusion(leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes) -> None:
    """RFC 9162 2.1.3.2: raise VerificationError unless `proof` puts `leaf_hash` at `index` under `root`."""
    _check_hash("root hash", root)
    computed = root_from_inclusion(leaf_hash, index, size, proof)
    if not hmac.compare_digest(computed, root):
        raise VerificationError(
            f"inclusion proof for leaf {index} in tree size {size} leads to root {computed.hex()}, "
            f"not the expected {bytes(root).hex()}"
        )


def verify_consistency(
    old_size: int, new_size: int, proof: Sequence[bytes], old_root: bytes, new_root: bytes
) -> None:
    """RFC 9162 2.1.4.2: raise VerificationError unless the tree of old_size is a prefix of the one of new_size.

    The RFC algorithm covers 0 < old_size < new_size; the edges are pinned down here:
    equal sizes need an empty proof and equal roots, and old_size 0 needs an empty proof
    and the empty root (it proves nothing about new_root beyond its length).
    """
    _check_hash("old root hash", old_root)
    _check_hash("new root hash", new_root)
    if not 0 <= old_size <= new_size:
        raise VerificationError(f"consistency proof from size {old_size} to smaller size {new_size}")
    if old_size == 0 or old_size == new_size:
        if proof:
            raise VerificationError(
                f"consistency proof from size {old_size} to {new_size} must be empty, has {len(proof)} elements"
            )
        if old_size == 0 and not hmac.compare_digest(old_root, EMPTY_ROOT):
            raise VerificationError("the tree of size 0 must have the empty root")
        if old_size == new_size and not hmac.compare_digest(old_root, new_root):
            raise VerificationError(
                f"two different roots for tree size {old_size}: {bytes(old_root).hex()} and {bytes(new_root).hex()}"
            )
        return
    # 1. An empty path cannot prove anything between two different non-empty sizes.
    if not proof:
        raise VerificationError(f"consistency proof from size {old_size} to {new_size} is empty")
    for i, c in enumerate(proof):
        _check_hash(f"consistency proof element {i}", c)
    path = list(proof)
    # 2. If the old tree is perfect its root is a node of the new tree and is left out of the proof.
    if old_size & (old_size - 1) == 0:
        path.insert(0, bytes(old_root))
    # 3-4. Skip the levels where the old tree's last node is a right child.
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    # 5-6.
    fr = sr = path[0]
    for i, c in enumerate(path[1:], start=1):
        if sn == 0:
            raise VerificationError(
                f"consistency proof from size {old_size} to {new_size} is too long: "
                f"{len(proof)} elements, some are extra"
            )
        if fn & 1 or fn == sn:
            fr = hash_children(c, fr)
            sr = hash_children(c, sr)
            if not fn & 1:
                while fn and not fn & 1:
                    fn, sn = fn >> 1, sn >> 1
        else:
            sr = hash_children(sr, c)
        fn, sn = fn >> 1, sn >> 1
    # 7.
    if sn != 0:
        raise VerificationError(
            f"consistency proof from size {old_size} to {new_size} is too short: {len(proof)} elements"
        )
    if not hmac.compare_digest(fr, old_root):
        raise VerificationError(
            f"consistency proof does not lead to the old root of size {old_size}: "
            f"got {fr.hex()}, expected {bytes(old_root).hex()}"
        )
    if not hmac.compare_digest(sr, new_root):
        raise VerificationError(
            f"consistency proof does not lead to the new root of size {new_size}: "
            f"got {sr.hex()}, expected {bytes(new_root).hex()}"
        )
