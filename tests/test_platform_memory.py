"""What keeps the platform's memory bounded by chunks (issue 16) gives the same bytes as before."""

from __future__ import annotations

import numpy as np
import pytest

from matcher.crypto import group
from matcher.crypto.kernels import Kernels
from matcher.errors import MatcherError
from matcher.protocol import secure_platform, unbalanced_platform
from matcher.protocol._points import has_duplicate
from matcher.protocol.secure_platform import SecurePlatformSession, _Stream, _submit_slices
from tests.test_protocol import make_audience


def _points(n: int, seed: int = 3) -> bytes:
    return group.hash_to_curve_batch([seed.to_bytes(4, "big") + i.to_bytes(4, "big") for i in range(n)],
                                     b"matcher-test-memory")


def _sliced(scalar: bytes, points: bytes, **kwargs) -> bytes:
    rows = np.frombuffer(points, np.uint8).reshape(-1, 32)
    slices = _submit_slices(Kernels(), scalar, rows, np.arange(len(rows)), **kwargs)
    return b"".join(f.result() for f in slices)


@pytest.mark.parametrize("n", [0, 1, 6, 7, 8, 50])
def test_sliced_blinding_is_the_one_batch_blinding(n, monkeypatch):
    monkeypatch.setattr(secure_platform, "_BLIND_SLICE", 7)
    scalar, points = group.random_scalar(), _points(n)
    whole = Kernels().submit_blind(scalar, points, chosen=False).result()
    assert _sliced(scalar, points, chosen=False) == whole


def test_sliced_blinding_still_refuses_a_bad_point(monkeypatch):
    monkeypatch.setattr(secure_platform, "_BLIND_SLICE", 4)
    points = bytearray(_points(20))
    points[15 * 32:16 * 32] = bytes(32)  # u = 0: small order
    with pytest.raises(MatcherError):
        _sliced(group.random_scalar(), bytes(points))


def test_the_order_of_every_member_is_the_one_an_array_of_rows_gave():
    audience = make_audience(list(range(2000)), [i % 4 for i in range(2000)], 2)

    def order(rows):
        session = SecurePlatformSession(audience, job_id="j", audit_rows=8, rng=lambda k: b"\x07" * k)
        return session._order(_Stream("matched", rows, 8, b"\x01" * 32))

    assert np.array_equal(order(len(audience)), order(np.arange(len(audience), dtype=np.int64)))


def test_has_duplicate_with_repeated_prefixes_is_exact():
    rows = np.random.default_rng(9).integers(0, 256, (5000, 32), dtype=np.uint8)
    rows[100:200, :8] = rows[0, :8]
    assert not has_duplicate(rows)
    rows[150] = rows[120]
    assert has_duplicate(rows)


def test_unbalanced_counts_are_exact_when_the_unmasking_runs_in_slices(operator, serve, tmp_path, monkeypatch):
    from tests.test_unbalanced import test_counts_are_exact_first_and_later_jobs_and_later_jobs_send_only_changes

    monkeypatch.setattr(secure_platform, "_BLIND_SLICE", 33)
    monkeypatch.setattr(unbalanced_platform, "UNMASK_SLICE_ROWS", 33)
    test_counts_are_exact_first_and_later_jobs_and_later_jobs_send_only_changes(operator, serve, tmp_path)
