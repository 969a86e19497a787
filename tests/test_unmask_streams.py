"""Streams counted by unblinding what comes back (issue 16), in the secure protocol's real engines.

A stream whose values are fewer than the merchant's list is counted the cheaper way: the platform
takes b_s off the returned values (``group.unblinding_scalar``), giving a_s·H(y), and looks those up
among the list copy's own values, instead of computing T_s = b_s·(the list copy). The attacks are a
merchant's that send list elements (torsion twins, twist points, small-order or non-canonical
encodings) or returned values (twins of a member's value, small-order, non-canonical, twist points,
its own list values) that a T_s-stream would treat differently. Every count is compared exactly with
the plaintext truth. The returned-value attackers are omniscient (they read the platform's audit
values and b_s), so that the audit cannot be what stops them: only the count's own rules do.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from matcher.crypto import group
from matcher.crypto.kernels import Kernels
from matcher.errors import InvalidPoint
from matcher.protocol.messages import BlindedChunk
from matcher.protocol.platform import precompute_stream
from matcher.protocol.secure_merchant import SecureMerchantSession
from matcher.protocol.secure_platform import SecurePlatformSession
from tests.test_protocol import key_of, make_audience, truth
from tests.test_secure_protocol import run_secure
from tests.conftest import exchange_streams

P = 2**255 - 19
A = 486662
ORDER_8_U = 325606250916557431795983626356110631294008115727848805560023387167927233504


def u_bytes(u: int) -> bytes:
    return u.to_bytes(32, "little")


def twin(point: bytes) -> bytes:
    """The point plus (0, 0), of order 2: u -> 1/u. X25519 clears it, so both blind alike."""
    return u_bytes(pow(int.from_bytes(point, "little"), P - 2, P))


def twist_point(seed: int) -> bytes:
    """A u on the quadratic twist (u^3 + A·u^2 + u not a square), not of small order."""
    u = random.Random(seed).randrange(2, P - 1)
    while pow((u**3 + A * u * u + u) % P, (P - 1) // 2, P) != P - 1:
        u += 1
    return u_bytes(u)


def h(i: int) -> bytes:
    return group.hash_to_curve(key_of(i).encode(), group.dst_for("phone"))


def counts(platform) -> dict:
    return {label: [a.matched, list(a.segments.values())] for label, a in platform.aggregates().items()}


# 60 members; s0: members 0..9, s1: the odd ones. The merchant lists 30..229: 200 elements, so
# every stream (at most 60 members + 16 audit rows) is counted by unblinding.
MEMBERS = {i: (1 if i < 10 else 0) | (2 if i % 2 else 0) for i in range(60)}
LIST = list(range(30, 230))


def audience():
    return make_audience(list(MEMBERS), list(MEMBERS.values()), 2)


def test_unblinding_scalar_takes_the_blinding_off():
    point = h(1)
    for _ in range(64):
        b, a = group.random_scalar(), group.random_scalar()
        assert group.blind(group.unblinding_scalar(b), group.blind(a, group.blind(b, point))) == group.blind(a, point)


def test_the_rule_depends_only_on_sizes_the_merchant_knows():
    """Unblind where the stream's non-audit values are clearly fewer than the list's; the same sizes
    give the same choice whoever the members are and whatever the overlap."""
    assert run_secure(audience(), LIST, ["all"] * 200).unblinded == (True, True, True)
    # 12 listed: every stream outnumbers the list, so T_s (12 multiplications) is the cheaper.
    assert run_secure(audience(), list(range(12)), ["all"] * 12).unblinded == (False, False, False)
    other = make_audience(list(range(1000, 1060)), list(MEMBERS.values()), 2)  # no overlap at all
    assert run_secure(other, LIST, ["all"] * 200).unblinded == (True, True, True)
    # 45 listed: stream 0 (60 members) by T_s, the segments (10 and 30 members) by unblinding.
    assert run_secure(audience(), list(range(45)), ["all"] * 45).unblinded == (False, True, True)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_property_counts_equal_ground_truth_in_both_ways(data):
    n_segments = data.draw(st.integers(0, 3))
    members = data.draw(st.dictionaries(st.integers(0, 300), st.integers(0, 2 ** n_segments - 1), max_size=80))
    merchant_ids = data.draw(st.lists(st.integers(0, 300), min_size=1, max_size=160, unique=True))
    labels = [data.draw(st.sampled_from("abc")) for _ in merchant_ids]
    platform = run_secure(make_audience(list(members), list(members.values()), n_segments), merchant_ids, labels,
                          padding=lambda n: data.draw(st.integers(0, 30)))
    assert counts(platform) == truth(members, merchant_ids, labels, n_segments)


def test_activation_by_unblinding_learns_exactly_the_matched_rows():
    platform = run_secure(audience(), LIST, ["x" if i % 3 else "y" for i in LIST], ordered=True,
                          activation_label="x", segments=[])
    assert platform.unblinded == (True,)
    assert platform.matched_rows().tolist() == [i for i in range(30, 60) if i % 3]


def test_an_idle_time_slot_is_unblinded_with_its_own_scalar():
    aud = audience()
    slot = precompute_stream(aud, Kernels(), chunk_rows=7)
    platform = SecurePlatformSession(aud, job_id="j", audit_rows=16, chunk_rows=13,
                                     precomputed=lambda key: slot if key == "" else None)
    merchant = SecureMerchantSession([key_of(i) for i in LIST], ["all"] * 200, id_kind="phone", chunk_size=64)
    merchant.accept(platform.start(merchant.start(all_segments=True)))
    exchange_streams(platform, merchant)
    assert platform.unblinded == (True, True, True)
    assert counts(platform) == truth(MEMBERS, LIST, ["all"] * 200, 2)


# --- a modified merchant's list ---------------------------------------------------------------------

def with_extra_elements(extra, *, first: bool):
    """A merchant that sends, in every copy, its honest list under label 'a' plus ``extra(session,
    index)`` (points) under label 'b', before the honest elements when ``first``."""

    class Extra(SecureMerchantSession):
        def start(self, **kw):
            start = super().start(**kw)
            n = len(extra(self, 0))
            return type(start)(id_kind=start.id_kind, labels=("a", "b"), label_sizes=(len(LIST), n),
                               merchant_base=start.merchant_base, segments=start.segments,
                               all_segments=start.all_segments)

        def blinded_chunks(self, index):
            points = extra(self, index)
            added = BlindedChunk(points=b"".join(points), labels=bytes([1]) * len(points))
            if first:
                yield added
            yield from super().blinded_chunks(index)
            if not first:
                yield added

    return Extra


def honest_value(session, index, i):
    return group.blind(session._scalars[index], h(i))


@pytest.mark.parametrize("first", [False, True])
def test_copies_twins_and_twist_points_in_the_list_count_a_person_once(first):
    """Member 40 is in the honest list (label a); label b adds its copy, its torsion twin, the twin
    of member 41's value, and points on the twist. Each person counts once, under label a: by
    unblinding, only values of the prime-order subgroup can ever match, so a twin never does (with
    T_s it would, as the same person, and under b when it came first); a copy counts only when it
    is the first of its equal values."""

    def extra(session, index):
        return [twin(honest_value(session, index, 40)), twin(honest_value(session, index, 41)),
                twist_point(1), twist_point(2)] + ([] if first else [honest_value(session, index, 40)])

    platform = run_secure(audience(), LIST, ["a"] * 200, merchant_cls=with_extra_elements(extra, first=first))
    assert platform.unblinded == (True, True, True)
    expected = truth(MEMBERS, LIST, ["a"] * 200, 2)
    expected["b"] = [0, [0, 0]]
    assert counts(platform) == expected


def test_a_copy_sent_first_counts_under_its_own_label_once():
    """The first-label rule on equal values: member 40's value under b, then again under a."""
    platform = run_secure(audience(), LIST, ["a"] * 200, merchant_cls=with_extra_elements(
        lambda session, index: [honest_value(session, index, 40)], first=True))
    assert platform.unblinded == (True, True, True)
    expected = truth(MEMBERS, [i for i in LIST if i != 40], ["a"] * 199, 2)
    expected["b"] = truth(MEMBERS, [40], ["b"], 2)["b"]
    assert counts(platform) == expected


@pytest.mark.parametrize("bad, error", [(u_bytes(0), "small-order"), (u_bytes(1), "small-order"),
                                        (u_bytes(P - 1), "small-order"), (u_bytes(ORDER_8_U), "small-order"),
                                        (u_bytes(P + 1), "not a canonical"), (u_bytes(2**255 + 9), "not a canonical")],
                         ids=["u0", "u1", "u-1", "order8", "p+1", "top-bit"])
@pytest.mark.parametrize("n_listed", [200, 12])  # counted by unblinding, and by T_s
def test_a_list_element_blind_would_refuse_is_refused_either_way(bad, error, n_listed):
    ids = list(range(30, 30 + n_listed))

    class Bad(SecureMerchantSession):
        def blinded_chunks(self, index):
            for number, chunk in enumerate(super().blinded_chunks(index)):
                yield type(chunk)(points=bad + chunk.points[32:], labels=chunk.labels) if number == 0 else chunk

    with pytest.raises(InvalidPoint, match=error):
        run_secure(audience(), ids, ["all"] * n_listed, merchant_cls=Bad)


# --- a modified merchant's returned values -----------------------------------------------------------

NOT_LISTED = [i for i in MEMBERS if i not in LIST]  # members 0..29: replacing their values changes no count


def tampering(how: str, holder: dict):
    """Returns every stream honestly, shuffled, then changes values of members the list does not
    hold (never an audit value: it reads the platform's). The target is member 41 (in s1)."""

    class Tampering(SecureMerchantSession):
        def transform_returned(self, index, values):
            values = super().transform_returned(index, values).copy()
            stream = holder["platform"]._streams[index]
            a, b = self._scalars[index], stream.scalar
            row_of = {values[r].tobytes(): r for r in range(len(values))}

            def row(i):
                return row_of.get(group.blind(a, group.blind(b, h(i))))

            spare = [r for r in (row(i) for i in NOT_LISTED) if r is not None]
            target = row(41)
            assert len(spare) >= 6 and (target is not None or stream.name == "s0")  # s0: members 0..9
            if how == "twin_of_target" and target is not None:
                values[spare[0]] = np.frombuffer(twin(values[target].tobytes()), np.uint8)
            elif how == "twin_instead_of_target" and target is not None:
                values[target] = np.frombuffer(twin(values[target].tobytes()), np.uint8)
            elif how == "invalid":
                bad = [u_bytes(0), u_bytes(1), u_bytes(P - 1), u_bytes(ORDER_8_U), u_bytes(P + 3), u_bytes(2**255 + 9)]
                for r, point in zip(spare, bad):
                    values[r] = np.frombuffer(point, np.uint8)
            elif how == "twist":
                for n, r in enumerate(spare[:3]):
                    values[r] = np.frombuffer(twist_point(10 + n), np.uint8)
            elif how == "own_list_values":
                # Its own a_s·H(x) for listed non-members, and their twins: would need b_s to match.
                mine = [group.blind(a, h(i)) for i in (100, 101)]
                for r, point in zip(spare, mine + [twin(p) for p in mine]):
                    values[r] = np.frombuffer(point, np.uint8)
            return values

    return Tampering


@pytest.mark.parametrize("how", ["twin_of_target", "twin_instead_of_target", "invalid", "twist", "own_list_values"])
def test_crafted_returned_values_change_no_count_beyond_the_replaced_rows(how, monkeypatch):
    """Whatever replaces values of members outside the list, the counts are the truth: a twin of a
    member's value unblinds to the same a_s·H(y) and meets the same list element, which counts once;
    invalid and twist values meet nothing (and stop nothing: a T_s-stream would not look at them
    either); the merchant's own list values would need b_s."""
    holder = {}
    original = SecurePlatformSession.start

    def keep(self, start):
        holder["platform"] = self
        return original(self, start)

    monkeypatch.setattr(SecurePlatformSession, "start", keep)
    platform = run_secure(audience(), LIST, ["a"] * 200, merchant_cls=tampering(how, holder))
    assert platform.unblinded == (True, True, True)
    assert counts(platform) == truth(MEMBERS, LIST, ["a"] * 200, 2)


def test_tuples_counted_by_unblinding_count_a_person_once():
    """Several identifiers a member (issue 19): listing all three of member 7's identifiers, among
    60 strangers', counts it once; the tuple rule holds when the stream is unblinded."""
    from tests.test_multi_id_protocol import KINDS, multi_audience, person, run as run_tuples
    from tests.test_multi_id_protocol import truth as tuple_truth

    members = [person(i, 3) for i in range(10)]
    bits = [i % 2 for i in range(10)]
    audience = multi_audience(members, bits, 1)
    elements = ([(kind, f"{kind[0]}7", "target") for kind in KINDS]
                + [(kind, f"{kind[0]}{100 + i}", "strangers") for i in range(20) for kind in KINDS]
                + [("email", "e3", "strangers")])
    platform = run_tuples(audience, elements)
    assert platform.unblinded == (True, True)
    got = counts(platform)
    assert got == tuple_truth(members, bits, elements, 1)
    assert got["target"] == [1, [1]] and got["strangers"] == [1, [1]]
    activation = run_tuples(audience, elements, ordered=True)
    assert activation.unblinded == (True,) and activation.matched_rows().tolist() == [3, 7]


def test_a_stream_unblinded_in_many_slices_counts_the_same(monkeypatch):
    """Large streams are unblinded a slice at a time, none awaited until the counts are read."""
    from matcher.protocol import secure_platform

    monkeypatch.setattr(secure_platform, "_BLIND_SLICE", 7)
    platform = run_secure(audience(), LIST, ["a" if i % 2 else "b" for i in LIST])
    assert platform.unblinded == (True, True, True)
    assert counts(platform) == truth(MEMBERS, LIST, ["a" if i % 2 else "b" for i in LIST], 2)
