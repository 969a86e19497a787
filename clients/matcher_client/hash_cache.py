"""An optional local cache of H(x) for the merchant (``matcher-client match --cache FILE``).

Hashing to the group is the merchant's most expensive per-ID step and depends only on the ID and
the hash-to-curve suite/DST, never on a job: a merchant that matches the same customer list every
week can hash it once. The cache holds match keys (SHA-256 of normalized IDs) and their points —
as sensitive as the customer list itself, so it is created with mode 0600 and belongs next to
that list.

Format (v2): a header naming the suite and, for each DST (identifier kind) the file holds, how many
records follow; then each DST's fixed-size records (64-byte message, 32-byte point) sorted by
message, so a whole chunk is looked up with one vectorised binary search. A job that hashes several
kinds (a list of phones and emails) keeps each kind's points apart, in one file or (the default
cache directory) one file per kind. A v1 file (one DST) is read as it is and written back as v2.
Records of another suite, or a file that is not a cache (or is cut short), are ignored (and replaced
on the next write), never read.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from matcher.crypto import group
from matcher.crypto.kernels import Kernels

_MAGIC_V1 = b"matcher-hash-cache-v1\n"
_MAGIC = b"matcher-hash-cache-v2\n"
_MSG = 64  # match keys are 64 hex digits
_RECORD = np.dtype([("msg", f"S{_MSG}"), ("point", "V32")])
# New entries of one job, per DST: (match keys, their points joined).
Pending = Mapping[bytes, tuple[Sequence[bytes], bytes]]


class HashCache:
    """One cache file, holding the points of any number of DSTs (each in its own sorted section)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._sections: dict[bytes, np.ndarray] | None = None

    def _load(self) -> dict[bytes, np.ndarray]:
        if self._sections is None:
            self._sections = _read_sections(self.path)
        return self._sections

    def dsts(self) -> list[bytes]:
        """The DSTs this file holds points for."""
        return list(self._load())

    def get(self, msgs: Sequence[bytes], dst: bytes) -> tuple[np.ndarray, np.ndarray]:
        """(found mask, points of the found ones in order) for ``msgs``, hashed under ``dst``."""
        records = self._load().get(dst)
        wanted = np.array(msgs, dtype=f"S{_MSG}")
        if records is None or not len(records):
            return np.zeros(len(msgs), bool), np.empty(0, "V32")
        at = np.minimum(np.searchsorted(records["msg"], wanted), len(records) - 1)
        found = records["msg"][at] == wanted
        return found, records["point"][at[found]]

    def put(self, msgs: Sequence[bytes], points: bytes, dst: bytes) -> None:
        """Add entries of ``dst`` and rewrite the file atomically (sorted, deduplicated)."""
        self.update({dst: (msgs, points)})

    def update(self, pending: Pending) -> None:
        """Add the entries of several DSTs at once: one rewrite of the file."""
        if not any(len(msgs) for msgs, _ in pending.values()):
            return
        sections = dict(self._load())
        for dst, (msgs, points) in pending.items():
            if not len(msgs):
                continue
            fresh = np.empty(len(msgs), _RECORD)
            fresh["msg"] = np.array(msgs, dtype=f"S{_MSG}")
            fresh["point"] = np.frombuffer(points, "V32")
            merged = np.concatenate([sections.get(dst, np.empty(0, _RECORD)), fresh])
            sections[dst] = merged[np.unique(merged["msg"], return_index=True)[1]]
        header = {"suite": group.SUITE, "sections": [{"dst": dst.hex(), "records": len(records)}
                                                     for dst, records in sections.items()]}
        tmp = self.path.with_name(self.path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(_MAGIC + json.dumps(header).encode() + b"\n")
            for records in sections.values():
                f.write(records.tobytes())
        os.replace(tmp, self.path)
        self._sections = sections


def _read_sections(path: Path) -> dict[bytes, np.ndarray]:
    """The sections of a cache file, by DST: nothing for a missing, foreign, damaged or other-suite file."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return {}
    magic = next((m for m in (_MAGIC, _MAGIC_V1) if data.startswith(m)), None)
    header_end = data.find(b"\n", len(magic)) + 1 if magic else 0
    if header_end == 0:
        return {}
    try:
        header = json.loads(data[len(magic):header_end])
        if not isinstance(header, dict) or header.get("suite") != group.SUITE:
            return {}
        if magic == _MAGIC_V1:
            body = len(data) - header_end
            sections = [(header["dst"], body // _RECORD.itemsize)] if body % _RECORD.itemsize == 0 else None
        else:
            sections = [(s["dst"], int(s["records"])) for s in header["sections"]]
        if sections is None or header_end + sum(n for _, n in sections) * _RECORD.itemsize != len(data):
            return {}  # cut short (or grown): not to be trusted
        out, offset = {}, header_end
        for dst, n in sections:
            out[bytes.fromhex(dst)] = np.frombuffer(data, _RECORD, count=n, offset=offset)
            offset += n * _RECORD.itemsize
        return out
    except (ValueError, KeyError, TypeError):
        return {}


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

    def update(self, pending: Pending) -> None:
        for dst, entries in pending.items():
            self._for(dst).update({dst: entries})


def open_cache(cache: str | Path) -> HashCache | HashCacheDir:
    """``auto`` (the CLI's default): the merchant's cache directory; an existing directory: a cache
    per kind in it; anything else: one cache file, as ``--cache FILE`` always was."""
    if str(cache) == "auto":
        return HashCacheDir(default_dir())
    return HashCacheDir(cache) if Path(cache).is_dir() else HashCache(cache)


class CachingKernels(Kernels):
    """Kernels whose hashing consults the cache first; everything else goes to the inner kernels.
    New points are kept per DST (a job may hash several identifier kinds, chunk by chunk and kind
    by kind) and written back when the kernels are closed: one rewrite per file and job."""

    def __init__(self, inner: Kernels, cache: HashCache | HashCacheDir):
        self._inner = inner
        self._cache = cache
        self.hits = 0      # match keys this job found in the cache
        self.misses = 0    # and those it hashed (and adds to it)
        self._pending: dict[bytes, tuple[list[bytes], list[bytes]]] = {}
        self.workers = inner.workers

    def hash_to_curve(self, msgs: Sequence[bytes], dst: bytes) -> bytes:
        if any(len(m) != _MSG for m in msgs):  # not match keys: nothing to cache
            return self._inner.hash_to_curve(msgs, dst)
        found, cached = self._cache.get(msgs, dst)
        out = np.empty(len(msgs), "V32")
        out[found] = cached
        missing = [m for m, hit in zip(msgs, found.tolist()) if not hit]
        if missing:
            fresh = self._inner.hash_to_curve(missing, dst)
            out[~found] = np.frombuffer(fresh, "V32")
            pending_msgs, pending_points = self._pending.setdefault(dst, ([], []))
            pending_msgs += missing
            pending_points.append(fresh)
        self.hits += len(msgs) - len(missing)
        self.misses += len(missing)
        return out.tobytes()

    def flush(self) -> None:
        pending, self._pending = self._pending, {}
        if pending:
            self._cache.update({dst: (msgs, b"".join(points)) for dst, (msgs, points) in pending.items()})

    def blind(self, scalar: bytes, points: bytes, *, chosen: bool = True) -> bytes:
        return self._inner.blind(scalar, points, chosen=chosen)

    def submit_encrypt(self, context, plaintexts):
        return self._inner.submit_encrypt(context, plaintexts)

    def submit_blind(self, scalar: bytes, points: bytes, *, chosen: bool = True):
        return self._inner.submit_blind(scalar, points, chosen=chosen)

    def close(self) -> None:
        self.flush()
        self._inner.close()
