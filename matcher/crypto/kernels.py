"""Where the batch crypto runs: this process, a pool of local processes, or (later) a cluster.

The protocol engines call a :class:`Kernels` object for their two hot loops — hashing IDs to the
group and X25519 blinding — so the same engine code runs single-threaded in tests and on every
core in production. The kernels are pure functions of their arguments, which is what makes them
safe to farm out: no key, scalar or ID leaves the machine's own processes.
"""

from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import Executor, ProcessPoolExecutor
from typing import Sequence

from matcher.crypto import group

# Below this many elements a piece is not worth a trip to another process.
_MIN_PIECE = 2_048


class Kernels:
    """Runs batch kernels in this process."""

    workers = 1

    def hash_to_curve(self, msgs: Sequence[bytes], dst: bytes) -> bytes:
        return group.hash_to_curve_batch(msgs, dst)

    def blind(self, scalar: bytes, points: bytes) -> bytes:
        return group.blind(scalar, points)

    def close(self) -> None:
        pass

    def __enter__(self) -> "Kernels":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class PoolKernels(Kernels):
    """Splits each batch over a process pool; results are byte-identical to :class:`Kernels`."""

    def __init__(self, workers: int | None = None, executor: Executor | None = None):
        self.workers = workers or os.cpu_count() or 1
        # spawn, not fork: the server process holds gRPC threads, which do not survive a fork.
        self._executor = executor or ProcessPoolExecutor(
            max_workers=self.workers, mp_context=multiprocessing.get_context("spawn"))

    def _pieces(self, n: int) -> list[tuple[int, int]]:
        count = max(1, min(self.workers * 2, n // _MIN_PIECE))
        step = -(-n // count)
        return [(i, min(n, i + step)) for i in range(0, n, step)]

    def hash_to_curve(self, msgs: Sequence[bytes], dst: bytes) -> bytes:
        if len(msgs) < 2 * _MIN_PIECE:
            return group.hash_to_curve_batch(msgs, dst)
        pieces = [list(msgs[a:b]) for a, b in self._pieces(len(msgs))]
        return b"".join(self._executor.map(group.hash_to_curve_batch, pieces, [dst] * len(pieces)))

    def blind(self, scalar: bytes, points: bytes) -> bytes:
        n = len(points) // group.ELEMENT_SIZE
        if n < 2 * _MIN_PIECE or len(points) % group.ELEMENT_SIZE:
            return group.blind(scalar, points)
        size = group.ELEMENT_SIZE
        pieces = [bytes(points[a * size:b * size]) for a, b in self._pieces(n)]
        return b"".join(self._executor.map(group.blind, [scalar] * len(pieces), pieces))

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)


def local_kernels(parallel: bool = True) -> Kernels:
    """The best kernels for this machine: a process pool when there is more than one core."""
    if parallel and (os.cpu_count() or 1) > 1:
        return PoolKernels()
    return Kernels()
