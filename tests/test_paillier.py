"""Tests for matcher.crypto.paillier: keys, homomorphic sums, fast encryption, packing.

Ground truth is computed independently in the tests: plaintext sums by bit counting,
reference ciphertexts with Python's built-in ``pow`` from the documented formulas, and
decryption cross-checked against ``phe``'s own implementation.
"""

from __future__ import annotations

import json
import random
from functools import reduce
from math import gcd
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from phe import paillier as phe_paillier

from matcher.crypto.packing import PackingLayout, Unpacked
from matcher.crypto.paillier import (
    MIN_KEY_BITS,
    PlatformEncryptor,
    PrivateKey,
    PublicKey,
)
from matcher.errors import CryptoError, InputError, InvalidCiphertext

KEY_FILE = Path(__file__).parent / "vectors" / "paillier_test_key.json"


class RecordingRng:
    """Deterministic rng that remembers every draw, so tests can recompute ciphertexts."""

    def __init__(self, seed: int):
        self._random = random.Random(seed)
        self.draws: list[bytes] = []

    def __call__(self, k: int) -> bytes:
        out = self._random.randbytes(k)
        self.draws.append(out)
        return out


def seeded(seed: int):
    return random.Random(seed).randbytes


@pytest.fixture(scope="module")
def key() -> PrivateKey:
    return PrivateKey.from_bytes(KEY_FILE.read_bytes())


@pytest.fixture(scope="module")
def pub(key) -> PublicKey:
    return key.public_key


@pytest.fixture(scope="module")
def phe_private(key):
    phe_public = phe_paillier.PaillierPublicKey(key.public_key.n)
    return phe_paillier.PaillierPrivateKey(phe_public, key.p, key.q)


@pytest.fixture(scope="module")
def encryptor(key) -> PlatformEncryptor:
    return PlatformEncryptor(key, rng=seeded(7))


def true_unpacked(masks, metrics, n_segments) -> Unpacked:
    return Unpacked(
        count=len(masks),
        segments=[sum((m >> i) & 1 for m in masks) for i in range(n_segments)],
        metrics=[sum(col) for col in zip(*metrics)] if metrics else [],
    )


# -- keys and textbook operations --------------------------------------------------------


def test_fixed_key_vector_loads_and_is_consistent(key, pub):
    assert pub.bits == 2048
    assert pub.n == key.p * key.q
    assert pub.n_squared == pub.n**2
    assert pub.ciphertext_size == 512


@pytest.mark.parametrize("m", [0, 1, 2**1000 + 12345, "n-1"])
def test_encrypt_decrypt_round_trip(key, pub, phe_private, m):
    m = pub.n - 1 if m == "n-1" else m
    c = pub.encrypt(m, rng=seeded(m % 1000))
    assert key.decrypt(c) == m
    assert phe_private.raw_decrypt(c) == m  # independent implementation agrees


def test_textbook_encrypt_matches_formula(pub):
    rng = RecordingRng(3)
    m = 987654321
    c = pub.encrypt(m, rng=rng)
    n, n2 = pub.n, pub.n_squared
    r = int.from_bytes(rng.draws[-1], "big")  # the accepted draw: 2048-bit n, 256-byte draw
    assert 0 < r < n
    assert c == (1 + m * n) * pow(r, n, n2) % n2


def test_encrypt_rejects_out_of_range_plaintexts(pub):
    for bad in (-1, pub.n, pub.n + 5):
        with pytest.raises(InputError):
            pub.encrypt(bad)
    with pytest.raises(InputError):
        pub.encrypt("1")  # type: ignore[arg-type]


def test_generate_makes_a_working_key_of_the_requested_size():
    key = PrivateKey.generate(2048)
    assert key.public_key.bits == 2048
    assert key.decrypt(key.public_key.encrypt(42)) == 42


def test_generate_refuses_small_keys():
    with pytest.raises(InputError):
        PrivateKey.generate(1024)


def test_private_key_rejects_bad_material(key):
    with pytest.raises(CryptoError):
        PrivateKey(key.p, key.p)
    with pytest.raises(CryptoError):
        PrivateKey(key.p, key.q + 1)  # even, so not prime


def test_homomorphic_add_and_sum(key, pub):
    values = [5, 17, 2**200, 0, 99]
    cs = [pub.encrypt(v, rng=seeded(i)) for i, v in enumerate(values)]
    assert key.decrypt(pub.add(cs[0], cs[1])) == 22
    product = reduce(lambda a, b: a * b % pub.n_squared, cs)
    assert pub.sum(cs) == product
    assert key.decrypt(pub.sum(cs)) == sum(values)
    assert pub.sum(iter(cs[:4])) == reduce(lambda a, b: a * b % pub.n_squared, cs[:4])
    assert pub.sum([]) == 1
    assert key.decrypt(pub.sum([])) == 0


def test_rerandomize_changes_ciphertext_not_plaintext(key, pub):
    c = pub.encrypt(1234, rng=seeded(1))
    rng = RecordingRng(11)
    fresh = pub.rerandomize(c, rng=rng)
    assert fresh != c
    assert key.decrypt(fresh) == 1234
    r = int.from_bytes(rng.draws[-1], "big")
    assert fresh == c * pow(r, pub.n, pub.n_squared) % pub.n_squared
    assert pub.rerandomize(c, rng=seeded(12)) != fresh
    with pytest.raises(InvalidCiphertext):
        pub.rerandomize(0)


def test_validate(key, pub):
    c = pub.encrypt(7, rng=seeded(2))
    assert pub.validate(c) == c
    assert pub.validate(1) == 1
    bad = [0, -1, pub.n_squared, pub.n_squared + 1, key.p, 3 * key.p, key.q * 5, pub.n]
    for value in bad:
        with pytest.raises(InvalidCiphertext):
            pub.validate(value)
    for value in (True, 1.0, "5"):
        with pytest.raises(InvalidCiphertext):
            pub.validate(value)  # type: ignore[arg-type]
    with pytest.raises(InvalidCiphertext):
        key.decrypt(key.p * 2)


# -- serialization -----------------------------------------------------------------------


def test_ciphertext_bytes_round_trip(pub):
    c = pub.encrypt(31337, rng=seeded(5))
    data = pub.to_bytes(c)
    assert len(data) == 512
    assert data == c.to_bytes(512, "big")
    assert pub.from_bytes(data) == c
    assert pub.to_bytes(1) == b"\x00" * 511 + b"\x01"


def test_ciphertext_from_bytes_rejects_wrong_length_and_invalid_values(key, pub):
    data = pub.to_bytes(pub.encrypt(1, rng=seeded(6)))
    for bad in (data[:-1], data + b"\x00", b"", b"\x00" + data):
        with pytest.raises(InvalidCiphertext):
            pub.from_bytes(bad)
    with pytest.raises(InvalidCiphertext):
        pub.from_bytes(b"\x00" * 512)
    with pytest.raises(InvalidCiphertext):
        pub.from_bytes(b"\xff" * 512)  # >= n^2
    with pytest.raises(InvalidCiphertext):
        pub.from_bytes(key.p.to_bytes(512, "big"))
    with pytest.raises(InvalidCiphertext):
        pub.to_bytes(pub.n_squared)


def test_public_key_serialization(pub):
    data = pub.n_bytes()
    assert len(data) == 256 and int.from_bytes(data, "big") == pub.n
    assert PublicKey.from_n_bytes(data) == pub
    assert PublicKey.from_json(pub.to_json()) == pub
    assert hash(PublicKey(pub.n)) == hash(pub)
    with pytest.raises(AttributeError):
        pub.n = 5  # type: ignore[misc]


def test_public_key_rejects_small_or_malformed_modulus(key):
    small = phe_paillier.generate_paillier_keypair(n_length=1024)[0].n
    with pytest.raises(InputError):
        PublicKey.from_n_bytes(small.to_bytes(128, "big"))
    with pytest.raises(InputError):
        PublicKey(key.public_key.n * 2)  # even
    with pytest.raises(InputError):
        PublicKey.from_json('{"n": "ff"}')
    assert MIN_KEY_BITS == 2048


def test_private_key_serialization(key):
    data = key.to_bytes()
    again = PrivateKey.from_bytes(data)
    assert (again.p, again.q) == (key.p, key.q)
    assert again.public_key == key.public_key
    c = key.public_key.encrypt(2024, rng=seeded(8))
    assert again.decrypt(c) == 2024
    assert json.loads(data)["kind"] == "matcher-paillier-private-v1"
    for bad in (b"", b"{}", b"not json", b'{"kind": "matcher-paillier-private-v1", "p": "zz"}'):
        with pytest.raises(CryptoError):
            PrivateKey.from_bytes(bad)


# -- platform encryptor ------------------------------------------------------------------


def test_platform_ciphertexts_match_the_short_exponent_formula(key, pub):
    rng = RecordingRng(21)
    enc = PlatformEncryptor(key, rng=rng)
    plaintexts = [0, 1, 2**1300 + 77, pub.n - 1]
    cs = enc.encrypt_batch(plaintexts)
    n, n2 = pub.n, pub.n_squared
    x_draws = [d for d in rng.draws if len(d) == 256]
    alpha_draws = [d for d in rng.draws if len(d) != 256]
    x = int.from_bytes(x_draws[-1], "big")  # the accepted one
    assert 0 < x < n and gcd(x, n) == 1
    assert len(alpha_draws) == len(plaintexts)
    assert {len(d) for d in alpha_draws} == {40}  # 320-bit short exponents
    h = pow(x, n, n2)
    for m, c, draw in zip(plaintexts, cs, alpha_draws):
        alpha = int.from_bytes(draw, "little")
        assert c == (1 + m * n) * pow(h, alpha, n2) % n2


def test_platform_ciphertexts_decrypt_and_are_fresh(key, pub, phe_private, encryptor):
    plaintexts = [5, 5, 5, 0, 2**1500 + 3]
    cs = encryptor.encrypt_batch(plaintexts)
    assert [key.decrypt(c) for c in cs] == plaintexts
    assert [phe_private.raw_decrypt(c) for c in cs] == plaintexts
    assert len(set(cs)) == len(cs)
    for c in cs:
        assert pub.validate(c) == c
        # The randomness factor is an n-th residue: its order divides phi(n).
        m = key.decrypt(c)
        residue = c * pow(1 + m * pub.n, -1, pub.n_squared) % pub.n_squared
        assert pow(residue, (key.p - 1) * (key.q - 1), pub.n_squared) == 1


def test_platform_zero_batch(key, encryptor):
    zeros = encryptor.encrypt_zero_batch(6)
    assert len(zeros) == 6 and len(set(zeros)) == 6
    assert all(key.decrypt(c) == 0 for c in zeros)
    assert encryptor.encrypt_zero_batch(0) == []
    with pytest.raises(InputError):
        encryptor.encrypt_zero_batch(-1)


def test_platform_encryptor_is_deterministic_given_rng(key):
    first = PlatformEncryptor(key, rng=seeded(99)).encrypt_batch([1, 2, 3])
    again = PlatformEncryptor(key, rng=seeded(99)).encrypt_batch([1, 2, 3])
    other = PlatformEncryptor(key, rng=seeded(100)).encrypt_batch([1, 2, 3])
    assert first == again
    assert not set(first) & set(other)


def test_platform_encryptor_rejects_out_of_range(key, encryptor):
    with pytest.raises(InputError):
        encryptor.encrypt_batch([1, key.public_key.n])
    with pytest.raises(InputError):
        encryptor.encrypt_batch([-1])


# -- packing -----------------------------------------------------------------------------


def test_layout_widths():
    layout = PackingLayout.create(max_rows=1_000_000, n_segments=60, metric_max=(1000, 1))
    assert layout.slot_bits == 20  # 1_000_000 < 2^20
    assert layout.metric_bits == ((1_000_000 * 1000).bit_length(), 20)
    assert layout.total_bits == 20 * 61 + 30 + 20
    assert layout.total_bits < 2048


def test_pack_places_slots_where_documented():
    layout = PackingLayout.create(max_rows=1000, n_segments=12, metric_max=(7, 500))
    w = layout.slot_bits
    assert w == 10
    mask = 0b1010_0000_0101
    value = layout.pack(mask, [6, 321])
    expected = sum(1 << (i * w) for i in range(12) if mask >> i & 1)
    expected |= 6 << (12 * w)
    expected |= 321 << (12 * w + layout.metric_bits[0])
    expected |= 1 << (layout.total_bits - w)
    assert value == expected


def test_pack_many_equals_pack():
    rnd = random.Random(4)
    layout = PackingLayout.create(max_rows=2**20, n_segments=60, metric_max=(1000, 3))
    masks = [rnd.getrandbits(60) for _ in range(300)] + [0, 2**60 - 1]
    metrics = [[rnd.randint(0, 1000), rnd.randint(0, 3)] for _ in masks]
    assert layout.pack_many(masks, metrics) == [layout.pack(m, x) for m, x in zip(masks, metrics)]
    plain = PackingLayout.create(max_rows=10, n_segments=9)
    assert plain.pack_many([0b1_0000_0001, 0]) == [plain.pack(0b1_0000_0001), plain.pack(0)]


def test_pack_accepts_numpy_integers():
    np = pytest.importorskip("numpy")
    layout = PackingLayout.create(max_rows=100, n_segments=64, metric_max=(10,))
    masks = np.array([2**64 - 1, 5], dtype=np.uint64)
    assert layout.pack_many(list(masks), [[np.int64(3)], [0]]) == [
        layout.pack(2**64 - 1, [3]),
        layout.pack(5, [0]),
    ]


def test_pack_rejects_bad_rows():
    layout = PackingLayout.create(max_rows=100, n_segments=5, metric_max=(10,))
    for mask in (1 << 5, -1, 1.0, True, "1"):
        with pytest.raises(InputError):
            layout.pack(mask, [0])
        with pytest.raises(InputError):
            layout.pack_many([0, mask], [[0], [0]])
    for metrics in ([11], [-1], [], [1, 1], [1.0], [True]):
        with pytest.raises(InputError):
            layout.pack(0, metrics)
    with pytest.raises(InputError):
        layout.pack_many([0], None)  # the layout declares a metric
    with pytest.raises(InputError):
        layout.pack_many([0, 1], [[0]])


def test_layout_rejects_too_many_slots_for_the_key():
    # 2^20 rows need 21-bit slots; a 2048-bit key keeps 64 bits of headroom: 1984 bits.
    fits = PackingLayout.create(max_rows=2**20, n_segments=93)  # 94 slots = 1974 bits
    assert fits.total_bits == 94 * 21
    with pytest.raises(InputError):
        PackingLayout.create(max_rows=2**20, n_segments=94)  # 95 slots = 1995 bits
    with pytest.raises(InputError):
        PackingLayout.create(max_rows=2**20, n_segments=60, metric_max=(2**700,))
    assert PackingLayout.create(max_rows=2**20, n_segments=94, key_bits=3072).total_bits == 1995


def test_layout_rejects_bad_parameters():
    for kwargs in (
        {"max_rows": 0, "n_segments": 1},
        {"max_rows": 10, "n_segments": -1},
        {"max_rows": 10, "n_segments": 1, "metric_max": (0,)},
        {"max_rows": 10, "n_segments": 1, "key_bits": 1024},
        {"max_rows": 10.0, "n_segments": 1},
    ):
        with pytest.raises(InputError):
            PackingLayout.create(**kwargs)


def test_layout_dict_round_trip_and_tamper_detection():
    layout = PackingLayout.create(max_rows=5000, n_segments=33, metric_max=(9, 250))
    wire = json.loads(json.dumps(layout.to_dict()))
    assert PackingLayout.from_dict(wire) == layout
    assert wire["slot_bits"] == layout.slot_bits == 13
    for field_name, value in (("slot_bits", 12), ("total_bits", 1), ("metric_bits", [4, 21])):
        with pytest.raises(InputError):
            PackingLayout.from_dict({**wire, field_name: value})
    for missing in ("max_rows", "version"):
        with pytest.raises(InputError):
            PackingLayout.from_dict({k: v for k, v in wire.items() if k != missing})


def test_unpack_rejects_each_overflow_kind():
    layout = PackingLayout.create(max_rows=1000, n_segments=4, metric_max=(7,))
    w = layout.slot_bits
    count_at = layout.total_bits - w
    metric_at = 4 * w

    def plaintext(count, segments, metric):
        value = count << count_at | metric << metric_at
        return value | sum(s << (i * w) for i, s in enumerate(segments))

    ok = layout.unpack(plaintext(3, [3, 0, 1, 2], 21))
    assert ok == Unpacked(count=3, segments=[3, 0, 1, 2], metrics=[21])
    overflowing = [
        (1 << layout.total_bits, "width"),  # beyond the layout width
        (plaintext(1001, [0, 0, 0, 0], 0), "max_rows"),  # count > max_rows, inside its slot
        (plaintext(3, [0, 4, 0, 0], 0), "segment"),  # a segment above the count
        (plaintext(3, [0, 0, 0, 0], 22), "metric"),  # metric sum > count * max
    ]
    for value, reason in overflowing:
        with pytest.raises(CryptoError, match=reason):
            layout.unpack(value)


def test_unpack_rejects_a_real_sum_of_too_many_rows(key, pub, encryptor):
    layout = PackingLayout.create(max_rows=4, n_segments=3)
    cs = encryptor.encrypt_batch(layout.pack_many([0b111] * 5))
    assert layout.unpack(key.decrypt(pub.sum(cs[:4]))) == Unpacked(4, [4, 4, 4], [])
    with pytest.raises(CryptoError):
        layout.unpack(key.decrypt(pub.sum(cs)))


def test_homomorphic_sum_of_packed_payloads(key, pub, encryptor):
    rnd = random.Random(60)
    layout = PackingLayout.create(max_rows=2**20, n_segments=60, metric_max=(1000, 1))
    masks = [rnd.getrandbits(60) for _ in range(150)]
    metrics = [[rnd.randint(0, 1000), rnd.randint(0, 1)] for _ in masks]
    cs = encryptor.encrypt_batch(layout.pack_many(masks, metrics))
    # Dummy rows (encryptions of zero) must not change the sum.
    cs += encryptor.encrypt_zero_batch(10)
    total = pub.rerandomize(pub.sum(cs), rng=seeded(61))
    assert layout.unpack(key.decrypt(total)) == true_unpacked(masks, metrics, 60)


@settings(max_examples=20, deadline=None)
@given(
    masks=st.lists(st.integers(min_value=0, max_value=2**60 - 1), max_size=200),
)
def test_property_sum_decrypts_to_true_segment_counts(key, pub, encryptor, masks):
    layout = PackingLayout.create(max_rows=200, n_segments=60)
    total = pub.sum(encryptor.encrypt_batch(layout.pack_many(masks)))
    assert layout.unpack(key.decrypt(total)) == true_unpacked(masks, [], 60)


def test_micro_benchmark_runs_and_reports_every_rate():
    from bench import micro_paillier

    report = micro_paillier.run(seconds=0.01)
    json.dumps(report)  # printable as JSON
    for name in (
        "platform_encrypt_packed_per_s",
        "homomorphic_add_per_s",
        "rerandomize_per_s",
        "decrypt_per_s",
    ):
        assert report[name] > 0
    assert report["key_bits"] == 2048 and report["segments"] == 60


@pytest.mark.parametrize("n_segments", [0, 1, 60, 63])
def test_widest_layout_fills_the_key_and_any_list_fits(n_segments):
    layout = PackingLayout.widest(n_segments=n_segments)
    capacity = 2048 - 64                                  # key bits minus the headroom
    width = min(64, capacity // (n_segments + 1))
    assert layout.slot_bits == width and layout.max_rows == 2 ** width - 1
    assert layout.total_bits == width * (n_segments + 1) <= capacity
    with pytest.raises(InputError):                       # one bit wider would not fit the key
        PackingLayout.create(max_rows=2 ** (width + 1) - 1, n_segments=n_segments) if width < 64 else \
            PackingLayout.create(max_rows=2 ** 2000, n_segments=n_segments)
    # A full sum of max_rows rows with every segment set unpacks exactly.
    full = layout.pack((1 << n_segments) - 1) * layout.max_rows
    assert layout.unpack(full).count == layout.max_rows
    assert layout.unpack(full).segments == [layout.max_rows] * n_segments
