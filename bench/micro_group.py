"""Per-core rates of the group primitives: hash_to_curve_batch (with the native map and with the
pure-Python one, side by side), X25519 on each backend (checked, as for points another party
chose, and mb8 unchecked, as for our own), and the SHA-512 expansion and batch inversion in C and
in Python.

``python -m bench.micro_group [seconds]`` prints JSON. Rates are elements per CPU-second of this
process (``time.process_time``), so another job sharing the machine lowers them less than it
would lower wall-clock rates; everything runs in one process and one thread.
"""

from __future__ import annotations

import json
import sys
import time

from bench.micro import cpu_model
from matcher.crypto import _h2c, group

HASH_CHUNK = 65536       # the pool's chunk size: the batch inversion is amortised over it
BLIND_CHUNK = 65536


def run(seconds: float = 1.0) -> dict:
    """Measure for about ``seconds`` per primitive (at least one chunk each); rates in ops/s."""
    dst = group.dst_for("phone")
    msgs = [b"+8613%09d" % i for i in range(HASH_CHUNK)]
    points = group.hash_to_curve_batch(msgs[:BLIND_CHUNK], dst)
    scalar = group.random_scalar()

    result: dict = {
        "cpu": cpu_model(),
        "timer": "process_time",
        "chunk": {"hash_to_curve_batch": HASH_CHUNK, "x25519": BLIND_CHUNK},
        "hash_to_curve_batch_per_s": _rate(lambda: group.hash_to_curve_batch(msgs, dst), HASH_CHUNK, seconds),
        "hash_map": "native" if _h2c.native else "python",
        "hash_to_curve_python_map_per_s": _rate(
            lambda: _h2c.field_pairs_to_u(_h2c.hash_to_field_batch(msgs, dst)), HASH_CHUNK, seconds),
        "x25519_per_s": {},
    }
    for backend in group.available_backends():
        result["x25519_per_s"][backend] = _rate(
            lambda backend=backend: group.blind(scalar, points, backend=backend), BLIND_CHUNK, seconds)
    if "mb8" in group.available_backends():
        # What the kernels run for points nobody else chose (chosen=False: no cross-check).
        result["x25519_unchecked_per_s"] = {"mb8": _rate(
            lambda: group.blind(scalar, points, backend="mb8", chosen=False), BLIND_CHUNK, seconds)}
    # The two loops moved to C in issue 16, beside their Python specifications.
    rows = group._as_rows(points)
    result["expand_message_xmd_96_per_s"] = {
        "python": _rate(lambda: _h2c.uniform_bytes_batch_py(msgs, dst), HASH_CHUNK, seconds)}
    result["batch_inversion_per_s"] = {"python": _rate(lambda: group._inverses_py(rows), BLIND_CHUNK, seconds)}
    if _h2c.native is not None:
        result["expand_message_xmd_96_per_s"]["native"] = _rate(
            lambda: _h2c.uniform_bytes_batch(msgs, dst), HASH_CHUNK, seconds)
        result["batch_inversion_per_s"]["native"] = _rate(lambda: group._inverses(rows), BLIND_CHUNK, seconds)
    return result


def _rate(work, per_call: int, seconds: float) -> float:
    done = 0
    start = time.process_time()
    while True:
        work()
        done += per_call
        elapsed = time.process_time() - start
        if elapsed >= seconds:
            return round(done / elapsed, 1)


def main(argv: list[str]) -> None:
    seconds = float(argv[0]) if argv else 1.0
    print(json.dumps(run(seconds), indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
