"""Attack 5 of issue 13, modified client: make one stream value count for several list entries
(or one person for several), a 1-in-K lottery per job. In the secure protocol that needs returned
values that are not a_s·(the stream): replacing m of the R + D values drops an audit row with
probability 1 - (1 - D/(R+D))^m, so the lottery's prize (the target's row amplified, undetected)
has probability about (m/R)(1 - D/(R+D))^m <= 1/(e·D) per job, and the first loss suspends."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from matcher.crypto import group
from matcher.errors import ProtocolDeviation
from matcher.protocol.messages import BlindedChunk
from matcher.protocol.secure_merchant import SecureMerchantSession
from matcher_client import api
from tests.attacks._adversary import fakes, hostile_room, with_session
from tests.conftest import phone
from tests.test_protocol import key_of, make_audience
from tests.test_secure_protocol import run_secure


class SecondScalarOnSomeRows(SecureMerchantSession):
    """Returns a fraction of the stream blinded with a second scalar in place of as many other rows
    (the shape of every amplification: some value that is not a_s·v must go back)."""

    fraction = 0.05
    seed = 0

    def receive_stream(self, index, points):
        if self.received == 0:
            self._parts = []
        self._parts.append(np.frombuffer(points, np.uint8).reshape(-1, 32))
        super().receive_stream(index, points)

    def transform_returned(self, index, values):
        stream = np.concatenate(self._parts)
        values = values.copy()  # in stream order still: super() has not shuffled yet
        rng = random.Random(self.seed)
        m = max(1, int(len(values) * self.fraction))
        chosen, dropped = rng.sample(range(len(values)), m), rng.sample(range(len(values)), m)
        second = group.random_scalar()
        for c, d in zip(chosen, dropped):
            values[d] = np.frombuffer(group.blind(second, stream[c].tobytes()), np.uint8)
        return super().transform_returned(index, values)


def test_replacing_a_twentieth_of_the_stream_is_caught(operator, serve, known_audience, monkeypatch):
    members, token = known_audience
    hostile_room(operator.store)
    with_session(monkeypatch, SecondScalarOnSomeRows)
    rows = [(phone(i), None) for i in range(50)] + [(p, None) for p in fakes(0, 60)]
    with pytest.raises(ProtocolDeviation, match="failed its audit"):
        api.match(serve().address, token, rows=rows, id_type="phone", count_only=True)
    assert operator.store.db.execute("SELECT state FROM budget").fetchall() == [("committed",)]


def lottery(trials: int, replaced: int, members: int = 60, audit: int = 60) -> tuple[int, int]:
    """In process, ``trials`` jobs of a merchant whose list holds the target twice — blinded with
    a_s and with a second scalar — and whose return replaces ``replaced`` random values by
    second-scalar values of random rows. The prize: the target's row among them and nothing caught,
    so the target counts twice. Returns (jobs caught, prizes won)."""
    audience = make_audience(list(range(members)), [0] * members, 0)
    caught = prizes = 0
    for trial in range(trials):
        rng = random.Random(trial)
        second = group.random_scalar(lambda n: rng.getrandbits(8 * n).to_bytes(n, "little"))

        class Lottery(SecureMerchantSession):
            def start(self, **kw):
                start = super().start(**kw)
                return type(start)(id_kind=start.id_kind, labels=start.labels, label_sizes=(2,),
                                   merchant_base=start.merchant_base)

            def blinded_chunks(self, index):
                yield from super().blinded_chunks(index)
                hashed = group.hash_to_curve(key_of(0).encode(), group.dst_for("phone"))
                yield BlindedChunk(points=group.blind(second, hashed), labels=b"\x00")

            def receive_stream(self, index, points):
                self._stream = np.frombuffer(points, np.uint8).reshape(-1, 32).copy()
                super().receive_stream(index, points)

            def transform_returned(self, index, values):
                values = values.copy()
                for c, d in zip(rng.sample(range(len(values)), replaced), rng.sample(range(len(values)), replaced)):
                    values[d] = np.frombuffer(group.blind(second, self._stream[c].tobytes()), np.uint8)
                return super().transform_returned(index, values)

        try:
            platform = run_secure(audience, [0], ["all"], segments=[], audit_rows=audit, seed=trial,
                                  merchant_cls=Lottery, chunk_rows=10_000)
        except ProtocolDeviation:
            caught += 1
            continue
        prizes += platform.aggregates()["all"].matched == 2
    return caught, prizes


def test_one_replaced_value_is_caught_as_often_as_the_audit_rows_predict():
    """R = 60 members, D = 60 audit rows, one value replaced: caught iff the dropped value was an
    audit row, probability D/(R+D) = 1/2. Without the audit, nothing would ever be caught."""
    trials, p = 240, 60 / 120
    caught, prizes = lottery(trials, replaced=1)
    assert abs(caught - trials * p) <= 4 * math.sqrt(trials * p * (1 - p))
    # The prize needs the one duplicated row to be the target's (1 in 120) and the job uncaught.
    assert prizes <= trials * (1 / 120) * (1 - p) + 4 * math.sqrt(trials / 120)


def test_a_big_lottery_ticket_is_always_caught():
    """Replacing 30 of 120 values would hand the target a second count a quarter of the time; an
    audit row is among the dropped ones with probability 1 - (1/2)^30: every job is caught."""
    caught, prizes = lottery(60, replaced=30)
    assert (caught, prizes) == (60, 0)
