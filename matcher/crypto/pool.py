"""The platform's offline Paillier randomness: n-th residues computed while the server is idle.

Encrypting a payload costs one exponentiation-sized piece of work, the randomness r (an n-th
residue, made as h^alpha by :class:`~matcher.crypto.paillier.PlatformEncryptor`), and one small
product. The randomness does not depend on the payload, so the server makes it ahead of time and a
job only multiplies. Rules that keep that sound:

* each value is used exactly once: the store hands out batches with DELETE ... RETURNING inside
  one transaction, so no two jobs (or processes) can get the same batch;
* values are secret (whoever knows r decrypts c), so they are sealed with AES-256-GCM under a key
  from the operator's key file before they touch the disk, and a batch that fails to open is an
  error, never silently used;
* a dry pool is not an error: the job encrypts online, as it would without a pool.
"""

from __future__ import annotations

import os

from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from gmpy2 import mpz

from matcher.errors import CryptoError

BATCH = 1024
_NONCE = 12


def seal_bytes(key: bytes, data: bytes, context: bytes, rng=os.urandom) -> bytes:
    """AES-256-GCM with a fresh nonce; ``context`` (what the bytes are) is bound as associated data."""
    nonce = rng(_NONCE)
    return nonce + AESGCM(key).encrypt(nonce, data, context)


def unseal_bytes(key: bytes, blob: bytes, context: bytes) -> bytes:
    try:
        return AESGCM(key).decrypt(blob[:_NONCE], blob[_NONCE:], context)
    except Exception:
        raise CryptoError("a sealed value failed to open: wrong key or tampered store") from None


def seal(key: bytes, size: int, values: list[int], rng=os.urandom) -> bytes:
    """Values (each < 2^(8*size)) as one sealed blob; the value size is bound as associated data."""
    return seal_serialized(key, size, b"".join(v.to_bytes(size, "big") for v in values), rng)


def seal_serialized(key: bytes, size: int, data: bytes, rng=os.urandom) -> bytes:
    """:func:`seal` for values already serialized as consecutive ``size``-byte big-endian numbers."""
    return seal_bytes(key, data, size.to_bytes(4, "big"), rng)


def unseal(key: bytes, size: int, blob: bytes) -> list[int]:
    plain = unseal_bytes(key, blob, size.to_bytes(4, "big"))
    return [mpz.from_bytes(plain[i:i + size], "big") for i in range(0, len(plain), size)]


class PooledRandomness:
    """One job's draw from the store's pool: ``take(n)`` gives n unused values or None when dry.
    Values left over when the job ends are dropped, never put back."""

    def __init__(self, store, key_id: str, pool_key: bytes, size: int):
        self._store = store
        self._key_id = key_id
        self._pool_key = pool_key
        self._size = size
        self._buffer: list[int] = []
        self.used = 0
        self.dry = False

    def take(self, count: int) -> list[int] | None:
        if self.dry:
            return None
        if len(self._buffer) < count:
            wanted = -(-(count - len(self._buffer)) // BATCH)
            for blob in self._store.pool_take(self._key_id, wanted):
                self._buffer.extend(unseal(self._pool_key, self._size, blob))
        if len(self._buffer) < count:
            self.dry = True
            return None
        values, self._buffer = self._buffer[:count], self._buffer[count:]
        self.used += count
        return values


def key_id(public_key) -> str:
    """Names the modulus the values were made for: a new key never uses an old key's pool."""
    import hashlib

    return hashlib.sha256(public_key.n_bytes()).hexdigest()[:16]
