"""Where the batch crypto runs: this process, a pool of local processes, or a Dask cluster.

The protocol engines call a :class:`Kernels` object for their hot loops — hashing IDs to the
group, X25519 blinding and the platform's Paillier encryption — so the same engine code runs
single-threaded in tests and on every core in production. The kernels are pure functions of
their arguments, which is what makes them safe to farm out; the arguments include scalars and
the Paillier key, so they go only to the operator's own processes (or its own Dask cluster).
"""

from __future__ import annotations

import multiprocessing
import os
import secrets
import threading
import time
from collections import OrderedDict
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Sequence

from matcher.crypto import group
from matcher.crypto.paillier import PlatformEncryptor, PrivateKey

# Below this many elements a piece is not worth a trip to another process.
_MIN_PIECE = 2_048


@dataclass
class EncryptionContext:
    """One job's encryption: the key, the job's randomness, and a nonce naming the job's encryptors.

    Each process builds its own :class:`PlatformEncryptor` (own secret base h) per context, so no
    fixed-base table is shared across jobs or shipped between processes.
    """

    key: PrivateKey
    rng: Callable[[int], bytes] = os.urandom
    nonce: bytes = field(default_factory=lambda: secrets.token_bytes(16))
    _local: PlatformEncryptor | None = field(default=None, repr=False)

    def local_encryptor(self) -> PlatformEncryptor:
        if self._local is None:
            self._local = PlatformEncryptor(self.key, rng=self.rng)
        return self._local


def _serialize(encryptor: PlatformEncryptor, plaintexts: Sequence[int]) -> bytes:
    size = encryptor.public_key.ciphertext_size
    return b"".join(c.to_bytes(size, "big") for c in encryptor.encrypt_batch(plaintexts))


_worker_encryptors: OrderedDict[bytes, PlatformEncryptor] = OrderedDict()


def _encrypt_in_worker(key_bytes: bytes, nonce: bytes, plaintexts: Sequence[int]) -> bytes:
    encryptor = _worker_encryptors.get(nonce)
    if encryptor is None:
        encryptor = PlatformEncryptor(PrivateKey.from_bytes(key_bytes))
        _worker_encryptors[nonce] = encryptor
        while len(_worker_encryptors) > 4:  # a few concurrent jobs; tables are ~6 MB each
            _worker_encryptors.popitem(last=False)
    return _serialize(encryptor, plaintexts)


def _blind_own(scalar: bytes, points: bytes) -> bytes:
    """group.blind of points nobody else chose (module-level, so worker processes can run it)."""
    return group.blind(scalar, points, chosen=False)


def _blinder(chosen: bool) -> Callable[[bytes, bytes], bytes]:
    return group.blind if chosen else _blind_own


def _done(value) -> Future:
    future: Future = Future()
    future.set_result(value)
    return future


def _done_or_raise(fn, *args) -> Future:
    future: Future = Future()
    try:
        future.set_result(fn(*args))
    except Exception as err:
        future.set_exception(err)
    return future


class Kernels:
    """Runs batch kernels in this process."""

    workers = 1

    def submit_encrypt(self, context: EncryptionContext, plaintexts: Sequence[int]) -> Future:
        """Fresh encryptions of ``plaintexts``, serialized (fixed-size big-endian), as a future of bytes."""
        return _done(_serialize(context.local_encryptor(), plaintexts))

    def submit_blind(self, scalar: bytes, points: bytes, *, chosen: bool = True) -> Future:
        """:meth:`blind` as a future, so the caller can overlap it with its own work."""
        return _done(_blinder(chosen)(scalar, points))

    def hash_to_curve(self, msgs: Sequence[bytes], dst: bytes) -> bytes:
        return group.hash_to_curve_batch(msgs, dst)

    def blind(self, scalar: bytes, points: bytes, *, chosen: bool = True) -> bytes:
        """X25519 of every point (matcher.crypto.group.blind); ``chosen=False`` only for points of
        our own making (hash outputs and their blindings), which need no check against crafted input."""
        return _blinder(chosen)(scalar, points)

    def close(self) -> None:
        pass

    def __enter__(self) -> "Kernels":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _SplittingKernels(Kernels):
    """Kernels that cut each batch into pieces and run them elsewhere; subclasses say where
    (:meth:`_map` and :meth:`_submit_joined`). Results are byte-identical to :class:`Kernels`."""

    def _pieces(self, n: int, minimum: int = _MIN_PIECE) -> list[tuple[int, int]]:
        if n == 0:
            return [(0, 0)]
        count = max(1, min(self.workers * 2, n // minimum))
        step = -(-n // count)
        return [(i, min(n, i + step)) for i in range(0, n, step)]

    def _map(self, fn, *columns) -> list:
        raise NotImplementedError

    def _submit_joined(self, fn, pieces: list, *constants):
        """A future of the bytes ``fn(*constants, piece)`` gives for each piece, joined in order."""
        raise NotImplementedError

    def _ready(self) -> bool:
        """Whether the workers are up (a pool spawned just now may still be importing)."""
        return True

    def hash_to_curve(self, msgs: Sequence[bytes], dst: bytes) -> bytes:
        if len(msgs) < 2 * _MIN_PIECE or not self._ready():
            # Small, or the workers are still starting: this thread hashes rather than waits for them.
            return group.hash_to_curve_batch(msgs, dst)
        pieces = [list(msgs[a:b]) for a, b in self._pieces(len(msgs))]
        return b"".join(self._map(group.hash_to_curve_batch, pieces, [dst] * len(pieces)))

    def blind(self, scalar: bytes, points: bytes, *, chosen: bool = True) -> bytes:
        size = group.ELEMENT_SIZE
        n = len(points) // size
        if n < 2 * _MIN_PIECE or len(points) % size:
            return _blinder(chosen)(scalar, points)  # small, or ragged: group.blind names the error
        pieces = [bytes(points[a * size:b * size]) for a, b in self._pieces(n)]
        return b"".join(self._map(_blinder(chosen), [scalar] * len(pieces), pieces))

    def submit_encrypt(self, context: EncryptionContext, plaintexts: Sequence[int]):
        pieces = [list(plaintexts[a:b]) for a, b in self._pieces(len(plaintexts), minimum=256)]
        return self._submit_joined(_encrypt_in_worker, pieces, context.key.to_bytes(), context.nonce)

    def submit_blind(self, scalar: bytes, points: bytes, *, chosen: bool = True):
        size = group.ELEMENT_SIZE
        if len(points) % size:
            return _done_or_raise(_blinder(chosen), scalar, points)  # group.blind names the error
        pieces = [bytes(points[a * size:b * size]) for a, b in self._pieces(len(points) // size, minimum=1024)]
        return self._submit_joined(_blinder(chosen), pieces, scalar)


class PoolKernels(_SplittingKernels):
    """Splits each batch over a local process pool."""

    def __init__(self, workers: int | None = None, executor: Executor | None = None):
        self.workers = workers or usable_cores()
        # spawn, not fork: the server process holds gRPC threads, which do not survive a fork.
        self._executor = executor or ProcessPoolExecutor(
            max_workers=self.workers, mp_context=multiprocessing.get_context("spawn"), initializer=_die_with_parent,
            initargs=(os.getpid(),))
        self._warming: list[Future] = []
        if executor is None:
            # Start every worker now rather than at the first batch: a spawned worker spends a few
            # hundred ms (more on a busy machine) importing numpy, cryptography and the main module
            # and loading libcrypto_mb, which would otherwise land inside the first job.
            self._warming = [self._executor.submit(_warm) for _ in range(self.workers)]

    def _ready(self) -> bool:
        if self._warming and all(f.done() for f in self._warming):
            self._warming = []
        return not self._warming

    def _map(self, fn, *columns) -> list:
        return list(self._executor.map(fn, *columns))

    def _submit_joined(self, fn, pieces: list, *constants) -> Future:
        futures = [self._executor.submit(fn, *constants, piece) for piece in pieces]
        joined: Future = Future()
        remaining = [len(futures)]

        def collect(_):
            remaining[0] -= 1
            if remaining[0] == 0:
                try:
                    joined.set_result(b"".join(f.result() for f in futures))
                except BaseException as err:  # surfaced to whoever waits on the join
                    joined.set_exception(err)
                finally:
                    # The futures and this callback refer to each other: without this, every
                    # piece's bytes would wait for the cycle collector (73 MiB at 5M members).
                    futures.clear()

        for f in futures:
            f.add_done_callback(collect)
        return joined

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)


def _warm() -> None:
    """A worker's first task: load what every kernel needs (libcrypto_mb, the native hash map)."""
    group.available_backends()


def _die_with_parent(parent: int) -> None:
    """Pool worker start-up: exit as soon as the process that started the pool (``parent``) is gone,
    so a kill -9 of the server (which runs no cleanup) leaves no workers behind holding memory and
    keys. The pid comes from the parent itself: a worker still starting up when it died has already
    been handed to another process, and would take that one for its parent."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(0)

    threading.Thread(target=watch, name="matcher-watch-parent", daemon=True).start()


def _join(pieces: Sequence[bytes]) -> bytes:
    return b"".join(pieces)


class DaskKernels(_SplittingKernels):
    """The same kernels on a Dask distributed cluster (``matcher serve --executor dask://HOST:PORT``).

    The cluster is part of the operator's trust boundary: encryption tasks carry the Paillier
    private key (p, q), exactly as the local pool's worker processes do. Run it on the operator's
    own machines, never on shared infrastructure.
    """

    def __init__(self, address_or_client, workers: int | None = None):
        from distributed import Client  # optional dependency: pip install 'matcher[dask]'

        self._client = address_or_client if isinstance(address_or_client, Client) else Client(address_or_client)
        self._owns_client = not isinstance(address_or_client, Client)
        self.workers = workers or max(1, len(self._client.scheduler_info().get("workers", {})))

    def _map(self, fn, *columns) -> list:
        return self._client.gather(self._client.map(fn, *columns, pure=False))

    def _submit_joined(self, fn, pieces: list, *constants):
        futures = [self._client.submit(fn, *constants, piece, pure=False) for piece in pieces]
        return self._client.submit(_join, futures, pure=False)

    def close(self) -> None:
        if self._owns_client:
            self._client.close()


def kernels_for(executor: str) -> Kernels:
    """``local`` (a process pool over this machine's cores), ``inline`` (this process only) or
    ``dask://HOST:PORT`` (a Dask distributed scheduler)."""
    if executor == "local":
        return local_kernels(True)
    if executor == "inline":
        return Kernels()
    if executor.startswith("dask://"):
        return DaskKernels("tcp://" + executor[len("dask://"):])
    raise ValueError(f"unknown executor {executor!r}: use local, inline or dask://HOST:PORT")


def local_kernels(parallel: bool = True) -> Kernels:
    """The best kernels for this machine: a process pool when there is more than one core."""
    if parallel and usable_cores() > 1:
        return PoolKernels()
    return Kernels()


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity (taskset, a container's cpuset), not the
    machine's count, so that a server pinned to 4 of 64 cores starts 4 workers rather than 64
    processes fighting over 4 cores."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # no sched_getaffinity (macOS, Windows)
        return os.cpu_count() or 1
