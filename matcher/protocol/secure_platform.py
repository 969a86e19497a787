"""The platform's side of the secure protocol: it matches, the merchant only blinds.

Calls, in order (docs/threat-model.md has the why of each step)::

    session = SecurePlatformSession(audience, job_id=..., audit_rows=4096, padding=...)
    accepted = session.start(job_start)            # streams chosen, their sizes fixed
    for s in range(len(accepted.stream_names)):
        session.receive_blinded(s, chunk) ...      # the merchant's copy s of its list: a_s·H(x)
        session.finish_list(s, a_s_G)
        for points in session.stream(s): ...       # b_s·H(y) and audit rows, in a fresh order
        session.receive_returned(s, points) ...    # a_s·v for every value v, in the merchant's order
        session.finish_stream(s)                   # the audit: raises ProtocolDeviation
    aggregates = session.aggregates()              # true per-label counts, for the release policy

Stream 0 holds every member and gives each label's matched count; stream s >= 1 holds the members
that carry one segment and gives that segment's count. Each stream has its own secret b_s, and the
platform keeps T_s = b_s·(a_s·H(x)) for the merchant's (de-duplicated) copy s of its list: the
merchant never sees a double-blinded value, so it never sees a match. The merchant blinds each copy
with a fresh a_s and shuffles it afresh, so the platform cannot tell which element of copy s is
which element of copy t: it learns the per-label count of each stream and not one person's
combination of segments (with one copy, it would see which list element met stream s and stream t).

Audit rows: each stream carries F filler values r·G (secret r) at uniformly random positions; the
platform knows what a_s·(r·G) = r·(a_s·G) must be, and a returned stream that lacks any of them,
repeats a value, or has the wrong length was not blinded with the one scalar behind a_s·G. Members' b_s·H(y)
and fillers are indistinguishable to the merchant (DDH), so a merchant that replaces m of R member
values escapes with probability about (1 - F/(R+F))^m. The filler count is ``audit_rows`` plus DP
padding (``padding()``), which hides the true size of each stream.

The fillers of a stream are a grid r_i·(t_j·G): 2·sqrt(F) single multiplications and batched
blinding instead of F single ones. Under DDH such a rank-one matrix of exponents is
indistinguishable from a random one (Boneh-Halevi-Hamburg-Ostrovsky's matrix DDH).

``ordered=True`` (blind activation) takes stream 0 back in stream order: the opt-in disclosure by
which the platform learns which of its members are the merchant's matches (``matched_rows``).
"""

from __future__ import annotations

import enum
import math
import os
from collections import deque
from concurrent.futures import Future
from typing import Callable, Iterator

import numpy as np

from matcher.crypto import group
from matcher.crypto.kernels import Kernels
from matcher.errors import InputError, ProtocolDeviation, ProtocolError
from matcher.protocol._points import PointIndex, as_point_array, completed, has_duplicate, point_rows
from matcher.protocol.messages import (
    MATCHED_STREAM,
    MAX_CHUNK_ELEMENTS,
    MAX_LABELS,
    PROTOCOL_VERSION,
    SECURE,
    BlindedChunk,
    JobAccepted,
    JobStart,
    LabelAggregate,
)
from matcher.protocol.platform import Audience, PrecomputedStream, _StreamFeed

Rng = Callable[[int], bytes]
STREAM_CHUNK_ROWS = 65_536  # 2 MiB of points per message
# Padding of a member's tuple: H(random bytes) under a DST of its own, a point nobody knows the log of.
_PADDING_DST = b"matcher-v1-tuple-padding_XMD:SHA-512_ELL2_RO_"
_GRID_COLUMNS = 64
# Chunks of a stream blinded before its list copy arrives: 8 x 65,536 values are 16 MiB of points.
_EARLY_CHUNKS = 8


# A stream is counted by unblinding the returned values when its non-audit values (members and DP
# padding) are at most this share of the list; otherwise T_s is made as the list arrives. Measured
# with bench.e2e (issue 16, 2 shared cores): at 200k x 200k, 5 segments (~100k members each, share
# 0.5) server CPU fell 14.3-15.4 -> 11.0-11.3 s; stream 0 unblinded too (share 1.0) gained nothing.
_UNBLIND_BELOW = 0.75

# Values a kernels batch of the unblinding holds: 262,144 points are 8 MiB.
_BLIND_SLICE = 4 * STREAM_CHUNK_ROWS


def _submit_slices(kernels: Kernels, scalar: bytes, points: np.ndarray, rows: np.ndarray, *,
                   chosen: bool = True) -> list[Future]:
    """The blinding of ``points[rows]``, as futures of consecutive slices of ``_BLIND_SLICE`` points,
    none awaited, so that the caller can go on reading while the kernels work; one batch would put
    the whole stream in the kernels' pieces, their pickles and their join at once. The points are
    held once more, as the slices' bytes."""
    return [kernels.submit_blind(scalar, np.ascontiguousarray(points[rows[lo:lo + _BLIND_SLICE]]).tobytes(),
                                 chosen=chosen) for lo in range(0, len(rows), _BLIND_SLICE)]


class _State(enum.Enum):
    NEW = "new"
    STREAMING = "streaming"
    DONE = "done"


class _Stream:
    """One stream's secrets and bookkeeping: its scalar, its order, its audit values, what came back."""

    def __init__(self, name: str, rows: np.ndarray | int, fillers: int, scalar: bytes,
                 slot: PrecomputedStream | None = None, points: np.ndarray | None = None,
                 outgoing_scalar: bytes | None = None, width: int = 1):
        self.name = name
        # Rows of ``points`` in this stream (before shuffling); an int n: rows 0..n-1, every member,
        # with no array of them (8 bytes a member, 40 MB at 5M, held for the whole job).
        self.rows = rows
        self.points = points          # H(y) the rows index: None for the session's audience
        self.fillers = fillers        # filler tuples: the audit rows and the DP padding
        self.width = width            # values a tuple: a member's identifiers, padded
        self.scalar = scalar          # b_s: T_s = b_s·(the list copy)
        # Takes b_s off the returned values, which are then looked up among the list copy's own values
        # (no T_s); None: the count looks the returned values up in T_s. Chosen by _choose_count.
        self.unblinding: bytes | None = None
        self.outgoing_scalar = outgoing_scalar or scalar  # what the members' H(y) go out blinded with
        self.slot = slot              # b_s, the members' order and b_s·H(y), made while the server was idle
        self.order: np.ndarray | None = None  # tuple position -> audience row, or -1-d for filler tuple d
        self.table: list[Future] = []          # b_s·(a_s·H(x)) of the list copy (unblinding: a_s·H(x)), in pieces
        self.received_labels: list[np.ndarray] = []
        self.received_per_label: np.ndarray | None = None
        self.merchant_base: bytes | None = None
        self.list_done = False
        self.index: PointIndex | None = None   # T_s (unblinding: the list copy), from finish_list to the count
        self.returned: np.ndarray | None = None  # a·v as they come back, filled up to returned_count
        self.returned_count = 0
        self.expected: np.ndarray | None = None  # what a·(filler value d) must be, row d (tuple d // width)
        self.filler_points: np.ndarray | None = None  # the filler values r_i·(t_j·G), row d
        self.grid_scalars: tuple[list[bytes], list[bytes]] | None = None  # (t_j, r_i) behind them
        # b_s·H(y) of the stream's members, chunk by chunk (tuple positions, a future of the points or
        # None for a chunk of fillers only), submitted before the list copy arrives; None: made in stream().
        self.outgoing: list[tuple[np.ndarray, Future | None]] | None = None
        self.sent = False
        self.finished = False
        self.counts: np.ndarray | None = None  # per label, the list copy's values the stream met
        # Unblinding: the returned positions being unblinded and the kernels' futures of their values
        # (a slice each), from finish_stream until the count is read (_settle).
        self.unblinding_pending: tuple[np.ndarray, list[Future]] | None = None
        # Ordered jobs only: the stream positions that met the list copy, and their labels.
        self.matched_positions: np.ndarray | None = None
        self.matched_labels: np.ndarray | None = None

    @property
    def members(self) -> int:
        return self.rows if isinstance(self.rows, int) else len(self.rows)

    @property
    def tuples(self) -> int:
        return self.members + self.fillers

    @property
    def size(self) -> int:
        """Values in the stream: ``width`` for each member and each filler tuple."""
        return self.tuples * self.width


class SecurePlatformSession:
    """One secure job on ``audience``: ``audit_rows`` fillers per stream plus ``padding(n_streams)``.

    ``ordered`` makes it a blind activation (stream 0 comes back in stream order, so
    :meth:`matched_rows` can say which members matched), restricted to ``activation_label`` when
    one is named. ``precomputed(name)`` takes the idle-time slot for a stream, if one is ready;
    ``max_chunk`` and ``chunk_rows`` size the messages.
    """

    protocol = SECURE

    def __init__(self, audience: Audience, *, job_id: str, rng: Rng = os.urandom, kernels: Kernels | None = None,
                 audit_rows: int = 4096, padding: Callable[[int], int] = lambda n_streams: 0, ordered: bool = False,
                 activation_label: str | None = None, max_chunk: int = MAX_CHUNK_ELEMENTS,
                 chunk_rows: int = STREAM_CHUNK_ROWS,
                 precomputed: Callable[[str], PrecomputedStream | None] | None = None):
        if audit_rows < 1:
            raise InputError("a secure job needs at least one audit row per stream")
        self._audience = audience
        self._job_id = job_id
        self._rng = rng
        self._kernels = kernels or Kernels()
        self._audit_rows = audit_rows
        self._padding = padding
        self.ordered = ordered
        self._activation_label = activation_label
        self._max_chunk = max_chunk
        self._chunk_rows = chunk_rows
        # Takes the idle-time slot for a stream ('' = every member, else a segment), if one is ready.
        self._precomputed = precomputed or (lambda name: None)
        self._shuffler = np.random.default_rng(int.from_bytes(rng(32), "big"))
        self._state = _State.NEW
        self._start: JobStart | None = None  # set by start()
        self._streams: list[_Stream] = []

    @property
    def members(self) -> Audience:
        return self._audience

    @property
    def stream_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self._streams)

    def _expect(self, *states: _State) -> None:
        if self._state not in states:
            raise ProtocolError(f"call out of order: the job is in state '{self._state.value}'")

    def start(self, start: JobStart) -> JobAccepted:
        self._expect(_State.NEW)
        if start.protocol_version != PROTOCOL_VERSION:
            raise ProtocolError(f"protocol version {start.protocol_version} is not supported (this server speaks "
                                f"{PROTOCOL_VERSION})", hint="upgrade matcher-client")
        self._check_kinds(start)
        if not start.labels or len(start.labels) != len(start.label_sizes) or len(start.labels) > MAX_LABELS:
            raise InputError(f"a job needs 1..{MAX_LABELS} labels, each with a size")
        if len(set(start.labels)) != len(start.labels):
            raise InputError("label names must be distinct")
        if self._activation_label is not None and self._activation_label not in start.labels:
            raise InputError(f"label '{self._activation_label}' is not one of this list's labels: "
                             f"{', '.join(start.labels)}")
        segments = self._wanted_segments(start)
        # a·G is validated (length, canonical, not small-order) before anything depends on it.
        group.blind(group.random_scalar(self._rng), start.merchant_base)
        self._start = start
        n_streams = 1 + len(segments)
        wanted = [(MATCHED_STREAM, ""), *((name, name) for name in segments)]
        self._streams = [self._new_stream(name, key, self._fillers(n_streams)) for name, key in wanted]
        self._state = _State.STREAMING
        self._prepare(self._streams[0])
        return JobAccepted(job_id=self._job_id, paillier_n=b"", segments=tuple(segments), layout_json="",
                           max_chunk_elements=self._max_chunk,
                           stream_elements=sum(s.size for s in self._streams),
                           stream_names=self.stream_names, stream_sizes=tuple(s.size for s in self._streams),
                           protocol=self.protocol, tuple_width=self._width)

    def _check_kinds(self, start: JobStart) -> None:
        """Every kind of identifier in the list is one the audience holds (the DSTs keep kinds apart,
        so a list kind the platform lacks could only ever miss)."""
        held = self._audience.kinds
        missing = [kind for kind in start.kinds if kind not in held]
        if missing:
            raise InputError(f"this platform's audience holds {', '.join(repr(k) for k in held)} identifiers, the "
                             f"list {', '.join(repr(k) for k in start.kinds)}: it has no {', '.join(missing)}",
                             hint=f"submit {' or '.join(held)} columns (or sha256 hashes of one)")

    @property
    def _width(self) -> int:
        return self._audience.width

    @property
    def unblinded(self) -> tuple[bool, ...]:
        """Per stream, whether it is counted by unblinding the returned values (else against T_s)."""
        return tuple(s.unblinding is not None for s in self._streams)

    def _new_stream(self, name: str, key: str, fillers: int) -> _Stream:
        """Stream ``name`` (``key``: '' for every member, else the segment), with a fresh b_s or the
        idle-time slot's."""
        rows = len(self._audience) if key == "" else self._audience.segment_rows(key)
        if self._width > 1:
            # Slots hold one value a member; tuples are made here (issue 19 left their precomputation).
            return self._choose_count(_Stream(name, rows, fillers, group.random_scalar(self._rng), width=self._width))
        slot = self._precomputed(key)
        if slot is not None and len(slot.order) != (rows if isinstance(rows, int) else len(rows)):
            raise ProtocolError(f"the precomputed stream for '{name}' belongs to another audience")
        scalar = slot.scalar if slot is not None else group.random_scalar(self._rng)
        return self._choose_count(_Stream(name, rows, fillers, scalar, slot))

    def _choose_count(self, stream: _Stream) -> _Stream:
        """Counts ``stream`` by unblinding when that is clearly cheaper: it costs one X25519 for each
        returned member value, after the last one is back, where T_s costs one for each list element,
        while the list arrives. Decided on sizes the merchant already knows (the declared list, the
        stream's announced size less its audit rows: members plus DP padding), never on the true
        size of a segment. docs/threat-model.md, "Counting by unblinding", has why both ways count alike."""
        values = stream.size - self._audit_rows * stream.width
        if values <= _UNBLIND_BELOW * self._start.list_size:
            stream.unblinding = group.unblinding_scalar(stream.outgoing_scalar)  # None for ~2^-124 of scalars
        return stream

    def _wanted_segments(self, start: JobStart) -> list[str]:
        if self.ordered:
            return []
        if start.all_segments:
            return list(self._audience.segments)
        unknown = sorted(set(start.segments) - set(self._audience.segments))
        if unknown:
            raise InputError(f"unknown segment(s): {', '.join(unknown)}",
                             hint=f"this platform's segments: {', '.join(self._audience.segments) or '(none)'}")
        if len(set(start.segments)) != len(start.segments):
            raise InputError("a segment is asked for twice")
        return [name for name in self._audience.segments if name in start.segments]

    def _fillers(self, n_streams: int) -> int:
        extra = int(self._padding(n_streams))
        if extra < 0:
            raise ProtocolError("stream padding cannot be negative")
        return self._audit_rows + extra

    def receive_blinded(self, index: int, chunk: BlindedChunk) -> None:
        """A chunk of the merchant's copy ``index`` of its list, a_s·H(x) with a label each."""
        self._expect(_State.STREAMING)
        stream = self._list_due(index)
        # Stream 0 was prepared at start(); a later stream's values go to the kernels with its list's
        # first chunk. (Prepared as soon as the stream before had gone out, they took the cores from
        # the merchant's blinding of that stream: 5-segment jobs measured 21.5-22.2 s that way and
        # 19.8-21.4 s this way, on an idle machine.)
        self._prepare(stream)
        labels = np.frombuffer(chunk.labels, dtype=np.uint8)
        points = as_point_array(chunk.points, len(labels), self._max_chunk)
        n_labels = len(self._start.labels)
        if len(labels) and int(labels.max()) >= n_labels:
            raise InputError(f"label index {int(labels.max())} is not one of the {n_labels} declared labels")
        if stream.received_per_label is None:
            stream.received_per_label = np.zeros(n_labels, dtype=np.int64)
        stream.received_per_label += np.bincount(labels, minlength=n_labels)
        if (stream.received_per_label > np.array(self._start.label_sizes)).any():
            raise InputError("the list is longer than the sizes declared at the start of the job")
        # T_s = b_s·(a_s·H(x)) runs on the kernels while the next chunk comes in; it also validates
        # every point (a bad one is refused when finish_list collects the results). The points are
        # the merchant's, but T_s never leaves this process and only ever meets values the merchant
        # returns, so a wrong mb8 result on a crafted point could neither reveal b_s nor change a
        # count: mb8's cross-check (group.blind, chosen=True) buys nothing here and costs 2.5x.
        # Counted by unblinding, the copy is kept as it came (checked at finish_list, as blind would).
        stream.table.append(completed(points.tobytes()) if stream.unblinding is not None else
                            self._kernels.submit_blind(stream.scalar, points.tobytes(), chosen=False))
        stream.received_labels.append(labels.copy())

    def finish_list(self, index: int, merchant_base: bytes) -> None:
        """The copy for stream ``index`` is complete; ``merchant_base`` is a_s·G. Indexes T_s for the
        count: equal a_s·H(x) (or points that differ by a small-order component) give equal
        b_s·a_s·H(x) and count once, under their first label."""
        self._expect(_State.STREAMING)
        stream = self._list_due(index)
        received = stream.received_per_label if stream.received_per_label is not None else 0
        if list(np.broadcast_to(received, len(self._start.labels))) != list(self._start.label_sizes):
            raise ProtocolError(f"the list for stream '{stream.name}' ended after {int(np.sum(received))} of "
                                f"{self._start.list_size} declared elements")
        group.blind(group.random_scalar(self._rng), merchant_base)  # validated before anything depends on it
        self._check_merchant_base(index, stream, bytes(merchant_base))
        stream.merchant_base = bytes(merchant_base)
        self._prepare(stream)
        table = np.concatenate([point_rows(f.result()) for f in stream.table]) if stream.table else \
            np.empty((0, group.ELEMENT_SIZE), np.uint8)
        labels = np.concatenate(stream.received_labels) if stream.received_labels else np.empty(0, np.uint8)
        if stream.unblinding is not None:
            group.check_blindable(table)  # refused as T_s's blinding would refuse it, at the same step
        self._index_list(stream, table, labels)
        stream.table = stream.received_labels = []
        stream.list_done = True

    def _check_merchant_base(self, index: int, stream: _Stream, merchant_base: bytes) -> None:
        if index == 0 and merchant_base != self._start.merchant_base:
            raise ProtocolError("stream 0's list was blinded with another scalar than the a·G the job started with")

    def _index_list(self, stream: _Stream, table: np.ndarray, labels: np.ndarray) -> None:
        # Equal values (a copy, or a torsion twin: X25519 clears the cofactor) are one person: the
        # index's stable sort answers every lookup with the first of them, so each counts once,
        # under its first label, and no explicit de-duplication pass is needed.
        stream.index = PointIndex([table], [labels])

    def stream(self, index: int) -> Iterator[bytes]:
        """Stream ``index``: b_s·H(y) of its members and its filler rows, in a fresh random order."""
        self._expect(_State.STREAMING)
        stream = self._stream_at(index)
        if stream.sent or not stream.list_done:
            raise ProtocolError(f"stream {index} is not next")
        stream.sent = True
        self._prepare(stream)
        fillers = stream.filler_points
        if stream.width > 1:
            yield from self._tuple_stream(stream, fillers)
        else:
            # A slot made while the semi-honest protocol was on also holds ciphertexts: not needed here.
            feed = _StreamFeed(stream.slot.pieces, None) if stream.slot else None
            early, stream.outgoing = stream.outgoing or [], None
            pending: deque[tuple[np.ndarray, Future | None]] = deque()
            for number, lo in enumerate(range(0, len(stream.order), self._chunk_rows)):
                rows = stream.order[lo:lo + self._chunk_rows]
                pending.append((rows, early[number] if number < len(early) else self._outgoing(stream, rows, feed)))
                if len(pending) > 2:
                    yield _chunk(*pending.popleft(), fillers)
            while pending:
                yield _chunk(*pending.popleft(), fillers)
        # The audit's expected values (~2F X25519 in this thread) while the merchant blinds the stream,
        # rather than between the end of the list and the first chunk.
        self._expect_fillers(stream)

    def _outgoing(self, stream: _Stream, rows: np.ndarray, feed: _StreamFeed | None) -> Future | None:
        """b_s·H(y) of the members at tuple positions ``rows`` (fillers are -1-d): from the slot's
        feed, else blinded on the kernels; None for a chunk of fillers only."""
        real = rows >= 0
        if not real.any():
            return None
        if feed is not None:
            return completed(feed.take(int(real.sum()))[0])
        source = self._audience.points if stream.points is None else stream.points
        return self._kernels.submit_blind(stream.outgoing_scalar, np.ascontiguousarray(source[rows[real]]).tobytes(),
                                          chosen=False)

    def _prepare(self, stream: _Stream) -> None:
        """What stream ``stream`` sends that does not depend on the merchant's list: its filler
        values, its order and, without an idle-time slot, b_s·H(y) of its first members on the
        kernels (``_EARLY_CHUNKS`` chunks, so memory stays bounded by chunks; collected when the
        stream goes out). Done as that copy of the list starts to arrive, so the platform's workers
        blind while the merchant hashes and blinds, instead of afterwards while it waits. Nothing
        of it leaves the platform before :meth:`stream`; the values are the same, made earlier."""
        if stream.order is not None:
            return
        stream.filler_points = self._filler_points(stream)
        stream.order = self._order(stream)
        if stream.width > 1 or stream.slot is not None:
            return
        stream.outgoing = [self._outgoing(stream, stream.order[lo:lo + self._chunk_rows], None)
                           for lo in range(0, min(len(stream.order), _EARLY_CHUNKS * self._chunk_rows),
                                           self._chunk_rows)]

    def _tuple_stream(self, stream: _Stream, fillers: np.ndarray) -> Iterator[bytes]:
        """A stream of tuples: each member's identifiers blinded with b_s, then padding to the width
        (fresh random points of the group, whose logarithm nobody knows, so that not even the platform
        can recognise a padding value when it comes back), or a filler tuple of audit values."""
        width = stream.width
        slots = self._audience.tuple_slots
        points = self._audience.all_points
        per_chunk = max(1, self._chunk_rows // width)
        pending: deque[tuple[np.ndarray, np.ndarray, Future | None]] = deque()

        def chunk(rows: np.ndarray, members: np.ndarray, blinded: Future | None) -> bytes:
            out = np.empty((len(rows), width, group.ELEMENT_SIZE), np.uint8)
            filler = rows < 0
            if filler.any():
                first = (-1 - rows[filler]) * width
                out[filler] = fillers[first[:, None] + np.arange(width)]
            if blinded is not None:
                taken = members >= 0
                values = np.empty((members.size, group.ELEMENT_SIZE), np.uint8)
                values[taken.ravel()] = point_rows(blinded.result())
                pad = int((~taken).sum())
                if pad:
                    values[~taken.ravel()] = point_rows(self._kernels.hash_to_curve(
                        [self._rng(32) for _ in range(pad)], _PADDING_DST))
                out[~filler] = values.reshape(-1, width, group.ELEMENT_SIZE)
            return out.tobytes()

        for lo in range(0, len(stream.order), per_chunk):
            rows = stream.order[lo:lo + per_chunk]
            members = slots[rows[rows >= 0]]
            blinded = None
            if len(members):
                wanted = members[members >= 0]
                blinded = self._kernels.submit_blind(stream.scalar, np.ascontiguousarray(points[wanted]).tobytes(),
                                                     chosen=False)
            pending.append((rows, members, blinded))
            if len(pending) > 2:
                yield chunk(*pending.popleft())
        while pending:
            yield chunk(*pending.popleft())

    def _order(self, stream: _Stream) -> np.ndarray:
        """Tuple position -> audience row, or -1-d for filler tuple d: members in a uniformly random
        order (the precomputed slot's, when there is one) with the fillers at uniformly random positions."""
        total = stream.tuples
        at_filler = np.zeros(total, dtype=bool)
        at_filler[self._shuffler.choice(total, size=stream.fillers, replace=False)] = True
        order = np.empty(total, dtype=np.int64)
        order[at_filler] = -1 - self._shuffler.permutation(stream.fillers)
        # permutation(n) is permutation(arange(n)), draw for draw: the same order without the rows array.
        order[~at_filler] = stream.slot.order if stream.slot is not None else self._shuffler.permutation(stream.rows)
        return order

    def _filler_points(self, stream: _Stream) -> np.ndarray:
        """F filler points r_i·(t_j·G) (``width`` for each filler tuple); the scalars are kept for
        :meth:`_expected_fillers`."""
        count = stream.fillers * stream.width
        columns = min(_GRID_COLUMNS, count)
        rows = math.ceil(count / columns)
        column_scalars = [group.random_scalar(self._rng) for _ in range(columns)]
        row_scalars = [group.random_scalar(self._rng) for _ in range(rows)]
        stream.grid_scalars = (column_scalars, row_scalars)
        bases = b"".join(group.base_mult(t) for t in column_scalars)
        take = count * group.ELEMENT_SIZE
        return point_rows(b"".join(group.blind(r, bases, chosen=False) for r in row_scalars)[:take])

    def _expect_fillers(self, stream: _Stream) -> None:
        """Sets what the merchant must return for each filler point, r_i·(t_j·(a·G)) (a·G: the
        stream's merchant base, validated by finish_list)."""
        if stream.expected is None:
            stream.expected = self._expected_fillers(stream)

    def _expected_fillers(self, stream: _Stream) -> np.ndarray:
        column_scalars, row_scalars = stream.grid_scalars
        count = stream.fillers * stream.width
        # t_j·(a·G) is checked (a·G is the merchant's point). r_i·(that) is not: t_j is our secret, so
        # to the merchant t_j·(a·G) is a uniformly random point of the group, like a hash output, and
        # mb8's bad inputs are structured; the values never leave this process either (a wrong one
        # could only fail the audit). Skips 4096 X25519 a stream in this thread.
        shifted = b"".join(group.blind(t, stream.merchant_base) for t in column_scalars)
        take = count * group.ELEMENT_SIZE
        return point_rows(b"".join(group.blind(r, shifted, chosen=False) for r in row_scalars)[:take])

    def _list_due(self, index: int) -> _Stream:
        """Stream ``index``, whose copy of the list may arrive now: every earlier stream is done."""
        stream = self._stream_at(index)
        if stream.list_done or any(not s.finished for s in self._streams[:index]):
            raise ProtocolError(f"the list for stream {index} is not the one expected now")
        return stream

    def _stream_at(self, index: int) -> _Stream:
        if not 0 <= index < len(self._streams):
            raise ProtocolError(f"this job has streams 0..{len(self._streams) - 1}, not {index}")
        return self._streams[index]

    def receive_returned(self, index: int, points: bytes) -> None:
        """A chunk of a·v for stream ``index``, in the merchant's order."""
        self._expect(_State.STREAMING)
        stream = self._stream_at(index)
        if not stream.sent or stream.finished:
            raise ProtocolError(f"stream {index} is not the one being returned")
        values = as_point_array(points, len(points) // group.ELEMENT_SIZE, self._max_chunk)
        at = stream.returned_count
        stream.returned_count += len(values)
        if stream.returned_count > stream.size:
            raise ProtocolDeviation(f"stream '{stream.name}' came back with more than the {stream.size} values it had")
        if stream.returned is None:
            # One buffer of the stream's size (the platform's own number), filled in place: no list of
            # chunks to concatenate at the end, which held the stream twice (2 x 160 MB at 5M values).
            stream.returned = np.empty((stream.size, group.ELEMENT_SIZE), np.uint8)
        stream.returned[at:stream.returned_count] = values

    def finish_stream(self, index: int) -> None:
        """Audit the returned stream, then count it per label: against T_s now, or by unblinding once
        the counts are read."""
        self._expect(_State.STREAMING)
        stream = self._stream_at(index)
        if not stream.sent or stream.finished:
            raise ProtocolError(f"stream {index} is not the one being returned")
        returned = stream.returned[:stream.returned_count] if stream.returned is not None else \
            np.empty((0, group.ELEMENT_SIZE), np.uint8)
        stream.returned = None
        if len(returned) != stream.size:
            raise ProtocolDeviation(f"stream '{stream.name}' came back with {len(returned)} of its {stream.size} values")
        if has_duplicate(returned):
            raise ProtocolDeviation(f"stream '{stream.name}' came back with a value twice")
        self._expect_fillers(stream)
        audit = PointIndex([stream.expected], [np.zeros(len(stream.expected), np.uint8)])
        at, filler, _ = audit.lookup_ids(returned)
        if len(at) != len(stream.expected):
            raise ProtocolDeviation(f"stream '{stream.name}' failed its audit: values that a_s·(the stream) must "
                                    "contain are missing, so it was not blinded with the one scalar behind a_s·G")
        self._audit_tuples(stream, at, filler)
        if stream.unblinding is None:
            stream.counts = self._count(stream, returned, at)
        else:
            # Counted when the counts are read: the kernels unblind this stream while the next copy of
            # the list arrives, and this thread goes back to reading it. (Waiting here kept the
            # merchant's next copy unread for seconds at 1M: its client gave up sending.)
            stream.unblinding_pending = self._submit_unblinding(stream, returned, at)
        stream.finished = True
        if all(s.finished for s in self._streams):
            self._state = _State.DONE

    def _audit_tuples(self, stream: _Stream, at: np.ndarray, filler: np.ndarray) -> None:
        """Every filler tuple came back whole, as one returned tuple and nothing else (in its own
        position when ordered). A merchant that cannot tell filler tuples from members cannot break a
        member's tuple apart (to have each identifier count on its own) without risking one."""
        width = stream.width
        # ``at`` ascends, so with every filler tuple whole its values fill consecutive rows here.
        returned_tuple = (at // width).reshape(-1, width)
        sent_tuple = (filler // width).reshape(-1, width)
        whole = bool((returned_tuple == returned_tuple[:, :1]).all() and (sent_tuple == sent_tuple[:, :1]).all())
        if whole and self.ordered:
            whole = bool((stream.order[returned_tuple[:, 0]] == -1 - sent_tuple[:, 0]).all())
        if not whole:
            what = "tuple" if width > 1 else "value"
            raise ProtocolDeviation(f"stream '{stream.name}' failed its audit: an audit {what} came back "
                                    f"{'broken apart or ' if width > 1 else ''}moved, so the stream was not "
                                    f"returned {'tuple by tuple' if width > 1 else 'as sent'}")

    def _count(self, stream: _Stream, returned: np.ndarray, filler_positions: np.ndarray) -> np.ndarray:
        """Per-label counts of the returned tuples that hold a value of T_s."""
        positions, labels = stream.index.lookup(returned)
        stream.index = None
        return self._tally(stream, positions, labels)

    def _tally(self, stream: _Stream, positions: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """Per-label counts of the returned tuples that hold a value of the list copy (at ``positions``
        of the returned stream, with ``labels``): each tuple (a member) counts once, under the first of
        the labels (in label order) of the values it holds."""
        if stream.width > 1 and len(positions):
            tuples = positions // stream.width
            first = np.lexsort((labels, tuples))
            keep = first[np.r_[True, tuples[first][1:] != tuples[first][:-1]]]
            positions, labels = tuples[keep], labels[keep]
        if self.ordered:
            stream.matched_positions = positions
            stream.matched_labels = labels
        return np.bincount(labels, minlength=len(self._start.labels))

    def _submit_unblinding(self, stream: _Stream, returned: np.ndarray,
                           filler_positions: np.ndarray) -> tuple[np.ndarray, list[Future]]:
        """The positions of the returned values that are not audit values, and the kernels' futures of
        b_s⁻¹ times each (a slice each): a returned a_s·b_s·H(y) unblinds to a_s·H(y), which is a list element's
        value exactly when b_s·(that element) is the returned value, for elements of the prime-order
        subgroup (an honest copy holds no other)."""
        real = np.ones(len(returned), bool)
        real[filler_positions] = False
        # A value blind refuses (non-canonical, small order) is never in T_s either: it meets nothing.
        real &= group.blindable(returned)
        candidates = np.flatnonzero(real)
        # Merchant-chosen points, but unblinded values never leave this process and only meet the
        # merchant's list: as for T_s (receive_blinded), mb8's cross-check buys nothing here.
        return candidates, _submit_slices(self._kernels, stream.unblinding, returned, candidates, chosen=False)

    def _settle(self, stream: _Stream) -> None:
        """Counts an unblinded stream once its values are back from the kernels: what :meth:`_count`
        gets from T_s, from the list copy's own values instead."""
        if stream.unblinding_pending is None:
            return
        candidates, slices = stream.unblinding_pending
        stream.unblinding_pending = None
        unblinded = np.concatenate([point_rows(f.result()) for f in slices]) if slices else \
            np.empty((0, group.ELEMENT_SIZE), np.uint8)
        at, element, labels = stream.index.lookup_ids(unblinded)
        stream.index = None
        # Two returned values that differ by a small-order point (distinct, so both passed the
        # audit's duplicate check) unblind alike, as X25519 clears the cofactor: they meet one list
        # element, which counts once, as with T_s, where only one of them could be in T_s.
        _, first = np.unique(element, return_index=True)
        first.sort()
        stream.counts = self._tally(stream, candidates[at[first]], labels[first])

    def aggregates(self) -> dict[str, LabelAggregate]:
        """True per-label counts: stream 0 is the matched count, the others one segment each."""
        self._expect(_State.DONE)
        for stream in self._streams:
            self._settle(stream)
        matched, *segments = self._streams
        return {label: LabelAggregate(matched=int(matched.counts[i]),
                                      segments={s.name: int(s.counts[i]) for s in segments})
                for i, label in enumerate(self._start.labels)}

    def matched_rows(self) -> np.ndarray:
        """Ordered jobs (activation): the audience rows whose returned value met the list (of the
        activation's label, when one was named)."""
        self._expect(_State.DONE)
        if not self.ordered:
            raise ProtocolError("only an ordered (activation) job learns which rows matched")
        stream = self._streams[0]
        self._settle(stream)
        positions = stream.matched_positions
        if self._activation_label is not None:
            positions = positions[stream.matched_labels == self._start.labels.index(self._activation_label)]
        rows = stream.order[positions]
        return np.sort(rows[rows >= 0])


def _chunk(rows: np.ndarray, blinded: Future | None, fillers: np.ndarray) -> bytes:
    real = rows >= 0
    points = np.empty((len(rows), group.ELEMENT_SIZE), dtype=np.uint8)
    if blinded is not None:
        points[real] = point_rows(blinded.result())
    if not real.all():
        points[~real] = fillers[-1 - rows[~real]]
    return points.tobytes()

