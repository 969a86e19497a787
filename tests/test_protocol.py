"""Full protocol rounds through both engines, in process, against plaintext ground truth."""

from __future__ import annotations

import hashlib
import random

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from matcher.crypto import group, packing, paillier
from matcher.crypto.kernels import Kernels
from matcher.errors import InputError, InvalidCiphertext, ProtocolError
from matcher.protocol.merchant import MerchantSession
from matcher.protocol.messages import LabelSums
from matcher.protocol.platform import Audience, PlatformSession
from tests.conftest import test_private_key

KEY = test_private_key()


def key_of(i: int) -> str:
    return hashlib.sha256(f"+86138{i:08d}".encode()).hexdigest()


def make_audience(ids: list[int], bits: list[int], n_segments: int) -> Audience:
    points = group.hash_to_curve_batch([key_of(i).encode() for i in ids], group.dst_for("phone"))
    return Audience(id_kind="phone", points=np.frombuffer(points, np.uint8).reshape(-1, 32),
                    segment_bits=np.array(bits, dtype=np.uint64),
                    segments=tuple(f"s{j}" for j in range(n_segments)))


def share_list(platform: PlatformSession, merchant: MerchantSession, on_audience_chunk=None) -> None:
    """The exchange both kinds of job share: start, list up, double-blinded list and audience down."""
    merchant.accept(platform.start(merchant.start()))
    for chunk in merchant.blinded_chunks():
        platform.receive_blinded(chunk)
    platform.finish_list()
    for chunk in platform.double_blinded():
        merchant.receive_double_blinded(chunk)
    for chunk in platform.audience():
        if on_audience_chunk:
            on_audience_chunk(chunk)
        merchant.receive_audience(chunk)


def run(audience: Audience, merchant_ids: list[int], labels: list[str], *, dummies=(), rerandomize=True,
        seed=1, kernels=None):
    """One full round through both engines, with a seeded, reproducible randomness source."""
    rng = random.Random(seed)
    source = lambda n: rng.getrandbits(8 * n).to_bytes(n, "little")  # noqa: E731
    platform = PlatformSession(audience, KEY, job_id="job", dummies=dummies, rng=source, audience_chunk_rows=512,
                               kernels=kernels)
    merchant = MerchantSession([key_of(i) for i in merchant_ids], labels, id_kind="phone", rng=source,
                               kernels=kernels)
    share_list(platform, merchant)
    sums = merchant.finish() if rerandomize else None
    return platform, merchant, sums


def truth(members: dict[int, int], merchant_ids, labels, n_segments):
    out = {}
    for i, label in zip(merchant_ids, labels):
        cell = out.setdefault(label, [0, [0] * n_segments])
        if i in members:
            cell[0] += 1
            for j in range(n_segments):
                cell[1][j] += (members[i] >> j) & 1
    return out


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_property_counts_equal_ground_truth(data):
    n_segments = data.draw(st.integers(0, 60), label="segments")
    size = data.draw(st.integers(0, 5000), label="audience")
    rng = random.Random(data.draw(st.integers(0, 2**32)))
    members = {i: rng.getrandbits(n_segments) if n_segments else 0 for i in rng.sample(range(20_000), size)}
    n_labels = data.draw(st.integers(1, 32), label="labels")
    merchant_ids = rng.sample(range(20_000), data.draw(st.integers(1, 400), label="list"))
    labels = [f"L{rng.randrange(n_labels)}" for _ in merchant_ids]
    audience = make_audience(list(members), list(members.values()), n_segments)
    dummies = [rng.randrange(4) for _ in sorted(set(labels))]
    platform, merchant, sums = run(audience, merchant_ids, labels, dummies=dummies)
    result = platform.receive_sums(sums)
    expected = truth(members, merchant_ids, labels, n_segments)
    assert {label: [a.matched, list(a.segments.values())] for label, a in result.items()} == expected
    # The merchant saw real matches plus exactly the dummies of each label.
    seen = dict(zip(merchant.label_names, merchant.matched_counts.tolist()))
    assert seen == {label: expected[label][0] + d for label, d in zip(merchant.label_names, dummies)}


def test_sixty_segments_all_set_full_intersection_and_32_labels():
    ids = list(range(64))
    audience = make_audience(ids, [(1 << 60) - 1] * len(ids), 60)
    labels = [f"L{i % 32}" for i in ids]
    platform, _, sums = run(audience, ids, labels)
    result = platform.receive_sums(sums)
    assert len(result) == 32
    assert all(a.matched == 2 and set(a.segments.values()) == {2} for a in result.values())


def test_empty_intersection_and_one_label():
    audience = make_audience(list(range(50)), [1] * 50, 3)
    platform, _, sums = run(audience, list(range(100, 130)), ["all"] * 30)
    assert platform.receive_sums(sums)["all"].matched == 0


def test_empty_merchant_list_is_refused():
    with pytest.raises(InputError, match="empty"):
        MerchantSession([], [], id_kind="phone")


def test_calls_out_of_order_are_refused():
    audience = make_audience([1, 2], [0, 0], 1)
    merchant = MerchantSession([key_of(1)], ["all"], id_kind="phone")
    with pytest.raises(ProtocolError):
        list(merchant.blinded_chunks())  # before accept
    platform = PlatformSession(audience, KEY, job_id="j")
    with pytest.raises(ProtocolError):
        platform.finish_list()           # before start
    platform.start(merchant.start())
    with pytest.raises(ProtocolError, match="ended after 0 of 1"):
        platform.finish_list()           # list never sent


def test_without_rerandomization_the_platform_recognises_the_sum():
    """The platform knows every ciphertext it streamed; a plain product of some of them is
    recognisable (it can test candidate subsets), a re-randomized one is not."""
    audience = make_audience(list(range(40)), [1] * 40, 1)
    rng = random.Random(5)
    source = lambda n: rng.getrandbits(8 * n).to_bytes(n, "little")  # noqa: E731
    platform = PlatformSession(audience, KEY, job_id="j", rng=source)
    merchant = MerchantSession([key_of(i) for i in (3, 7)], ["all", "all"], id_kind="phone", rng=source)
    streamed = []
    size = KEY.public_key.ciphertext_size
    share_list(platform, merchant, lambda chunk: streamed.extend(
        int.from_bytes(chunk.ciphertexts[i:i + size], "big") for i in range(0, len(chunk.ciphertexts), size)))
    merchant._match_pending()
    plain_product = merchant._sums[0]
    # The platform's test: is the sum the product of the ciphertexts at the rows of members 3 and 7?
    rows = [int(np.nonzero(platform.stream_order == m)[0][0]) for m in (3, 7)]
    candidate = streamed[rows[0]] * streamed[rows[1]] % KEY.public_key.n_squared
    assert plain_product == candidate                      # without re-randomization: recognised
    sent = KEY.public_key.from_bytes(merchant.finish().sums[0])
    assert sent != candidate                               # with it: a fresh-looking ciphertext
    assert platform.receive_sums(LabelSums((KEY.public_key.to_bytes(sent),)))["all"].matched == 2


def test_forged_sum_that_overflows_is_refused():
    audience = make_audience(list(range(10)), [1] * 10, 2)
    platform, _, _ = run(audience, list(range(5)), ["all"] * 5)
    forged = KEY.public_key.encrypt(1 << (platform.layout.total_bits + 1))
    with pytest.raises(InvalidCiphertext):
        platform.receive_sums(LabelSums((KEY.public_key.to_bytes(forged),)))


@pytest.mark.parametrize("forge", [lambda n2: 0, lambda n2: n2, lambda n2: n2 + 5, lambda n2: KEY.p])
def test_sums_outside_z_n2_are_refused(forge):
    audience = make_audience(list(range(10)), [1] * 10, 2)
    platform, _, _ = run(audience, list(range(5)), ["all"] * 5)
    size = KEY.public_key.ciphertext_size
    value = forge(KEY.public_key.n_squared)
    data = value.to_bytes(size + 1, "big")[-size:] if value < 256 ** size else b"\xff" * size
    with pytest.raises(InvalidCiphertext):
        platform.receive_sums(LabelSums((data,)))


def test_wrong_sized_sum_and_chunk_are_refused():
    audience = make_audience(list(range(10)), [1] * 10, 2)
    platform, _, _ = run(audience, list(range(5)), ["all"] * 5)
    with pytest.raises(InvalidCiphertext):
        platform.receive_sums(LabelSums((b"\x01" * 100,)))
    fresh = PlatformSession(audience, KEY, job_id="j", max_chunk=4)
    merchant = MerchantSession([key_of(i) for i in range(6)], ["all"] * 6, id_kind="phone")
    fresh.start(merchant.start())
    from matcher.errors import ChunkTooLarge
    from matcher.protocol.messages import BlindedChunk

    with pytest.raises(ChunkTooLarge):
        fresh.receive_blinded(BlindedChunk(points=bytes(32) * 6, labels=bytes(6)))


class _OnlyZerosOnline(Kernels):
    """Refuses to encrypt any payload online: with stored member ciphertexts only dummies' Enc(0) is left."""

    def submit_encrypt(self, context, plaintexts):
        assert not any(plaintexts), "a member's payload was encrypted during the job"
        return super().submit_encrypt(context, plaintexts)


@pytest.mark.parametrize("dummies", [[0], [5]])
@pytest.mark.parametrize("with_ciphertexts", [False, True])
def test_precomputed_stream_gives_the_same_counts(dummies, with_ciphertexts):
    """The member half of the stream made ahead of time (its own b, order and b·H(y), and with the key
    every member's ciphertext, stored in odd-sized pieces) gives exactly the counts of a stream made
    during the job."""
    from matcher.protocol.platform import PrecomputedStream, precompute_stream

    rng = random.Random(8)
    members = {i: rng.getrandbits(3) for i in range(1_500)}
    audience = make_audience(list(members), list(members.values()), 3)
    made = precompute_stream(audience, Kernels(), key=KEY if with_ciphertexts else None, chunk_rows=333)
    stored = list(made.pieces)  # as the store hands them back: a fresh iterator over the same pieces
    assert all((c is not None) == with_ciphertexts for _, c in stored)
    stream = PrecomputedStream(scalar=made.scalar, order=made.order, pieces=iter(stored), layout=made.layout)
    source = lambda n: rng.getrandbits(8 * n).to_bytes(n, "little")  # noqa: E731
    platform = PlatformSession(audience, KEY, job_id="p", dummies=dummies, rng=source, audience_chunk_rows=512,
                               precomputed=stream, kernels=_OnlyZerosOnline() if with_ciphertexts else Kernels())
    merchant_ids = list(range(1_000, 2_000))
    merchant = MerchantSession([key_of(i) for i in merchant_ids], ["all"] * 1_000, id_kind="phone", rng=source)
    share_list(platform, merchant)
    expected = truth(members, merchant_ids, ["all"] * 1_000, 3)["all"]
    result = platform.receive_sums(merchant.finish())["all"]
    assert [result.matched, list(result.segments.values())] == expected
    assert merchant.matched_counts[0] == expected[0] + dummies[0]
    assert sorted(platform.stream_order[platform.stream_order >= 0].tolist()) == list(range(1_500))


def test_stored_ciphertexts_of_another_layout_are_not_used():
    """A stream made for 2 segments cannot serve an audience of 3: the job encrypts its members itself."""
    from matcher.protocol.platform import PrecomputedStream

    members = {i: i % 8 for i in range(200)}
    audience = make_audience(list(members), list(members.values()), 3)
    other = packing.PackingLayout.widest(n_segments=2)
    pieces = iter([(bytes(32) * 200, bytes(KEY.public_key.ciphertext_size) * 200)])
    platform = PlatformSession(audience, KEY, job_id="p", kernels=_OnlyZerosOnline(),
                               precomputed=PrecomputedStream(scalar=group.random_scalar(), order=np.arange(200),
                                                             pieces=pieces, layout=other))
    merchant = MerchantSession([key_of(i) for i in range(50)], ["all"] * 50, id_kind="phone")
    with pytest.raises(AssertionError, match="encrypted during the job"):
        share_list(platform, merchant)
