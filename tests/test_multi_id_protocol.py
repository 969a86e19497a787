"""Several identifiers per member (issue 19), in the secure protocol's engines: exact counts against a
plaintext truth, and the attacks a merchant with a modified client would try.

A member goes out as a tuple of its identifiers' values (padded to the widest member), the merchant
returns tuples whole, and the platform counts a tuple once. The attacks: list all of one person's
identifiers (counted once, not once per identifier), and break the tuples apart on the way back so
that each identifier counts on its own (caught by the audit tuples).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from matcher.crypto import group
from matcher.errors import InputError, ProtocolDeviation, ProtocolError
from matcher.protocol.platform import Audience
from matcher.protocol.secure_merchant import SecureMerchantSession
from matcher.protocol.secure_platform import SecurePlatformSession
from tests.test_secure_protocol import seeded
from tests.conftest import exchange_streams

KINDS = ("phone", "email", "opaque")


def h(kind: str, keys: list[str]) -> np.ndarray:
    return np.frombuffer(group.hash_to_curve_batch([k.encode() for k in keys], group.dst_for(kind)),
                         np.uint8).reshape(-1, 32)


def multi_audience(members: list[list[tuple[str, str]]], bits: list[int], n_segments: int) -> Audience:
    """``members[i]``: member i's identifiers as (kind, key), the first a phone (the primary)."""
    assert all(m and m[0][0] == "phone" for m in members)
    points = np.concatenate([h("phone", [m[0][1]]) for m in members])
    extras = [(i, kind, key) for i, m in enumerate(members) for kind, key in m[1:]]
    extra_points = np.concatenate([h(kind, [key]) for _, kind, key in extras]) if extras else None
    return Audience(id_kind="phone", points=points, segment_bits=np.array(bits, dtype=np.uint64),
                    segments=tuple(f"s{j}" for j in range(n_segments)), extra_points=extra_points,
                    extra_owner=np.array([i for i, _, _ in extras], dtype=np.int64) if extras else None,
                    id_kinds=KINDS)


def truth(members, bits, elements, n_segments):
    """A member counts once, under the alphabetically first label among the list's identifiers
    that are its own; ``elements``: (kind, key, label)."""
    label_of = {}
    for kind, key, label in elements:
        label_of.setdefault((kind, key), label)
    out = {label: [0, [0] * n_segments] for label in sorted({e[2] for e in elements})}
    for member, b in zip(members, bits):
        hits = sorted(label_of[i] for i in member if i in label_of)
        if hits:
            cell = out[hits[0]]
            cell[0] += 1
            for j in range(n_segments):
                cell[1][j] += (b >> j) & 1
    return out


def run(audience, elements, *, merchant_cls=SecureMerchantSession, audit_rows=16, padding=lambda n: 0, seed=3,
        ordered=False, segments=None, chunk_size=64, chunk_rows=97):
    platform = SecurePlatformSession(audience, job_id="job", rng=seeded(seed), audit_rows=audit_rows,
                                     padding=padding, ordered=ordered, chunk_rows=chunk_rows)
    kinds = [e[0] for e in elements]
    merchant = merchant_cls([e[1] for e in elements], [e[2] for e in elements], id_kind=kinds[0], kinds=kinds,
                            rng=seeded(seed + 1), chunk_size=chunk_size, ordered=ordered)
    start = merchant.start(all_segments=segments is None, segments=segments or ())
    merchant.accept(platform.start(start))
    exchange_streams(platform, merchant)
    return platform


def counts(platform):
    return {label: [a.matched, list(a.segments.values())] for label, a in platform.aggregates().items()}


def person(i: int, n_ids: int) -> list[tuple[str, str]]:
    """Member i with its phone and up to two more identifiers."""
    return [("phone", f"p{i}"), ("email", f"e{i}"), ("opaque", f"o{i}")][:n_ids]


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_property_each_member_counts_once_whatever_identifiers_meet_it(data):
    n_segments = data.draw(st.integers(0, 2))
    n = data.draw(st.integers(1, 60))
    members = [person(i, data.draw(st.integers(1, 3))) for i in range(n)]
    bits = [data.draw(st.integers(0, 2 ** n_segments - 1)) for _ in range(n)]
    # The list: identifiers of members and of strangers, of every kind, 1-3 per "row".
    pool = [(kind, f"{kind[0]}{i}") for i in range(n + 20) for kind in KINDS]
    chosen = data.draw(st.lists(st.sampled_from(pool), min_size=1, max_size=90, unique=True))
    elements = [(kind, key, data.draw(st.sampled_from("ab"))) for kind, key in chosen]
    audience = multi_audience(members, bits, n_segments)
    assert audience.width == max(len(m) for m in members)
    platform = run(audience, elements, padding=lambda s: data.draw(st.integers(0, 5)))
    assert counts(platform) == truth(members, bits, elements, n_segments)


def test_overlaps_through_each_kind_and_a_person_known_by_all_three():
    members = [person(i, 3) for i in range(30)]
    audience = multi_audience(members, [i % 2 for i in range(30)], 1)
    elements = ([("phone", f"p{i}", "by-phone") for i in range(0, 5)]
                + [("email", f"e{i}", "by-email") for i in range(5, 12)]
                + [("opaque", f"o{i}", "by-openid") for i in range(12, 14)]
                + [(kind, f"{kind[0]}20", "everything") for kind in KINDS]
                + [("email", "e999", "by-email"), ("phone", "p999", "by-phone")])
    got = counts(run(audience, elements))
    assert got == truth(members, [i % 2 for i in range(30)], elements, 1)
    assert got["by-phone"][0] == 5 and got["by-email"][0] == 7 and got["by-openid"][0] == 2
    assert got["everything"][0] == 1


def test_attack_listing_every_identifier_of_one_person_counts_them_once():
    """A hostile merchant lists the target's phone, email and OpenID, hoping for a count of 3
    (three times the signal over the same noise). It gets 1, as with one identifier."""
    members = [person(i, 3) for i in range(40)]
    audience = multi_audience(members, [0] * 40, 0)
    elements = [(kind, f"{kind[0]}7", "target") for kind in KINDS]
    assert counts(run(audience, elements))["target"][0] == 1


class Untupling(SecureMerchantSession):
    """A modified client that returns the values in one flat shuffle, ignoring the tuples: each of
    a person's identifiers would then land in a tuple of its own and count on its own."""

    def transform_returned(self, index, values):
        records = values.view(f"V{group.ELEMENT_SIZE}").ravel()
        np.random.default_rng(5).shuffle(records)
        return values


class SlotRotating(SecureMerchantSession):
    """Keeps every tuple's size but moves slot 0 of each tuple into the next tuple."""

    def transform_returned(self, index, values):
        values = super().transform_returned(index, values)
        width = self.tuple_width
        tuples = values.reshape(-1, width, group.ELEMENT_SIZE)
        tuples[:, 0] = np.roll(tuples[:, 0], 1, axis=0)
        return values


@pytest.mark.parametrize("merchant_cls", [Untupling, SlotRotating])
def test_attack_breaking_tuples_apart_fails_the_audit(merchant_cls):
    members = [person(i, 3) for i in range(40)]
    audience = multi_audience(members, [0] * 40, 0)
    elements = [(kind, f"{kind[0]}7", "target") for kind in KINDS]
    with pytest.raises(ProtocolDeviation, match="tuple"):
        run(audience, elements, merchant_cls=merchant_cls)


def test_a_tuple_goes_back_whole_with_its_values_in_a_fresh_order():
    """What the platform sees of a returned tuple does not say which identifier (kind) met the list:
    the merchant permutes the values inside every tuple, and keeps each tuple's values together."""
    members = [person(i, 3) for i in range(50)]
    audience = multi_audience(members, [0] * 50, 0)
    seen = {}

    class Recording(SecureMerchantSession):
        def receive_stream(self, index, points):
            seen.setdefault("sent", []).append(points)
            super().receive_stream(index, points)

        def transform_returned(self, index, values):
            blinded_sent = values.copy()
            out = super().transform_returned(index, values)
            seen["pairs"] = (blinded_sent, out.copy(), self.tuple_width)
            return out

    run(audience, [("phone", "p1", "a")], merchant_cls=Recording, audit_rows=8)
    before, after, width = seen["pairs"]
    assert width == 3
    rows = lambda a: [frozenset(bytes(v) for v in t) for t in a.reshape(-1, width, 32)]  # noqa: E731
    assert sorted(map(sorted, rows(before))) == sorted(map(sorted, rows(after)))  # tuples kept whole
    assert rows(before) != rows(after)                                            # in another order
    position = {bytes(v): j for t in before.reshape(-1, width, 32) for j, v in enumerate(t)}
    slots = [position[bytes(t[0])] for t in after.reshape(-1, width, 32)]
    assert len(set(slots)) == width                                               # and permuted inside


def test_members_with_fewer_identifiers_are_padded_with_values_nobody_can_recognise():
    members = [person(0, 3), person(1, 1), person(2, 2)]
    audience = multi_audience(members, [0, 0, 0], 0)
    platform = SecurePlatformSession(audience, job_id="j", rng=seeded(1), audit_rows=4)
    merchant = SecureMerchantSession(["p1"], ["a"], id_kind="phone", rng=seeded(2))
    accepted = platform.start(merchant.start())
    assert accepted.tuple_width == 3 and accepted.stream_sizes == ((3 + 4) * 3,)
    merchant.accept(accepted)
    for chunk in merchant.blinded_chunks(0):
        platform.receive_blinded(0, chunk)
    platform.finish_list(0, merchant.merchant_base(0))
    sent = np.frombuffer(b"".join(platform.stream(0)), np.uint8).reshape(-1, 32)
    assert len({bytes(v) for v in sent}) == len(sent)  # padding repeats nothing, not even itself
    for v in sent:
        group.blind(group.random_scalar(seeded(9)), bytes(v))  # every value is a valid point


def test_ordered_activation_finds_members_through_any_identifier():
    members = [person(i, 1 + i % 3) for i in range(30)]
    audience = multi_audience(members, [0] * 30, 0)
    elements = [("email", "e4", "a"), ("opaque", "o5", "a"), ("phone", "p6", "a"), ("email", "e6", "a"),
                ("opaque", "o3", "a")]  # member 3 has no OpenID (one identifier): no match
    platform = run(audience, elements, ordered=True)
    assert platform.matched_rows().tolist() == [4, 5, 6]


def test_a_list_kind_the_platform_does_not_hold_is_refused():
    audience = multi_audience([person(0, 2)], [0], 0)
    platform = SecurePlatformSession(audience, job_id="j", rng=seeded(1))
    merchant = SecureMerchantSession(["p0", "w0"], ["a", "a"], id_kind="phone", kinds=["phone", "wechat"],
                                     rng=seeded(2))
    with pytest.raises(InputError, match="wechat"):
        platform.start(merchant.start())


def test_the_merchant_refuses_streams_that_are_not_whole_tuples():
    merchant = SecureMerchantSession(["p0"], ["a"], id_kind="phone", rng=seeded(2))
    merchant.start()
    from matcher.protocol.messages import JobAccepted
    with pytest.raises(ProtocolError, match="tuple"):
        merchant.accept(JobAccepted(job_id="j", paillier_n=b"", segments=(), layout_json="", stream_names=("matched",),
                                    stream_sizes=(10,), protocol="secure", tuple_width=3))


def test_kinds_must_match_the_keys():
    with pytest.raises(InputError):
        SecureMerchantSession(["p0", "e0"], ["a", "a"], id_kind="phone", kinds=["phone"], rng=seeded(2))
