"""The merchant's side of the secure protocol: blind the list, then blind every stream back.

Calls, in order::

    session = SecureMerchantSession(keys, labels, id_kind="phone")
    start = session.start(all_segments=True)      # -> JobStart (a_0·G)
    session.accept(accepted)                      # <- JobAccepted (streams and their sizes)
    for s in range(len(session.stream_names)):
        for chunk in session.blinded_chunks(s): ...    # -> a_s·H(x), shuffled afresh for each stream
        base = session.merchant_base(s)                # -> a_s·G, with the end of the list
        session.receive_stream(s, points) ...          # <- b_s·H(y) and audit rows
        for points in session.returned_chunks(s): ...  # -> a_s·v for the whole stream, shuffled

The merchant learns nothing but the released report: it never holds a double-blinded value, so it
cannot tell which stream values are its customers, nor which are the platform's audit rows. A fresh
scalar and order for every copy of the list keep the platform from linking a person's matches in
one stream to another's (which would show it the person's combination of segments). H(x) is
computed once, for the first copy, and kept in memory (32 bytes an ID).
Shuffling spans the whole stream (per chunk, the order would tell the platform which few thousand
members held each match); ``ordered=True`` (activation) keeps stream order on purpose.
"""

from __future__ import annotations

import enum
import os
from collections import deque
from concurrent.futures import Future
from typing import Callable, Iterator, Protocol, Sequence

import numpy as np

from matcher.crypto import group
from matcher.crypto.kernels import Kernels
from matcher.errors import ProtocolError
from matcher.protocol._lists import shuffled_list
from matcher.protocol._points import as_point_array
from matcher.protocol.messages import (
    MAX_CHUNK_ELEMENTS,
    SECURE,
    UNBALANCED,
    BlindedChunk,
    JobAccepted,
    JobStart,
)

Rng = Callable[[int], bytes]
_LOOKAHEAD = 2
# Elements a list chunk: the platform blinds each chunk (T_s) as it arrives, so the last one's
# blinding is what it still has to do when the list ends; a quarter of the largest chunk keeps that
# tail short (~0.1 s of both cores instead of ~0.4) at 12 more messages a 200k copy.
LIST_CHUNK = 16_384


class LongLivedScalars(Protocol):
    """The merchant's key for the unbalanced protocol (matcher_client.enrollment_key.EnrollmentKey)."""

    key_id: bytes

    def scalar(self, stream: str) -> bytes: ...


class _State(enum.Enum):
    NEW = "new"
    STARTED = "started"
    ACCEPTED = "accepted"
    DONE = "done"


class SecureMerchantSession:
    def __init__(self, keys: Sequence[str], labels: Sequence[str], *, id_kind: str, rng: Rng = os.urandom,
                 kernels: Kernels | None = None, chunk_size: int = MAX_CHUNK_ELEMENTS, ordered: bool = False,
                 protocol: str = "auto", enrollment: LongLivedScalars | None = None,
                 kinds: Sequence[str] | None = None):
        shuffled = shuffled_list(keys, labels, rng, chunk_size, kinds)
        self.label_names = shuffled.label_names
        self._id_kind = id_kind
        # Several kinds: each key is hashed under its own kind's DST (id_kind names the first column's).
        self._kind_names = shuffled.kind_names or (kinds[0] if kinds else id_kind,)
        self._kind_idx = shuffled.kind_idx
        self._rng = rng
        self._kernels = kernels or Kernels()
        self._chunk_size = chunk_size
        self.ordered = ordered
        self._protocol = protocol
        self._enrollment = enrollment
        self._keys, self._label_idx = shuffled.keys, shuffled.label_idx
        self._scalars = [group.random_scalar(rng)]  # a_s, one per stream; a_0 is announced in JobStart
        self._hashed: np.ndarray | None = None       # H(x) in self._keys order, once the first copy is made
        self._state = _State.NEW
        self.stream_names: tuple[str, ...] = ()
        self.stream_sizes: tuple[int, ...] = ()
        self.tuple_width = 1
        self._current = -1
        self._values = np.empty((0, group.ELEMENT_SIZE), np.uint8)
        self._pending: deque[tuple[int, int, Future]] = deque()
        self.received = 0  # values of the current stream received so far

    def _expect(self, *states: _State) -> None:
        if self._state not in states:
            raise ProtocolError(f"call out of order: the session is in state '{self._state.value}'")

    def start(self, *, segments: Sequence[str] = (), all_segments: bool = False) -> JobStart:
        self._expect(_State.NEW)
        sizes = np.bincount(self._label_idx, minlength=len(self.label_names))
        self._state = _State.STARTED
        return JobStart(id_kind=self._id_kind, id_kinds=self._kind_names if len(self._kind_names) > 1 else (),
                        labels=self.label_names, label_sizes=tuple(int(s) for s in sizes),
                        merchant_base=group.base_mult(self._scalars[0]), segments=tuple(segments),
                        all_segments=all_segments, protocol=self._protocol,
                        enrollment_key_id=self._enrollment.key_id if self._enrollment else b"")

    def accept(self, accepted: JobAccepted) -> None:
        self._expect(_State.STARTED)
        if accepted.protocol not in (SECURE, UNBALANCED) or not accepted.stream_names or \
                len(accepted.stream_names) != len(accepted.stream_sizes):
            raise ProtocolError("the server did not accept the job for the secure protocol")
        if accepted.protocol == UNBALANCED and (self._enrollment is None or self.ordered):
            raise ProtocolError("the server chose the unbalanced protocol, which this session has no key for")
        self.job_id = accepted.job_id
        self.segments = tuple(accepted.segments)
        self.stream_names = tuple(accepted.stream_names)
        self.stream_sizes = tuple(int(n) for n in accepted.stream_sizes)
        self.tuple_width = int(accepted.tuple_width or 1)
        if self.tuple_width < 1 or any(n % self.tuple_width for n in self.stream_sizes):
            raise ProtocolError(f"the server announced streams of {list(self.stream_sizes)} values in tuples of "
                                f"{self.tuple_width}: not whole tuples")
        if self.tuple_width > 1 and accepted.protocol == UNBALANCED:
            raise ProtocolError("the server chose the unbalanced protocol for members of several identifiers")
        self._chunk_size = min(self._chunk_size, accepted.max_chunk_elements)
        if accepted.protocol == UNBALANCED:
            # The platform keeps our copy of each stream, blinded with these: the same in every job.
            self._scalars = [self._enrollment.scalar(name) for name in self.stream_names]
        else:
            self._scalars += [group.random_scalar(self._rng) for _ in self.stream_names[1:]]
        self.protocol = accepted.protocol
        self._state = _State.ACCEPTED

    def blinded_chunks(self, index: int) -> Iterator[BlindedChunk]:
        """Copy ``index`` of the list: a_s·H(x) for every ID, in a fresh random order, a chunk at a
        time (the first copy hashes as it goes, on the kernels, while the previous chunk blinds)."""
        self._expect(_State.ACCEPTED)
        if index != self._current + 1 or self._pending or self.received:
            raise ProtocolError(f"the list for stream {index} is not the one due")
        scalar = self._scalars[index]
        if self._hashed is None:
            # Copy 0 keeps the constructor's shuffle and hashes lazily, chunk by chunk.
            order = np.arange(len(self._keys))
            self._hashed = np.empty((len(self._keys), group.ELEMENT_SIZE), np.uint8)
        else:
            order = np.random.default_rng(int.from_bytes(self._rng(32), "big")).permutation(len(self._keys))
        pending: deque[tuple[Future, bytes]] = deque()
        size = min(self._chunk_size, LIST_CHUNK)
        for lo in range(0, len(self._keys), size):
            rows = order[lo:lo + size]
            if index == 0:  # order is the identity here
                self._hash(lo, lo + len(rows))
                hashed = self._hashed[lo:lo + len(rows)].tobytes()
            else:
                hashed = np.ascontiguousarray(self._hashed[rows]).tobytes()
            pending.append((self._kernels.submit_blind(scalar, hashed, chosen=False), self._label_idx[rows].tobytes()))
            if len(pending) > 1:
                blinded, labels = pending.popleft()
                yield BlindedChunk(points=blinded.result(), labels=labels)
        for blinded, labels in pending:
            yield BlindedChunk(points=blinded.result(), labels=labels)

    def _hash(self, lo: int, hi: int) -> None:
        """H(x) of keys lo..hi, each under its kind's DST (one batch a kind)."""
        if self._kind_idx is None:
            groups = [(self._kind_names[0], np.arange(hi - lo))]
        else:
            kinds = self._kind_idx[lo:hi]
            groups = [(self._kind_names[k], np.flatnonzero(kinds == k)) for k in np.unique(kinds)]
        for kind, rows in groups:
            hashed = self._kernels.hash_to_curve([self._keys[lo + i].encode() for i in rows], group.dst_for(kind))
            self._hashed[lo + rows] = np.frombuffer(hashed, np.uint8).reshape(-1, group.ELEMENT_SIZE)

    def merchant_base(self, index: int) -> bytes:
        """a_s·G for stream ``index``: the platform checks that stream's audit rows against it."""
        return group.base_mult(self._scalars[index])

    def receive_stream(self, index: int, points: bytes) -> None:
        """A chunk of stream ``index``; its a·v goes to the kernels at once and is collected a few
        chunks later, so the workers blind while this thread reads."""
        self._expect(_State.ACCEPTED)
        if index != self._current:
            if index != self._current + 1 or self._pending or self.received:
                raise ProtocolError(f"stream {index} arrived out of turn")
            if index >= len(self.stream_sizes):
                raise ProtocolError(f"the server announced {len(self.stream_sizes)} streams, then sent stream {index}")
            self._current = index
            try:
                self._values = np.zeros((self.stream_sizes[index], group.ELEMENT_SIZE), np.uint8)
            except MemoryError:
                raise ProtocolError(f"the server announced a stream of {self.stream_sizes[index]} values; holding "
                                    "32 bytes for each does not fit in this machine's memory") from None
        n = len(points) // group.ELEMENT_SIZE
        as_point_array(points, n, None)
        if self.received + n > len(self._values):
            raise ProtocolError(f"stream '{self.stream_names[index]}' is longer than the {len(self._values)} values "
                                "announced")
        self._pending.append((self.received, n, self._kernels.submit_blind(self._scalars[index], points)))
        self.received += n
        while len(self._pending) > _LOOKAHEAD:
            self._collect(*self._pending.popleft())

    def _collect(self, offset: int, n: int, blinded: Future) -> None:
        self._values[offset:offset + n] = as_point_array(blinded.result(), n, None)

    def returned_chunks(self, index: int) -> Iterator[bytes]:
        """a·v for the whole of stream ``index``, in a random order of ours (stream order when
        ordered), a chunk at a time."""
        self._expect(_State.ACCEPTED)
        if index != self._current:
            raise ProtocolError(f"stream {index} is not the one received")
        while self._pending:
            self._collect(*self._pending.popleft())
        if self.received != len(self._values):
            raise ProtocolError(f"stream '{self.stream_names[index]}' ended after {self.received} of the "
                                f"{len(self._values)} values announced")
        values, self._values = self._values, np.empty((0, group.ELEMENT_SIZE), np.uint8)
        self.received = 0
        if index == len(self.stream_sizes) - 1:
            self._state = _State.DONE
        values = self.transform_returned(index, values)
        for lo in range(0, len(values), self._chunk_size):
            yield values[lo:lo + self._chunk_size].tobytes()

    def transform_returned(self, index: int, values: np.ndarray) -> np.ndarray:
        """The whole blinded stream, about to go back: shuffled in place unless ordered. (The one
        place a modified client would tamper; tests/attacks/ does exactly that.)"""
        shuffler = np.random.default_rng(int.from_bytes(self._rng(32), "big"))
        width = self.tuple_width
        if not self.ordered:
            # A 1-D view of records (a tuple each) shuffles ~15x faster than the rows of the 2-D array.
            records = values.reshape(-1, width * group.ELEMENT_SIZE).view(f"V{width * group.ELEMENT_SIZE}").ravel()
            shuffler.shuffle(records)
        if width > 1:
            # And inside every tuple: which of a member's values met the list then says nothing of its kind.
            tuples = values.reshape(-1, width, group.ELEMENT_SIZE)
            inside = np.argsort(shuffler.random(tuples.shape[:2]), axis=1)
            tuples[:] = np.take_along_axis(tuples, inside[:, :, None], axis=1)
        return values
