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
BASE_POINT = (9).to_bytes(ELEMENT_SIZE, "little")  # u = 9, the standard base point
_P = 2**255 - 19
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
    out, identities = _h2c.hash_to_u_batch(msgs, dst)
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


# The order of the prime-order subgroup that hash_to_curve's outputs (cofactor cleared) live in.
_ORDER = 2**252 + 27742317777372353535851937790883648493


def _clamped(scalar: bytes) -> int:
    """The integer X25519 multiplies by (RFC 7748, decodeScalar25519)."""
    k = bytearray(scalar)
    k[0] &= 248
    k[31] &= 127
    k[31] |= 64
    return int.from_bytes(k, "little")


def _scalar_for(value: int) -> bytes | None:
    """A scalar that X25519 clamps to a multiple of the subgroup's generator equal to ``value``
    (mod the order), when there is one: a clamped scalar is 2^254 + 8m with m < 2^251, which covers
    about half of the residues."""
    m = (value - 2**254) * pow(8, -1, _ORDER) % _ORDER
    return (2**254 + 8 * m).to_bytes(ELEMENT_SIZE, "little") if m < 2**251 else None


def masking_scalars(scalar: bytes, rng: Callable[[int], bytes] = os.urandom) -> tuple[bytes, bytes]:
    """(masked, unmask) for a fresh secret c: on the prime-order subgroup, blinding with ``masked``
    is blinding with ``scalar`` then c, and blinding with ``unmask`` takes c off again, so that
    blind(unmask, x·blind(masked, P)) == x·blind(scalar, P) for any scalar x. (About one c in four
    has both; the others are drawn again.)"""
    base = _clamped(scalar)
    while True:
        c = _clamped(random_scalar(rng))
        masked, unmask = _scalar_for(c * base % _ORDER), _scalar_for(pow(c, -1, _ORDER))
        if masked is not None and unmask is not None:
            return masked, unmask


def unblinding_scalar(scalar: bytes) -> bytes | None:
    """A scalar that takes ``scalar``'s blinding off again on the prime-order subgroup:
    blind(unblinding, x·blind(scalar, P)) == x·P, for P of prime order and any scalar x. X25519's
    clamped scalars reach about half the residues mod the order, but a u-coordinate is that of Q and
    of -Q, so the inverse or its negation will do, and one of them is reachable for every scalar but
    a fraction of about 2^-124 (then None)."""
    inverse = pow(_clamped(scalar), -1, _ORDER)
    return _scalar_for(inverse) or _scalar_for(_ORDER - inverse)


# The canonical u of every point of small order, on the curve (orders 2, 4, 8) and on its twist
# (2, 4): exactly the inputs whose X25519 is all zeros whatever the (clamped) scalar.
_SMALL_ORDER_U = (0, 1, _P - 1,
                  325606250916557431795983626356110631294008115727848805560023387167927233504,
                  39382357235489614581723060781553021112529911719440698176882885853963445705823)
_SMALL_ORDER_ROWS = np.frombuffer(b"".join(u.to_bytes(ELEMENT_SIZE, "little") for u in _SMALL_ORDER_U),
                                  dtype=np.uint8).reshape(-1, ELEMENT_SIZE)


def blindable(points: bytes | bytearray | memoryview | np.ndarray) -> np.ndarray:
    """Per 32-byte u of ``points``, whether :func:`blind` takes it: canonical and not of small order.
    The same verdicts as blind's checks, without multiplying."""
    rows = points if isinstance(points, np.ndarray) else _as_rows(points)
    words = np.ascontiguousarray(rows).view("<u8")
    w0, w1, w2, w3 = words.T
    bad = (w3 >> np.uint64(63) != 0) | \
        ((w3 == _P_WORDS[0]) & (w2 == _P_WORDS[1]) & (w1 == _P_WORDS[2]) & (w0 >= np.uint64(_P_WORDS[3])))
    for small in _SMALL_ORDER_ROWS.view("<u8"):
        bad |= (w0 == small[0]) & (w1 == small[1]) & (w2 == small[2]) & (w3 == small[3])
    return ~bad


def check_blindable(points: bytes | bytearray | memoryview | np.ndarray) -> None:
    """Raises what :func:`blind` would raise for ``points`` (non-canonical first, then small order),
    without multiplying: for a merchant's points that are compared rather than blinded."""
    rows = points if isinstance(points, np.ndarray) else _as_rows(points)
    _check_canonical(np.ascontiguousarray(rows).view("<u8"))
    bad = np.flatnonzero(~blindable(rows))
    if bad.size:
        _reject_low_order(int(bad[0]))


def blind(scalar: bytes, points: bytes | bytearray | memoryview, *, backend: str | None = None,
          chosen: bool = True) -> bytes:
    """X25519(scalar, u) for every consecutive 32-byte u in ``points``, concatenated in order.

    Raises InvalidPoint, naming the element, for a wrong scalar length, a length that is not a
    multiple of 32, a non-canonical u (top bit set, or u >= 2^255 - 19) and an all-zero result.

    ``chosen=False`` says the points are our own hash-to-curve outputs (or blindings of them), so
    nobody chose them: mb8's outputs are then not cross-checked (see :func:`_mb_checked`; the inputs
    it gets wrong are structured, and a hash output is one only with negligible probability). Every
    point another party sent must keep the default.
    """
    if len(scalar) != ELEMENT_SIZE:
        raise InvalidPoint(f"scalar has {len(scalar)} bytes, expected {ELEMENT_SIZE}")
    return _blind_rows(bytes(scalar), _as_rows(points), backend, chosen)


def blind_each(scalars: Sequence[bytes], points: bytes | bytearray | memoryview, *, backend: str | None = None,
               chosen: bool = True) -> bytes:
    """X25519(scalars[i], u_i) for the i-th 32-byte u of ``points`` (or of one u, for all), in one
    batch: what :func:`blind` does for one scalar, with the same checks and errors, for a scalar a
    point (fresh randomizers of one point, each r_i·P), instead of a call per element."""
    if any(len(s) != ELEMENT_SIZE for s in scalars):
        raise InvalidPoint(f"a scalar has other than {ELEMENT_SIZE} bytes")
    rows = _as_rows(points)
    if len(rows) == 1 and len(scalars) != 1:
        rows = np.repeat(rows, len(scalars), axis=0)
    if len(rows) != len(scalars):
        raise InvalidPoint(f"{len(scalars)} scalars for {len(rows)} points")
    if not len(rows):
        return b""
    return _blind_rows(np.frombuffer(b"".join(scalars), dtype=np.uint8).reshape(-1, ELEMENT_SIZE), rows, backend,
                       chosen)


def _blind_rows(scalar: bytes | np.ndarray, rows: np.ndarray, backend: str | None, chosen: bool) -> bytes:
    """:func:`blind` of ``rows`` with one scalar, or with a scalar a row (an (n, 32) array)."""
    words = rows.view("<u8")   # (n, 4) little-endian 64-bit words, least significant first
    _check_canonical(words)
    if _choose(backend) == "openssl":
        if isinstance(scalar, bytes):
            return _openssl_blind(scalar, rows.tobytes())
        out = _with_openssl(scalar, rows, np.empty_like(rows), np.ones(len(rows), dtype=bool))
    else:
        out = _mb_checked(scalar, rows, words) if chosen else _mb_unchecked(scalar, rows, words)
    zero = np.flatnonzero(~out.any(axis=1))
    if zero.size:
        _reject_low_order(int(zero[0]))
    return out.tobytes()


def base_mult(scalar: bytes, *, backend: str | None = None) -> bytes:
    """X25519(scalar, 9): the scalar times the standard base point."""
    return blind(scalar, BASE_POINT, backend=backend)


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


def _mb_checked(scalar: bytes | np.ndarray, rows: np.ndarray, words: np.ndarray) -> np.ndarray:
    """mb8's X25519 of every row, each output confirmed by a second, independent mb8 computation.

    libcrypto_mb's field subtraction adds p back only once, so when a partially reduced operand
    (its representatives reach past 2^255) is subtracted from a small one the difference stays
    negative; its top limb is then -1, which IFMA reads as 2^52 - 1 (a Python emulation of
    crypto_mb's ladder reproduced mb8's outputs, wrong ones included, bit for bit on every case tried). Structured u trigger it in the
    first ladder steps -- runs of ones (2^k - 1 for k in 85..93, 2^a - 2^b), u just below 2^254
    (Wycheproof tcId 139), u within ~1400 of p -- often depending on the top scalar bits, but it
    can arise at any step, so no rule on u is complete. Instead every output is checked against
    X25519(scalar, 1/u): 1/u is the u of P + (0, 0), and the clamped scalar is a multiple of 8,
    so both give the same point, through unrelated intermediates. Rows where the two disagree,
    and the sliver u in [2^255 - 2^32, p), are recomputed with OpenSSL.
    """
    out, _ = _mb.x25519(scalar, rows)
    check, _ = _mb.x25519(scalar, _inverses(rows))
    return _with_openssl(scalar, rows, out, (out != check).any(axis=1) | _near_p(words))


def _mb_unchecked(scalar: bytes | np.ndarray, rows: np.ndarray, words: np.ndarray) -> np.ndarray:
    """mb8's X25519 of points nobody chose, with only the near-p sliver sent to OpenSSL."""
    out, _ = _mb.x25519(scalar, rows)
    return _with_openssl(scalar, rows, out, _near_p(words))


def _with_openssl(scalar: bytes | np.ndarray, rows: np.ndarray, out: np.ndarray, redo: np.ndarray) -> np.ndarray:
    """``out`` with the rows marked in ``redo`` recomputed by OpenSSL (all zeros where OpenSSL
    refuses: it refuses exactly the all-zero shared secret, which the caller then rejects).
    ``scalar``: one for every row, or an (n, 32) array of a scalar a row."""
    indices = np.flatnonzero(redo)
    if indices.size:
        one = None if isinstance(scalar, np.ndarray) else X25519PrivateKey.from_private_bytes(scalar)
        for index in indices.tolist():
            key = one or X25519PrivateKey.from_private_bytes(scalar[index].tobytes())
            try:
                out[index] = np.frombuffer(key.exchange(X25519PublicKey.from_public_bytes(rows[index].tobytes())),
                                           dtype=np.uint8)
            except ValueError:
                out[index] = 0
    return out


def _inverses(rows: np.ndarray) -> np.ndarray:
    """1/u mod p of each canonical u (0 for u = 0), by Montgomery's batch inversion: in C when the
    extension was built (about 15x faster than the Python loop, which was a tenth of a checked
    blinding), else :func:`_inverses_py`. Same bytes either way (tests compare them)."""
    if _h2c.native is not None:
        return np.frombuffer(_h2c.native.invert(rows.tobytes()), dtype=np.uint8).reshape(-1, ELEMENT_SIZE)
    return _inverses_py(rows)


def _inverses_py(rows: np.ndarray) -> np.ndarray:
    """:func:`_inverses` with Python integers."""
    data, from_bytes = rows.tobytes(), int.from_bytes
    values = [from_bytes(data[i:i + ELEMENT_SIZE], "little") for i in range(0, len(data), ELEMENT_SIZE)]
    prefix, acc = [0] * len(values), 1
    for index, value in enumerate(values):
        prefix[index] = acc
        if value:
            acc = acc * value % _P
    inverse = pow(acc, -1, _P)
    out = [0] * len(values)
    for index in range(len(values) - 1, -1, -1):
        value = values[index]
        if value:
            out[index] = inverse * prefix[index] % _P
            inverse = inverse * value % _P
    joined = b"".join(value.to_bytes(ELEMENT_SIZE, "little") for value in out)
    return np.frombuffer(joined, dtype=np.uint8).reshape(-1, ELEMENT_SIZE)


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
