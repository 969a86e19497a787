"""The C parts of hashing and of mb8's cross-check against their Python specifications: the batch
expand_message_xmd (SHA-512 in C) and the batch inversion mod p (issue 16). Same bytes, or the
outputs the protocol depends on would change."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from matcher.crypto import _h2c, group

P = 2**255 - 19
VECTORS = Path(__file__).parent / "vectors"
needs_native = pytest.mark.skipif(_h2c.native is None, reason="the C extension was not built (no compiler at install)")


@needs_native
def test_uniform_bytes_gives_the_rfc_9380_field_elements():
    # RFC 9380 J.4.1 prints u0, u1 (hash_to_field of each message): the 96 bytes, reduced mod p.
    data = json.loads((VECTORS / "rfc9380_curve25519_ro.json").read_text())
    msgs = [v["msg"].encode() for v in data["vectors"]]
    got = _h2c.native.uniform_bytes(msgs, _h2c._dst_prime(data["dst"].encode()))
    for i, v in enumerate(data["vectors"]):
        block = got[96 * i:96 * i + 96]
        assert int.from_bytes(block[:48], "big") % P == int(v["u0"], 16)
        assert int.from_bytes(block[48:], "big") % P == int(v["u1"], 16)


@needs_native
@given(st.lists(st.binary(max_size=300), max_size=12), st.binary(min_size=1, max_size=300))
@settings(max_examples=200, deadline=None)
def test_uniform_bytes_in_c_equals_hashlib(msgs, dst):
    # Messages and DSTs of every length across SHA-512's 128-byte blocks, oversize DSTs included.
    assert _h2c.uniform_bytes_batch(msgs, dst) == _h2c.uniform_bytes_batch_py(msgs, dst)
    assert _h2c.uniform_bytes_batch(msgs, dst) == b"".join(_h2c.expand_message_xmd(m, dst, 96) for m in msgs)


@needs_native
def test_uniform_bytes_at_every_length_around_block_boundaries():
    dst = group.dst_for("phone")
    msgs = [bytes(random.Random(n).randbytes(n)) for n in range(0, 400)]
    assert _h2c.uniform_bytes_batch(msgs, dst) == _h2c.uniform_bytes_batch_py(msgs, dst)


def test_uniform_bytes_takes_bytes_like_messages():
    dst = group.dst_for("email")
    msgs = [bytearray(b"a@b.c"), bytearray(b"x@y.z")]
    assert _h2c.uniform_bytes_batch(msgs, dst) == _h2c.uniform_bytes_batch_py([bytes(m) for m in msgs], dst)


def _rows(values):
    return np.frombuffer(b"".join(v.to_bytes(32, "little") for v in values), np.uint8).reshape(-1, 32)


@needs_native
@given(st.lists(st.integers(min_value=0, max_value=P - 1), max_size=40))
@settings(max_examples=200, deadline=None)
def test_batch_inversion_in_c_equals_python(values):
    rows = _rows(values)
    assert group._inverses(rows).tobytes() == group._inverses_py(rows).tobytes()


@needs_native
def test_batch_inversion_edges():
    values = [0, 1, 2, P - 1, P - 2, 2**254, 2**255 - 2**32, 0, 9, 2**51 - 1, 2**51, 2**102 + 5]
    rows = _rows(values)
    got = [int.from_bytes(group._inverses(rows)[i].tobytes(), "little") for i in range(len(values))]
    assert got == [pow(v, -1, P) if v else 0 for v in values]
    assert group._inverses(_rows([])).shape == (0, 32)


@needs_native
def test_batch_inversion_of_a_big_random_batch():
    rng = random.Random(16)
    values = [rng.randrange(P) for _ in range(5000)]
    rows = _rows(values)
    assert group._inverses(rows).tobytes() == group._inverses_py(rows).tobytes()
