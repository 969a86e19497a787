"""Micro-benchmark of matcher.crypto.paillier, one core, JSON out.

``python -m bench.micro_paillier [seconds]`` prints per-core rates (operations per second,
single thread) for what each side does per row or per label, with ``phe`` (python-paillier)
alongside as the peer:

* platform: ``pack_many`` + ``PlatformEncryptor.encrypt_batch`` of a 60-segment, 2-metric
  payload (the hot loop), and the textbook / phe encryptions it replaces;
* merchant: homomorphic add (one multiplication mod n^2 inside ``PublicKey.sum``) and
  re-randomization of a sum;
* platform again: CRT decryption (and phe's) and unpacking.
"""

from __future__ import annotations

import json
import os
import platform
import random
import sys
import time
from typing import Callable

from matcher.crypto import paillier
from matcher.crypto.packing import PackingLayout
from matcher.crypto.paillier import PlatformEncryptor, PrivateKey

_N_SEGMENTS = 60
_METRIC_MAX = (1000, 1)
_BATCH = 64


def _rate(step: Callable[[], int], seconds: float) -> float:
    """Operations per second of ``step`` (which returns how many it did), run >= ``seconds``."""
    step()  # warm-up: first-call allocations and caches
    done = 0
    start = time.perf_counter()
    while True:
        done += step()
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return round(done / elapsed, 1)


def run(seconds: float = 1.0) -> dict:
    """Measure each operation for about ``seconds``; returns a JSON-able dict of rates."""
    rnd = random.Random(1)
    started = time.perf_counter()
    key = PrivateKey.generate(2048)
    keygen_s = time.perf_counter() - started
    public_key = key.public_key

    started = time.perf_counter()
    encryptor = PlatformEncryptor(key)
    setup_s = time.perf_counter() - started

    layout = PackingLayout.create(max_rows=2**20, n_segments=_N_SEGMENTS, metric_max=_METRIC_MAX)
    masks = [rnd.getrandbits(_N_SEGMENTS) for _ in range(_BATCH)]
    metrics = [[rnd.randint(0, bound) for bound in _METRIC_MAX] for _ in range(_BATCH)]
    plaintexts = layout.pack_many(masks, metrics)
    ciphertexts = encryptor.encrypt_batch(plaintexts)
    summed = public_key.sum(ciphertexts)

    from phe import paillier as phe_paillier

    phe_public = phe_paillier.PaillierPublicKey(public_key.n)
    phe_private = phe_paillier.PaillierPrivateKey(phe_public, key.p, key.q)

    def pack() -> int:
        layout.pack_many(masks, metrics)
        return _BATCH

    def platform_encrypt() -> int:
        encryptor.encrypt_batch(layout.pack_many(masks, metrics))
        return _BATCH

    def zero_encrypt() -> int:
        encryptor.encrypt_zero_batch(_BATCH)
        return _BATCH

    def textbook_encrypt() -> int:
        public_key.encrypt(plaintexts[0])
        return 1

    def phe_encrypt() -> int:
        phe_public.raw_encrypt(plaintexts[0])
        return 1

    many = ciphertexts * 64

    def homomorphic_add() -> int:
        public_key.sum(many)
        return len(many)

    def rerandomize() -> int:
        public_key.rerandomize(summed)
        return 1

    def decrypt() -> int:
        key.decrypt(summed)
        return 1

    def phe_decrypt() -> int:
        phe_private.raw_decrypt(summed)
        return 1

    decrypted = key.decrypt(summed)

    def unpack() -> int:
        layout.unpack(decrypted)
        return 1

    def serialize() -> int:
        for c in ciphertexts:
            public_key.from_bytes(public_key.to_bytes(c))
        return _BATCH

    slow = max(seconds / 2, 0.2)  # the textbook paths run at ~100/s; keep their share small
    rates = {
        "platform_encrypt_packed_per_s": _rate(platform_encrypt, seconds),
        "platform_encrypt_zero_per_s": _rate(zero_encrypt, seconds),
        "pack_many_rows_per_s": _rate(pack, seconds),
        "textbook_encrypt_per_s": _rate(textbook_encrypt, slow),
        "phe_raw_encrypt_per_s": _rate(phe_encrypt, slow),
        "homomorphic_add_per_s": _rate(homomorphic_add, seconds),
        "rerandomize_per_s": _rate(rerandomize, slow),
        "decrypt_per_s": _rate(decrypt, seconds),
        "phe_raw_decrypt_per_s": _rate(phe_decrypt, seconds),
        "unpack_per_s": _rate(unpack, seconds),
        "ciphertext_bytes_round_trip_per_s": _rate(serialize, seconds),
    }
    return {
        "benchmark": "micro_paillier",
        "key_bits": public_key.bits,
        "segments": _N_SEGMENTS,
        "metrics": len(_METRIC_MAX),
        "payload_bits": layout.total_bits,
        "short_exponent_bits": paillier._ALPHA_BITS,
        "window_bits": paillier._WINDOW_BITS,
        "keygen_s": round(keygen_s, 3),
        "encryptor_setup_s": round(setup_s, 3),
        "speedup_vs_textbook": round(
            rates["platform_encrypt_packed_per_s"] / rates["textbook_encrypt_per_s"], 1
        ),
        **rates,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
    }


if __name__ == "__main__":
    print(json.dumps(run(float(sys.argv[1]) if len(sys.argv) > 1 else 1.0), indent=2))
