"""The platform's stored state for the unbalanced protocol: what a merchant's copy lacks, and the copy.

In the unbalanced protocol (docs/threat-model.md, "Unbalanced mode") a merchant's blinded copy of
each stream, a_s·b_s·H(y) for the members y of stream s, stays on the platform between jobs, so a
job costs what the merchant's list costs plus whatever changed in the audience since its last job.
Three kinds of state, each in its own tables (store migration 8):

* ``audience_history``: for every member, the intervals between imports during which it held a
  given set of segments; triggers on the audience table keep it, whatever writes the audience.
  ``present(s, t)`` is "an open record at import t puts the member in stream s", and a copy synced
  at import v lacks exactly the members whose presence differs between v and now.
* ``unbalanced_keys``: b_s for each stream, sealed with the operator's pool key. It outlives
  imports (a copy is only ever patched), and is the same for every merchant (their copies differ by
  a_s), so the platform's work per member does not repeat per merchant.
* ``enrollments`` and their pieces: one merchant's copy of one stream, as sorted 16-byte tags
  (prefixes) of a_s·b_s·H(y). Each sync appends one piece of toggles: the members that entered
  the stream since, and those that left, look alike to the merchant (it blinds whatever the delta
  holds), so a tag is in the copy when it occurs an odd number of times over the pieces.

"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

import numpy as np

from matcher.crypto import group, pool
from matcher.protocol._tags import TAG_BYTES, compact, sort_tags
from matcher.store import Store

# Pieces of toggles an enrollment gathers before they are merged into one.
COMPACT_AFTER = 8
UNBALANCED_SCALAR = b"matcher-unbalanced-scalar-v1"
_FETCH_ROWS = 65_536


def audience_seq(store: Store) -> int:
    """The last import whose rows are visible to the unbalanced protocol (0 before the first)."""
    return int(store.get_meta("audience_seq", "0"))


def stream_scalar(store: Store, pool_key: bytes, stream: str) -> bytes:
    """b_s for ``stream`` ('' = every member), made on first use and kept sealed."""
    row = store.db.execute("SELECT sealed_scalar FROM unbalanced_keys WHERE stream = ?", [stream]).fetchone()
    if row is None:
        with store.transaction() as conn:
            sealed = pool.seal_bytes(pool_key, group.random_scalar(), UNBALANCED_SCALAR)
            conn.execute("INSERT INTO unbalanced_keys (stream, sealed_scalar) VALUES (?, ?) "
                         "ON CONFLICT(stream) DO NOTHING", [stream, sealed])
        row = store.db.execute("SELECT sealed_scalar FROM unbalanced_keys WHERE stream = ?", [stream]).fetchone()
    return pool.unseal_bytes(pool_key, row[0], UNBALANCED_SCALAR)


def delta(store: Store, bit: int | None, *, since: int, upto: int) -> np.ndarray:
    """H(y) of the members whose presence in the stream (``bit``: a segment's bit, None: every member)
    differs between import ``since`` (-1: a new copy, which lacks everyone) and import ``upto``."""
    if since < 0:
        query = ("SELECT point, bits, since, until FROM audience_history "
                 "WHERE since <= ? AND (until IS NULL OR until > ?)", [upto, upto])
    else:
        query = ("SELECT point, bits, since, until FROM audience_history "
                 "WHERE (since > ? AND since <= ?) OR (until > ? AND until <= ?)", [since, upto, since, upto])
    points, bits, opened, closed = [], [], [], []
    cursor = store.db.execute(*query)
    while rows := cursor.fetchmany(_FETCH_ROWS):
        columns = list(zip(*rows))
        points += columns[0]
        bits += columns[1]
        opened += columns[2]
        closed += [upto + 1 if c is None else c for c in columns[3]]
    member = np.ones(len(points), bool) if bit is None else (np.array(bits, np.int64) >> bit) & 1 == 1
    opened_at, closed_at = np.array(opened, np.int64), np.array(closed, np.int64)
    present_then = member & (opened_at <= since) & (closed_at > since)
    present_now = member & (opened_at <= upto) & (closed_at > upto)
    changed = np.flatnonzero(present_then != present_now)
    if not len(changed):
        return np.empty((0, group.ELEMENT_SIZE), np.uint8)
    values = np.frombuffer(b"".join(points[i] for i in changed), np.uint8).reshape(-1, group.ELEMENT_SIZE)
    if since < 0:  # at most one record of a member is open at ``upto``
        return values.copy()
    # One member's records are disjoint intervals, all with its H(y) (row ids can be reused by
    # another member after a removal, points cannot): its presence changed iff an odd number of
    # its records did.
    unique, counts = np.unique(values.view(f"V{group.ELEMENT_SIZE}").ravel(), return_counts=True)
    return np.frombuffer(unique[counts % 2 == 1].tobytes(), np.uint8).reshape(-1, group.ELEMENT_SIZE).copy()


@dataclass(frozen=True)
class Enrollment:
    """One merchant's copy of one stream: made with a_s·G ``merchant_base`` under its key ``key_id``,
    reflecting import ``synced``."""

    id: int
    key_id: bytes
    merchant_base: bytes
    synced: int


def enrollment(store: Store, merchant_id: int, stream: str) -> Enrollment | None:
    row = store.db.execute("SELECT id, key_id, merchant_base, synced FROM enrollments "
                           "WHERE merchant_id = ? AND stream = ?", [merchant_id, stream]).fetchone()
    return Enrollment(row[0], bytes(row[1]), bytes(row[2]), row[3]) if row else None


def pieces(store: Store, enrollment_id: int) -> list[np.ndarray]:
    """The copy's pieces of sorted tags, each (m, TAG_BYTES)."""
    rows = store.db.execute("SELECT tags FROM enrollment_pieces WHERE enrollment_id = ? ORDER BY idx",
                            [enrollment_id]).fetchall()
    return [np.frombuffer(r[0], np.uint8).reshape(-1, TAG_BYTES) for r in rows]


def save_sync(store: Store, merchant_id: int, stream: str, *, key_id: bytes, merchant_base: bytes,
              was: Enrollment | None, synced: int, toggles: np.ndarray) -> bool:
    """Append one sync's toggles to the copy (a new copy when ``was`` is None). False, and nothing
    written, when another job moved the copy since ``was`` was read: its own sync covered this one."""
    with store.transaction() as conn:
        row = conn.execute("SELECT id, synced FROM enrollments WHERE merchant_id = ? AND stream = ?",
                           [merchant_id, stream]).fetchone()
        if was is not None and (row is None or tuple(row) != (was.id, was.synced)):
            return False
        if was is None:
            if row is not None:  # a new key: the old copy is useless
                conn.execute("DELETE FROM enrollment_pieces WHERE enrollment_id = ?", [row[0]])
                conn.execute("DELETE FROM enrollments WHERE id = ?", [row[0]])
            enrollment_id = conn.execute(
                "INSERT INTO enrollments (merchant_id, stream, key_id, merchant_base, synced) VALUES (?, ?, ?, ?, ?)",
                [merchant_id, stream, key_id, merchant_base, synced]).lastrowid
        else:
            enrollment_id = was.id
            conn.execute("UPDATE enrollments SET synced = ? WHERE id = ?", [synced, enrollment_id])
        _append_piece(conn, enrollment_id, sort_tags(toggles))
    return True


def drop(store: Store, merchant_id: int, stream: str) -> None:
    """Forget a copy (its merchant's key no longer matches it): the next job makes a new one."""
    with store.transaction() as conn:
        conn.execute("DELETE FROM enrollment_pieces WHERE enrollment_id IN "
                     "(SELECT id FROM enrollments WHERE merchant_id = ? AND stream = ?)", [merchant_id, stream])
        conn.execute("DELETE FROM enrollments WHERE merchant_id = ? AND stream = ?", [merchant_id, stream])


def _append_piece(conn: sqlite3.Connection, enrollment_id: int, tags: np.ndarray) -> None:
    stored = [np.frombuffer(r[0], np.uint8).reshape(-1, TAG_BYTES) for r in conn.execute(
        "SELECT tags FROM enrollment_pieces WHERE enrollment_id = ? ORDER BY idx", [enrollment_id])]
    if len(stored) + 1 > COMPACT_AFTER:
        conn.execute("DELETE FROM enrollment_pieces WHERE enrollment_id = ?", [enrollment_id])
        tags, start = compact([*stored, tags]), 0
    else:
        start = len(stored)
    conn.execute("INSERT INTO enrollment_pieces (enrollment_id, idx, tags) VALUES (?, ?, ?)",
                 [enrollment_id, start, tags.tobytes()])
