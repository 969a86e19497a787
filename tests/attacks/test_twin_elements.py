"""Counting by unblinding (issue 16), attacked over real gRPC with a modified client: a merchant
lists, beside its honest list, the torsion twin of one customer's blinded value under a label of its
own, in every copy. With T_s (stream 0 here: its members outnumber the list) the twin blinds to the
same value as the customer and counts as that person, once, under the label sent first; in the
segment streams, counted by unblinding, a twin can never match. Either way every person moves every
cell by at most one: the sum over labels of each cell is the plaintext truth."""

from __future__ import annotations

import dataclasses

import pytest

from matcher.crypto import group
from matcher.protocol.messages import BlindedChunk
from matcher.protocol.secure_merchant import SecureMerchantSession
from matcher.protocol.secure_platform import SecurePlatformSession
from matcher_client import api
from tests.attacks._adversary import fakes, with_session
from tests.conftest import SEGMENTS, exact_policy, ground_truth, match_key, phone

P = 2**255 - 19
TARGET = phone(7)


def _twin(point: bytes) -> bytes:
    """The point plus (0, 0), of order 2: u -> 1/u. X25519 clears it, so both blind alike."""
    return pow(int.from_bytes(point, "little"), P - 2, P).to_bytes(32, "little")


def _listing_the_targets_twin(first: bool):
    class TwinOfTheTarget(SecureMerchantSession):
        """Every copy s of the list also holds twin(a_s·H(target)) under the label 'twins'."""

        def start(self, **kw):
            start = super().start(**kw)
            return dataclasses.replace(start, labels=(*start.labels, "twins"), label_sizes=(*start.label_sizes, 1))

        def blinded_chunks(self, index):
            hashed = group.hash_to_curve(match_key(TARGET).encode(), group.dst_for("phone"))
            twin = _twin(group.blind(self._scalars[index], hashed))
            added = BlindedChunk(points=twin, labels=bytes([len(self.label_names)]))
            if first:
                yield added
            yield from super().blinded_chunks(index)
            if not first:
                yield added

    return TwinOfTheTarget


@pytest.mark.parametrize("first", [False, True])
def test_a_listed_twin_never_counts_a_person_twice(known_audience, operator, serve, monkeypatch, first):
    members, token = known_audience
    exact_policy(operator.store, min_list_size="1")
    rows = [(phone(i), "all") for i in range(300)] + [(p, "all") for p in fakes(0, 60)]
    truth = ground_truth(members, rows)["all"]
    with_session(monkeypatch, _listing_the_targets_twin(first))
    sessions = []
    started = SecurePlatformSession.start
    monkeypatch.setattr(SecurePlatformSession, "start", lambda self, start: (sessions.append(self),
                                                                              started(self, start))[1])
    served = serve()
    report = api.match(served.address, token, rows=rows, id_type="phone")

    assert sessions[0].unblinded == (False,) + (True,) * len(SEGMENTS)
    # Stream 0 (400 members > 0.75 x 361 listed) is counted against T_s, where the twin is the
    # target, under the label sent first; each segment stream (~200 members) by unblinding.
    twin_matched = 1 if first else 0
    assert report["labels"]["twins"] == {"matched": twin_matched, "segments": {s: 0 for s in SEGMENTS}}
    assert report["labels"]["all"] == {"matched": truth["matched"] - twin_matched, "segments": truth["segments"]}
