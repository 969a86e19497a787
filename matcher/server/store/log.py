"""The audit log's tables: entries, the Merkle tree's nodes and every signed checkpoint. The log
writer (:mod:`matcher.server.auditlog`) computes them; this module only keeps them."""

from __future__ import annotations

import sqlite3
from typing import Callable, Mapping, Sequence

from matcher.errors import StoreError
from matcher.server import faults
from matcher.server.store.db import Database


class LogTables(Database):
    """Append-only: entries, nodes and checkpoint land in one transaction."""

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
