"""What keeps the unbalanced protocol's memory at a few bytes a member (issue 16, mem16b) gives the
same tags, the same stored copy and the same counts as before."""

from __future__ import annotations

import random
import weakref

import numpy as np
import pytest

from matcher.crypto import group
from matcher.crypto.kernels import Kernels
from matcher.protocol import _tags, unbalanced_platform
from matcher.protocol._points import point_rows
from matcher.protocol._tags import buckets, compact, from_bytes, present, sort_tags, tags_of
from matcher.protocol.unbalanced_platform import UnbalancedPlatformSession
from matcher.server import unbalanced
from tests.conftest import ground_truth
from tests.test_protocol import make_audience
from tests.test_unbalanced import _customers, _job


def _random_tags(n: int, seed: int) -> np.ndarray:
    return tags_of(np.random.default_rng(seed).integers(0, 256, (n, 32), dtype=np.uint8))


def _points(n: int) -> np.ndarray:
    return point_rows(group.hash_to_curve_batch([i.to_bytes(4, "big") for i in range(n)], b"matcher-test-unmask"))


@pytest.mark.parametrize("n", [0, 1, 20, 61])
def test_unmasking_a_slice_at_a_time_gives_the_tags_of_the_whole_unmasking(n, monkeypatch):
    monkeypatch.setattr(unbalanced_platform, "UNMASK_SLICE_ROWS", 7)
    returned = _points(n)
    real = np.random.default_rng(n).random(n) < 0.7
    real[7:14] = False  # a slice with no value to unmask
    session = UnbalancedPlatformSession(make_audience([], [], 0), job_id="j", copies=None, synced=None,
                                        key_changed=None)
    unmask = group.random_scalar()
    whole = Kernels().submit_blind(unmask, returned[real].tobytes(), chosen=False).result() if real.any() else b""
    assert session._unmasked_tags(unmask, returned, real).tobytes() == tags_of(point_rows(whole)).tobytes()


def test_buckets_are_the_leading_bits_of_the_tags():
    tags = _random_tags(1000, 1)
    for bits in (0, 1, 9, 24):
        old = (np.frombuffer(tags.tobytes(), ">u4").reshape(-1, 4)[:, 0] >> np.uint32(32 - bits)).astype(np.int64) \
            if bits else np.zeros(len(tags), np.int64)
        assert (buckets(tags, bits) == old).all()
        assert (buckets(tags[::3], bits) == old[::3]).all()  # not contiguous


def test_presence_over_sorted_pieces_with_repeats_is_the_parity_over_all_of_them():
    tags = _random_tags(300, 2)
    stored = sort_tags(np.concatenate([tags[:100], tags[50:120], tags[60:70]]))  # several pieces read as one
    toggles = sort_tags(tags[90:200])
    query = tags[::2]
    everything = np.concatenate([stored, toggles])
    occurrences = np.array([(everything == t).sum() for t in query])
    assert (present([stored, toggles], query) == (occurrences % 2 == 1)).all()
    assert (present([compact([stored, toggles])], query) == (occurrences % 2 == 1)).all()
    assert not present([], query).any() and not len(present([stored], query[:0]))


def _stored_pieces(store, enrollment_id: int) -> dict[int, list[np.ndarray]]:
    pieces: dict[int, list[np.ndarray]] = {}
    for bucket, tags in store.db.execute("SELECT bucket, tags FROM enrollment_pieces WHERE enrollment_id = ? "
                                         "ORDER BY bucket, idx", [enrollment_id]):
        pieces.setdefault(bucket, []).append(from_bytes(bytes(tags)))
    return pieces


def test_a_sync_of_sorted_toggles_stores_each_bucket_sorted_and_toggles_tags(operator, monkeypatch):
    monkeypatch.setattr(unbalanced, "COMPACT_AFTER", 2)
    store = operator.store
    merchant, _ = store.add_principal("merchant", "shop")
    tags = _random_tags(5000, 3)
    first = sort_tags(tags[:4000])
    assert unbalanced.save_sync(store, merchant.id, "", key_id=b"k", merchant_base=b"b", was=None, synced=1,
                                toggles=first)
    copy = unbalanced.enrollment(store, merchant.id, "")
    assert copy.bucket_bits == _tags.bucket_bits(4000)
    pieces = _stored_pieces(store, copy.id)
    assert sort_tags(np.concatenate([p for ps in pieces.values() for p in ps])).tobytes() == first.tobytes()
    for bucket, (piece,) in pieces.items():
        assert piece.tobytes() == sort_tags(piece).tobytes()
        assert (buckets(piece, copy.bucket_bits) == bucket).all()
    in_copy = np.zeros(len(tags), bool)
    in_copy[:4000] = True
    for n, (lo, hi) in enumerate([(3000, 4500), (3500, 5000)]):  # the second sync compacts buckets
        assert unbalanced.save_sync(store, merchant.id, "", key_id=b"k", merchant_base=b"b", was=copy,
                                    synced=2 + n, toggles=sort_tags(tags[lo:hi]))
        in_copy[lo:hi] ^= True
        copy = unbalanced.enrollment(store, merchant.id, "")
        assert (present([sort_tags(unbalanced.stored_tags(store, copy, tags))], tags) == in_copy).all()
    assert max(len(p) for p in _stored_pieces(store, copy.id).values()) <= 2


def test_a_stream_s_delta_and_order_are_released_once_the_stream_is_sent(operator, serve, monkeypatch):
    members, token = operator.seed(300, random.Random(11))
    deltas: list[weakref.ref] = []
    alive_at_count: list[int] = []
    read_delta, count = unbalanced.delta, UnbalancedPlatformSession._count

    def delta(*args, **kwargs):
        values = read_delta(*args, **kwargs)
        deltas.append(weakref.ref(values))
        return values

    def counted(self, stream, *args):
        alive_at_count.append(sum(ref() is not None for ref in deltas))
        assert stream.order is None
        return count(self, stream, *args)

    monkeypatch.setattr(unbalanced, "delta", delta)
    monkeypatch.setattr(UnbalancedPlatformSession, "_count", counted)
    served = serve()
    customers = _customers(random.Random(12), 100, 400)
    report, _ = _job(served, token, customers, segments=["member", "holds_coupon"])
    truth = ground_truth(members, customers)
    assert report["labels"] == {label: {"matched": cell["matched"],
                                        "segments": {s: cell["segments"][s] for s in ("member", "holds_coupon")}}
                                for label, cell in truth.items()}
    assert alive_at_count == [2, 1, 0]  # three streams: each delta gone once its stream went out

