"""RFC 9162 Merkle tree: published vectors, a naive reference, and tamper tests."""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from matcher.errors import InputError, StoreError, VerificationError
from matcher.log.merkle import (
    EMPTY_ROOT,
    MemoryNodeStore,
    MerkleTree,
    hash_children,
    hash_leaf,
    root_from_inclusion,
    verify_consistency,
    verify_inclusion,
)

VECTORS = json.loads((Path(__file__).parent / "vectors" / "rfc9162_merkle.json").read_text())
H = bytes.fromhex
PROPS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# -- A deliberately naive reference: the RFC 9162 2.1.1, 2.1.3.1 and 2.1.4.1 recursions, verbatim. --


def _k(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def ref_mth(d: list[bytes]) -> bytes:
    if not d:
        return hashlib.sha256(b"").digest()
    if len(d) == 1:
        return hashlib.sha256(b"\x00" + d[0]).digest()
    k = _k(len(d))
    return hashlib.sha256(b"\x01" + ref_mth(d[:k]) + ref_mth(d[k:])).digest()


def ref_path(m: int, d: list[bytes]) -> list[bytes]:
    if len(d) == 1:
        return []
    k = _k(len(d))
    if m < k:
        return ref_path(m, d[:k]) + [ref_mth(d[k:])]
    return ref_path(m - k, d[k:]) + [ref_mth(d[:k])]


def ref_subproof(m: int, d: list[bytes], b: bool) -> list[bytes]:
    if m == len(d):
        return [] if b else [ref_mth(d)]
    k = _k(len(d))
    if m <= k:
        return ref_subproof(m, d[:k], b) + [ref_mth(d[k:])]
    return ref_subproof(m - k, d[k:], False) + [ref_mth(d[:k])]


def ref_proof(m: int, d: list[bytes]) -> list[bytes]:
    return ref_subproof(m, d, True)


# -- Fixtures ----------------------------------------------------------------------------------------

BIG = 300
BIG_LEAVES = [b"leaf %d" % i + bytes([i % 256]) * (i % 5) for i in range(BIG)]


@lru_cache(maxsize=None)
def big_tree() -> MerkleTree:
    tree = MerkleTree(MemoryNodeStore(), 0)
    for start in range(0, BIG, 37):  # uneven batches, so batch boundaries fall inside subtrees
        tree.append(BIG_LEAVES[start : start + 37])
    return tree


@lru_cache(maxsize=None)
def big_root(size: int) -> bytes:
    return ref_mth(BIG_LEAVES[:size])


def vector_tree() -> MerkleTree:
    tree = MerkleTree(MemoryNodeStore(), 0)
    tree.append([H(x) for x in VECTORS["leaves"]])
    return tree


def flip(b: bytes, bit: int) -> bytes:
    out = bytearray(b)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


# -- 2.1.1 hashing and the published 8-leaf tree ---------------------------------------------------------


def test_empty_root_is_sha256_of_nothing():
    assert EMPTY_ROOT.hex() == VECTORS["roots"][0]
    assert MerkleTree(MemoryNodeStore(), 0).root() == EMPTY_ROOT


def test_hash_prefixes_separate_leaves_from_nodes():
    a, b = hash_leaf(b"a"), hash_leaf(b"b")
    assert hash_leaf(b"") == H(VECTORS["nodes"][0][0])
    assert hash_children(a, b) == hashlib.sha256(b"\x01" + a + b).digest()
    # A leaf whose data is "left || right" must not collide with the node over them.
    assert hash_leaf(a + b) != hash_children(a, b)


def test_every_perfect_node_of_the_vector_tree_is_stored_exactly():
    tree = vector_tree()
    expected = {(lvl, i): H(h) for lvl, row in enumerate(VECTORS["nodes"]) for i, h in enumerate(row)}
    assert tree.store.nodes == expected


@pytest.mark.parametrize("size", range(9))
def test_vector_roots(size):
    assert vector_tree().root(size).hex() == VECTORS["roots"][size]


@pytest.mark.parametrize("batches", [[8], [1] * 8, [3, 5], [1, 2, 4, 1], [7, 1]])
def test_batching_does_not_change_the_tree(batches):
    leaves = [H(x) for x in VECTORS["leaves"]]
    tree, pos = MerkleTree(MemoryNodeStore(), 0), 0
    for n in batches:
        assert tree.append(leaves[pos : pos + n]) == pos + n
        pos += n
    assert tree.root().hex() == VECTORS["roots"][8]
    assert tree.store.nodes == vector_tree().store.nodes


def test_reopened_tree_continues_where_the_store_left_off():
    leaves = [H(x) for x in VECTORS["leaves"]]
    store = MemoryNodeStore()
    MerkleTree(store, 0).append(leaves[:5])
    tree = MerkleTree(store, 5)
    tree.append(leaves[5:])
    assert [tree.root(s).hex() for s in range(9)] == VECTORS["roots"]


@pytest.mark.parametrize("vec", VECTORS["inclusion_proofs"], ids=lambda v: f"{v['index']}@{v['size']}")
def test_vector_inclusion_proofs(vec):
    tree = vector_tree()
    proof = tree.inclusion_proof(vec["index"], vec["size"])
    assert [p.hex() for p in proof] == vec["proof"]
    verify_inclusion(tree.leaf_hash(vec["index"]), vec["index"], vec["size"], proof, H(VECTORS["roots"][vec["size"]]))


@pytest.mark.parametrize("vec", VECTORS["consistency_proofs"], ids=lambda v: f"{v['old_size']}-{v['new_size']}")
def test_vector_consistency_proofs(vec):
    tree = vector_tree()
    proof = tree.consistency_proof(vec["old_size"], vec["new_size"])
    assert [p.hex() for p in proof] == vec["proof"]
    roots = VECTORS["roots"]
    verify_consistency(vec["old_size"], vec["new_size"], proof, H(roots[vec["old_size"]]), H(roots[vec["new_size"]]))


@pytest.mark.parametrize("probe", VECTORS["inclusion_probes"], ids=lambda p: p["file"].split("inclusion/")[1])
def test_inclusion_probes(probe):
    args = (H(probe["leaf_hash"]), probe["index"], probe["size"], [H(p) for p in probe["proof"]], H(probe["root"]))
    if probe["want_error"]:
        with pytest.raises(VerificationError):
            verify_inclusion(*args)
    else:
        verify_inclusion(*args)


# Where we are deliberately stricter than transparency-dev/merkle: a root must be a 32-byte hash
# even when sizes are equal and nothing is hashed (there "don't care 2" == "don't care 2" passes).
STRICTER = {"testdata/consistency/additional/sizes-are-equal-one-and-proof-is-empty.json": "32-byte"}


@pytest.mark.parametrize("probe", VECTORS["consistency_probes"], ids=lambda p: p["file"].split("consistency/")[1])
def test_consistency_probes(probe):
    args = (
        probe["old_size"],
        probe["new_size"],
        [H(p) for p in probe["proof"]],
        H(probe["old_root"]),
        H(probe["new_root"]),
    )
    if probe["file"] in STRICTER:
        with pytest.raises(VerificationError, match=STRICTER[probe["file"]]):
            verify_consistency(*args)
    elif probe["want_error"]:
        with pytest.raises(VerificationError):
            verify_consistency(*args)
    else:
        verify_consistency(*args)


def test_probe_vectors_cover_both_outcomes():
    # Guards the data file: a probe set that only says "reject" would pass a verifier that rejects everything.
    for kind in ("inclusion_probes", "consistency_probes"):
        outcomes = [p["want_error"] for p in VECTORS[kind]]
        assert outcomes.count(False) >= 5 and outcomes.count(True) >= 50


# -- Property tests against the naive reference --------------------------------------------------------------


@st.composite
def index_and_size(draw):
    size = draw(st.integers(1, BIG))
    return draw(st.integers(0, size - 1)), size


@st.composite
def two_sizes(draw):
    new = draw(st.integers(1, BIG))
    return draw(st.integers(1, new)), new


@PROPS
@given(st.integers(0, BIG))
def test_root_matches_reference(size):
    assert big_tree().root(size) == big_root(size)


@PROPS
@given(index_and_size())
def test_inclusion_proof_matches_reference_and_verifies(case):
    index, size = case
    tree = big_tree()
    proof = tree.inclusion_proof(index, size)
    assert proof == ref_path(index, BIG_LEAVES[:size])
    verify_inclusion(hash_leaf(BIG_LEAVES[index]), index, size, proof, big_root(size))
    assert root_from_inclusion(tree.leaf_hash(index), index, size, proof) == big_root(size)


@PROPS
@given(two_sizes())
def test_consistency_proof_matches_reference_and_verifies(case):
    old, new = case
    proof = big_tree().consistency_proof(old, new)
    assert proof == ref_proof(old, BIG_LEAVES[:new])
    verify_consistency(old, new, proof, big_root(old), big_root(new))


@PROPS
@given(st.lists(st.binary(max_size=40), max_size=80), st.lists(st.integers(1, 20), min_size=1))
def test_append_in_any_batches_builds_the_reference_tree(entries, cuts):
    tree, pos, i = MerkleTree(MemoryNodeStore(), 0), 0, 0
    while pos < len(entries):
        n = cuts[i % len(cuts)]
        tree.append(entries[pos : pos + n])
        pos, i = pos + n, i + 1
    assert tree.size == len(entries)
    assert tree.root() == ref_mth(entries)
    # Exactly the perfect subtrees: a tree of n leaves has 2n - popcount(n) of them.
    assert len(tree.store.nodes) == 2 * len(entries) - bin(len(entries)).count("1")


# -- Cost: O(log n) reads in one call, O(log n) writes per leaf ----------------------------------------------


def test_each_query_is_one_batched_read_of_logarithmic_size():
    store = MemoryNodeStore()
    tree = MerkleTree(store, 0)
    tree.append([b"%d" % i for i in range(1000)])
    worst = 0
    for size in (1, 2, 3, 511, 512, 513, 777, 999, 1000):
        for call in (
            lambda: tree.root(size),
            lambda: tree.inclusion_proof(size // 3, size),
            lambda: tree.inclusion_proof(size - 1, size),
            lambda: tree.consistency_proof(max(1, size // 2 - 1), size),
            lambda: tree.consistency_proof(1, size),
        ):
            store.get_calls = store.reads = 0
            # Trivial answers (the empty proof from size n to n) need no read at all.
            answer = call()
            assert store.get_calls == (1 if answer else 0)
            worst = max(worst, store.reads)
    # log2(1000) ~ 10: a proof has at most ~2 log n distinct nodes, never anything like n.
    assert worst <= 2 * 10 + 2


def test_append_writes_each_new_perfect_node_once():
    store = MemoryNodeStore()
    tree = MerkleTree(store, 0)
    for i in range(1, 65):
        before = store.writes
        tree.append([b"x"])
        # Leaf i-1 completes one node per trailing one-bit of i-1, plus the leaf itself.
        assert store.writes - before == 1 + ((i - 1) ^ i).bit_length() - 1
    assert store.writes == len(store.nodes) == 127


def test_missing_node_is_a_store_error_not_a_wrong_answer():
    tree = vector_tree()
    del tree.store.nodes[(1, 2)]
    with pytest.raises(StoreError):
        tree.root(6)
    with pytest.raises(StoreError):
        tree.inclusion_proof(0, 8 - 1)
    with pytest.raises(StoreError):
        MerkleTree(tree.store, 6).append([b"more"])


@pytest.mark.parametrize(
    "call",
    [
        lambda t: t.root(9),
        lambda t: t.leaf_hash(8),
        lambda t: t.leaf_hash(-1),
        lambda t: t.inclusion_proof(8, 8),
        lambda t: t.inclusion_proof(0, 9),
        lambda t: t.inclusion_proof(0, 0),
        lambda t: t.consistency_proof(5, 4),
        lambda t: t.consistency_proof(4, 9),
        lambda t: t.append(b"not a list"),
        lambda t: t.append(["not bytes"]),
    ],
)
def test_out_of_range_requests_are_input_errors(call):
    with pytest.raises(InputError):
        call(vector_tree())


# -- Tamper: every modification of a valid proof is rejected ---------------------------------------------------


@PROPS
@given(index_and_size(), st.data())
def test_inclusion_tampering_is_rejected(case, data):
    index, size = case
    tree = big_tree()
    leaf, root = hash_leaf(BIG_LEAVES[index]), big_root(size)
    proof = tree.inclusion_proof(index, size)

    def rejected(*args):
        with pytest.raises(VerificationError):
            verify_inclusion(*args)

    if proof:
        i = data.draw(st.integers(0, len(proof) - 1), label="element")
        bit = data.draw(st.integers(0, 255), label="bit")
        rejected(leaf, index, size, proof[:i] + [flip(proof[i], bit)] + proof[i + 1 :], root)
        rejected(leaf, index, size, proof[:-1], root)  # truncated
        rejected(leaf, index, size, proof[:i] + proof[i + 1 :], root)  # element removed
    rejected(leaf, index, size, proof + [proof[-1] if proof else root], root)  # extra element
    rejected(leaf, index, size, [root] + proof, root)  # extra element in front
    rejected(flip(leaf, data.draw(st.integers(0, 255))), index, size, proof, root)  # wrong leaf
    rejected(leaf, index, size, proof, flip(root, data.draw(st.integers(0, 255))))  # wrong root
    other = data.draw(st.integers(0, size - 1).filter(lambda j: j != index) if size > 1 else st.just(index + 1))
    rejected(leaf, other, size, proof, root)  # wrong index
    # Wrong size, against the root of the size claimed: the signed tree the attacker points to.
    sizes = st.integers(index + 1, BIG).filter(lambda s: s != size) if index + 1 < BIG else st.just(BIG + 1)
    bad_size = data.draw(sizes, label="claimed size")
    bad_root = big_root(bad_size) if bad_size <= BIG else root
    rejected(leaf, index, bad_size, proof, bad_root)


@PROPS
@given(two_sizes(), st.data())
def test_consistency_tampering_is_rejected(case, data):
    old, new = case
    assume(old < new)
    proof = big_tree().consistency_proof(old, new)
    r_old, r_new = big_root(old), big_root(new)

    def rejected(*args):
        with pytest.raises(VerificationError):
            verify_consistency(*args)

    i = data.draw(st.integers(0, len(proof) - 1), label="element")
    bit = data.draw(st.integers(0, 255), label="bit")
    rejected(old, new, proof[:i] + [flip(proof[i], bit)] + proof[i + 1 :], r_old, r_new)
    rejected(old, new, proof[:-1], r_old, r_new)  # truncated
    rejected(old, new, proof[:i] + proof[i + 1 :], r_old, r_new)  # element removed
    rejected(old, new, proof + [proof[-1]], r_old, r_new)  # extra element
    rejected(old, new, [proof[0]] + proof, r_old, r_new)  # extra element in front
    rejected(old, new, proof, flip(r_old, bit), r_new)  # history rewritten
    rejected(old, new, proof, r_old, flip(r_new, bit))
    rejected(new, old, proof, r_new, r_old)  # the log shrank
    # A different old size, against that size's real root.
    other = data.draw(st.integers(1, new).filter(lambda s: s != old))
    assume(big_tree().consistency_proof(other, new) != proof)
    rejected(other, new, proof, big_root(other), r_new)


def test_consistency_edges():
    r8 = H(VECTORS["roots"][8])
    verify_consistency(0, 8, [], EMPTY_ROOT, r8)  # vacuous, but true
    verify_consistency(8, 8, [], r8, r8)
    with pytest.raises(VerificationError, match="size 0"):
        verify_consistency(0, 8, [], r8, r8)
    with pytest.raises(VerificationError, match="must be empty"):
        verify_consistency(0, 8, [r8], EMPTY_ROOT, r8)
    with pytest.raises(VerificationError, match="two different roots"):
        verify_consistency(8, 8, [], r8, EMPTY_ROOT)
    with pytest.raises(VerificationError, match="32-byte"):
        verify_consistency(8, 8, [], r8[:31], r8[:31])


def test_error_messages_name_the_failed_check():
    tree = vector_tree()
    roots = [H(r) for r in VECTORS["roots"]]
    leaf, proof = tree.leaf_hash(2), tree.inclusion_proof(2, 5)
    with pytest.raises(VerificationError, match="too long"):
        verify_inclusion(leaf, 2, 5, proof + [roots[1]], roots[5])
    with pytest.raises(VerificationError, match="too short"):
        verify_inclusion(leaf, 2, 5, proof[:-1], roots[5])
    with pytest.raises(VerificationError, match="not below tree size"):
        verify_inclusion(leaf, 5, 5, proof, roots[5])
    with pytest.raises(VerificationError, match="leads to root"):
        verify_inclusion(leaf, 2, 5, proof, roots[6])
    cproof = tree.consistency_proof(3, 7)
    with pytest.raises(VerificationError, match="too long"):
        verify_consistency(3, 7, cproof + [roots[1]], roots[3], roots[7])
    with pytest.raises(VerificationError, match="too short"):
        verify_consistency(3, 7, cproof[:-1], roots[3], roots[7])
    with pytest.raises(VerificationError, match="smaller size"):
        verify_consistency(7, 3, cproof, roots[7], roots[3])
    with pytest.raises(VerificationError, match="old root"):
        verify_consistency(3, 7, cproof, roots[4], roots[7])
    with pytest.raises(VerificationError, match="new root"):
        verify_consistency(3, 7, cproof, roots[3], roots[8])
