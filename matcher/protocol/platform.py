"""The platform's side of a match job, as an I/O-free state machine.

Calls, in order::

    session = PlatformSession(audience, private_key, job_id=..., dummies=[...])
    accepted = session.start(job_start)          # after the policy said yes
    session.receive_blinded(chunk) ...           # a·H(x) from the merchant
    for chunk in session.double_blinded(): ...   # b·a·H(x) and dummies r·(a·G), in a fresh order
    for chunk in session.audience(): ...         # b·H(y) with Enc(payload(y)), dummies r·G with Enc(0)
    aggregates = session.receive_sums(sums)      # true per-label values, for the release policy

Dummy matches: for label l the platform draws ``dummies[l]`` scalars r; it puts r·G in its
stream with an encryption of zero and r·(a·G) among the returned points with label l. The merchant
computes a·(r·G) = r·(a·G) and counts a match that adds nothing to any sum. That makes the count
the merchant sees differentially private — if (and only if) the merchant sent its true a·G.

Per job, everything is fresh: the scalar b, the dummy scalars, the Paillier randomness, and the
order of both returned streams, so nothing links one job's positions or points to another's.

This is the semi-honest protocol (Private Join and Compute's shape): the merchant matches and sums,
so a merchant that edits its client can learn more than the policy allows. A server runs it only
when the operator enables it (policy ``semi_honest_match``); the default protocol is in
matcher.protocol.secure_platform.
"""

from __future__ import annotations

import enum
import functools
import json
import os
from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np

from matcher.crypto import group, paillier
from matcher.crypto.packing import PackingLayout
from matcher.crypto.kernels import EncryptionContext, Kernels
from matcher.errors import CryptoError, InputError, InvalidCiphertext, ProtocolError
from matcher.protocol._points import as_point_array, completed, point_rows
from matcher.protocol.messages import (
    AUDIENCE_CHUNK_ROWS,
    MAX_CHUNK_ELEMENTS,
    MAX_LABELS,
    PROTOCOL_VERSION,
    AudienceChunk,
    BlindedChunk,
    JobAccepted,
    JobStart,
    LabelAggregate,
    LabelSums,
)

Rng = Callable[[int], bytes]


@dataclass(frozen=True)
class Audience:
    """The platform's members as the engine needs them: H(y) cached at import, segment bitmasks."""

    id_kind: str
    points: np.ndarray          # (n, 32) uint8: hash_to_curve of each member's match key
    segment_bits: np.ndarray    # (n,) uint64: bit i set = member holds segments[i]
    segments: tuple[str, ...]
    row_ids: np.ndarray | None = None  # the store's row ids, kept for activation
    version: str = ""                  # which snapshot: precomputed streams are tied to it
    # A member's further identifiers (an email beside the phone, an OpenID, ...): extra_points[i] is
    # H(identifier) of the member at position extra_owner[i] (ascending), under its own kind's DST.
    # An identifier belongs to one member only, so no two points of the audience are equal.
    extra_points: np.ndarray | None = None  # (m, 32) uint8
    extra_owner: np.ndarray | None = None   # (m,) int64 audience positions (ascending, as the store reads them)
    id_kinds: tuple[str, ...] = ()          # every kind the audience holds, id_kind first ((): id_kind only)
    # The identifier columns the audience was imported with: the tuple width. It is the operator's
    # schema, not the data's, so no member (one with more identifiers than all others) changes it.
    # 0: the widest member's count (engine tests, which build audiences by hand).
    identifier_columns: int = 0

    def __len__(self) -> int:
        return len(self.segment_bits)

    @property
    def kinds(self) -> tuple[str, ...]:
        return self.id_kinds or (self.id_kind,)

    @functools.cached_property
    def width(self) -> int:
        """Identifiers of the member who has the most: a stream carries each member as a tuple of
        this many points (1: the single-identifier protocol)."""
        widest = 1 if self.extra_owner is None or not len(self.extra_owner) else \
            1 + int(np.bincount(self.extra_owner).max())
        if self.identifier_columns and widest > self.identifier_columns:
            raise ValueError(f"a member holds {widest} identifiers; the audience has {self.identifier_columns} columns")
        return self.identifier_columns or widest

    @functools.cached_property
    def all_points(self) -> np.ndarray:
        """Every identifier's H: the members' first ones (``points``), then ``extra_points``."""
        if self.extra_points is None or not len(self.extra_points):
            return self.points
        whole = self.points.base
        # The store reads both into one array (load_audience): then that array is every point, as is.
        if (isinstance(whole, np.ndarray) and self.extra_points.base is whole and whole.dtype == np.uint8
                and whole.shape == (len(self.points) + len(self.extra_points), 32) and whole.flags.c_contiguous
                and _address(self.points) == _address(whole)
                and _address(self.extra_points) == _address(whole) + self.points.nbytes):
            return whole
        return np.concatenate([self.points, self.extra_points])

    @functools.cached_property
    def tuple_slots(self) -> np.ndarray:
        """(members, width) rows of ``all_points`` per member: its first identifier, its further
        ones, then -1 for padding."""
        n, width = len(self), self.width
        slots = np.full((n, width), -1, dtype=np.int64)
        slots[:, 0] = np.arange(n)
        if self.extra_owner is not None and len(self.extra_owner):
            order = np.argsort(self.extra_owner, kind="stable")
            owner = self.extra_owner[order]
            rank = np.arange(len(owner)) - np.searchsorted(owner, owner, side="left")
            slots[owner, 1 + rank] = n + order
        return slots

    def segment_rows(self, segment: str) -> np.ndarray:
        """Rows of the members holding ``segment``, in row order."""
        bit = np.uint64(1) << np.uint64(self.segments.index(segment))
        return np.flatnonzero(self.segment_bits & bit).astype(np.int64)


def _address(array: np.ndarray) -> int:
    return array.__array_interface__["data"][0]


def packing_layout(audience: Audience, public_key: paillier.PublicKey) -> PackingLayout:
    """Every job on ``audience`` packs its payloads this way: the widest slots the key holds, so the
    layout never depends on the list and ciphertexts can be made before the job."""
    return PackingLayout.widest(n_segments=len(audience.segments), key_bits=public_key.bits)


@dataclass
class PrecomputedStream:
    """The member half of one job's stream, made while the server was idle and used by one job only:
    the job's scalar b, a uniformly random order of the audience rows, and in that order b·H(y) and
    (when ``layout`` is set) Enc(payload(y)) packed with it. ``pieces`` yields (points, ciphertexts
    or None) for consecutive rows, in pieces of any size."""

    scalar: bytes
    order: np.ndarray
    pieces: Iterator[tuple[bytes, bytes | None]]
    layout: PackingLayout | None = None


def precompute_stream(audience: Audience, kernels: Kernels, *, key: paillier.PrivateKey | None = None,
                      rng: Rng = os.urandom, chunk_rows: int = AUDIENCE_CHUNK_ROWS, lookahead: int = 2,
                      rows: np.ndarray | None = None) -> PrecomputedStream:
    """A fresh scalar b, a uniformly random order of the audience (or of ``rows``, the members of one
    segment), and (lazily, ``lookahead`` pieces ahead on the kernels) b·H(y) in that order — with
    ``key``, also every member's ciphertext, so the job that takes the stream does no Paillier work
    for its members. The caller stores it for one job."""
    scalar = group.random_scalar(rng)
    members = np.arange(len(audience), dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
    order = np.random.default_rng(int.from_bytes(rng(32), "big")).permutation(members).astype(np.int64)
    layout = packing_layout(audience, key.public_key) if key is not None else None
    encryption = EncryptionContext(key, rng=rng) if key is not None else None

    def submit(rows: np.ndarray) -> tuple[Future, Future | None]:
        blinded = kernels.submit_blind(scalar, np.ascontiguousarray(audience.points[rows]).tobytes(), chosen=False)
        if layout is None:
            return blinded, None
        return blinded, kernels.submit_encrypt(encryption, layout.pack_many(audience.segment_bits[rows].tolist()))

    def pieces() -> Iterator[tuple[bytes, bytes | None]]:
        pending: deque[tuple[Future, Future | None]] = deque()
        for lo in range(0, len(order), chunk_rows):
            pending.append(submit(order[lo:lo + chunk_rows]))
            if len(pending) > lookahead:
                points, ciphertexts = pending.popleft()
                yield points.result(), ciphertexts.result() if ciphertexts else None
        for points, ciphertexts in pending:
            yield points.result(), ciphertexts.result() if ciphertexts else None

    return PrecomputedStream(scalar=scalar, order=order, pieces=pieces(), layout=layout)


class _StreamFeed:
    """Hands out a precomputed stream's points and ciphertexts a chunk at a time, whatever the
    pieces they were stored in. ``ciphertext_size`` None: points only (stored ciphertexts are
    dropped as they are read, never buffered)."""

    def __init__(self, pieces: Iterator[tuple[bytes, bytes | None]], ciphertext_size: int | None):
        self._pieces = pieces
        self._sizes = (group.ELEMENT_SIZE, ciphertext_size or 0)
        self._buffers = [b"", b""]
        self._rows = 0  # rows buffered
        self._has_ciphertexts = ciphertext_size is not None

    def take(self, count: int) -> tuple[bytes, bytes | None]:
        while self._rows < count:
            piece = next(self._pieces, None)
            if piece is None:
                raise ProtocolError("the precomputed stream ended early")
            points, ciphertexts = piece
            self._has_ciphertexts &= ciphertexts is not None
            kept = ciphertexts if self._has_ciphertexts else b""
            self._buffers = [self._buffers[0] + points, self._buffers[1] + kept]
            self._rows += len(points) // group.ELEMENT_SIZE
        out = []
        for i, size in enumerate(self._sizes):
            out.append(self._buffers[i][:count * size])
            self._buffers[i] = self._buffers[i][count * size:]
        self._rows -= count
        return out[0], out[1] if self._has_ciphertexts else None


class _State(enum.Enum):
    NEW = "new"
    RECEIVING = "receiving list"
    LIST_DONE = "list received"
    STREAMING = "streaming audience"
    AWAITING_SUMS = "awaiting sums"
    DONE = "done"


class _MemberSource(enum.Enum):
    """Where the members' half of the audience stream comes from; fixed by :meth:`PlatformSession.start`."""

    FRESH = "blinded and encrypted during the job"
    PRECOMPUTED_POINTS = "b·H(y) made while idle; ciphertexts made during the job"
    PRECOMPUTED = "b·H(y) and ciphertexts made while idle"


class PlatformSession:
    """One semi-honest job on ``audience`` under Paillier ``key``.

    The members' half of the stream is made during the job, or taken from ``precomputed`` (then its
    scalar b is the job's, and its ciphertexts serve if they were packed with this job's layout);
    Paillier randomness comes from ``randomness`` (the precomputed pool) while it lasts, else
    encryption runs online on ``kernels``. ``dummies`` is one dummy-match count per label (empty:
    none). ``max_chunk`` and ``audience_chunk_rows`` size the messages.
    """

    def __init__(self, audience: Audience, key: paillier.PrivateKey, *, job_id: str,
                 dummies: Sequence[int] = (), rng: Rng = os.urandom, kernels: Kernels | None = None,
                 max_chunk: int = MAX_CHUNK_ELEMENTS, audience_chunk_rows: int = AUDIENCE_CHUNK_ROWS,
                 randomness: Callable[[int], list[int] | None] | None = None,
                 precomputed: PrecomputedStream | None = None):
        if precomputed is not None and len(precomputed.order) != len(audience):
            raise ProtocolError("the precomputed stream belongs to another audience")
        # What the job is about.
        self._audience = audience
        self._key = key
        self._job_id = job_id
        self._dummies_requested = tuple(dummies)
        # Where the work and the randomness come from.
        self._rng = rng
        self._kernels = kernels or Kernels()
        self._precomputed = precomputed  # the member half of the stream made ahead of time, b included
        self._randomness = randomness    # precomputed n-th residues, each used once (matcher.crypto.pool)
        # Message sizes.
        self._max_chunk = max_chunk
        self._audience_chunk_rows = audience_chunk_rows
        # The job's secrets: b, and the order of both returned streams.
        self._scalar = precomputed.scalar if precomputed is not None else group.random_scalar(rng)
        self._shuffler = np.random.default_rng(int.from_bytes(rng(32), "big"))
        self._state = _State.NEW
        # Set by start().
        self._start: JobStart | None = None
        self._dummies: tuple[int, ...] = ()
        self._dummy_scalars: list[list[bytes]] = []  # per label, the r of each dummy match
        self._merchant_base = b""                    # a·G
        self.layout: PackingLayout | None = None
        self._members = _MemberSource.FRESH
        # The merchant's list, a·H(x) in, b·a·H(x) out: filled by receive_blinded(), emptied by double_blinded().
        self._received_per_label = np.zeros(0, dtype=np.int64)
        self._blinding: deque[Future] = deque()
        self._received: list[np.ndarray] = []
        self._received_labels: list[np.ndarray] = []
        self.stream_order: np.ndarray | None = None  # stream position -> audience row (or -1 for a dummy)

    def _expect(self, *states: _State) -> None:
        if self._state not in states:
            raise ProtocolError(f"call out of order: the job is in state '{self._state.value}'")

    @property
    def members(self) -> Audience:
        """The audience snapshot this job streams (row indexes refer to it)."""
        return self._audience

    def start(self, start: JobStart) -> JobAccepted:
        self._expect(_State.NEW)
        if start.protocol_version != PROTOCOL_VERSION:
            raise ProtocolError(f"protocol version {start.protocol_version} is not supported (this server speaks {PROTOCOL_VERSION})",
                                hint="upgrade matcher-client")
        if start.id_kind != self._audience.id_kind:
            raise InputError(f"this platform's audience is keyed by '{self._audience.id_kind}', the list by '{start.id_kind}'",
                             hint=f"submit a {self._audience.id_kind} column (or sha256 hashes of one)")
        if not start.labels or len(start.labels) != len(start.label_sizes) or len(start.labels) > MAX_LABELS:
            raise InputError(f"a job needs 1..{MAX_LABELS} labels, each with a size")
        if len(set(start.labels)) != len(start.labels):
            raise InputError("label names must be distinct")
        if self._dummies_requested and len(self._dummies_requested) != len(start.labels):
            raise ProtocolError("one dummy count per label is required")
        self._start = start
        self._dummies = self._dummies_requested or (0,) * len(start.labels)
        self._dummy_scalars = [[group.random_scalar(self._rng) for _ in range(d)] for d in self._dummies]
        # Validates a·G (length, canonical, not small-order) before it is used.
        self._merchant_base = start.merchant_base
        group.blind(self._scalar, start.merchant_base)
        self._received_per_label = np.zeros(len(start.labels), dtype=np.int64)
        self.layout = packing_layout(self._audience, self._key.public_key)
        if start.list_size > self.layout.max_rows:
            raise InputError(f"a list of {start.list_size} IDs is longer than the {self.layout.max_rows} a sum can count")
        # Members' ciphertexts made with the precomputed stream serve if they were packed the same way.
        if self._precomputed is not None:
            self._members = _MemberSource.PRECOMPUTED if self._precomputed.layout == self.layout \
                else _MemberSource.PRECOMPUTED_POINTS
        self._state = _State.RECEIVING
        return JobAccepted(job_id=self._job_id, paillier_n=self._key.public_key.n_bytes(),
                           segments=self._audience.segments,
                           layout_json=json.dumps(self.layout.to_dict(), sort_keys=True, separators=(",", ":")),
                           max_chunk_elements=self._max_chunk,
                           stream_elements=len(self._audience) + sum(self._dummies))

    def receive_blinded(self, chunk: BlindedChunk) -> None:
        self._expect(_State.RECEIVING)
        labels = np.frombuffer(chunk.labels, dtype=np.uint8)
        points = as_point_array(chunk.points, len(labels), self._max_chunk)
        counts = np.bincount(labels, minlength=len(self._start.labels)) if len(labels) else 0
        if len(labels) and len(counts) > len(self._start.labels):
            raise InputError(f"label index {int(labels.max())} is not one of the {len(self._start.labels)} declared labels")
        self._received_per_label += counts
        if (self._received_per_label > np.array(self._start.label_sizes)).any():
            raise InputError("the list is longer than the sizes declared at the start of the job")
        # b·a·H(x) runs on the kernels while the next chunk comes in; finish_list waits for the rest.
        self._blinding.append(self._kernels.submit_blind(self._scalar, points.tobytes()))
        self._received_labels.append(labels)
        while len(self._blinding) > 2:
            self._received.append(point_rows(self._blinding.popleft().result()))

    def finish_list(self) -> None:
        self._expect(_State.RECEIVING)
        if list(self._received_per_label) != list(self._start.label_sizes):
            raise ProtocolError(f"the list ended after {int(self._received_per_label.sum())} of "
                                f"{self._start.list_size} declared elements")
        while self._blinding:
            self._received.append(point_rows(self._blinding.popleft().result()))
        self._state = _State.LIST_DONE

    def double_blinded(self) -> Iterator[BlindedChunk]:
        """b·a·H(x) for the merchant's list plus r·(a·G) per dummy, shuffled together."""
        self._expect(_State.LIST_DONE)
        dummy_points = group.blind_each([r for rs in self._dummy_scalars for r in rs], self._merchant_base)
        dummy_labels = [label for label, rs in enumerate(self._dummy_scalars) for _ in rs]
        points = np.concatenate(self._received + [point_rows(dummy_points)])
        labels = np.concatenate(self._received_labels + [np.array(dummy_labels, dtype=np.uint8)])
        self._received = self._received_labels = []
        order = self._shuffler.permutation(len(labels))
        points, labels = points[order], labels[order]
        self._state = _State.STREAMING
        for lo in range(0, len(labels), self._max_chunk):
            hi = lo + self._max_chunk
            yield BlindedChunk(points=points[lo:hi].tobytes(), labels=labels[lo:hi].tobytes())

    def audience(self, lookahead: int = 4) -> Iterator[AudienceChunk]:
        """b·H(y) with Enc(payload(y)) for every member, r·G with Enc(0) per dummy, in a fresh order.

        Blinding and encryption of the next ``lookahead`` chunks run (on the kernels' workers, or
        in this thread for pooled encryption) while the current chunk is on the wire.
        """
        self._expect(_State.STREAMING)
        dummy_points = point_rows(group.blind_each([r for rs in self._dummy_scalars for r in rs], group.BASE_POINT))
        order = self._stream_order(len(dummy_points))
        self.stream_order = order
        size = self._key.public_key.ciphertext_size
        feed = _StreamFeed(self._precomputed.pieces, size) if self._members is not _MemberSource.FRESH else None
        encryption = EncryptionContext(self._key, rng=self._rng)
        pending: deque[tuple[np.ndarray, Future | None, Future]] = deque()
        for lo in range(0, len(order), self._audience_chunk_rows):
            rows = order[lo:lo + self._audience_chunk_rows]
            real = rows >= 0
            stored = None
            if not real.any():
                blinded = None
            elif feed is not None:
                points, stored = feed.take(int(real.sum()))
                blinded = completed(points)
            else:  # blinding goes to the workers first, so it runs while this thread encrypts
                blinded = self._kernels.submit_blind(
                    self._scalar, np.ascontiguousarray(self._audience.points[rows[real]]).tobytes(), chosen=False)
            if stored is not None and self._members is _MemberSource.PRECOMPUTED:
                encrypted = self._with_dummies(encryption, stored, real)
            else:
                encrypted = self._encrypt(encryption, self._payloads(rows, real))
            pending.append((rows, blinded, encrypted))
            if len(pending) > lookahead:
                yield self._chunk(*pending.popleft(), dummy_points)
        while pending:
            yield self._chunk(*pending.popleft(), dummy_points)
        self._state = _State.AWAITING_SUMS

    def _stream_order(self, dummies: int) -> np.ndarray:
        """Stream position -> audience row, or -1-d for dummy d: a uniformly random interleaving.
        With a precomputed stream the members keep its (random) order and the dummies go to
        uniformly random positions, which gives the same distribution."""
        n = len(self._audience)
        if self._members is _MemberSource.FRESH:
            order = self._shuffler.permutation(n + dummies).astype(np.int64)
            order[order >= n] = -1 - (order[order >= n] - n)
            return order
        order = np.empty(n + dummies, dtype=np.int64)
        at_dummy = np.zeros(n + dummies, dtype=bool)
        at_dummy[self._shuffler.choice(n + dummies, size=dummies, replace=False)] = True
        order[at_dummy] = -1 - self._shuffler.permutation(dummies)
        order[~at_dummy] = self._precomputed.order
        return order

    @staticmethod
    def _chunk(rows: np.ndarray, blinded: Future | None, encrypted: Future, dummy_points: np.ndarray) -> AudienceChunk:
        """Stream points in stream order: the members' b·H(y) and the dummies' r·G."""
        real = rows >= 0
        points = np.empty((len(rows), group.ELEMENT_SIZE), dtype=np.uint8)
        if blinded is not None:
            points[real] = point_rows(blinded.result())
        if not real.all():
            points[~real] = dummy_points[-1 - rows[~real]]
        return AudienceChunk(points=points.tobytes(), ciphertexts=encrypted.result())

    def _payloads(self, rows: np.ndarray, real: np.ndarray) -> list[int]:
        """Packed plaintexts for a chunk of stream rows; dummies carry 0."""
        plaintexts = [0] * len(rows)
        packed = self.layout.pack_many(self._audience.segment_bits[rows[real]].tolist())
        for at, value in zip(np.nonzero(real)[0].tolist(), packed):
            plaintexts[at] = value
        return plaintexts

    def _with_dummies(self, encryption: EncryptionContext, members: bytes, real: np.ndarray) -> Future:
        """The chunk's stored member ciphertexts with a fresh Enc(0) at each dummy's position."""
        if real.all():
            return completed(members)
        size = self._key.public_key.ciphertext_size
        out = np.empty((len(real), size), dtype=np.uint8)
        out[real] = np.frombuffer(members, np.uint8).reshape(-1, size)
        zeros = self._encrypt(encryption, [0] * int((~real).sum())).result()
        out[~real] = np.frombuffer(zeros, np.uint8).reshape(-1, size)
        return completed(out.tobytes())

    def _encrypt(self, encryption: EncryptionContext, plaintexts: list[int]) -> Future:
        """From the precomputed pool when it has enough, else online on the kernels."""
        pooled = self._randomness(len(plaintexts)) if self._randomness else None
        if pooled is None:
            return self._kernels.submit_encrypt(encryption, plaintexts)
        return completed(paillier.encrypt_with_randomness(self._key.public_key, plaintexts, pooled))

    def receive_sums(self, sums: LabelSums) -> dict[str, LabelAggregate]:
        """Decrypt each label's sum; refuse sums that could not come from an honest run."""
        self._expect(_State.AWAITING_SUMS)
        if len(sums.sums) != len(self._start.labels):
            raise InputError(f"expected {len(self._start.labels)} label sums, got {len(sums.sums)}")
        public = self._key.public_key
        result: dict[str, LabelAggregate] = {}
        for label, size, data in zip(self._start.labels, self._start.label_sizes, sums.sums):
            try:
                unpacked = self.layout.unpack(self._key.decrypt(public.from_bytes(data)))
            except CryptoError as overflow:
                raise InvalidCiphertext(f"label '{label}': the sum is not a sum of this job's rows ({overflow})") from None
            if unpacked.count > size:
                raise InvalidCiphertext(f"label '{label}' claims {unpacked.count} matches from {size} list elements")
            result[label] = LabelAggregate(
                matched=unpacked.count,
                segments=dict(zip(self._audience.segments, unpacked.segments)),
                metrics=list(unpacked.metrics))
        self._state = _State.DONE
        return result

