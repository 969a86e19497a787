"""An optional local cache of H(x) for the merchant (``matcher-client match --cache FILE``).

Hashing to the group is the merchant's most expensive per-ID step and depends only on the ID and
the hash-to-curve suite/DST, never on a job: a merchant that matches the same customer list every
week can hash it once. The cache holds match keys (SHA-256 of normalized IDs) and their points —
as sensitive as the customer list itself, so it is created with mode 0600 and belongs next to
that list.

Format: a header naming the suite and DST, then fixed-size records (64-byte message, 32-byte
point) sorted by message, so a whole chunk is looked up with one vectorised binary search. A cache
written for another suite or DST is ignored (and replaced on the next write), never read.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from matcher.crypto import group
from matcher.crypto.kernels import Kernels

_MAGIC = b"matcher-hash-cache-v1\n"
_MSG = 64  # match keys are 64 hex digits
_RECORD = np.dtype([("msg", f"S{_MSG}"), ("point", "V32")])


class HashCache:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._dst: bytes | None = None
        self._records = np.empty(0, _RECORD)

    def _load(self, dst: bytes) -> None:
        if self._dst == dst:
            return
        self._dst, self._records = dst, np.empty(0, _RECORD)
        if not self.path.exists() or self.path.stat().st_size == 0:
            return
        data = self.path.read_bytes()
        header_end = data.find(b"\n", len(_MAGIC)) + 1
        if not data.startswith(_MAGIC) or header_end == 0:
            return
        header = json.loads(data[len(_MAGIC):header_end])
        if header == {"suite": group.SUITE, "dst": dst.hex()}:
            self._records = np.frombuffer(data, _RECORD, offset=header_end)

    def get(self, msgs: Sequence[bytes], dst: bytes) -> tuple[np.ndarray, np.ndarray]:
        """(found mask, points of the found ones in order) for ``msgs``."""
        self._load(dst)
        wanted = np.array(msgs, dtype=f"S{_MSG}")
        if not len(self._records):
            return np.zeros(len(msgs), bool), np.empty(0, "V32")
        at = np.minimum(np.searchsorted(self._records["msg"], wanted), len(self._records) - 1)
        found = self._records["msg"][at] == wanted
        return found, self._records["point"][at[found]]

    def put(self, msgs: Sequence[bytes], points: bytes, dst: bytes) -> None:
        """Add entries and rewrite the file atomically (sorted, deduplicated)."""
        self._load(dst)
        fresh = np.empty(len(msgs), _RECORD)
        fresh["msg"] = np.array(msgs, dtype=f"S{_MSG}")
        fresh["point"] = np.frombuffer(points, "V32")
        merged = np.concatenate([self._records, fresh])
        merged = merged[np.unique(merged["msg"], return_index=True)[1]]
        header = _MAGIC + json.dumps({"suite": group.SUITE, "dst": dst.hex()}).encode() + b"\n"
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(header)
            f.write(merged.tobytes())
        os.replace(tmp, self.path)
        self._records = merged


def default_dir() -> Path:
    """The merchant's own cache, shared by every list it matches (so a list that comes back next
    month with 2% new rows hashes only those): ``$MATCHER_CLIENT_HOME/hash-cache`` (default
    ``~/.matcher-client``), one file per identifier kind."""
    home = os.environ.get("MATCHER_CLIENT_HOME")
    return (Path(home).expanduser() if home else Path.home() / ".matcher-client") / "hash-cache"


class HashCacheDir:
    """A :class:`HashCache` per domain-separation tag (identifier kind) in one directory (0700), so
    phone and email lists do not evict each other's entries."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self._files: dict[bytes, HashCache] = {}

    def _for(self, dst: bytes) -> HashCache:
        if dst not in self._files:
            self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
            self._files[dst] = HashCache(self.root / f"{hashlib.sha256(dst).hexdigest()[:16]}.cache")
        return self._files[dst]

    def get(self, msgs: Sequence[bytes], dst: bytes) -> tuple[np.ndarray, np.ndarray]:
        return self._for(dst).get(msgs, dst)

    def put(self, msgs: Sequence[bytes], points: bytes, dst: bytes) -> None:
        self._for(dst).put(msgs, points, dst)


def open_cache(cache: str | Path) -> HashCache | HashCacheDir:
    """``auto`` (the CLI's default): the merchant's cache directory; an existing directory: a cache
    per kind in it; anything else: one cache file, as ``--cache FILE`` always was."""
    if str(cache) == "auto":
        return HashCacheDir(default_dir())
    return HashCacheDir(cache) if Path(cache).is_dir() else HashCache(cache)


class CachingKernels(Kernels):
    """Kernels whose hashing consults the cache first; everything else goes to the inner kernels.
    New points are written back when the kernels are closed (one rewrite per job)."""

    def __init__(self, inner: Kernels, cache: HashCache | HashCacheDir):
        self._inner = inner
        self._cache = cache
        self.hits = 0      # match keys this job found in the cache
        self.misses = 0    # and those it hashed (and adds to it)
        self._pending_msgs: list[bytes] = []
        self._pending_points: list[bytes] = []
        self._pending_dst: bytes | None = None
        self.workers = inner.workers

    def hash_to_curve(self, msgs: Sequence[bytes], dst: bytes) -> bytes:
        if any(len(m) != _MSG for m in msgs):  # not match keys: nothing to cache
            return self._inner.hash_to_curve(msgs, dst)
        if self._pending_dst not in (None, dst):
            self.flush()
        found, cached = self._cache.get(msgs, dst)
        out = np.empty(len(msgs), "V32")
        out[found] = cached
        missing = [m for m, hit in zip(msgs, found.tolist()) if not hit]
        if missing:
            fresh = self._inner.hash_to_curve(missing, dst)
            out[~found] = np.frombuffer(fresh, "V32")
            self._pending_msgs += missing
            self._pending_points.append(fresh)
            self._pending_dst = dst
        self.hits += len(msgs) - len(missing)
        self.misses += len(missing)
        return out.tobytes()

    def flush(self) -> None:
        if self._pending_msgs:
            self._cache.put(self._pending_msgs, b"".join(self._pending_points), self._pending_dst)
        self._pending_msgs, self._pending_points, self._pending_dst = [], [], None

    def blind(self, scalar: bytes, points: bytes, *, chosen: bool = True) -> bytes:
        return self._inner.blind(scalar, points, chosen=chosen)

    def submit_encrypt(self, context, plaintexts):
        return self._inner.submit_encrypt(context, plaintexts)

    def submit_blind(self, scalar: bytes, points: bytes, *, chosen: bool = True):
        return self._inner.submit_blind(scalar, points, chosen=chosen)

    def close(self) -> None:
        self.flush()
        self._inner.close()
