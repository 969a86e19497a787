"""The merchant's side of a match job, as an I/O-free state machine.

Calls, in order::

    session = MerchantSession(keys, labels, id_kind="phone")
    start = session.start()                       # -> JobStart (send it)
    session.accept(accepted)                      # <- JobAccepted
    for chunk in session.blinded_chunks(): ...    # -> a·H(x), shuffled
    session.receive_double_blinded(chunk) ...     # <- b·a·H(x) (and dummies), any number of chunks
    session.receive_audience(chunk) ...           # <- b·H(y), Enc(payload(y))
    sums = session.finish()                       # -> LabelSums, each re-randomized

What the merchant learns is exactly ``matched_counts``: per label, how many of the platform's
stream elements met its list (real matches plus the platform's dummies). It never learns which
of its IDs matched, because the platform returns b·a·H(x) in an order of its own.

This is the semi-honest protocol: it trusts the merchant to blind with one scalar and to sum each
matched row once, which a modified client need not do (docs/threat-model.md). The default protocol
is matcher.protocol.secure_merchant; a server runs this one only when its operator enables it.
"""

from __future__ import annotations

import enum
import os
from collections import deque
from concurrent.futures import Future
from typing import Callable, Iterator, Sequence

import gmpy2
import numpy as np

from matcher.crypto import group, paillier
from matcher.crypto.kernels import Kernels
from matcher.errors import InputError, InvalidCiphertext, ProtocolError
from matcher.protocol._lists import shuffled_list
from matcher.protocol._points import PointIndex, as_point_array
from matcher.protocol.messages import (
    MAX_CHUNK_ELEMENTS,
    AudienceChunk,
    BlindedChunk,
    JobAccepted,
    JobStart,
    LabelSums,
)

Rng = Callable[[int], bytes]
# Stream chunks in flight on the kernels while earlier ones are matched and summed.
_LOOKAHEAD = 2


class _State(enum.Enum):
    NEW = "new"
    STARTED = "started"
    ACCEPTED = "accepted"
    SENT = "list sent"
    AUDIENCE = "receiving audience"
    DONE = "done"


class MerchantSession:
    def __init__(self, keys: Sequence[str], labels: Sequence[str], *, id_kind: str,
                 rng: Rng = os.urandom, kernels: Kernels | None = None,
                 chunk_size: int = MAX_CHUNK_ELEMENTS):
        shuffled = shuffled_list(keys, labels, rng, chunk_size)
        self.label_names = shuffled.label_names
        self._id_kind = id_kind
        self._rng = rng
        self._kernels = kernels or Kernels()
        self._chunk_size = chunk_size
        self._keys, self._label_idx = shuffled.keys, shuffled.label_idx
        self._scalar = group.random_scalar(rng)
        self._state = _State.NEW
        self._double_blinded: list[np.ndarray] = []
        self._double_blinded_labels: list[np.ndarray] = []
        self._index: PointIndex | None = None
        # Stream chunks received but not matched yet: (first position, size, ciphertexts, a·s future).
        self._pending: deque[tuple[int, int, bytes, Future]] = deque()
        self._public_key: paillier.PublicKey | None = None
        self._sums: list[int] = []
        self._matched_counts = np.zeros(len(self.label_names), dtype=np.int64)
        self.stream_elements = 0
        self.blinded_elements = 0

    @property
    def matched_counts(self) -> np.ndarray:
        """Per label, the stream elements that met the list so far (every chunk received is counted)."""
        self._match_pending()
        return self._matched_counts

    def _expect(self, *states: _State) -> None:
        if self._state not in states:
            raise ProtocolError(f"call out of order: the session is in state '{self._state.value}'")

    def start(self) -> JobStart:
        self._expect(_State.NEW)
        sizes = np.bincount(self._label_idx, minlength=len(self.label_names))
        self._state = _State.STARTED
        return JobStart(id_kind=self._id_kind, labels=self.label_names,
                        label_sizes=tuple(int(s) for s in sizes),
                        merchant_base=group.base_mult(self._scalar))

    def accept(self, accepted: JobAccepted) -> None:
        self._expect(_State.STARTED)
        self._public_key = paillier.PublicKey.from_n_bytes(accepted.paillier_n)
        self.job_id = accepted.job_id
        self.segments = accepted.segments
        self._chunk_size = min(self._chunk_size, accepted.max_chunk_elements)
        self._sums = [gmpy2.mpz(1)] * len(self.label_names)  # 1 is the empty product
        self._state = _State.ACCEPTED

    def blinded_chunks(self) -> Iterator[BlindedChunk]:
        """a·H(x) for the whole list, one chunk at a time (hashing is done lazily, per chunk)."""
        self._expect(_State.ACCEPTED)
        dst = group.dst_for(self._id_kind)
        pending: deque[tuple[Future, bytes]] = deque()  # blinding on the kernels while the next chunk hashes
        for lo in range(0, len(self._keys), self._chunk_size):
            hi = min(lo + self._chunk_size, len(self._keys))
            hashed = self._kernels.hash_to_curve([k.encode() for k in self._keys[lo:hi]], dst)
            pending.append((self._kernels.submit_blind(self._scalar, hashed, chosen=False),
                            self._label_idx[lo:hi].tobytes()))
            if len(pending) > 1:
                blinded, labels = pending.popleft()
                yield BlindedChunk(points=blinded.result(), labels=labels)
        for blinded, labels in pending:
            yield BlindedChunk(points=blinded.result(), labels=labels)
        self._state = _State.SENT

    def receive_double_blinded(self, chunk: BlindedChunk) -> None:
        self._expect(_State.SENT)
        points = as_point_array(chunk.points, len(chunk.labels), self._chunk_size)
        labels = np.frombuffer(chunk.labels, dtype=np.uint8)
        if labels.size and int(labels.max()) >= len(self.label_names):
            raise InputError("the platform returned a label index this job does not have")
        self._double_blinded.append(points)
        self._double_blinded_labels.append(labels)
        self.blinded_elements += len(labels)

    def receive_audience(self, chunk: AudienceChunk) -> None:
        """Take one chunk of the stream. Its a·(b·H(y)) goes to the kernels at once and the chunk is
        matched a few chunks later, so the workers blind while this thread reads and sums."""
        self._expect(_State.SENT, _State.AUDIENCE)
        key = self._public_key
        assert key is not None
        if self._index is None:
            self._index = PointIndex(self._double_blinded, self._double_blinded_labels)
            self._double_blinded = self._double_blinded_labels = []
        self._state = _State.AUDIENCE
        n = len(chunk.points) // group.ELEMENT_SIZE
        if len(chunk.ciphertexts) != n * key.ciphertext_size:
            raise InputError(f"audience chunk carries {len(chunk.ciphertexts)} ciphertext bytes for {n} points")
        self._pending.append((self.stream_elements, n, chunk.ciphertexts,
                              self._kernels.submit_blind(self._scalar, chunk.points)))
        self.stream_elements += n
        if len(self._pending) > _LOOKAHEAD:
            self._match(*self._pending.popleft())

    def _match(self, offset: int, n: int, ciphertexts: bytes, blinded) -> None:
        ours = as_point_array(blinded.result(), n, None)
        positions, labels = self._index.lookup(ours)
        np.add.at(self._matched_counts, labels, 1)
        sums, n2, size = self._sums, self._public_key.n_squared, self._public_key.ciphertext_size
        # Rows are multiplied unchecked (a gcd per row was 8% of the client's time); the sums are
        # validated in finish(), and a bad row can only spoil the sum the platform itself decrypts.
        for pos, label in zip(positions.tolist(), labels.tolist()):
            sums[label] = sums[label] * gmpy2.mpz.from_bytes(ciphertexts[pos * size:(pos + 1) * size], "big") % n2

    def _match_pending(self) -> None:
        while self._pending:
            self._match(*self._pending.popleft())

    def finish(self) -> LabelSums:
        """Per-label sums, each re-randomized so the platform cannot recognise which rows were summed."""
        self._expect(_State.AUDIENCE, _State.SENT)
        key = self._public_key
        assert key is not None
        self._match_pending()
        self._state = _State.DONE
        for label, total in zip(self.label_names, self._sums):
            try:
                key.validate(total)
            except InvalidCiphertext:
                raise InvalidCiphertext(f"the platform's ciphertexts for label '{label}' are not in Z*_(n^2)") from None
        return LabelSums(sums=tuple(key.to_bytes(key.rerandomize(s, self._rng)) for s in self._sums))
