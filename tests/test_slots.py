"""matcher.server.slots: a precomputed stream slot written while idle comes back to one job as the
same PrecomputedStream, its scalar sealed at rest, and every state of ``stream_slots.taken`` is one
of SlotState's."""

from __future__ import annotations

import numpy as np
import pytest

from matcher.crypto.packing import PackingLayout
from matcher.errors import CryptoError
from matcher.protocol.platform import PrecomputedStream
from matcher.server import slots
from matcher.server.store import SlotState, Store

POOL_KEY = bytes(range(32))


def _stream(layout: PackingLayout | None = None) -> PrecomputedStream:
    pieces = [(bytes([1]) * 64, bytes([2]) * 10 if layout else None),
              (bytes([3]) * 32, bytes([4]) * 5 if layout else None)]
    return PrecomputedStream(scalar=bytes(range(100, 132)), order=np.array([2, 0, 1], np.int64),
                             pieces=iter(pieces), layout=layout)


def _states(store: Store) -> list[int]:
    return [r[0] for r in store.db.execute("SELECT taken FROM stream_slots ORDER BY id")]


@pytest.fixture
def store(tmp_path):
    opened = Store(tmp_path / "slots.db", create=True)
    yield opened
    opened.close()


@pytest.mark.parametrize("with_ciphertexts", [False, True])
def test_a_written_slot_is_taken_back_as_the_same_stream(store, with_ciphertexts):
    layout = PackingLayout.widest(n_segments=3) if with_ciphertexts else None
    slots.write(store, POOL_KEY, _stream(layout), audience_version="v1", segment="")
    sealed = store.db.execute("SELECT sealed_scalar FROM stream_slots").fetchone()[0]
    assert bytes(range(100, 132)) not in bytes(sealed)  # b is sealed at rest
    taken = slots.take(store, POOL_KEY, "v1")
    assert taken is not None and taken.stream.scalar == bytes(range(100, 132))
    assert taken.stream.order.tolist() == [2, 0, 1]
    assert taken.stream.layout == layout
    assert list(taken.stream.pieces) == list(_stream(layout).pieces)


def test_a_slot_goes_to_one_job_and_only_for_its_audience_and_segment(store):
    slots.write(store, POOL_KEY, _stream(), audience_version="v1", segment="vip")
    assert slots.take(store, POOL_KEY, "v2", "vip") is None
    assert slots.take(store, POOL_KEY, "v1", "") is None
    assert slots.take(store, POOL_KEY, "v1", "vip") is not None
    assert slots.take(store, POOL_KEY, "v1", "vip") is None  # taken once, never handed out twice


def test_the_writer_may_pace_the_pieces_and_a_paced_write_that_stops_leaves_nothing(store):
    def stopped(pieces):
        yield next(pieces)
        raise RuntimeError("the server stops")

    stream = _stream()
    with pytest.raises(RuntimeError):
        slots.write(store, POOL_KEY, stream, audience_version="v1", pieces=stopped(stream.pieces))
    assert store.db.execute("SELECT count(*) FROM stream_slots").fetchone()[0] == 0
    assert slots.take(store, POOL_KEY, "v1") is None


def test_a_slot_sealed_under_another_key_does_not_open(store):
    slots.write(store, POOL_KEY, _stream(), audience_version="v1")
    with pytest.raises(CryptoError):
        slots.take(store, bytes(32), "v1")


def test_the_taken_column_moves_through_the_named_states(store):
    slots.write(store, POOL_KEY, _stream(), audience_version="v1")
    slots.write(store, POOL_KEY, _stream(), audience_version="v1")
    assert _states(store) == [SlotState.UNTAKEN, SlotState.UNTAKEN]
    taken = slots.take(store, POOL_KEY, "v1")
    assert _states(store) == [SlotState.TAKEN, SlotState.UNTAKEN]
    slots.spend(store, taken.slot_id)
    assert _states(store) == [SlotState.SPENT, SlotState.UNTAKEN]
    store.drop_stream_slots(keep_version="v1")  # the idle cleanup deletes the spent one only
    assert _states(store) == [SlotState.UNTAKEN]
    assert store.db.execute("SELECT count(*) FROM stream_slot_pieces").fetchone()[0] == 2
