"""Who may see the console: one operator token, kept hashed in a file beside the database, and
the in-memory sessions a successful login opens.

Why a token file and not an ``operator`` principal: the console only reads, and it shows nothing
the holder of the database file could not read already, so it needs no entry in the audit log
(which records who may *act*); and the principals table only admits merchants and auditors
(a CHECK constraint that SQLite can widen only by rebuilding a table every job row references).
The file holds only the token's SHA-256, mode 0600 like the key file, so even a reader of the
file cannot log in; ``matcher console --new-token`` prints the token once and replaces the hash.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
import threading
import time
from pathlib import Path
from typing import Callable

from matcher.errors import InputError, StoreError

# A session lasts a working day; restarting the console ends every session.
SESSION_SECONDS = 8 * 3600
# Sessions kept at most (oldest dropped first): a bound on memory, not a limit anyone should reach.
MAX_SESSIONS = 256


def token_path_for(db_path: str | Path) -> Path:
    return Path(f"{db_path}.console-token")


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token(path: Path) -> str:
    """Write a fresh token's hash to ``path`` (replacing any older one) and return the token."""
    token = f"mc_{secrets.token_urlsafe(32)}"
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # 0600 from the first byte
    try:
        with os.fdopen(fd, "w") as f:
            f.write(_digest(token) + "\n")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return token


def load_token_hash(path: Path) -> str:
    """The stored hash; refused when missing, malformed, or readable by group or others."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise StoreError(f"no console token at {path}",
                         hint="create one with `matcher console --db DB --new-token`") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise StoreError(f"{path} is readable by group or others (mode {stat.S_IMODE(mode):o})",
                         hint=f"chmod 600 {path}")
    value = path.read_text().strip()
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise InputError(f"{path} does not hold a console token hash",
                         hint="replace it with `matcher console --db DB --new-token`")
    return value


def token_matches(offered: str, token_hash: str) -> bool:
    """Constant time in the offered token: both sides are fixed-length hashes."""
    return hmac.compare_digest(_digest(offered), token_hash)


class Sessions:
    """Random session ids held in memory, keyed by their hash (a memory dump shows no live cookie)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, ttl: float = SESSION_SECONDS):
        self._clock, self._ttl = clock, ttl
        self._expiry: dict[str, float] = {}
        self._lock = threading.Lock()

    def open(self) -> str:
        session = secrets.token_urlsafe(32)
        with self._lock:
            if len(self._expiry) >= MAX_SESSIONS:
                del self._expiry[min(self._expiry, key=self._expiry.__getitem__)]
            self._expiry[_digest(session)] = self._clock() + self._ttl
        return session

    def valid(self, session: str | None) -> bool:
        if not session:
            return False
        key = _digest(session)
        with self._lock:
            expiry = self._expiry.get(key)
            if expiry is not None and expiry <= self._clock():
                del self._expiry[key]
                expiry = None
        return expiry is not None

    def close(self, session: str | None) -> None:
        if session:
            with self._lock:
                self._expiry.pop(_digest(session), None)
