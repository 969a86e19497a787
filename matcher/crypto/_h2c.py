"""RFC 9380 hashing to curve25519: suite ``curve25519_XMD:SHA-512_ELL2_RO_``, u-coordinate only.

The pipeline per message is the RFC's: ``expand_message_xmd`` (SHA-512) to 96 bytes, two field
elements (L = 48), Elligator 2 on each, affine addition of the two points, cofactor clearing
(three x-only doublings) and one final division. This module is the arithmetic; ``group`` is the
public face.

Speed, not constant time: matcher hashes identifiers in bulk, and the per-core rate decides how
long a job takes. So the code is variable-time (branches on squareness) and batch-shaped:

* Elligator 2 gives the same result as the straight-line Appendix G.2.1 map with one
  exponentiation per field element, but that one power t = (gx1 * xd^3)^((p-5)/8) is an inverse
  square root which yields both sqrt(g(x)) and 1 / xd, so each mapped point comes out affine with
  no inversion (see ``_elligator2_affine``).
* The sum and the three doublings are projective (X:Z); one simultaneous inversion per batch
  (Montgomery's trick, three multiplications per element) turns every final X/Z into affine u.
* The two exponentiations per message are about two thirds of the time (gmpy2 powmod, ~10 us).

``_h2c_native.c`` is the same map in C (five 51-bit limbs, ref10's addition chains), built by
setup.py when a compiler is there: 92k messages per core-second against 25k for this module
(bench.micro_group, AMD EPYC, 2026-12-02; ~150k since issue 16 runs the two exponentiations of a
message interleaved). Since issue 16 the SHA-512 expansion of a whole batch
is in C too (``native.uniform_bytes``: 2.7 us of Python a message was a quarter of the hashing);
this module stays the specification that tests hold the C code to.

The degenerate cases are exact: Q0 == Q1 takes the tangent, Q0 == -Q1 (and a 2-torsion sum) gives
the identity, and an identity after cofactor clearing is reported by position, since such a point
cannot be blinded. All have probability about 2^-250 for hashed input; tests reach them through
chosen field elements.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import gmpy2
from gmpy2 import mpz

try:  # the C build of field_pairs_to_u (setup.py); optional, so a source install needs no compiler
    from matcher.crypto import _h2c_native as native
except ImportError:  # pragma: no cover - exercised where the extension was not built
    native = None

P = mpz(2**255 - 19)
A = mpz(486662)

_HASH_BLOCK = 128            # SHA-512 input block (s_in_bytes)
_HASH_OUT = 64               # SHA-512 output (b_in_bytes)
_L = 48                      # ceil((ceil(log2(p)) + k) / 8) with k = 128
_UNIFORM_LEN = 2 * _L        # hash_to_curve draws two field elements

_SQRT_M1 = gmpy2.powmod(2, (P - 1) // 4, P)       # i, a square root of -1
_E_ISR = (P - 5) // 8                             # w^e is 1/sqrt(w) up to a 4th root of unity
_A_SQUARED = A * A
_A_I = A * _SQRT_M1 % P
_MINUS_A = -A                                     # small and negative: cheaper than p - A
_A24 = mpz(121666)                                # (A + 2) / 4 for x-only doubling


def _sqrt_5mod8(x: mpz) -> mpz:
    root = gmpy2.powmod(x, (P + 3) // 8, P)
    root = root if root * root % P == x % P else root * _SQRT_M1 % P
    if root * root % P != x % P:
        raise ArithmeticError("not a square")
    return root


# When w = gx1 * xd^3 is not a square, t^2 * w = chi is +-i and sqrt(2 / w) = t * sqrt(2 / chi).
_SQRT_2_OVER_I = _sqrt_5mod8(2 * (P - _SQRT_M1) % P)    # 2 / i = -2i
_SQRT_2_OVER_MINUS_I = _sqrt_5mod8(2 * _SQRT_M1 % P)    # 2 / -i = 2i

# Zero-padding block of msg_prime: hashing it first and copying the state saves one compression.
_ZPAD_STATE = hashlib.sha512(bytes(_HASH_BLOCK))


def expand_message_xmd(msg: bytes, dst: bytes, len_in_bytes: int) -> bytes:
    """RFC 9380 section 5.3.1 with SHA-512; oversize DSTs are hashed as section 5.3.3 says."""
    dst_prime = _dst_prime(dst)
    ell = -(-len_in_bytes // _HASH_OUT)
    if ell > 255 or len_in_bytes > 65535 or len_in_bytes < 0:
        raise ValueError(f"expand_message_xmd cannot produce {len_in_bytes} bytes")
    h = _ZPAD_STATE.copy()
    h.update(bytes(msg) + len_in_bytes.to_bytes(2, "big") + b"\x00" + dst_prime)
    b0 = h.digest()
    b0_int = int.from_bytes(b0, "big")
    out = [hashlib.sha512(b0 + b"\x01" + dst_prime).digest()]
    for i in range(2, ell + 1):
        chained = (b0_int ^ int.from_bytes(out[-1], "big")).to_bytes(_HASH_OUT, "big")
        out.append(hashlib.sha512(chained + bytes([i]) + dst_prime).digest())
    return b"".join(out)[:len_in_bytes]


def _dst_prime(dst: bytes) -> bytes:
    dst = bytes(dst)
    if len(dst) > 255:
        dst = hashlib.sha512(b"H2C-OVERSIZE-DST-" + dst).digest()
    return dst + bytes([len(dst)])


def hash_to_field_batch(msgs: Sequence[bytes], dst: bytes) -> list[mpz]:
    """u[0], u[1] of every message, flattened in order: [u0(m0), u1(m0), u0(m1), ...]: each 48-byte
    half of :func:`uniform_bytes_batch`'s 96 bytes, as a big-endian integer mod p."""
    data, p, to_mpz = uniform_bytes_batch(msgs, dst), P, mpz.from_bytes
    return [to_mpz(data[i:i + _L], "big") % p for i in range(0, len(data), _L)]


def uniform_bytes_batch(msgs: Sequence[bytes], dst: bytes) -> bytes:
    """expand_message_xmd(msg, dst, 96) of every message, concatenated: u0 || u1 before reduction,
    the input of the native map: in C when the extension was built (no Python call per message),
    else :func:`uniform_bytes_batch_py`. Same bytes either way (tests compare them)."""
    if native is not None:
        try:
            return native.uniform_bytes(msgs, _dst_prime(dst))
        except TypeError:  # a message that is not bytes (bytearray, memoryview): the Python path takes it
            pass
    return uniform_bytes_batch_py(msgs, dst)


def uniform_bytes_batch_py(msgs: Sequence[bytes], dst: bytes) -> bytes:
    """:func:`uniform_bytes_batch` in Python (hashlib's SHA-512); the expansion is inlined for this
    suite's fixed ell = 2."""
    dst_prime = _dst_prime(dst)
    tail0 = _UNIFORM_LEN.to_bytes(2, "big") + b"\x00" + dst_prime
    tail1 = b"\x01" + dst_prime
    tail2 = b"\x02" + dst_prime
    zpad_copy = _ZPAD_STATE.copy
    sha512 = hashlib.sha512
    from_bytes = int.from_bytes
    out: list[bytes] = []
    append = out.append
    for msg in msgs:
        h = zpad_copy()
        h.update(msg + tail0)
        b0 = h.digest()
        b1 = sha512(b0 + tail1).digest()
        chained = (from_bytes(b0, "big") ^ from_bytes(b1, "big")).to_bytes(_HASH_OUT, "big")
        append(b1)
        append(sha512(chained + tail2).digest()[: _UNIFORM_LEN - _HASH_OUT])
    return b"".join(out)


def hash_to_u_batch(msgs: Sequence[bytes], dst: bytes) -> tuple[bytes, list[int]]:
    """The u of every message and the positions whose point is the identity, by the native map
    when it was built, else by ``field_pairs_to_u`` (the same bytes either way)."""
    if native is not None:
        return native.map_to_u(uniform_bytes_batch(msgs, dst))
    return field_pairs_to_u(hash_to_field_batch(msgs, dst))


def field_pairs_to_u(us: Sequence[mpz]) -> tuple[bytes, list[int]]:
    """u = x(8 * (map(u0) + map(u1))) for each consecutive pair of field elements in ``us``.

    Returns the 32-byte little-endian u's concatenated in order, and the positions (pair indices)
    whose result is the identity; those hold 32 zero bytes, which no real point encodes.
    """
    if len(us) % 2:
        raise ValueError("field elements come in pairs")
    p, a_const, a24, elligator2 = P, A, _A24, _elligator2_affine
    count = len(us) // 2
    numerators: list[mpz] = []
    denominators: list[mpz] = []
    identities: list[int] = []
    prefix: list[mpz] = []
    acc = mpz(1)
    for j in range(count):
        x0, y0 = elligator2(us[2 * j])
        x1, y1 = elligator2(us[2 * j + 1])
        if x0 != x1:
            dx = x1 - x0
            dy = y1 - y0
            z = dx * dx % p
            x = (dy * dy - (a_const + x0 + x1) * z) % p
        elif y0 == y1 and y0:
            x, z = _tangent_double(x0, y0)
        else:
            # P1 == -P0 (y0 == -y1), including the 2-torsion point where y0 == y1 == 0.
            x, z = mpz(1), mpz(0)
        for _ in range(3):
            s = x + z
            d = x - z
            t1 = s * s % p
            t2 = d * d % p
            x = t1 * t2 % p
            t3 = t1 - t2
            z = t3 * (t2 + a24 * t3) % p
        if not z:
            identities.append(j)
            x, z = mpz(0), mpz(1)   # keeps the simultaneous inversion valid; encodes as zeros
        numerators.append(x)
        denominators.append(z)
        prefix.append(acc)
        acc = acc * z % p
    inv = gmpy2.invert(acc, p)
    out = [b""] * count
    for j in range(count - 1, -1, -1):
        out[j] = (numerators[j] * (inv * prefix[j] % p) % p).to_bytes(32, "little")
        inv = inv * denominators[j] % p
    return b"".join(out), identities


def _elligator2_affine(u: mpz, p=P, powmod=gmpy2.powmod, e=_E_ISR, minus_a=_MINUS_A, a=A,
                       a_squared=_A_SQUARED, a_i=_A_I, sqrt_m1=_SQRT_M1, k_i=_SQRT_2_OVER_I,
                       k_minus_i=_SQRT_2_OVER_MINUS_I) -> tuple[mpz, mpz]:
    """Affine (x, y) of map_to_curve_elligator2_curve25519(u); same result as G.2.1.

    With tv1 = 2u^2, xd = 1 + tv1 and x1 = -A / xd, g(x1) = gx1 / xd^3. One power
    t = w^((p-5)/8) of w = gx1 * xd^3 gives both the square root and 1 / xd: chi = t^2 w is a
    4th root of unity, and t^2 * gx1 * xd^2 = chi / xd. chi = +-1: g(x1) is square and
    y = gx1 * t * sqrt(1/chi). chi = +-i: x2 = tv1 * x1, g(x2) = tv1 * g(x1) and
    y = u * gx1 * t * sqrt(2/chi). (Constants are default arguments: local-variable speed.)
    """
    tv1 = u * u % p
    tv1 += tv1
    xd = tv1 + 1                  # never 0: -1/2 is not a square
    xd2 = xd * xd % p
    gx1 = minus_a * (xd2 - a_squared * tv1) % p    # x1n^3 + A x1n^2 xd + x1n xd^2, x1n = -A
    gx1_xd2 = gx1 * xd2 % p
    w = gx1_xd2 * xd % p
    t = powmod(w, e, p)
    t2 = t * t % p
    chi = t2 * w % p
    chi_over_xd = t2 * gx1_xd2
    if chi == 1:
        x, y, on_x1 = minus_a * chi_over_xd % p, gx1 * t % p, True
    elif chi == p - 1:
        x, y, on_x1 = a * chi_over_xd % p, gx1 * t % p * sqrt_m1 % p, True
    elif chi == sqrt_m1:   # x2 = tv1 * (-A / xd) = tv1 * (A i) * (chi / xd)
        x, y, on_x1 = a_i * tv1 % p * chi_over_xd % p, u * gx1 % p * t % p * k_i % p, False
    else:
        x, y, on_x1 = (p - a_i) * tv1 % p * chi_over_xd % p, u * gx1 % p * t % p * k_minus_i % p, False
    # RFC sign rule: sgn0(y) == 1 on x1, 0 on x2. y = 0 only happens on x2 (u = 0).
    if y.is_odd() != on_x1:
        y = p - y
    return x, y


def _tangent_double(x0: mpz, y0: mpz) -> tuple[mpz, mpz]:
    """x(2 * (x0, y0)) as (X, Z) for a point with y0 != 0: lambda = (3x^2 + 2Ax + 1) / 2y."""
    p = P
    num = (3 * x0 * x0 + 2 * A * x0 + 1) % p
    den2 = 4 * y0 * y0 % p
    return (num * num - (A + 2 * x0) * den2) % p, den2
