"""The audience tables: members (id, match key, H(y), segment bits), the segment columns and the
audience version in ``meta``, and ``audience_history``, each member's segment bits over time, which
the unbalanced protocol (:mod:`matcher.server.unbalanced`) reads. Triggers keep the history for
updates and deletes; imports write new members' records themselves, in bulk."""

from __future__ import annotations

import json
import secrets
from typing import Iterable, NamedTuple, Sequence

import numpy as np

from matcher.errors import InputError
from matcher.protocol.platform import Audience
from matcher.server.store.db import Database

# The page cache of the connection that imports (KiB).
_IMPORT_CACHE_KIB = 262_144
# Segment bits live in one signed 64-bit SQLite integer.
MAX_SEGMENTS = 63
# Rows a statement names at once with IN (...) (SQLite's default limit on parameters is far above).
_IN_CHUNK = 500


class MemberRow(NamedTuple):
    """One member as an import writes it. ``identifiers``: its further identifiers (columns 2, 3,
    ...) as ``(slot, kind, match_key, point)``; a row of an audience of one identifier column has none."""

    member_id: str
    match_key: str
    point: bytes
    segments: int
    identifiers: tuple[tuple[int, str, str, bytes], ...] = ()


class AudienceTables(Database):
    """The members, imported in batches and read back as one :class:`~matcher.protocol.platform.Audience`."""

    # The last audience read, with its version: valid until an import changes the version.
    _audience_cache: tuple[str, Audience] | None = None

    def audience_info(self) -> dict:
        further = self.further_id_kinds()
        return {
            "id_kind": self.get_meta("audience_kind"),
            # Every identifier column's kind, the first (``id_kind``, the member's key) first.
            "id_kinds": [self.get_meta("audience_kind"), *further] if further else [],
            "segments": json.loads(self.get_meta("segments", "[]")),
            "members": self.db.execute("SELECT count(*) FROM audience").fetchone()[0],
        }

    def further_id_kinds(self) -> list[str]:
        """The kinds of the audience's further identifier columns (an email beside the phone, ...)."""
        return json.loads(self.get_meta("audience_id_kinds", "[]") or "[]")

    def identifier_columns(self) -> int:
        """The audience's identifier columns: the tuple width of its streams (1: one identifier a member)."""
        return 1 + len(self.further_id_kinds())

    def import_audience(self, batches: Iterable[Sequence[MemberRow | tuple[str, str, bytes, int]]], *,
                        id_kind: str, segments: Sequence[str], replace: bool = False,
                        further_kinds: Sequence[str] = (), stats: dict | None = None) -> int:
        """Upsert batches of :class:`MemberRow` (or plain (member_id, match_key, point, segment_bits));
        one transaction per batch, so memory is bounded by the batch and an interrupted import keeps
        whole batches only.

        ``further_kinds``: the kinds of the further identifier columns. A member the import names
        gets exactly the further identifiers of its row (its last row, when it has several). An
        identifier names one member only: a member's first identifier wins over another member's
        further one (taken from it), and a further identifier another member already holds stays
        with that member (counted in ``stats["shared_identifiers"]``).

        ``replace``: members the import did not name (see :meth:`note_present`) are removed, in the
        transaction that makes the import visible, so no job sees the new file beside members who
        left (see :meth:`remove_members` for what a removal takes with it)."""
        if len(segments) > MAX_SEGMENTS:
            raise InputError(f"{len(segments)} segments; at most {MAX_SEGMENTS} are supported")
        info = self.audience_info()
        current = info["segments"] if info["members"] else []
        if info["members"] and (info["id_kind"] != id_kind or list(segments)[:len(current)] != current):
            raise InputError(
                f"the audience already holds {info['members']} members keyed by '{info['id_kind']}' with segments "
                f"{info['segments']}; this import has '{id_kind}' with {list(segments)}",
                hint="import with the same id type and every existing segment column (new ones are added after "
                     "them: see Store.segments_after_import), or start a new database")
        further = self.further_id_kinds() if info["members"] else []
        if list(further_kinds)[:len(further)] != further:
            raise InputError(
                f"the audience's identifier columns are {[id_kind, *further]}; this import has "
                f"{[id_kind, *further_kinds]}",
                hint="give the audience's identifier columns in the same order (a new one may be added after "
                     "them), or start a new database")
        meta = {"audience_kind": id_kind, "segments": json.dumps(list(segments)),
                "audience_id_kinds": json.dumps(list(further_kinds))}
        if list(further_kinds) != further:
            meta["audience_version"] = secrets.token_hex(8)  # a new tuple width: old streams do not fit
        if list(segments) != info["segments"]:
            # A new segment column changes every member's payload even when no row changes (all "no"):
            # a new version, so cached audiences and precomputed streams of the old layout are not used.
            meta["audience_version"] = secrets.token_hex(8)
        self.set_meta(meta)
        # Members arrive in random key order: with SQLite's default 2 MiB page cache every insert into
        # the unique indexes misses (10^6 members: 68 s; with 256 MiB: 26 s). This connection only.
        previous_cache = self.db.execute("PRAGMA cache_size").fetchone()[0]
        self.db.execute(f"PRAGMA cache_size = -{_IMPORT_CACHE_KIB}")
        try:
            total = self._import_batches(batches, id_kind, bool(further_kinds), stats if stats is not None else {})
        finally:
            self.db.execute(f"PRAGMA cache_size = {previous_cache}")
        with self.transaction() as conn:
            if replace:
                self._remove_where(conn, "match_key NOT IN (SELECT match_key FROM temp.import_present)", [])
                conn.execute("DROP TABLE temp.import_present")
            # The import's rows (audience_history since = audience_seq + 1) become visible to the
            # unbalanced protocol at once, only now that the whole file is in.
            _publish_import(conn)
        self.prune_history()
        return total

    def read_history_for(self, job_id: str) -> int:
        """The import (``audience_seq``) a running unbalanced job reads the history as of, registered
        in the same transaction: no prune deletes a record its deltas, read later, will need."""
        with self.transaction() as conn:
            upto = _visible_import(conn)
            conn.execute("INSERT OR REPLACE INTO history_readers (job_id, upto) VALUES (?, ?)", [job_id, upto])
        return upto

    def prune_history(self) -> int:
        """Delete the closed history records nothing can need, and return how many. A delta from
        import v to u reads records closed after v; a new copy at u reads records open at u. So a
        record closed at or before every stored copy's sync, every running reader's import and the
        last visible import is never read again, and with it goes a removed member's H(y)."""
        with self.transaction() as conn:
            conn.execute("DELETE FROM history_readers WHERE job_id NOT IN (SELECT id FROM jobs WHERE state = 'running')")
            seq = _visible_import(conn)
            floor = conn.execute("SELECT min(v) FROM (SELECT min(synced) AS v FROM enrollments UNION ALL "
                                 "SELECT min(upto) FROM history_readers UNION ALL SELECT ?)", [seq]).fetchone()[0]
            return conn.execute("DELETE FROM audience_history WHERE until IS NOT NULL AND until <= ?",
                                [floor]).rowcount

    def begin_replacement(self) -> None:
        """Start the list of members an import that replaces the audience names (see
        :meth:`note_present`): a temporary table of this connection, not memory, since 10^9 keys
        do not fit, and emptied of an earlier import's."""
        self.db.execute("DROP TABLE IF EXISTS temp.import_present")
        self.db.execute("CREATE TEMP TABLE import_present (match_key TEXT PRIMARY KEY)")

    def note_present(self, match_keys: Sequence[str]) -> None:
        """These members are in the replacing file (changed or not)."""
        self.db.conn.executemany("INSERT OR IGNORE INTO temp.import_present VALUES (?)", ((k,) for k in match_keys))

    def remove_members(self, match_keys: Sequence[str], *, further: Iterable[tuple[str, Sequence[str]]] = ()) -> int:
        """Delete these members (by the match key of their first identifier; ``further``: by
        ``(kind, match keys)`` of further identifiers too) with all their identifiers and segments,
        all at once, and return how many there were. In the same transaction: the history triggers
        record each removal, which the unbalanced protocol's next delta takes out of every merchant's
        copy; their rows leave every activation slice (SQLite hands a deleted row id to a later
        member); and a new audience version retires every precomputed stream made before, so no job
        streams them again."""
        removed = 0
        with self.transaction() as conn:
            for chunk in _chunks(match_keys):
                removed += self._remove_where(conn, f"match_key IN ({_marks(chunk)})", chunk)
            for other_kind, keys in further:
                for chunk in _chunks(keys):
                    removed += self._remove_where(
                        conn, f"row_id IN (SELECT row_id FROM audience_ids WHERE kind = ? AND match_key IN "
                              f"({_marks(chunk)}))", [other_kind, *chunk])
            _publish_import(conn)
        self.prune_history()
        return removed

    @staticmethod
    def _remove_where(conn, condition: str, params: Sequence) -> int:
        conn.execute(f"DELETE FROM activation_members WHERE row_id IN (SELECT row_id FROM audience WHERE {condition})",
                     params)
        removed = conn.execute(f"DELETE FROM audience WHERE {condition}", params).rowcount
        if removed:
            _new_version(conn)
        return removed

    def segments_after_import(self, segments: Sequence[str], drop: Sequence[str] = ()) -> list[str]:
        """The segment columns, in stored order, after an import that lists ``segments`` and drops
        ``drop``: the audience's own that stay, then the new ones in the order given. A segment is a
        bit position in every member's row (and in the unbalanced protocol's history), so existing
        ones keep their order and new ones take the next bits; a member the import does not list is
        outside the new segments. Raises when ``segments`` leaves out one the audience has and
        ``drop`` does not name it, or ``drop`` names one it lacks."""
        info = self.audience_info()
        current = info["segments"] if info["members"] else []
        unknown = [s for s in drop if s not in current]
        if unknown:
            raise InputError(f"cannot drop {', '.join(unknown)}: the audience's segments are "
                             f"{', '.join(current) or 'none'}", hint="check --drop-segment")
        both = [s for s in drop if s in segments]
        if both:
            raise InputError(f"{', '.join(both)} is both in --segments and dropped", hint="name it in one of them")
        missing = [s for s in current if s not in segments and s not in drop]
        if missing:
            raise InputError(
                f"the audience has segment{'s' if len(missing) > 1 else ''} {', '.join(missing)}, which this import "
                "does not list; removing a segment needs --drop-segment",
                hint=f"list every segment the audience has ({', '.join(current)}) plus any new ones in --segments, "
                     f"or pass --drop-segment {missing[0]} to remove it from every member")
        return [s for s in current if s not in drop] + [s for s in segments if s not in current]

    def drop_segments(self, names: Sequence[str]) -> None:
        """Remove segments from every member, in one transaction: the remaining ones move down to
        fill the bits (the history triggers record each member whose bits change, made visible at
        once), and the unbalanced protocol's stored copies of every stream whose bit moved or went
        are deleted, since their history reads bits by position: each is made again, in full, by its
        merchant's next job."""
        if not names:
            return
        old = self.audience_info()["segments"]
        unknown = [n for n in names if n not in old]
        if unknown:
            raise InputError(f"cannot drop {', '.join(unknown)}: the audience's segments are "
                             f"{', '.join(old) or 'none'}")
        current = [s for s in old if s not in names]
        moved = old[min(old.index(n) for n in names):]
        remap = " | ".join(f"(((segments >> {old.index(s)}) & 1) << {j})" for j, s in enumerate(current)) or "0"
        marks = ",".join("?" * len(moved))
        with self.transaction() as conn:
            conn.execute(f"UPDATE audience SET segments = {remap} WHERE segments != ({remap})")
            conn.execute(f"DELETE FROM enrollment_pieces WHERE enrollment_id IN (SELECT id FROM enrollments "
                         f"WHERE stream IN ({marks}))", moved)
            conn.execute(f"DELETE FROM enrollments WHERE stream IN ({marks})", moved)
            conn.execute("UPDATE meta SET value = ? WHERE key = 'segments'", [json.dumps(current)])
            _new_version(conn)
            _publish_import(conn)

    def _import_batches(self, batches: Iterable[Sequence[MemberRow | tuple]], id_kind: str, several: bool,
                        stats: dict) -> int:
        total = 0
        stats.setdefault("shared_identifiers", 0)
        for batch in batches:
            with self.transaction() as conn:
                last_row = conn.execute("SELECT coalesce(max(row_id), 0) FROM audience").fetchone()[0]
                conn.executemany(
                    "INSERT INTO audience (member_id, match_key, point, segments) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT(match_key) DO UPDATE SET member_id = excluded.member_id, "
                    "point = excluded.point, segments = excluded.segments", (row[:4] for row in batch))
                if several:
                    stats["shared_identifiers"] += _write_identifiers(conn, batch, id_kind)
                # New members have row ids above every existing one (SQLite's max + 1); one that a later
                # row of the batch changed again already has its record, from the update trigger.
                conn.execute("INSERT INTO audience_history (row_id, point, bits, since) "
                             "SELECT row_id, point, segments, (SELECT CAST(value AS INTEGER) + 1 FROM meta "
                             "WHERE key = 'audience_seq') FROM audience WHERE row_id > ? AND row_id NOT IN "
                             "(SELECT row_id FROM audience_history WHERE row_id > ? AND until IS NULL)",
                             [last_row, last_row])
                _new_version(conn)
            total += len(batch)
        return total

    def known_identifiers(self, match_keys: Sequence[str]) -> dict[str, tuple[tuple[int, str, str], ...]]:
        """The further identifiers ``(slot, kind, match key)`` of those of ``match_keys`` (first
        identifiers) that are members and hold any, each sorted: a re-import compares them."""
        found: dict[str, list] = {}
        for chunk in _chunks(match_keys):
            rows = self.db.execute(
                f"SELECT a.match_key, i.slot, i.kind, i.match_key FROM audience a JOIN audience_ids i "
                f"ON i.row_id = a.row_id WHERE a.match_key IN ({_marks(chunk)})", chunk)
            for member, slot, kind, key in rows:
                found.setdefault(member, []).append((slot, kind, key))
        return {member: tuple(sorted(held)) for member, held in found.items()}

    def identifier_points(self, kind: str, match_keys: Sequence[str]) -> dict[str, bytes]:
        """H(identifier) of those further identifiers of ``kind`` the audience holds already."""
        points: dict[str, bytes] = {}
        for chunk in _chunks(match_keys):
            rows = self.db.execute(f"SELECT match_key, point FROM audience_ids WHERE kind = ? AND match_key IN "
                                   f"({_marks(chunk)})", [kind, *chunk])
            points.update((key, bytes(point)) for key, point in rows)
        return points

    def known_members(self, match_keys: Sequence[str]) -> dict[str, tuple[int, bytes]]:
        """The segments and H(y) of those of ``match_keys`` already in the audience: a re-import
        hashes only the new ones and writes only the changed ones."""
        known: dict[str, tuple[int, bytes]] = {}
        for lo in range(0, len(match_keys), 500):
            chunk = match_keys[lo:lo + 500]
            rows = self.db.execute(f"SELECT match_key, segments, point FROM audience WHERE match_key IN "
                                   f"({','.join('?' * len(chunk))})", chunk)
            known.update((key, (bits, bytes(point))) for key, bits, point in rows)
        return known

    def load_audience(self) -> Audience:
        """The audience as arrays, cached until the next import changes it."""
        with self._lock, self.snapshot():
            version = self.get_meta("audience_version", "")
            if self._audience_cache and self._audience_cache[0] == version:
                return self._audience_cache[1]
            info = self.audience_info()
            n = info["members"]
            further = self.db.execute("SELECT count(*) FROM audience_ids").fetchone()[0]
            # Every identifier's H in one array, the members' first ones first: ``points`` and
            # ``extra_points`` are views of it, so the tuple streams' ``all_points`` is it, not a copy.
            every = np.empty((n + further, 32), dtype=np.uint8)
            points = every[:n]
            row_ids, bits = self._audience_rows(points)
            extra_points, extra_owner = self._further_identifiers(row_ids, every[n:])
            audience = Audience(id_kind=info["id_kind"] or "", points=points, segment_bits=bits,
                                segments=tuple(info["segments"]), row_ids=row_ids, version=version,
                                extra_points=extra_points, extra_owner=extra_owner,
                                id_kinds=tuple(info["id_kinds"]), identifier_columns=self.identifier_columns())
            self._audience_cache = (version, audience)
            return audience

    def _audience_rows(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Every member's row id and segment bits, in row order, and its H(y) into ``points``."""
        row_ids, bits = np.empty(len(points), dtype=np.int64), np.empty(len(points), dtype=np.uint64)
        _read_into(self.db.execute("SELECT point, row_id, segments FROM audience ORDER BY row_id"), points, row_ids,
                   bits)
        return row_ids, bits

    def _further_identifiers(self, row_ids: np.ndarray, points: np.ndarray
                             ) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Every further identifier's H(y) into ``points`` (sized by a count made in the same read)
        and the audience position of its member (ascending)."""
        if not len(points):
            return None, None
        owners = np.empty(len(points), dtype=np.int64)
        at = _read_into(self.db.execute("SELECT point, row_id FROM audience_ids ORDER BY row_id, slot"), points,
                        owners)
        return points[:at], np.searchsorted(row_ids, owners[:at])

    def preprocessing_ready(self) -> bool:
        """True when the unbalanced protocol's history covers every member: no import is half-done
        (its rows wait for the import's end) and every member has an open record."""
        seq = int(self.get_meta("audience_seq", "0"))
        current = self.db.execute("SELECT count(*) FROM audience_history WHERE until IS NULL AND since <= ?",
                                  [seq]).fetchone()[0]
        return current == self.audience_info()["members"]


def _read_into(cursor, points: np.ndarray, *columns: np.ndarray) -> int:
    """Rows of (H, value, ...) into ``points`` and ``columns``, a fetch at a time; how many there were."""
    at = 0
    while rows := cursor.fetchmany(65_536):
        end = at + len(rows)
        fields = list(zip(*rows))
        points[at:end] = np.frombuffer(b"".join(fields[0]), np.uint8).reshape(-1, 32)
        for array, values in zip(columns, fields[1:]):
            array[at:end] = values
        at = end
    return at


def _write_identifiers(conn, batch: Sequence[MemberRow | tuple], id_kind: str) -> int:
    """Give each member of ``batch`` exactly the further identifiers of its last row in it, and
    return how many were left out because another member holds them."""
    latest = {row[1]: (row[4] if len(row) > 4 else ()) for row in batch}
    # A member's first identifier wins: no other member keeps it as a further one.
    conn.executemany("DELETE FROM audience_ids WHERE kind = ? AND match_key = ?", ((id_kind, k) for k in latest))
    conn.executemany("DELETE FROM audience_ids WHERE row_id = (SELECT row_id FROM audience WHERE match_key = ?)",
                     ((k,) for k in latest))
    wanted = [(kind, key, slot, point, member, kind, id_kind, key) for member, held in latest.items()
              for slot, kind, key, point in held]
    if not wanted:
        return 0
    inserted = conn.executemany(
        "INSERT OR IGNORE INTO audience_ids (kind, match_key, row_id, slot, point) "
        "SELECT ?, ?, row_id, ?, ? FROM audience WHERE match_key = ? "
        "AND NOT (? = ? AND EXISTS (SELECT 1 FROM audience WHERE match_key = ?))", wanted).rowcount
    return len(wanted) - inserted


def _chunks(items: Sequence[str]) -> Iterable[list[str]]:
    for lo in range(0, len(items), _IN_CHUNK):
        yield list(items[lo:lo + _IN_CHUNK])


def _marks(chunk: Sequence) -> str:
    return ",".join("?" * len(chunk))


def _visible_import(conn) -> int:
    """The last import the unbalanced protocol sees (``audience_seq``)."""
    return int(conn.execute("SELECT value FROM meta WHERE key = 'audience_seq'").fetchone()[0])


def _publish_import(conn) -> None:
    """Make the rows written under ``audience_seq + 1`` (and the history they closed) visible."""
    conn.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'audience_seq'")


def _new_version(conn) -> None:
    """The audience changed: cached audiences and precomputed streams of the old one are not used."""
    conn.execute("INSERT INTO meta (key, value) VALUES ('audience_version', ?) "
                 "ON CONFLICT(key) DO UPDATE SET value = excluded.value", [secrets.token_hex(8)])
