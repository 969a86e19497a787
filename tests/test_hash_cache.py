"""The merchant's hash cache returns exactly what hashing returns, and never another DST's points."""

from __future__ import annotations

import hashlib

from matcher.crypto import group
from matcher.crypto.kernels import Kernels
from matcher_client.hash_cache import CachingKernels, HashCache


def keys(lo: int, hi: int) -> list[bytes]:
    return [hashlib.sha256(str(i).encode()).hexdigest().encode() for i in range(lo, hi)]


def test_mixed_hits_and_misses_equal_direct_hashing(tmp_path):
    dst = group.dst_for("phone")
    path = tmp_path / "cache"
    with CachingKernels(Kernels(), HashCache(path)) as kernels:
        kernels.hash_to_curve(keys(0, 300), dst)
    cache = HashCache(path)
    mixed = keys(150, 450)[::-1]  # half cached, half not, out of order
    with CachingKernels(Kernels(), cache) as kernels:
        assert kernels.hash_to_curve(mixed, dst) == group.hash_to_curve_batch(mixed, dst)
    assert (cache.hits, cache.misses) == (150, 150)
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_another_dst_never_reads_the_cached_points(tmp_path):
    path = tmp_path / "cache"
    with CachingKernels(Kernels(), HashCache(path)) as kernels:
        kernels.hash_to_curve(keys(0, 50), group.dst_for("phone"))
    cache = HashCache(path)
    with CachingKernels(Kernels(), cache) as kernels:
        email = kernels.hash_to_curve(keys(0, 50), group.dst_for("email"))
    assert email == group.hash_to_curve_batch(keys(0, 50), group.dst_for("email"))
    assert cache.hits == 0
