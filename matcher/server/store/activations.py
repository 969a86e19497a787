"""Activated slices: each activation's record and its members' row ids (platform rows only)."""

from __future__ import annotations

import sqlite3
from typing import Iterator, Sequence

from matcher.errors import NotFound
from matcher.server.store.db import Database
from matcher.server.store.principals import Principal


class ActivationTables(Database):
    """Slices stored for merchants: active until deleted or expired, then kept as a record only."""

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
