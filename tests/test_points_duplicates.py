"""has_duplicate (the platform's check that a returned stream repeats no value) against np.unique."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from matcher.protocol._points import has_duplicate


def _reference(points: np.ndarray) -> bool:
    return len(np.unique(points.view("V32").ravel())) != len(points)


@given(st.lists(st.binary(min_size=32, max_size=32), max_size=30), st.integers(0, 3))
@settings(max_examples=300, deadline=None)
def test_has_duplicate_equals_np_unique(values, shared_prefix):
    # Values that share their first 8 bytes (a crafted stream would) and exact copies.
    rows = np.frombuffer(b"".join(values), np.uint8).reshape(-1, 32).copy()
    if shared_prefix and len(rows) > 1:
        rows[: len(rows) // shared_prefix or 1, :8] = rows[0, :8]
    assert has_duplicate(rows) == _reference(rows)
    if len(rows) > 1:
        copied = np.concatenate([rows, rows[-1:]])
        assert has_duplicate(copied)


def test_has_duplicate_on_a_big_random_stream_and_one_copy():
    rows = np.random.default_rng(16).integers(0, 256, (100_000, 32), dtype=np.uint8)
    assert not has_duplicate(rows)
    rows[77_777] = rows[12]
    assert has_duplicate(rows)
    # Same prefix, different tails: not a duplicate.
    rows[77_777] = rows[12]
    rows[77_777, 31] ^= 1
    assert not has_duplicate(rows)
    assert not has_duplicate(rows[:0]) and not has_duplicate(rows[:1])


def test_point_index_answers_a_big_query_slice_by_slice_as_at_once(monkeypatch):
    from matcher.protocol import _points

    rng = np.random.default_rng(7)
    members = rng.integers(0, 256, (3000, 32), dtype=np.uint8)
    labels = rng.integers(0, 4, 3000).astype(np.uint8)
    query = np.concatenate([rng.integers(0, 256, (5000, 32), dtype=np.uint8), members[::3], members[:10]])
    query = query[rng.permutation(len(query))]
    index = _points.PointIndex([members], [labels])
    whole = index.lookup_ids(query)
    monkeypatch.setattr(_points, "_QUERY_SLICE", 777)
    sliced = index.lookup_ids(query)
    for a, b in zip(whole, sliced):
        assert np.array_equal(a, b)
    assert np.all(np.diff(sliced[0]) > 0)   # positions still ascend (the audit relies on it)
