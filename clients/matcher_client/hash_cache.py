"""An optional local cache of H(x) for the merchant (``matcher-client match --cache FILE``).

Hashing to the group is the merchant's most expensive per-ID step and depends only on the ID and
the hash-to-curve suite/DST, never on a job: a merchant that matches the same customer list every
week can hash it once. The cache is keyed by suite and DST, so a new suite version never reads
stale points. It holds match keys (SHA-256 of normalized IDs) and their points — as sensitive as
the customer list itself, so it is created with mode 0600 and belongs next to that list.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Sequence

from matcher.crypto import group
from matcher.crypto.kernels import Kernels

_BATCH = 900  # stays under SQLite's host-parameter limit


class HashCache:
    def __init__(self, path: str | Path):
        path = Path(path)
        if not path.exists():
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        self._conn = sqlite3.connect(str(path))
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("CREATE TABLE IF NOT EXISTS points (suite TEXT NOT NULL, dst BLOB NOT NULL, "
                           "msg BLOB NOT NULL, point BLOB NOT NULL, PRIMARY KEY (suite, dst, msg)) WITHOUT ROWID")
        self.hits = 0
        self.misses = 0

    def get(self, msgs: Sequence[bytes], dst: bytes) -> dict[bytes, bytes]:
        found: dict[bytes, bytes] = {}
        for lo in range(0, len(msgs), _BATCH):
            part = msgs[lo:lo + _BATCH]
            marks = ",".join("?" * len(part))
            found.update(self._conn.execute(
                f"SELECT msg, point FROM points WHERE suite = ? AND dst = ? AND msg IN ({marks})",
                [group.SUITE, dst, *part]).fetchall())
        return found

    def put(self, items: Sequence[tuple[bytes, bytes]], dst: bytes) -> None:
        with self._conn:
            self._conn.executemany("INSERT OR IGNORE INTO points (suite, dst, msg, point) VALUES (?, ?, ?, ?)",
                                   [(group.SUITE, dst, m, p) for m, p in items])

    def close(self) -> None:
        self._conn.close()


class CachingKernels(Kernels):
    """Kernels whose hashing consults the cache first; everything else goes to the inner kernels."""

    def __init__(self, inner: Kernels, cache: HashCache):
        self._inner = inner
        self._cache = cache
        self.workers = inner.workers

    def hash_to_curve(self, msgs: Sequence[bytes], dst: bytes) -> bytes:
        cached = self._cache.get(msgs, dst)
        missing = [m for m in msgs if m not in cached]
        if missing:
            fresh = self._inner.hash_to_curve(missing, dst)
            computed = [(m, fresh[32 * i:32 * i + 32]) for i, m in enumerate(missing)]
            self._cache.put(computed, dst)
            cached.update(computed)
        self._cache.hits += len(msgs) - len(missing)
        self._cache.misses += len(missing)
        return b"".join(cached[m] for m in msgs)

    def blind(self, scalar: bytes, points: bytes) -> bytes:
        return self._inner.blind(scalar, points)

    def submit_encrypt(self, context, plaintexts):
        return self._inner.submit_encrypt(context, plaintexts)

    def close(self) -> None:
        self._inner.close()
        self._cache.close()
