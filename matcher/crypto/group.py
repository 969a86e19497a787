"""The prime-order group matcher blinds in: curve25519 u-coordinates under X25519.

Identifiers are hashed with RFC 9380 ``curve25519_XMD:SHA-512_ELL2_RO_`` (cofactor cleared, so
every hash lies in the prime-order subgroup) and blinded with X25519 (RFC 7748), which commutes:
``blind(a, blind(b, h)) == blind(b, blind(a, h))``. Elements travel as 32-byte little-endian u's,
concatenated in chunks.

Two X25519 backends give byte-identical results: "mb8", Intel's multi-buffer libcrypto_mb (eight
lanes of AVX-512 IFMA per call), and "openssl" through ``cryptography``. Inputs are checked the
same way for both, before any scalar multiplication: an element must be a canonical u
(below 2^255 - 19, top bit clear), and an all-zero output (a small-order input) is refused,
since it would match every other small-order input whatever the scalar.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from matcher.crypto import _h2c, _mb
from matcher.errors import CryptoError, InputError, InvalidPoint

SUITE = "curve25519_XMD:SHA-512_ELL2_RO_"
ELEMENT_SIZE = 32
ID_KINDS = ("phone", "email", "opaque")

_BACKENDS = ("mb8", "openssl")
_BASE_POINT = (9).to_bytes(ELEMENT_SIZE, "little")
# p = 2^255 - 19 as the 64-bit words (w3, w2, w1, w0) of a little-endian u, most significant first.
_P_WORDS = (0x7FFFFFFFFFFFFFFF, 0xFFFFFFFFFFFFFFFF, 0xFFFFFFFFFFFFFFFF, 0xFFFFFFFFFFFFFFED)


def dst_for(kind: str) -> bytes:
    """Domain-separation tag of an identifier kind: it names the suite version and the kind."""
    if kind not in ID_KINDS:
        raise InputError(f"unknown identifier kind {kind!r}", hint=f"use one of {', '.join(ID_KINDS)}")
    return b"matcher-v1-" + kind.encode()


def hash_to_curve(msg: bytes, dst: bytes) -> bytes:
    """RFC 9380 hash_to_curve of ``msg``: the 32-byte little-endian u of the cofactor-cleared point."""
    return hash_to_curve_batch([msg], dst)


def hash_to_curve_batch(msgs: Sequence[bytes], dst: bytes) -> bytes:
    """hash_to_curve of every message, outputs concatenated in order (one process, one thread)."""
    if not dst:
        raise InputError("empty domain-separation tag", hint="use dst_for(kind)")
    out, identities = _h2c.field_pairs_to_u(_h2c.hash_to_field_batch(msgs, dst))
    if identities:
        raise InvalidPoint(f"element {identities[0]} hashes to the identity, which cannot be blinded",
                           hint="drop that identifier; this has probability about 2^-250")
    return out


def random_scalar(rng: Callable[[int], bytes] = os.urandom) -> bytes:
    """A fresh 32-byte X25519 scalar (clamped by X25519 itself, so any 32 bytes will do)."""
    scalar = rng(ELEMENT_SIZE)
    if len(scalar) != ELEMENT_SIZE:
        raise CryptoError(f"random source returned {len(scalar)} bytes instead of {ELEMENT_SIZE}")
    return bytes(scalar)


def blind(scalar: bytes, points: bytes | bytearray | memoryview, *, backend: str | None = None) -> bytes:
    """X25519(scalar, u) for every consecutive 32-byte u in ``points``, concatenated in order.

    Raises InvalidPoint, naming the element, for a wrong scalar length, a length that is not a
    multiple of 32, a non-canonical u (top bit set, or u >= 2^255 - 19) and an all-zero result.
    """
    if len(scalar) != ELEMENT_SIZE:
        raise InvalidPoint(f"scalar has {len(scalar)} bytes, expected {ELEMENT_SIZE}")
    rows = _as_rows(points)
    words = rows.view("<u8")   # (n, 4) little-endian 64-bit words, least significant first
    _check_canonical(words)
    name = _choose(backend)
    if name == "openssl":
        return _openssl_blind(bytes(scalar), rows.tobytes())
    out, low_order = _mb.x25519(bytes(scalar), rows)
    # libcrypto_mb miscomputes u in [2^255 - 1412, p) (measured: its input reduction is
    # incomplete there), so that sliver -- unreachable by honest input -- goes to OpenSSL.
    near_p = np.flatnonzero(_near_p(words))
    if near_p.size:
        low_order = sorted(set(low_order) - set(near_p.tolist()))
        key = X25519PrivateKey.from_private_bytes(bytes(scalar))
        for index in near_p.tolist():
            try:
                out[index] = np.frombuffer(key.exchange(X25519PublicKey.from_public_bytes(rows[index].tobytes())),
                                           dtype=np.uint8)
            except ValueError:
                out[index] = 0
    zero = np.flatnonzero(~out.any(axis=1))
    if low_order or zero.size:
        _reject_low_order(min(low_order + zero[:1].tolist()))
    return out.tobytes()


def base_mult(scalar: bytes, *, backend: str | None = None) -> bytes:
    """X25519(scalar, 9): the scalar times the standard base point."""
    return blind(scalar, _BASE_POINT, backend=backend)


def available_backends() -> list[str]:
    """X25519 backends usable here, best first."""
    return [name for name in _BACKENDS if name != "mb8" or _mb.unavailable_reason() is None]


def default_backend() -> str:
    return available_backends()[0]


def _choose(backend: str | None) -> str:
    if backend is None:
        return default_backend()
    if backend not in _BACKENDS:
        raise InputError(f"unknown X25519 backend {backend!r}", hint=f"use one of {', '.join(_BACKENDS)}")
    if backend == "mb8" and _mb.unavailable_reason() is not None:
        raise InputError(f"X25519 backend 'mb8' is unavailable: {_mb.unavailable_reason()}",
                         hint="use backend 'openssl' or leave the backend unset")
    return backend


def _as_rows(points: bytes | bytearray | memoryview) -> np.ndarray:
    data = np.frombuffer(points, dtype=np.uint8)
    if data.size % ELEMENT_SIZE:
        raise InvalidPoint(f"{data.size} bytes of points is not a multiple of {ELEMENT_SIZE}: "
                           f"element {data.size // ELEMENT_SIZE} is truncated")
    return data.reshape(-1, ELEMENT_SIZE)


def _check_canonical(words: np.ndarray) -> None:
    w0, w1, w2, w3 = words.T
    top_bit = w3 >> np.uint64(63) != 0
    at_least_p = (w3 == _P_WORDS[0]) & (w2 == _P_WORDS[1]) & (w1 == _P_WORDS[2]) & (w0 >= np.uint64(_P_WORDS[3]))
    bad = top_bit | at_least_p
    if bad.any():
        index = int(np.argmax(bad))
        raise InvalidPoint(f"element {index} is not a canonical u-coordinate "
                           f"({'top bit set' if top_bit[index] else 'u >= 2^255 - 19'})")


def _near_p(words: np.ndarray) -> np.ndarray:
    """Mask of u >= 2^255 - 2^32 (top bit already known clear), a wide margin around mb8's bad range."""
    w0, w1, w2, w3 = words.T
    return (w3 == _P_WORDS[0]) & (w2 == _P_WORDS[1]) & (w1 == _P_WORDS[2]) & (w0 >= np.uint64(0xFFFFFFFF00000000))


def _reject_low_order(index: int) -> None:
    raise InvalidPoint(f"element {index} is a small-order point: blinding gives all zeros",
                       hint="the sender is not following the protocol")


def _openssl_blind(scalar: bytes, data: bytes) -> bytes:
    key = X25519PrivateKey.from_private_bytes(scalar)
    exchange, public = key.exchange, X25519PublicKey.from_public_bytes
    out = []
    for index in range(0, len(data), ELEMENT_SIZE):
        try:
            out.append(exchange(public(data[index:index + ELEMENT_SIZE])))
        except ValueError:
            # OpenSSL refuses exactly the all-zero shared secret.
            _reject_low_order(index // ELEMENT_SIZE)
    return b"".join(out)
