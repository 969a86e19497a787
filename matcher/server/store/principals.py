"""Merchants and auditors: names, roles and bearer tokens, stored as SHA-256 hashes only."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from matcher.errors import InputError, NotFound
from matcher.server.store.db import Database


@dataclass(frozen=True)
class Principal:
    id: int
    role: str
    name: str


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class PrincipalTables(Database):
    """Who may call: merchants and auditors, each with one token."""

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
