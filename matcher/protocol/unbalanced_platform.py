"""The platform's side of the unbalanced protocol: the merchant's blinded copy of each stream stays here.

The secure protocol (matcher.protocol.secure_platform) streams the whole audience to the merchant
in every job; this one streams it once per merchant. Its messages are the secure protocol's, in the
same order; what differs is what they hold::

    copy s of the list    a_s·H(x), a_s the merchant's long-lived scalar for stream s (its key file)
    stream s              c·b_s·H(y) (c fresh) of the members whose presence in stream s changed
                          since the merchant's last job (all of them the first time), with audit rows
    returned stream s     a_s·v for each value v: the platform checks the audit rows, as in the
                          secure protocol, takes c off the rest and toggles their tags in its copy
    count                 the tags of b_s·(a_s·H(x)) found in the updated copy, per label

b_s is one per stream, for every merchant and every job, so the platform's per-member work does not
repeat per job; a_s is one per merchant and stream, so copies of different merchants (or streams)
cannot be compared. The platform still never sees a_s·H(y) for a known y: it cannot tell which
member a tag of the copy is, and learns, as in the secure protocol, only per-stream counts.

What it adds (docs/threat-model.md, "Unbalanced mode"): a_s does not change between jobs, so the
platform can tell which of this list's blinded values were in the merchant's last list. When two
lists differ by one person, it can link that person's values across streams: which segments an
unknown customer holds. The policy's ``protocol`` setting and the job's log entry say which ran.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

from matcher.crypto import group
from matcher.errors import ProtocolError
from matcher.protocol._points import point_rows
from matcher.protocol._tags import empty_tags, first_of_each, present, sort_tags, tags_of
from matcher.protocol.messages import UNBALANCED
from matcher.protocol.platform import Audience
from matcher.protocol.secure_platform import STREAM_CHUNK_ROWS, SecurePlatformSession, _Stream

# The returned stream is unmasked and tagged this many values at a time (8 MiB of points), two
# slices in flight: the job holds 16 bytes a value of tags, not the unmasked stream (32) beside them.
UNMASK_SLICE_ROWS = 4 * STREAM_CHUNK_ROWS


@dataclass(frozen=True)
class StoredCopy:
    """What the platform holds of one merchant's copy of one stream (matcher.server.unbalanced)."""

    scalar: bytes                           # b_s: the same for every merchant and job
    delta: np.ndarray                       # H(y) whose presence the copy must toggle (all, for a new copy)
    stored: Callable[[np.ndarray], np.ndarray]  # the copy's stored tags in the buckets of these tags
    merchant_base: bytes | None             # a_s·G the copy was made with; None for a new copy


class _CopyStream(_Stream):
    def __init__(self, name: str, key: str, copy: StoredCopy, fillers: int, masked: bytes, unmask: bytes):
        # The delta goes out as c·b_s·H(y) for a fresh c: its values never repeat between jobs, so the
        # merchant cannot tell a member leaving (a value it was sent before) from an audit row.
        # The delta's rows are all of it, 0..n-1: a count, not an array of them.
        super().__init__(name, len(copy.delta), fillers, copy.scalar, points=copy.delta, outgoing_scalar=masked)
        self.unmask = unmask    # takes c off what comes back: a_s·b_s·H(y), the copy's tags
        self.key = key          # '' = every member, else the segment
        # Not the StoredCopy itself: its delta (32 B a member) goes once the stream has been sent.
        self.stored = copy.stored
        self.kept_base = copy.merchant_base
        self.list_tags = tags_of(np.empty((0, 32), np.uint8))
        self.list_labels = np.empty(0, np.uint8)


class UnbalancedPlatformSession(SecurePlatformSession):
    """Called as SecurePlatformSession is, with an ``audience`` that needs no members (it reads only
    the id kind and the segment names: the copies hold the rest). ``copies(key)`` gives the stored copy of a stream ('' or a
    segment name); ``synced(key, a_s·G, toggles)`` stores a returned delta once its audit passed;
    ``key_changed(key)`` forgets a copy the merchant's list no longer fits."""

    protocol = UNBALANCED

    def __init__(self, audience: Audience, *, copies: Callable[[str], StoredCopy],
                 synced: Callable[[str, bytes, np.ndarray], None], key_changed: Callable[[str], None], **kwargs):
        super().__init__(audience, **kwargs)
        if self.ordered:
            raise ProtocolError("an activation runs the balanced secure protocol only")
        self._copies, self._synced, self._key_changed = copies, synced, key_changed

    def _new_stream(self, name: str, key: str, fillers: int) -> _Stream:
        copy = self._copies(key)
        return _CopyStream(name, key, copy, fillers, *group.masking_scalars(copy.scalar, self._rng))

    def _check_merchant_base(self, index: int, stream: _Stream, merchant_base: bytes) -> None:
        assert isinstance(stream, _CopyStream)
        kept = stream.kept_base
        if kept is not None and merchant_base != kept:
            self._key_changed(stream.key)
            raise ProtocolError(f"the list for stream '{stream.name}' was blinded with another key than the copy "
                                "this server keeps for it; the copy is dropped", hint="run the job again")

    def _index_list(self, stream: _Stream, table: np.ndarray, labels: np.ndarray) -> None:
        assert isinstance(stream, _CopyStream)
        # Equal values (or torsion twins, equal once blinded) are one person, counted once, under
        # the first label: their tags are equal.
        tags = tags_of(table)
        first = first_of_each(tags)
        stream.list_tags, stream.list_labels = tags[first], labels[first]

    def stream(self, index: int) -> Iterator[bytes]:
        yield from super().stream(index)
        # Sent: what comes back is counted by its tags, so neither the delta's H(y) (32 B a member,
        # a whole copy's worth on a merchant's first job) nor the order (8 B; only an activation maps
        # positions back, and it never runs unbalanced) need wait for the end of the job.
        sent = self._streams[index]
        sent.points = sent.order = None

    def _count(self, stream: _Stream, returned: np.ndarray, filler_positions: np.ndarray) -> np.ndarray:
        assert isinstance(stream, _CopyStream)
        real = np.ones(len(returned), bool)
        real[filler_positions] = False
        toggles = self._unmasked_tags(stream.unmask, returned, real)
        toggles.sort()
        stored = sort_tags(stream.stored(stream.list_tags))  # read before the sync is stored
        hit = present([stored, toggles], stream.list_tags)
        self._synced(stream.key, stream.merchant_base, toggles)
        return np.bincount(stream.list_labels[hit], minlength=len(self._start.labels))

    def _unmasked_tags(self, unmask: bytes, returned: np.ndarray, real: np.ndarray) -> np.ndarray:
        """The tags of ``unmask``·v (c taken off) for the ``real`` rows v of ``returned``, in their
        order: a slice of the stream at a time, so that the unmasked points never exist all at once."""
        tags = empty_tags(int(real.sum()))
        pending: deque[tuple[int, Future]] = deque()

        def collect() -> None:
            at, unmasked = pending.popleft()
            points = point_rows(unmasked.result())
            tags[at:at + len(points)] = tags_of(points)

        done = 0
        for lo in range(0, len(returned), UNMASK_SLICE_ROWS):
            values = returned[lo:lo + UNMASK_SLICE_ROWS][real[lo:lo + UNMASK_SLICE_ROWS]]
            if not len(values):
                continue
            # Merchant-chosen points, but the tags only meet this job's T_s: a wrong mb8 result on a
            # crafted point is one more tag that matches nothing (see SecurePlatformSession.receive_blinded).
            pending.append((done, self._kernels.submit_blind(unmask, values.tobytes(), chosen=False)))
            done += len(values)
            if len(pending) > 1:
                collect()
        while pending:
            collect()
        return tags
