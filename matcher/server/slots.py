"""Precomputed stream slots: the member half of a job's stream, made while the server is idle and
used by one job only.

The engine makes a :class:`~matcher.protocol.platform.PrecomputedStream` (the job's scalar b, a
random order of the audience rows, then b·H(y) and optionally Enc(payload(y)) in that order);
this module keeps it until a job wants it::

    write(store, pool_key, stream, ...)   the idle loop (matcher.server.app): b sealed under the
                                          operator's pool key, the packing layout as JSON, the
                                          pieces stored in short transactions
    take(store, pool_key, version, ...)   a job (matcher.server.jobs): one ready slot marked taken,
                                          b unsealed, the layout parsed, the pieces read lazily
    spend(store, slot_id)                 the job has ended: the slot goes at the next cleanup

The SQL and the slot's states (:class:`~matcher.server.store.SlotState`) are in
:mod:`matcher.server.store.precomputed`; the store's ``drop_stream_slots`` is the cleanup.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Iterable

import numpy as np

from matcher.crypto import pool
from matcher.crypto.packing import PackingLayout
from matcher.protocol.platform import PrecomputedStream
from matcher.server.store import Store

# Associated data naming a sealed stream scalar b (see matcher.crypto.pool.seal_bytes).
STREAM_SCALAR = b"matcher-stream-scalar-v1"


@dataclass(frozen=True)
class TakenSlot:
    """A slot a job now holds: ``stream`` to use once, ``slot_id`` to :func:`spend` when the job ends."""

    slot_id: int
    stream: PrecomputedStream


def write(store: Store, pool_key: bytes, stream: PrecomputedStream, *, audience_version: str, segment: str = "",
          pieces: Iterable[tuple[bytes, bytes | None]] | None = None) -> None:
    """Store ``stream`` as a slot for jobs on ``audience_version`` (of every member, or with
    ``segment`` of the members holding it). ``pieces`` (default: the stream's own) lets the caller
    pace or interrupt the writing; a slot interrupted part-way is deleted, never taken."""
    layout_json = json.dumps(stream.layout.to_dict(), sort_keys=True) if stream.layout is not None else None
    store.add_stream_slot(audience_version, pool.seal_bytes(pool_key, stream.scalar, STREAM_SCALAR),
                          stream.order.tobytes(), stream.pieces if pieces is None else pieces,
                          layout_json=layout_json, segment=segment)


def take(store: Store, pool_key: bytes, audience_version: str, segment: str = "") -> TakenSlot | None:
    """A ready slot for this audience snapshot and stream, now the caller's alone; None when none is ready."""
    stored = store.take_stream_slot(audience_version, segment)
    if stored is None:
        return None
    layout = PackingLayout.from_dict(json.loads(stored.layout_json)) if stored.layout_json else None
    stream = PrecomputedStream(scalar=pool.unseal_bytes(pool_key, stored.sealed_scalar, STREAM_SCALAR),
                               order=np.frombuffer(stored.order, np.int64), layout=layout,
                               pieces=store.stream_slot_pieces(stored.id))
    return TakenSlot(stored.id, stream)


def spend(store: Store, slot_id: int) -> None:
    """The job that took the slot has ended (however): the slot is never used again."""
    store.spend_stream_slot(slot_id)
