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
from matcher.protocol._tags import bucket_bits, buckets, compact, from_bytes
from matcher.server.store import Store

# Pieces of toggles an enrollment gathers before they are merged into one.
COMPACT_AFTER = 8
UNBALANCED_SCALAR = b"matcher-unbalanced-scalar-v1"
_FETCH_ROWS = 65_536
_IN_CHUNK = 500  # ids per IN (...) list


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
        where = ("since <= ? AND (until IS NULL OR until > ?)", [upto, upto])
    else:
        where = ("(since > ? AND since <= ?) OR (until > ? AND until <= ?)", [since, upto, since, upto])
    with store.snapshot():
        # At most this many values (records, before the stream's filter), written in place as each
        # fetch is filtered: the untouched tail is address space, not memory. Fetched pieces kept
        # and then joined were in the RSS twice, even when let go one by one (freed 2 MiB pieces
        # stay in malloc's heap): at 5M it rose by 290 MiB for a 153 MiB delta.
        bound = store.db.execute(f"SELECT count(*) FROM audience_history WHERE {where[0]}", where[1]).fetchone()[0]
        values = np.empty((bound, group.ELEMENT_SIZE), np.uint8)
        n = 0
        # Filtered a fetch at a time: a first copy of 10^7 members reads every record, and holding them
        # all as Python objects before filtering was most of the server's peak (1.2 GB at 5M).
        cursor = store.db.execute(f"SELECT point, bits, since, until FROM audience_history WHERE {where[0]}", where[1])
        while rows := cursor.fetchmany(_FETCH_ROWS):
            points, bits, opened, closed = zip(*rows)
            member = np.ones(len(rows), bool) if bit is None else (np.array(bits, np.int64) >> bit) & 1 == 1
            opened_at = np.array(opened, np.int64)
            closed_at = np.array([upto + 1 if c is None else c for c in closed], np.int64)
            present_then = member & (opened_at <= since) & (closed_at > since)
            present_now = member & (opened_at <= upto) & (closed_at > upto)
            changed = np.flatnonzero(present_then != present_now)
            values[n:n + len(changed)] = np.frombuffer(b"".join(points[i] for i in changed), np.uint8).reshape(
                -1, group.ELEMENT_SIZE)
            n += len(changed)
    values = values[:n]
    if since < 0:  # at most one record of a member is open at ``upto``
        return values
    # One member's records are disjoint intervals, all with its H(y) (row ids can be reused by
    # another member after a removal, points cannot): its presence changed iff an odd number of
    # its records did.
    unique, counts = np.unique(values.view(f"V{group.ELEMENT_SIZE}").ravel(), return_counts=True)
    return np.frombuffer(unique[counts % 2 == 1].tobytes(), np.uint8).reshape(-1, group.ELEMENT_SIZE).copy()


@dataclass(frozen=True)
class Enrollment:
    """One merchant's copy of one stream: made with a_s·G ``merchant_base`` under its key ``key_id``,
    reflecting import ``synced``, its tags stored in 2^``bucket_bits`` buckets."""

    id: int
    key_id: bytes
    merchant_base: bytes
    synced: int
    bucket_bits: int


def enrollment(store: Store, merchant_id: int, stream: str) -> Enrollment | None:
    row = store.db.execute("SELECT id, key_id, merchant_base, synced, bucket_bits FROM enrollments "
                           "WHERE merchant_id = ? AND stream = ?", [merchant_id, stream]).fetchone()
    return Enrollment(row[0], bytes(row[1]), bytes(row[2]), row[3], row[4]) if row else None


def stored_tags(store: Store, copy: Enrollment, query: np.ndarray) -> np.ndarray:
    """Every stored tag in the buckets that ``query``'s tags fall in (a tag in the copy is there an
    odd number of times): what a job reads, about BUCKET_TAGS per tag of its list."""
    wanted = np.unique(buckets(query, copy.bucket_bits)).tolist()
    data = []
    for lo in range(0, len(wanted), _IN_CHUNK):
        chunk = wanted[lo:lo + _IN_CHUNK]
        data += [r[0] for r in store.db.execute(
            f"SELECT tags FROM enrollment_pieces WHERE enrollment_id = ? AND bucket IN ({','.join('?' * len(chunk))})",
            [copy.id, *chunk])]
    return from_bytes(b"".join(data))


def save_sync(store: Store, merchant_id: int, stream: str, *, key_id: bytes, merchant_base: bytes,
              was: Enrollment | None, synced: int, toggles: np.ndarray) -> bool:
    """Append one sync's toggles to the copy (a new copy when ``was`` is None). False, and nothing
    written, when another job moved the copy since ``was`` was read: its own sync covered this one.
    ``toggles`` are sorted (the session sorts them to count): not sorted again here, a copy of them."""
    with store.transaction() as conn:
        row = conn.execute("SELECT id, synced FROM enrollments WHERE merchant_id = ? AND stream = ?",
                           [merchant_id, stream]).fetchone()
        if was is not None and (row is None or tuple(row) != (was.id, was.synced)):
            return False
        if was is None:
            if row is not None:  # a new key: the old copy is useless
                conn.execute("DELETE FROM enrollment_pieces WHERE enrollment_id = ?", [row[0]])
                conn.execute("DELETE FROM enrollments WHERE id = ?", [row[0]])
            bits = bucket_bits(len(toggles))
            enrollment_id = conn.execute(
                "INSERT INTO enrollments (merchant_id, stream, key_id, merchant_base, synced, bucket_bits) "
                "VALUES (?, ?, ?, ?, ?, ?)", [merchant_id, stream, key_id, merchant_base, synced, bits]).lastrowid
        else:
            enrollment_id, bits = was.id, was.bucket_bits
            conn.execute("UPDATE enrollments SET synced = ? WHERE id = ?", [synced, enrollment_id])
        _append_pieces(conn, enrollment_id, bits, toggles)
    store.prune_history()   # this copy moved on: records only it still needed can go
    return True


def drop(store: Store, merchant_id: int, stream: str) -> None:
    """Forget a copy (its merchant's key no longer matches it): the next job makes a new one."""
    with store.transaction() as conn:
        conn.execute("DELETE FROM enrollment_pieces WHERE enrollment_id IN "
                     "(SELECT id FROM enrollments WHERE merchant_id = ? AND stream = ?)", [merchant_id, stream])
        conn.execute("DELETE FROM enrollments WHERE merchant_id = ? AND stream = ?", [merchant_id, stream])


def _append_pieces(conn: sqlite3.Connection, enrollment_id: int, bits: int, toggles: np.ndarray) -> None:
    """One piece per bucket the toggles touch; a bucket with COMPACT_AFTER pieces is merged into one."""
    if not len(toggles):
        return
    of = buckets(toggles, bits)
    starts = np.flatnonzero(np.r_[True, of[1:] != of[:-1]])  # toggles are sorted, so buckets are too
    touched = of[starts].tolist()
    ends = [*starts[1:].tolist(), len(toggles)]
    counts: dict[int, tuple[int, int]] = {}
    for lo in range(0, len(touched), _IN_CHUNK):
        chunk = touched[lo:lo + _IN_CHUNK]
        counts.update((b, (n, top)) for b, n, top in conn.execute(
            f"SELECT bucket, count(*), max(idx) FROM enrollment_pieces WHERE enrollment_id = ? AND bucket IN "
            f"({','.join('?' * len(chunk))}) GROUP BY bucket", [enrollment_id, *chunk]))
    rows = []
    for bucket, lo, hi in zip(touched, starts.tolist(), ends):
        piece = toggles[lo:hi]
        held, top = counts.get(bucket, (0, -1))
        if held + 1 > COMPACT_AFTER:
            stored = [from_bytes(r[0]) for r in conn.execute(
                "SELECT tags FROM enrollment_pieces WHERE enrollment_id = ? AND bucket = ?", [enrollment_id, bucket])]
            conn.execute("DELETE FROM enrollment_pieces WHERE enrollment_id = ? AND bucket = ?",
                         [enrollment_id, bucket])
            piece, top = compact([*stored, piece]), -1
        # A view of the toggles, not bytes: a first sync's pieces are a whole copy (76 MB at 5M).
        rows.append((enrollment_id, bucket, top + 1, memoryview(piece)))
    conn.executemany("INSERT INTO enrollment_pieces (enrollment_id, bucket, idx, tags) VALUES (?, ?, ?, ?)", rows)
