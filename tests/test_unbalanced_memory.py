"""What keeps the unbalanced protocol's memory at a few bytes a member (issue 16, mem16b) gives the
same tags, the same stored copy and the same counts as before."""

from __future__ import annotations

import random
import weakref

import numpy as np
import pytest

from matcher.crypto import group
from matcher.crypto.kernels import Kernels
from matcher.protocol import _tags, unbalanced_platform
from matcher.protocol._points import point_rows
from matcher.protocol._tags import buckets, compact, from_bytes, present, sort_tags, tags_of
from matcher.protocol.unbalanced_platform import UnbalancedPlatformSession
from matcher.server import unbalanced
from tests.conftest import ground_truth
from tests.test_protocol import make_audience
from tests.test_unbalanced import _customers, _job


def _random_tags(n: int, seed: int) -> np.ndarray:
    return tags_of(np.random.default_rng(seed).integers(0, 256, (n, 32), dtype=np.uint8))


def _points(n: int) -> np.ndarray:
    return point_rows(group.hash_to_curve_batch([i.to_bytes(4, "big") for i in range(n)], b"matcher-test-unmask"))


def test_buckets_are_the_leading_bits_of_the_tags():
    tags = _random_tags(1000, 1)
    for bits in (0, 1, 9, 24):
        old = (np.frombuffer(tags.tobytes(), ">u4").reshape(-1, 4)[:, 0] >> np.uint32(32 - bits)).astype(np.int64) \
            if bits else np.zeros(len(tags), np.int64)
        assert (buckets(tags, bits) == old).all()
        assert (buckets(tags[::3], bits) == old[::3]).all()  # not contiguous


