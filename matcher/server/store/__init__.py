"""The one module that speaks SQL: a single SQLite file (WAL) holding everything the operator keeps.

Tables: the audience (platform member ids, their group points H(y) cached at import, segment
bits), merchants and auditors (token hashes only), policy settings, jobs, the privacy-budget
ledger, and the audit log (entries, Merkle nodes, every signed checkpoint). Keys are not here:
they live in the operator's key file (see :mod:`matcher.server.keys`).

Schema changes are numbered migrations applied in order on open; a database written by a newer
matcher is refused rather than guessed at.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import os
import secrets
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import sqlite_utils

from matcher.server import faults
from matcher import policy as policy_mod
from matcher.errors import InputError, LimitExceeded, NotFound, StoreError
from matcher.protocol.platform import Audience

Clock = Callable[[], float]

_MIGRATIONS: list[str | tuple[str, ...]] = [
    # 1: the initial schema
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE audience (
        row_id INTEGER PRIMARY KEY,
        member_id TEXT NOT NULL UNIQUE,
        match_key TEXT NOT NULL UNIQUE,
        point BLOB NOT NULL,
        segments INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE principals (
        id INTEGER PRIMARY KEY,
        role TEXT NOT NULL CHECK (role IN ('merchant', 'auditor')),
        name TEXT NOT NULL,
        token_hash TEXT NOT NULL UNIQUE,
        created REAL NOT NULL,
        disabled INTEGER NOT NULL DEFAULT 0,
        UNIQUE (role, name)
    );
    CREATE TABLE policy (
        scope TEXT NOT NULL,            -- '' for the operator default, else a merchant name
        key TEXT NOT NULL,
        value TEXT NOT NULL,
        PRIMARY KEY (scope, key)
    );
    CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        merchant_id INTEGER NOT NULL REFERENCES principals(id),
        state TEXT NOT NULL,
        reason TEXT,
        created REAL NOT NULL,
        finished REAL,
        list_size INTEGER,
        labels INTEGER,
        report_json TEXT,
        leaf_index INTEGER
    );
    CREATE INDEX jobs_by_merchant ON jobs (merchant_id, created);
    CREATE TABLE budget (
        job_id TEXT PRIMARY KEY,
        merchant_id INTEGER NOT NULL REFERENCES principals(id),
        epsilon REAL NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('reserved', 'committed', 'refunded')),
        at REAL NOT NULL
    );
    CREATE INDEX budget_by_merchant ON budget (merchant_id, at);
    CREATE TABLE log_entries (idx INTEGER PRIMARY KEY, data BLOB NOT NULL);
    CREATE TABLE log_nodes (level INTEGER NOT NULL, idx INTEGER NOT NULL, hash BLOB NOT NULL,
                            PRIMARY KEY (level, idx)) WITHOUT ROWID;
    CREATE TABLE checkpoints (size INTEGER PRIMARY KEY, note TEXT NOT NULL, at REAL NOT NULL);
    """,
    # 2: blind activation
    """
    CREATE TABLE activations (
        handle TEXT PRIMARY KEY,
        merchant_id INTEGER NOT NULL REFERENCES principals(id),
        job_id TEXT NOT NULL,
        name TEXT NOT NULL,
        where_expr TEXT NOT NULL,
        label TEXT,
        size INTEGER NOT NULL,
        noisy_size INTEGER NOT NULL,
        created REAL NOT NULL,
        expires REAL NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('active', 'deleted', 'expired'))
    );
    CREATE TABLE activation_members (
        handle TEXT NOT NULL REFERENCES activations(handle),
        row_id INTEGER NOT NULL,
        PRIMARY KEY (handle, row_id)
    ) WITHOUT ROWID;
    """,
    # 3: sealed, precomputed Paillier randomness (matcher.crypto.pool)
    """
    CREATE TABLE randomness_pool (
        id INTEGER PRIMARY KEY,
        key_id TEXT NOT NULL,           -- which Paillier modulus the values belong to
        sealed BLOB NOT NULL
    );
    CREATE INDEX randomness_by_key ON randomness_pool (key_id, id);
    """,
    # 4: precomputed member halves of job streams (matcher.protocol.platform.PrecomputedStream)
    """
    CREATE TABLE stream_slots (
        id INTEGER PRIMARY KEY,
        audience_version TEXT NOT NULL,  -- row positions refer to this audience snapshot
        sealed_scalar BLOB NOT NULL,     -- the job's b, AES-GCM sealed like the randomness pool
        stream_order BLOB NOT NULL,      -- int64 audience positions, in stream order
        taken INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE stream_slot_pieces (
        slot_id INTEGER NOT NULL REFERENCES stream_slots(id),
        idx INTEGER NOT NULL,
        points BLOB NOT NULL,            -- b·H(y), consecutive 32-byte points
        PRIMARY KEY (slot_id, idx)
    ) WITHOUT ROWID;
    """,
    # 5: precomputed streams carry their members' ciphertexts, and are written in many transactions
    """
    ALTER TABLE stream_slots ADD COLUMN layout_json TEXT;       -- packing of the ciphertexts (NULL: none stored)
    ALTER TABLE stream_slots ADD COLUMN ready INTEGER NOT NULL DEFAULT 1;  -- 0 while still being written
    ALTER TABLE stream_slot_pieces ADD COLUMN ciphertexts BLOB; -- Enc(payload(y)), same rows as points
    """,
    # 6: slots for the secure protocol's segment streams (the members holding one segment)
    """
    ALTER TABLE stream_slots ADD COLUMN segment TEXT NOT NULL DEFAULT '';  -- '' = every member
    """,
    # 7: what a restarted server needs to log a job a crash interrupted
    """
    ALTER TABLE jobs ADD COLUMN policy_json TEXT;   -- the policy the job was admitted under
    ALTER TABLE jobs ADD COLUMN label_sizes TEXT;   -- JSON list, as the log records them
    ALTER TABLE jobs ADD COLUMN protocol TEXT;
    """,
    # 8: the unbalanced protocol (matcher.server.unbalanced): each member's stream memberships over time,
    # and each merchant's blinded copy of them. Updates and deletes are recorded by triggers,
    # whatever writes the audience; inserts by import_audience, in bulk (a trigger per row made an
    # import of 10^7 members three times slower).
    # An import writes its rows under audience_seq + 1 and makes them visible by bumping audience_seq
    # when it ends, so a job never syncs a merchant to half an import.
    (
        """CREATE TABLE audience_history (
            row_id INTEGER NOT NULL,
            point BLOB NOT NULL,             -- H(y): a member who has left can still be taken out
            bits INTEGER NOT NULL,           -- its segments while the record is open
            since INTEGER NOT NULL,          -- the import (audience_seq) that opened it
            until INTEGER                    -- the import that closed it; NULL while current
        )""",
        "CREATE UNIQUE INDEX audience_history_current ON audience_history (row_id) WHERE until IS NULL",
        "CREATE INDEX audience_history_since ON audience_history (since)",
        "CREATE INDEX audience_history_until ON audience_history (until) WHERE until IS NOT NULL",
        "INSERT INTO audience_history (row_id, point, bits, since) SELECT row_id, point, segments, 0 FROM audience",
        "INSERT INTO meta (key, value) VALUES ('audience_seq', '0') ON CONFLICT(key) DO NOTHING",
        """CREATE TRIGGER audience_history_update AFTER UPDATE OF segments, point ON audience
        WHEN OLD.segments != NEW.segments OR OLD.point != NEW.point BEGIN
            UPDATE audience_history SET until = (SELECT CAST(value AS INTEGER) + 1 FROM meta WHERE key = 'audience_seq')
            WHERE row_id = OLD.row_id AND until IS NULL;
            INSERT INTO audience_history (row_id, point, bits, since)
            VALUES (NEW.row_id, NEW.point, NEW.segments,
                    (SELECT CAST(value AS INTEGER) + 1 FROM meta WHERE key = 'audience_seq'));
        END""",
        """CREATE TRIGGER audience_history_delete AFTER DELETE ON audience BEGIN
            UPDATE audience_history SET until = (SELECT CAST(value AS INTEGER) + 1 FROM meta WHERE key = 'audience_seq')
            WHERE row_id = OLD.row_id AND until IS NULL;
        END""",
        """CREATE TABLE unbalanced_keys (
            stream TEXT PRIMARY KEY,         -- '' = every member, else a segment
            sealed_scalar BLOB NOT NULL      -- b_s, AES-GCM sealed like the randomness pool
        )""",
        """CREATE TABLE enrollments (
            id INTEGER PRIMARY KEY,
            merchant_id INTEGER NOT NULL REFERENCES principals(id),
            stream TEXT NOT NULL,
            key_id BLOB NOT NULL,            -- names the merchant's long-lived key (its choice)
            merchant_base BLOB NOT NULL,     -- a_s·G
            synced INTEGER NOT NULL,         -- the audience_seq its copy reflects
            bucket_bits INTEGER NOT NULL,    -- its tags are stored by their leading bits
            UNIQUE (merchant_id, stream)
        )""",
        """CREATE TABLE enrollment_pieces (
            enrollment_id INTEGER NOT NULL REFERENCES enrollments(id),
            bucket INTEGER NOT NULL,
            idx INTEGER NOT NULL,
            tags BLOB NOT NULL,              -- sorted 16-byte prefixes of a_s·b_s·H(y) in this bucket
            PRIMARY KEY (enrollment_id, bucket, idx)
        ) WITHOUT ROWID""",
    ),
]
SCHEMA_VERSION = len(_MIGRATIONS)
# The page cache of the connection that imports (KiB).
_IMPORT_CACHE_KIB = 262_144
# Segment bits live in one signed 64-bit SQLite integer.
MAX_SEGMENTS = 63


@dataclass(frozen=True)
class Principal:
    id: int
    role: str
    name: str


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Store:
    def __init__(self, path: str | Path, *, create: bool = False, read_only: bool = False, clock: Clock = time.time):
        """``read_only`` opens the file with SQLite's ``mode=ro`` (and ``query_only``): SQLite itself
        refuses every write, and nothing is migrated (the schema must already be this version's)."""
        self.path = Path(path)
        self.read_only = read_only and not create
        if not create and not self.path.exists():
            raise StoreError(f"no database at {self.path}", hint="run `matcher init --db PATH` first")
        if create and not self.path.exists():
            # It holds member IDs: readable by the operator only, like the key file (SQLite gives the
            # -wal and -shm files the database file's permissions).
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
        self._clock = clock
        self._lock = threading.RLock()
        # One connection per thread (gRPC serves calls on a pool of threads): WAL lets them read
        # concurrently, and SQLite's own locking orders their writes.
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        if self.read_only:
            version = self.db.execute("PRAGMA user_version").fetchone()[0]
            if version != SCHEMA_VERSION:
                raise StoreError(f"{self.path} has schema version {version}; this matcher reads version {SCHEMA_VERSION}",
                                 hint="run any write command (e.g. `matcher status`) with this matcher once to migrate"
                                 if version < SCHEMA_VERSION else "upgrade matcher")
        else:
            self.db.execute("PRAGMA journal_mode=WAL")
            self._migrate()
        self._audience_cache: tuple[str, Audience] | None = None

    @property
    def db(self) -> sqlite_utils.Database:
        db = getattr(self._local, "db", None)
        if db is None:
            if self.read_only:
                uri = f"{self.path.resolve().as_uri()}?mode=ro"
                conn = sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None, timeout=30)
                conn.execute("PRAGMA query_only=ON")
            else:
                conn = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=30)
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            db = self._local.db = sqlite_utils.Database(conn)
            with self._lock:
                self._connections.append(conn)
        return db

    def now(self) -> float:
        return self._clock()

    @property
    def lock(self) -> threading.RLock:
        """Held by writers that read, compute, then write (the audit log)."""
        return self._lock

    def close(self) -> None:
        with self._lock:
            for conn in self._connections:
                conn.close()
            self._connections.clear()

    # -- transactions and schema --------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """An IMMEDIATE transaction: it takes the write lock up front, so check-then-write is atomic
        across threads and across processes sharing the file."""
        with self._lock:
            conn = self.db.conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            else:
                conn.execute("COMMIT")

    def _migrate(self) -> None:
        version = self.db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(f"{self.path} has schema version {version}; this matcher knows up to {SCHEMA_VERSION}",
                             hint="upgrade matcher")
        for number in range(version, SCHEMA_VERSION):
            migration = _MIGRATIONS[number]
            # A string is split on ';'; a tuple holds statements that contain ';' themselves (triggers).
            statements = migration if isinstance(migration, tuple) else filter(str.strip, migration.split(";"))
            with self.transaction() as conn:
                for statement in statements:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {number + 1}")

    # -- meta ---------------------------------------------------------------------------------

    def get_meta(self, key: str, default: str | None = None) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", [key]).fetchone()
        return row[0] if row else default

    def set_meta(self, values: Mapping[str, str]) -> None:
        with self.transaction() as conn:
            conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?) "
                             "ON CONFLICT(key) DO UPDATE SET value = excluded.value", list(values.items()))

    # -- audience -----------------------------------------------------------------------------

    def audience_info(self) -> dict:
        return {
            "id_kind": self.get_meta("audience_kind"),
            "segments": json.loads(self.get_meta("segments", "[]")),
            "members": self.db.execute("SELECT count(*) FROM audience").fetchone()[0],
        }

    def import_audience(self, batches: Iterable[Sequence[tuple[str, str, bytes, int]]], *, id_kind: str,
                        segments: Sequence[str]) -> int:
        """Upsert batches of (member_id, match_key, point, segment_bits); one transaction per batch,
        so memory is bounded by the batch and an interrupted import keeps whole batches only."""
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
        meta = {"audience_kind": id_kind, "segments": json.dumps(list(segments))}
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
            total = self._import_batches(batches)
        finally:
            self.db.execute(f"PRAGMA cache_size = {previous_cache}")
        with self.transaction() as conn:
            # The import's rows (audience_history since = audience_seq + 1) become visible to the
            # unbalanced protocol at once, only now that the whole file is in.
            conn.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'audience_seq'")
        return total

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
            conn.executemany("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET "
                             "value = excluded.value", [("segments", json.dumps(current)),
                                                        ("audience_version", secrets.token_hex(8))])
            conn.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'audience_seq'")

    def _import_batches(self, batches: Iterable[Sequence[tuple[str, str, bytes, int]]]) -> int:
        total = 0
        for batch in batches:
            with self.transaction() as conn:
                last_row = conn.execute("SELECT coalesce(max(row_id), 0) FROM audience").fetchone()[0]
                conn.executemany(
                    "INSERT INTO audience (member_id, match_key, point, segments) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT(match_key) DO UPDATE SET member_id = excluded.member_id, "
                    "point = excluded.point, segments = excluded.segments", batch)
                # New members have row ids above every existing one (SQLite's max + 1); one that a later
                # row of the batch changed again already has its record, from the update trigger.
                conn.execute("INSERT INTO audience_history (row_id, point, bits, since) "
                             "SELECT row_id, point, segments, (SELECT CAST(value AS INTEGER) + 1 FROM meta "
                             "WHERE key = 'audience_seq') FROM audience WHERE row_id > ? AND row_id NOT IN "
                             "(SELECT row_id FROM audience_history WHERE row_id > ? AND until IS NULL)",
                             [last_row, last_row])
                conn.execute("INSERT INTO meta (key, value) VALUES ('audience_version', ?) "
                             "ON CONFLICT(key) DO UPDATE SET value = excluded.value", [secrets.token_hex(8)])
            total += len(batch)
        return total

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
        with self._lock:
            version = self.get_meta("audience_version", "")
            if self._audience_cache and self._audience_cache[0] == version:
                return self._audience_cache[1]
            info = self.audience_info()
            n = info["members"]
            points = np.empty((n, 32), dtype=np.uint8)
            bits = np.empty(n, dtype=np.uint64)
            row_ids = np.empty(n, dtype=np.int64)
            cursor = self.db.execute("SELECT row_id, point, segments FROM audience ORDER BY row_id")
            at = 0
            while rows := cursor.fetchmany(65_536):
                row_ids[at:at + len(rows)] = [r[0] for r in rows]
                points[at:at + len(rows)] = np.frombuffer(b"".join(r[1] for r in rows), np.uint8).reshape(-1, 32)
                bits[at:at + len(rows)] = [r[2] for r in rows]
                at += len(rows)
            audience = Audience(id_kind=info["id_kind"] or "", points=points, segment_bits=bits,
                                segments=tuple(info["segments"]), row_ids=row_ids, version=version)
            self._audience_cache = (version, audience)
            return audience

    # -- principals ---------------------------------------------------------------------------

    def add_principal(self, role: str, name: str) -> tuple[Principal, str]:
        """Create a merchant or auditor; returns it and its bearer token, which is stored only hashed."""
        if not name or len(name) > 128 or any(c.isspace() for c in name):
            raise InputError(f"invalid name {name!r}: use 1-128 characters without spaces")
        token = f"mt_{secrets.token_urlsafe(32)}"
        with self.transaction() as conn:
            if conn.execute("SELECT 1 FROM principals WHERE role = ? AND name = ?", [role, name]).fetchone():
                raise InputError(f"{role} '{name}' already exists")
            cur = conn.execute("INSERT INTO principals (role, name, token_hash, created) VALUES (?, ?, ?, ?)",
                               [role, name, hash_token(token), self._clock()])
        return Principal(cur.lastrowid, role, name), token

    def authenticate(self, token: str) -> Principal | None:
        digest = hash_token(token)
        row = self.db.execute("SELECT id, role, name, token_hash FROM principals WHERE token_hash = ? AND disabled = 0",
                              [digest]).fetchone()
        if row is None or not hmac.compare_digest(row[3], digest):
            return None
        return Principal(row[0], row[1], row[2])

    def principal(self, role: str, name: str) -> Principal:
        row = self.db.execute("SELECT id, role, name FROM principals WHERE role = ? AND name = ?", [role, name]).fetchone()
        if row is None:
            raise NotFound(f"no {role} named '{name}'", hint=f"`matcher {role} list` shows the {role}s")
        return Principal(*row)

    def list_principals(self, role: str) -> list[dict]:
        return [dict(zip(("name", "created", "disabled"), r)) for r in self.db.execute(
            "SELECT name, created, disabled FROM principals WHERE role = ? ORDER BY name", [role])]

    def set_disabled(self, role: str, name: str, disabled: bool) -> None:
        with self.transaction() as conn:
            if conn.execute("UPDATE principals SET disabled = ? WHERE role = ? AND name = ?",
                            [int(disabled), role, name]).rowcount == 0:
                raise NotFound(f"no {role} named '{name}'", hint=f"`matcher {role} list` shows the {role}s")

    def rotate_token(self, role: str, name: str) -> str:
        """Give a merchant or auditor a new bearer token (stored hashed, like the first): the old
        one stops working with this commit, since authentication looks tokens up by their hash."""
        token = f"mt_{secrets.token_urlsafe(32)}"
        with self.transaction() as conn:
            if conn.execute("UPDATE principals SET token_hash = ? WHERE role = ? AND name = ?",
                            [hash_token(token), role, name]).rowcount == 0:
                raise NotFound(f"no {role} named '{name}'", hint=f"`matcher {role} list` shows the {role}s")
        return token

    # -- policy -------------------------------------------------------------------------------

    def policy_settings(self, scope: str = "") -> dict[str, str]:
        return dict(self.db.execute("SELECT key, value FROM policy WHERE scope = ? ORDER BY key", [scope]).fetchall())

    def effective_policy(self, merchant: str | None = None) -> policy_mod.Policy:
        current = policy_mod.Policy()
        for scope in ("",) + ((merchant,) if merchant else ()):
            for key, value in self.policy_settings(scope).items():
                current = current.with_setting(key, value)
        return current

    def set_policy(self, key: str, value: str, *, merchant: str | None = None) -> policy_mod.Policy:
        """Validate against the policy model first, so a bad value never reaches the table."""
        if merchant is not None:
            self.principal("merchant", merchant)
        self.effective_policy(merchant).with_setting(key, value)
        with self.transaction() as conn:
            conn.execute("INSERT INTO policy (scope, key, value) VALUES (?, ?, ?) "
                         "ON CONFLICT(scope, key) DO UPDATE SET value = excluded.value", [merchant or "", key, value])
        return self.effective_policy(merchant)

    # -- jobs and the privacy-budget ledger ---------------------------------------------------

    def budget_spent(self, merchant_id: int, period_seconds: float, now: float | None = None) -> float:
        now = self._clock() if now is None else now
        row = self.db.execute("SELECT coalesce(sum(epsilon), 0) FROM budget WHERE merchant_id = ? "
                              "AND state IN ('reserved', 'committed') AND at > ?",
                              [merchant_id, now - period_seconds]).fetchone()
        return float(row[0])

    def open_job(self, job_id: str, merchant: Principal, *, pol: policy_mod.Policy, epsilon: float,
                 list_size: int, labels: int, label_sizes: Sequence[int] = (), protocol: str = "") -> None:
        """Record the job and reserve its ε in one IMMEDIATE transaction: two concurrent jobs can
        never both see the same remaining budget. Raises LimitExceeded (nothing written) when the
        rate or the budget would be exceeded."""
        now = self._clock()
        with self.transaction() as conn:
            recent = conn.execute("SELECT count(*) FROM jobs WHERE merchant_id = ? AND created > ? AND state != 'refused'",
                                  [merchant.id, now - 3600]).fetchone()[0]
            if recent >= pol.jobs_per_hour:
                raise LimitExceeded(f"rate limit: {recent} jobs in the last hour (limit {pol.jobs_per_hour})",
                                    reason="rate_limited", hint="wait and retry later")
            spent = conn.execute("SELECT coalesce(sum(epsilon), 0) FROM budget WHERE merchant_id = ? "
                                 "AND state IN ('reserved', 'committed') AND at > ?",
                                 [merchant.id, now - pol.budget_period_seconds]).fetchone()[0]
            if spent + epsilon > pol.epsilon_budget + 1e-9:
                raise LimitExceeded(
                    f"privacy budget exhausted: {spent:g} of {pol.epsilon_budget:g} spent in the last "
                    f"{pol.budget_period}, this job needs {epsilon:g}",
                    reason="budget_exhausted", hint="the budget returns as old jobs leave the period")
            conn.execute("INSERT INTO jobs (id, merchant_id, state, created, list_size, labels, policy_json, label_sizes, "
                         "protocol) VALUES (?, ?, 'running', ?, ?, ?, ?, ?, ?)",
                         [job_id, merchant.id, now, list_size, labels, json.dumps(pol.to_dict(), sort_keys=True),
                          json.dumps(sorted(int(n) for n in label_sizes)), protocol])
            conn.execute("INSERT INTO budget (job_id, merchant_id, epsilon, state, at) VALUES (?, ?, ?, 'reserved', ?)",
                         [job_id, merchant.id, epsilon, now])

    def record_refusal(self, job_id: str, merchant: Principal, reason: str, list_size: int, labels: int) -> None:
        with self.transaction() as conn:
            conn.execute("INSERT INTO jobs (id, merchant_id, state, reason, created, finished, list_size, labels) "
                         "VALUES (?, ?, 'refused', ?, ?, ?, ?, ?)",
                         [job_id, merchant.id, reason, self._clock(), self._clock(), list_size, labels])

    def finish_job(self, job_id: str, *, released: bool, report_json: str | None = None, reason: str | None = None,
                   leaf_index: int | None = None) -> None:
        """Commit the reserved ε when something was released, refund it otherwise."""
        with self.transaction() as conn:
            self.finish_job_in(conn, job_id, released=released, report_json=report_json, reason=reason,
                               leaf_index=leaf_index)

    def finish_job_in(self, conn: sqlite3.Connection, job_id: str, *, released: bool, report_json: str | None = None,
                      reason: str | None = None, leaf_index: int | None = None) -> None:
        """:meth:`finish_job` inside the caller's transaction (the one that logs the job's end)."""
        conn.execute("UPDATE jobs SET state = ?, reason = ?, finished = ?, report_json = ?, leaf_index = ? WHERE id = ?",
                     ["released" if released else "failed", reason, self._clock(), report_json, leaf_index, job_id])
        conn.execute("UPDATE budget SET state = ? WHERE job_id = ? AND state = 'reserved'",
                     ["committed" if released else "refunded", job_id])

    def commit_budget(self, job_id: str) -> None:
        """Spend a running job's reserved ε now, whatever happens next: called before anything that
        depends on the platform's data leaves the server (secure protocol), so no failure, crash or
        disconnect afterwards can give it back."""
        with self.transaction() as conn:
            conn.execute("UPDATE budget SET state = 'committed' WHERE job_id = ? AND state = 'reserved'", [job_id])

    def job(self, job_id: str, merchant: Principal) -> dict:
        """A merchant sees only its own jobs; another merchant's id looks exactly like an unknown one."""
        row = self.db.execute("SELECT id, state, reason, report_json, epsilon_state FROM ("
                              " SELECT j.id, j.state, j.reason, j.report_json, b.state AS epsilon_state, j.merchant_id"
                              " FROM jobs j LEFT JOIN budget b ON b.job_id = j.id) WHERE id = ? AND merchant_id = ?",
                              [job_id, merchant.id]).fetchone()
        if row is None:
            raise NotFound(f"no job '{job_id}'")
        return dict(zip(("job_id", "state", "reason", "report_json", "budget_state"), row))

    def running_jobs(self) -> list[dict]:
        """Jobs still marked running (at start-up: the ones a crash interrupted), with what their
        log entry needs: merchant, sizes, policy, protocol, start time and the ε state."""
        columns = ("job_id", "merchant", "list_size", "label_sizes", "policy_json", "protocol", "created",
                   "epsilon", "budget_state")
        rows = self.db.execute(
            "SELECT j.id, p.name, j.list_size, j.label_sizes, j.policy_json, j.protocol, j.created, b.epsilon, b.state "
            "FROM jobs j JOIN principals p ON p.id = j.merchant_id LEFT JOIN budget b ON b.job_id = j.id "
            "WHERE j.state = 'running' ORDER BY j.created").fetchall()
        return [dict(zip(columns, row)) for row in rows]

    def recent_jobs(self, limit: int = 50) -> list[dict]:
        """The latest jobs, newest first, as the operator console shows them: merchant, state, kind
        (``activation`` when the job stored a slice, else ``match``), protocol, sizes, times, ε and its
        ledger state, reason. Never the report: released counts stay in the audit log."""
        columns = ("job_id", "merchant", "state", "kind", "protocol", "list_size", "labels", "created", "finished",
                   "epsilon", "budget_state", "reason")
        rows = self.db.execute(
            "SELECT j.id, p.name, j.state, CASE WHEN EXISTS (SELECT 1 FROM activations a WHERE a.job_id = j.id) "
            "THEN 'activation' ELSE 'match' END, j.protocol, j.list_size, j.labels, j.created, j.finished, "
            "b.epsilon, b.state, j.reason FROM jobs j JOIN principals p ON p.id = j.merchant_id "
            "LEFT JOIN budget b ON b.job_id = j.id ORDER BY j.created DESC LIMIT ?", [limit]).fetchall()
        return [dict(zip(columns, row)) for row in rows]

    def job_counts(self, since: float, bucket_seconds: float) -> list[tuple[float, str, int]]:
        """(bucket start, state, jobs) for jobs created since ``since``, in buckets of ``bucket_seconds``."""
        return [(float(r[0]), r[1], r[2]) for r in self.db.execute(
            "SELECT CAST((created - ?) / ? AS INTEGER) * ? + ?, state, count(*) FROM jobs WHERE created >= ? "
            "GROUP BY 1, 2 ORDER BY 1", [since, bucket_seconds, bucket_seconds, since, since])]

    def fail_jobs_in(self, conn: sqlite3.Connection, job_ids: Sequence[str], reason: str) -> None:
        """Mark jobs a crash interrupted failed: reserved ε goes back (nothing was released), ε a
        secure job committed before its data left the server stays spent."""
        for job_id in job_ids:
            self.finish_job_in(conn, job_id, released=False, reason=reason)

    # -- status -------------------------------------------------------------------------------

    def status(self) -> dict:
        """What an operator checks first: audience, principals, jobs, log, precomputation, activations."""
        q = lambda sql, *args: self.db.execute(sql, args).fetchall()  # noqa: E731
        audience = self.audience_info()
        version = self.get_meta("audience_version", "")
        merchants = dict(q("SELECT disabled, count(*) FROM principals WHERE role = 'merchant' GROUP BY disabled"))
        return {
            "audience": audience,
            "merchants": {"active": merchants.get(0, 0), "disabled": merchants.get(1, 0)},
            "auditors": q("SELECT count(*) FROM principals WHERE role = 'auditor'")[0][0],
            "jobs": dict(q("SELECT state, count(*) FROM jobs GROUP BY state")),
            "audit_log_entries": self.log_size(),
            "randomness_pool_batches": q("SELECT count(*) FROM randomness_pool")[0][0],
            "stream_slots_ready": self.stream_slots(version),
            # The secure protocol's segment streams: ready slots per segment.
            "segment_stream_slots_ready": dict(q(
                "SELECT segment, count(*) FROM stream_slots WHERE audience_version = ? AND segment != '' "
                "AND taken = 0 AND ready = 1 GROUP BY segment", version)),
            # Being written while the server is idle (minutes for a large audience: its ciphertexts).
            "stream_slot_rows_in_progress": q(
                "SELECT coalesce(sum(length(p.points)), 0) / 32 FROM stream_slots s "
                "JOIN stream_slot_pieces p ON p.slot_id = s.id WHERE s.ready = 0")[0][0],
            "activations": dict(q("SELECT state, count(*) FROM activations GROUP BY state")),
            # The unbalanced protocol's input: every member's stream history, as of the last whole import.
            "preprocessing_ready": self.preprocessing_ready(),
            "unbalanced_copies": q("SELECT count(*) FROM enrollments")[0][0],
        }

    def preprocessing_ready(self) -> bool:
        """True when the unbalanced protocol's history covers every member: no import is half-done
        (its rows wait for the import's end) and every member has an open record."""
        seq = int(self.get_meta("audience_seq", "0"))
        current = self.db.execute("SELECT count(*) FROM audience_history WHERE until IS NULL AND since <= ?",
                                  [seq]).fetchone()[0]
        return current == self.audience_info()["members"]

    # -- activations --------------------------------------------------------------------------

    def create_activation_in(self, conn: sqlite3.Connection, handle: str, merchant: Principal, *, job_id: str,
                             name: str, where: str, label: str | None, row_ids: Sequence[int], noisy_size: int,
                             ttl_seconds: float, created: float | None = None) -> float:
        """Store an activated slice (platform row ids only) inside the caller's transaction (the one
        that logs it); returns its expiry time."""
        now = self._clock() if created is None else created
        expires = now + ttl_seconds
        conn.execute("INSERT INTO activations (handle, merchant_id, job_id, name, where_expr, label, size, "
                     "noisy_size, created, expires, state) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'active')",
                     [handle, merchant.id, job_id, name, where, label, len(row_ids), noisy_size, now, expires])
        conn.executemany("INSERT INTO activation_members (handle, row_id) VALUES (?, ?)",
                         [(handle, int(r)) for r in row_ids])
        return expires

    def list_activations(self, merchant: Principal | None = None) -> list[dict]:
        """Without a merchant: all (the operator's view, with true sizes); with one: its own, noisy sizes only."""
        columns = ["handle", "name", "where_expr", "label", "noisy_size", "created", "expires", "state"]
        if merchant is None:
            columns = ["handle", "merchant", "size", *columns[1:]]
            sql = ("SELECT a.handle, p.name, a.size, a.name, a.where_expr, a.label, a.noisy_size, a.created, "
                   "a.expires, a.state FROM activations a JOIN principals p ON p.id = a.merchant_id ORDER BY a.created")
            rows = self.db.execute(sql).fetchall()
        else:
            rows = self.db.execute(f"SELECT {', '.join(columns)} FROM activations WHERE merchant_id = ? "
                                   "ORDER BY created", [merchant.id]).fetchall()
        return [dict(zip(columns, r)) for r in rows]

    def activation(self, handle: str) -> dict:
        found = [a for a in self.list_activations() if a["handle"] == handle]
        if not found:
            raise NotFound(f"no activation '{handle}'", hint="`matcher activation list` shows the handles")
        return found[0]

    def activation_member_ids(self, handle: str) -> Iterator[list[str]]:
        """The platform's own member ids of an active slice, in batches."""
        cursor = self.db.execute("SELECT a.member_id FROM activation_members m JOIN audience a ON a.row_id = m.row_id "
                                 "WHERE m.handle = ? ORDER BY a.row_id", [handle])
        while rows := cursor.fetchmany(65_536):
            yield [r[0] for r in rows]

    def end_activation(self, handle: str, state: str) -> None:
        """Delete a slice's rows; the activation itself stays, as 'deleted' or 'expired', for the record."""
        with self.transaction() as conn:
            conn.execute("DELETE FROM activation_members WHERE handle = ?", [handle])
            conn.execute("UPDATE activations SET state = ? WHERE handle = ?", [state, handle])

    def expired_activations(self) -> list[str]:
        return [r[0] for r in self.db.execute("SELECT handle FROM activations WHERE state = 'active' AND expires <= ?",
                                              [self._clock()])]

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
        return self.db.execute("SELECT count(*) FROM stream_slots WHERE audience_version = ? AND segment = ? "
                               "AND taken = 0 AND ready = 1", [audience_version, segment]).fetchone()[0]

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

    def take_stream_slot(self, audience_version: str, segment: str = "") -> tuple[int, bytes, bytes, str | None] | None:
        """Mark one ready slot taken and return (id, sealed scalar, order, layout json): no two jobs
        get the same b."""
        with self.transaction() as conn:
            row = conn.execute("UPDATE stream_slots SET taken = 1 WHERE id = (SELECT id FROM stream_slots "
                               "WHERE audience_version = ? AND segment = ? AND taken = 0 AND ready = 1 ORDER BY id "
                               "LIMIT 1) RETURNING id, sealed_scalar, stream_order, layout_json",
                               [audience_version, segment]).fetchone()
        return (row[0], bytes(row[1]), bytes(row[2]), row[3]) if row else None

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
            conn.execute("UPDATE stream_slots SET taken = 2 WHERE id = ?", [slot_id])

    def drop_stream_slots(self, keep_version: str, *, at_startup: bool = False) -> None:
        """Delete spent slots and untaken ones made for another audience snapshot; ``at_startup`` (no
        job runs, no slot is being written) also slots taken by jobs a crash interrupted, and
        half-written ones."""
        # A plain read first (no write lock: the idle loop asks often), then each slot is claimed as
        # spent unless a job took it in between (a job that loaded the old snapshot just before an import).
        ids = [r[0] for r in self.db.execute(
            "SELECT id FROM stream_slots WHERE taken = 2 OR (audience_version != ? AND taken = 0 AND ready = 1) "
            "OR (? AND (taken = 1 OR ready = 0))", [keep_version, int(at_startup)])]
        for slot_id in ids:
            with self.transaction() as conn:
                claimed = conn.execute("UPDATE stream_slots SET taken = 2 WHERE id = ? AND (taken != 1 OR ?)",
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

    # -- audit log ----------------------------------------------------------------------------

    def log_size(self) -> int:
        return self.db.execute("SELECT count(*) FROM log_entries").fetchone()[0]

    def log_entries(self, start: int, end: int) -> list[tuple[int, bytes]]:
        return [(r[0], bytes(r[1])) for r in self.db.execute(
            "SELECT idx, data FROM log_entries WHERE idx >= ? AND idx < ? ORDER BY idx", [start, end])]

    def get_nodes(self, keys: Sequence[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
        if not keys:
            return {}
        found: dict[tuple[int, int], bytes] = {}
        keys = list(keys)
        for lo in range(0, len(keys), 400):
            part = keys[lo:lo + 400]
            clause = " OR ".join("(level = ? AND idx = ?)" for _ in part)
            params = [v for key in part for v in key]
            for level, idx, h in self.db.execute(f"SELECT level, idx, hash FROM log_nodes WHERE {clause}", params):
                found[(level, idx)] = bytes(h)
        return found

    def append_log(self, entries: Sequence[bytes], nodes: Mapping[tuple[int, int], bytes], first_index: int,
                   checkpoint: tuple[int, str],
                   then: Callable[[sqlite3.Connection, int], None] | None = None) -> None:
        """Entries, their new Merkle nodes and the checkpoint that covers them land together or not at all,
        and with them whatever ``then(conn, first_index)`` writes (a job's state and ε ledger)."""
        with self.transaction() as conn:
            if conn.execute("SELECT count(*) FROM log_entries").fetchone()[0] != first_index:
                raise StoreError("the audit log changed underneath this writer")
            conn.executemany("INSERT INTO log_entries (idx, data) VALUES (?, ?)",
                             [(first_index + i, e) for i, e in enumerate(entries)])
            conn.executemany("INSERT OR REPLACE INTO log_nodes (level, idx, hash) VALUES (?, ?, ?)",
                             [(lvl, idx, h) for (lvl, idx), h in nodes.items()])
            conn.execute("INSERT INTO checkpoints (size, note, at) VALUES (?, ?, ?)",
                         [checkpoint[0], checkpoint[1], self._clock()])
            faults.point("log.append.before_commit")
            if then is not None:
                then(conn, first_index)
                faults.point("log.append.after_then")

    def checkpoints(self, min_size: int = 0) -> list[tuple[int, str]]:
        return [(r[0], r[1]) for r in self.db.execute(
            "SELECT size, note FROM checkpoints WHERE size >= ? ORDER BY size", [min_size])]

    def latest_checkpoint(self) -> tuple[int, str] | None:
        row = self.db.execute("SELECT size, note FROM checkpoints ORDER BY size DESC LIMIT 1").fetchone()
        return (row[0], row[1]) if row else None
