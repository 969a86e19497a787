"""Work done while the server is idle, kept for the jobs that use it: the sealed Paillier randomness
pool (:mod:`matcher.crypto.pool`) and precomputed stream slots.

A stream slot is the member half of one job's stream, made ahead of time: the sealed scalar b, a
random order of the audience rows, and in pieces b·H(y) (and, for the semi-honest protocol, the
members' ciphertexts). :mod:`matcher.server.slots` seals, writes and reads them; this module holds
their SQL. A slot's life, in the columns ``ready`` and ``taken``::

    ready = 0                  being written, piece by piece (never taken; deleted at start-up)
    ready = 1, UNTAKEN         whole: the next job on its audience version and segment may take it
    TAKEN                      a running job streams from it (no two jobs get the same b)
    SPENT                      its job ended, or it is of an older audience: deleted at the next cleanup
"""

from __future__ import annotations

import enum
import itertools
from typing import Iterable, Iterator, NamedTuple, Sequence

from matcher.server import faults
from matcher.server.store.db import Database


class SlotState(enum.IntEnum):
    """The values of ``stream_slots.taken``."""

    UNTAKEN = 0
    TAKEN = 1
    SPENT = 2


# A slot a job may take: whole, and no job has had it.
_AVAILABLE = f"taken = {SlotState.UNTAKEN:d} AND ready = 1"


class StoredSlot(NamedTuple):
    """A slot's own row, as :meth:`PrecomputedTables.take_stream_slot` returns it; its pieces are read
    separately (:meth:`PrecomputedTables.stream_slot_pieces`)."""

    id: int
    sealed_scalar: bytes
    order: bytes              # int64 audience positions, in stream order
    layout_json: str | None   # the ciphertexts' packing layout; None when the slot holds no ciphertexts


class PrecomputedTables(Database):
    """The randomness pool and the stream slots."""

    # -- precomputed Paillier randomness -------------------------------------------------------

    def pool_batches(self, key_id: str) -> int:
        return self.db.execute("SELECT count(*) FROM randomness_pool WHERE key_id = ?", [key_id]).fetchone()[0]

    def pool_add(self, key_id: str, sealed: Sequence[bytes]) -> None:
        with self.transaction() as conn:
            conn.executemany("INSERT INTO randomness_pool (key_id, sealed) VALUES (?, ?)", [(key_id, b) for b in sealed])

    def pool_take(self, key_id: str, batches: int) -> list[bytes]:
        """Remove and return up to ``batches`` sealed batches: taken once, never handed out twice."""
        with self.transaction() as conn:
            rows = conn.execute("DELETE FROM randomness_pool WHERE id IN (SELECT id FROM randomness_pool "
                                "WHERE key_id = ? ORDER BY id LIMIT ?) RETURNING sealed", [key_id, batches]).fetchall()
        return [bytes(r[0]) for r in rows]

    # -- precomputed stream slots ---------------------------------------------------------------

    def stream_slots(self, audience_version: str, segment: str = "") -> int:
        """How many whole, untaken slots are ready for this audience snapshot (of every member, or
        with ``segment`` of the members holding it)."""
        return self.db.execute(f"SELECT count(*) FROM stream_slots WHERE audience_version = ? AND segment = ? "
                               f"AND {_AVAILABLE}", [audience_version, segment]).fetchone()[0]

    def segment_stream_slots(self, audience_version: str) -> dict[str, int]:
        """Ready slots per segment (the secure protocol's segment streams), for this audience snapshot."""
        return dict(self.db.execute(f"SELECT segment, count(*) FROM stream_slots WHERE audience_version = ? "
                                    f"AND segment != '' AND {_AVAILABLE} GROUP BY segment", [audience_version]))

    def stream_slot_rows_in_progress(self) -> int:
        """Rows written so far of the slots being made (minutes for a large audience: its ciphertexts)."""
        return self.db.execute("SELECT coalesce(sum(length(p.points)), 0) / 32 FROM stream_slots s "
                               "JOIN stream_slot_pieces p ON p.slot_id = s.id WHERE s.ready = 0").fetchone()[0]

    def add_stream_slot(self, audience_version: str, sealed_scalar: bytes, order: bytes,
                        pieces: Iterable[tuple[bytes, bytes | None]], layout_json: str | None = None,
                        segment: str = "") -> None:
        """Write a slot piece by piece, a few pieces per transaction (a slot with ciphertexts is
        ~0.5 GB per million members: one transaction would hold the write lock for its whole making),
        and mark it ready at the end, so a job never sees half a slot. If ``pieces`` fails or is
        interrupted, what was written is deleted."""
        with self.transaction() as conn:
            slot = conn.execute("INSERT INTO stream_slots (audience_version, sealed_scalar, stream_order, layout_json, "
                                "ready, segment) VALUES (?, ?, ?, ?, 0, ?)",
                                [audience_version, sealed_scalar, order, layout_json, segment]).lastrowid
        try:
            numbered = enumerate(pieces)
            while batch := list(itertools.islice(numbered, 8)):
                with self.transaction() as conn:
                    conn.executemany("INSERT INTO stream_slot_pieces (slot_id, idx, points, ciphertexts) "
                                     "VALUES (?, ?, ?, ?)", ((slot, i, p, c) for i, (p, c) in batch))
                faults.point("slot.pieces_written")
            with self.transaction() as conn:
                conn.execute("UPDATE stream_slots SET ready = 1 WHERE id = ?", [slot])
        except BaseException:
            self._delete_stream_slot(slot)
            raise

    def take_stream_slot(self, audience_version: str, segment: str = "") -> StoredSlot | None:
        """Mark one ready slot taken and return its row: no two jobs get the same b."""
        with self.transaction() as conn:
            row = conn.execute(f"UPDATE stream_slots SET taken = {SlotState.TAKEN:d} WHERE id = (SELECT id FROM "
                               f"stream_slots WHERE audience_version = ? AND segment = ? AND {_AVAILABLE} ORDER BY id "
                               "LIMIT 1) RETURNING id, sealed_scalar, stream_order, layout_json",
                               [audience_version, segment]).fetchone()
        return StoredSlot(row[0], bytes(row[1]), bytes(row[2]), row[3]) if row else None

    def stream_slot_pieces(self, slot_id: int) -> Iterator[tuple[bytes, bytes | None]]:
        """(points, ciphertexts or None) of each piece, in order."""
        for lo in itertools.count(0, 16):
            rows = self.db.execute("SELECT points, ciphertexts FROM stream_slot_pieces WHERE slot_id = ? AND idx >= ? "
                                   "AND idx < ? ORDER BY idx", [slot_id, lo, lo + 16]).fetchall()
            if not rows:
                return
            yield from ((bytes(r[0]), bytes(r[1]) if r[1] is not None else None) for r in rows)

    def spend_stream_slot(self, slot_id: int) -> None:
        """A job that took the slot has ended: its pieces go at the next idle cleanup, not now (deleting
        half a gigabyte would hold up the job's release)."""
        with self.transaction() as conn:
            conn.execute(f"UPDATE stream_slots SET taken = {SlotState.SPENT:d} WHERE id = ?", [slot_id])

    def drop_stream_slots(self, keep_version: str, *, at_startup: bool = False) -> None:
        """Delete spent slots and untaken ones made for another audience snapshot; ``at_startup`` (no
        job runs, no slot is being written) also slots taken by jobs a crash interrupted, and
        half-written ones."""
        # A plain read first (no write lock: the idle loop asks often), then each slot is claimed as
        # spent unless a job took it in between (a job that loaded the old snapshot just before an import).
        ids = [r[0] for r in self.db.execute(
            f"SELECT id FROM stream_slots WHERE taken = {SlotState.SPENT:d} "
            f"OR (audience_version != ? AND {_AVAILABLE}) "
            f"OR (? AND (taken = {SlotState.TAKEN:d} OR ready = 0))", [keep_version, int(at_startup)])]
        for slot_id in ids:
            with self.transaction() as conn:
                claimed = conn.execute(f"UPDATE stream_slots SET taken = {SlotState.SPENT:d} "
                                       f"WHERE id = ? AND (taken != {SlotState.TAKEN:d} OR ?)",
                                       [slot_id, int(at_startup)]).rowcount
            if claimed:
                self._delete_stream_slot(slot_id)

    def _delete_stream_slot(self, slot_id: int) -> None:
        # A few pieces per transaction: jobs' writes (releases, the audit log) get the lock in between.
        while True:
            with self.transaction() as conn:
                deleted = conn.execute("DELETE FROM stream_slot_pieces WHERE slot_id = ? AND idx IN (SELECT idx FROM "
                                       "stream_slot_pieces WHERE slot_id = ? ORDER BY idx LIMIT 8)",
                                       [slot_id, slot_id]).rowcount
            if not deleted:
                break
        with self.transaction() as conn:
            conn.execute("DELETE FROM stream_slots WHERE id = ?", [slot_id])
