"""One SQLite file (WAL) and how it is opened: a connection per thread, the pragmas, the schema
migrations (:mod:`~matcher.server.store.schema`) applied on open, the read-only mode, transactions,
and the ``meta`` table of small settings (audience kind, segments, audience version)."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Mapping

import sqlite_utils

from matcher.errors import StoreError
from matcher.server.store.schema import MIGRATIONS, SCHEMA_VERSION

Clock = Callable[[], float]


class Database:
    """The shared connection every table module of the store works through (see the package's docstring)."""

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
    def snapshot(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: every read inside sees the database as of its first one, so a count
        and the rows it sizes agree while an import commits batches beside them (WAL)."""
        conn = self.db.conn
        if conn.in_transaction:
            yield conn
            return
        conn.execute("BEGIN")
        try:
            yield conn
        finally:
            conn.execute("COMMIT")

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
            migration = MIGRATIONS[number]
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
