"""The secure protocol's engines, in process: exact counts against ground truth, and the audit."""

from __future__ import annotations

import random

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from matcher.crypto import group
from matcher.errors import InputError, ProtocolDeviation, ProtocolError
from matcher.protocol.secure_merchant import SecureMerchantSession
from matcher.protocol.secure_platform import SecurePlatformSession
from tests.test_protocol import key_of, make_audience, truth
from tests.conftest import exchange_streams


def seeded(seed: int):
    rng = random.Random(seed)
    return lambda n: rng.getrandbits(8 * n).to_bytes(n, "little")


def run_secure(audience, merchant_ids, labels, *, segments=None, audit_rows=16, padding=lambda n: 0, seed=1,
               merchant_cls=SecureMerchantSession, ordered=False, activation_label=None, chunk_rows=97):
    """One secure round through both engines; returns the platform session (aggregates ready)."""
    platform = SecurePlatformSession(audience, job_id="job", rng=seeded(seed), audit_rows=audit_rows,
                                     padding=padding, ordered=ordered, activation_label=activation_label,
                                     chunk_rows=chunk_rows)
    merchant = merchant_cls([key_of(i) for i in merchant_ids], labels, id_kind="phone", rng=seeded(seed + 1),
                            chunk_size=64, ordered=ordered)
    start = merchant.start(all_segments=segments is None, segments=segments or ())
    merchant.accept(platform.start(start))
    exchange_streams(platform, merchant)
    return platform


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_property_counts_equal_ground_truth(data):
    n_segments = data.draw(st.integers(0, 4))
    members = data.draw(st.dictionaries(st.integers(0, 400), st.integers(0, 2 ** n_segments - 1), max_size=120))
    merchant_ids = data.draw(st.lists(st.integers(0, 400), min_size=1, max_size=120, unique=True))
    labels = [data.draw(st.sampled_from("abc")) for _ in merchant_ids]
    audience = make_audience(list(members), list(members.values()), n_segments)
    platform = run_secure(audience, merchant_ids, labels, padding=lambda n: data.draw(st.integers(0, 30)))
    expected = truth(members, merchant_ids, labels, n_segments)
    got = {label: [a.matched, list(a.segments.values())]
           for label, a in platform.aggregates().items()}
    assert got == expected


def test_segment_subset_streams_only_those_segments():
    members = {i: i % 8 for i in range(200)}
    audience = make_audience(list(members), list(members.values()), 3)
    platform = run_secure(audience, list(range(100, 300)), ["all"] * 200, segments=["s2"])
    assert platform.stream_names == ("matched", "s2")
    aggregate = platform.aggregates()["all"]
    assert aggregate.matched == 100
    assert aggregate.segments == {"s2": sum(1 for i in range(100, 200) if members[i] & 4)}


def test_duplicate_blinded_values_count_once():
    """A modified client that sends one a·H(x) under two labels gets it counted once, under the first."""

    class Doubling(SecureMerchantSession):
        def blinded_chunks(self, index):
            for chunk in super().blinded_chunks(index):
                yield chunk
                yield type(chunk)(points=chunk.points, labels=bytes([1]) * len(chunk))

    audience = make_audience(list(range(50)), [0] * 50, 0)
    merchant_ids = list(range(25, 75))

    class Sized(Doubling):
        def start(self, **kw):
            start = super().start(**kw)
            return type(start)(id_kind=start.id_kind, labels=("a", "b"), label_sizes=(50, 50),
                               merchant_base=start.merchant_base)

    platform = run_secure(audience, merchant_ids, ["a"] * 50, merchant_cls=Sized)
    assert {k: v.matched for k, v in platform.aggregates().items()} == {"a": 25, "b": 0}


@pytest.mark.parametrize("tamper", ["drop_one", "duplicate_one", "other_scalar_one", "truncate"])
def test_a_tampered_return_fails_the_audit(tamper):
    """Every audit row must come back: with as many audit rows as members, changing even one value
    is caught unless it was a member's; here every value is changed or moved, so it is caught."""

    class Tampering(SecureMerchantSession):
        def transform_returned(self, index, values):
            values = super().transform_returned(index, values).copy()
            if tamper == "drop_one":
                return values[1:]
            if tamper == "truncate":
                return values[: len(values) // 2]
            if tamper == "duplicate_one":
                values[1:] = values[0]
                return values
            from matcher.crypto import group
            return np.frombuffer(group.blind(group.random_scalar(), values.tobytes()), np.uint8).reshape(-1, 32)

    audience = make_audience(list(range(40)), [0] * 40, 0)
    with pytest.raises(ProtocolDeviation):
        run_secure(audience, list(range(20, 60)), ["all"] * 40, merchant_cls=Tampering, audit_rows=40)


def test_ordered_activation_learns_the_overlap_rows_of_one_label():
    audience = make_audience(list(range(100)), [0] * 100, 0)
    merchant_ids = list(range(50, 150))
    labels = ["x" if i % 2 else "y" for i in merchant_ids]
    platform = run_secure(audience, merchant_ids, labels, ordered=True, activation_label="x", segments=[])
    assert platform.matched_rows().tolist() == [i for i in range(50, 100) if i % 2]


def test_ordered_return_that_moves_an_audit_row_is_caught():
    class Shuffling(SecureMerchantSession):
        def transform_returned(self, index, values):
            return np.roll(values, 1, axis=0)

    audience = make_audience(list(range(30)), [0] * 30, 0)
    with pytest.raises(ProtocolDeviation):
        run_secure(audience, list(range(30)), ["all"] * 30, ordered=True, merchant_cls=Shuffling, segments=[])


def test_unknown_segment_and_out_of_order_calls_are_refused():
    audience = make_audience(list(range(10)), [0] * 10, 1)
    platform = SecurePlatformSession(audience, job_id="j", audit_rows=4)
    merchant = SecureMerchantSession([key_of(1)], ["all"], id_kind="phone")
    with pytest.raises(InputError, match="unknown segment"):
        platform.start(merchant.start(segments=["nope"]))
    platform = SecurePlatformSession(audience, job_id="j", audit_rows=4)
    merchant = SecureMerchantSession([key_of(1)], ["all"], id_kind="phone")
    platform.start(merchant.start(all_segments=True))
    with pytest.raises(ProtocolError):
        next(platform.stream(0))


def test_each_stream_goes_back_whole_in_an_order_of_the_merchants():
    """Returned in stream order, the values would tell the platform which members matched."""
    audience = make_audience(list(range(300)), [0] * 300, 0)
    seen = {}

    class Watched(SecureMerchantSession):
        def receive_stream(self, index, points):
            seen["streamed"] = seen.get("streamed", b"") + points
            super().receive_stream(index, points)

        def transform_returned(self, index, values):
            seen["in_stream_order"] = group.blind(self._scalars[index], seen["streamed"])
            seen["returned"] = super().transform_returned(index, values).tobytes()
            return np.frombuffer(seen["returned"], np.uint8).reshape(-1, 32).copy()

    run_secure(audience, list(range(150, 450)), ["all"] * 300, segments=[], merchant_cls=Watched)
    as_values = lambda data: [data[i:i + 32] for i in range(0, len(data), 32)]  # noqa: E731
    assert sorted(as_values(seen["returned"])) == sorted(as_values(seen["in_stream_order"]))  # all, once
    assert as_values(seen["returned"]) != as_values(seen["in_stream_order"])                    # reordered


def test_copies_of_the_list_share_no_value_and_no_order():
    """Each stream gets its own copy of the list under a fresh scalar and order: nothing links a
    person's element in one copy to the same person's in another."""
    merchant = SecureMerchantSession([key_of(i) for i in range(200)], ["all"] * 200, id_kind="phone")
    audience = make_audience(list(range(10)), [1] * 10, 2)
    platform = SecurePlatformSession(audience, job_id="j", audit_rows=4)
    merchant.accept(platform.start(merchant.start(all_segments=True)))
    copies = []
    for s in range(3):
        copies.append(b"".join(c.points for c in merchant.blinded_chunks(s)))
        merchant._current = s  # skip the stream: only the copies are compared here
    values = [set(c[i:i + 32] for i in range(0, len(c), 32)) for c in copies]
    assert all(len(v) == 200 for v in values)
    assert not (values[0] & values[1]) and not (values[1] & values[2]) and not (values[0] & values[2])
    assert len({merchant.merchant_base(s) for s in range(3)}) == 3


def test_merchant_refuses_a_stream_other_than_announced():
    from dataclasses import replace

    audience = make_audience(list(range(20)), [0] * 20, 0)
    for extra, error in ((1, "longer than"), (-1, "ended after")):
        platform = SecurePlatformSession(audience, job_id="c", audit_rows=4)
        merchant = SecureMerchantSession([key_of(i) for i in range(10)], ["all"] * 10, id_kind="phone")
        merchant.accept(platform.start(merchant.start()))
        for chunk in merchant.blinded_chunks(0):
            platform.receive_blinded(0, chunk)
        platform.finish_list(0, merchant.merchant_base(0))
        points = b"".join(platform.stream(0))
        points = points + points[:32] if extra > 0 else points[:-32]
        with pytest.raises(ProtocolError, match=error):
            merchant.receive_stream(0, points)
            list(merchant.returned_chunks(0))
    merchant = SecureMerchantSession([key_of(i) for i in range(3)], ["all"] * 3, id_kind="phone")
    accepted = SecurePlatformSession(audience, job_id="c", audit_rows=4).start(merchant.start())
    with pytest.raises(ProtocolError, match="does not fit"):
        merchant.accept(replace(accepted, stream_sizes=(2 ** 42,)))
        for _ in merchant.blinded_chunks(0):
            pass
        merchant.receive_stream(0, b"")
