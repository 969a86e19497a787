"""Attack 3 of issue 13, modified client: blind each target with a scalar of its own so that only
its stream row can match it, read membership off the matches, and hang up before anything is
released (the failed job was refunded: membership at 0 ε).

In the secure protocol the merchant never holds a double-blinded value, so there is nothing to
match against; to make the platform count under the target's scalar it has to return the stream
blinded with that scalar, which fails the stream's audit; and a job that hangs up after its
acceptance stays charged."""

from __future__ import annotations

import json

import numpy as np
import pytest

from matcher.crypto import group
from matcher.errors import AuthenticationError, MatcherError, ProtocolDeviation
from matcher.protocol.secure_merchant import SecureMerchantSession
from matcher_client import api
from tests.attacks._adversary import fakes, hostile_room, with_session
from tests.conftest import exact_policy, match_key, phone

TARGET = phone(7)


class OwnScalarForTheTarget(SecureMerchantSession):
    """Blinds the target with its own scalar in every copy of the list; ``returns`` says what the
    stream goes back blinded with: 'honest' (a_s), 'target' (the target's scalar, whole stream), or
    'mixed' (the target's scalar on a tenth of the rows)."""

    returns = "honest"

    def blinded_chunks(self, index):
        self.target_scalar = getattr(self, "target_scalar", group.random_scalar())
        hashed = group.hash_to_curve(match_key(TARGET).encode(), group.dst_for("phone"))
        honest, own = group.blind(self._scalars[index], hashed), group.blind(self.target_scalar, hashed)
        for chunk in super().blinded_chunks(index):
            points = bytearray(chunk.points)
            for at in range(0, len(points), 32):
                if bytes(points[at:at + 32]) == honest:
                    points[at:at + 32] = own
            yield type(chunk)(points=bytes(points), labels=chunk.labels)

    def transform_returned(self, index, values):
        values = super().transform_returned(index, values)
        if self.returns == "honest":
            return values
        # a_s·v back to v (a_s^-1 is not available for X25519 u-coordinates), so re-blind the
        # stream itself: keep the received stream, blind it with the target's scalar instead.
        rows = len(values) if self.returns == "target" else len(values) // 10
        stream = self._last_stream[:rows]
        values[:rows] = np.frombuffer(group.blind(self.target_scalar, stream.tobytes()), np.uint8).reshape(-1, 32)
        return values

    def receive_stream(self, index, points):
        if self.received == 0:
            self._stream_parts = []
        self._stream_parts.append(np.frombuffer(points, np.uint8).reshape(-1, 32))
        self._last_stream = np.concatenate(self._stream_parts)
        super().receive_stream(index, points)


def customer_rows() -> list[tuple[str, None]]:
    return [(TARGET, None)] + [(phone(i), None) for i in range(100, 150)] + [(p, None) for p in fakes(0, 60)]


def test_an_own_scalar_target_is_simply_never_counted(operator, serve, known_audience, monkeypatch):
    members, token = known_audience
    exact_policy(operator.store, jobs_per_hour="1000")
    with_session(monkeypatch, OwnScalarForTheTarget)
    report = api.match(serve().address, token, rows=customer_rows(), id_type="phone", count_only=True)
    assert report["labels"]["all"]["matched"] == 50  # phone(100..149), not the target, not the fakes


@pytest.mark.parametrize("returns", ["target", "mixed"])
def test_returning_the_stream_under_the_targets_scalar_fails_the_audit(operator, serve, known_audience,
                                                                        monkeypatch, returns):
    members, token = known_audience
    hostile_room(operator.store)
    monkeypatch.setattr(OwnScalarForTheTarget, "returns", returns)
    with_session(monkeypatch, OwnScalarForTheTarget)
    served = serve()
    with pytest.raises(ProtocolDeviation, match="failed its audit"):
        api.match(served.address, token, rows=customer_rows(), id_type="phone", count_only=True)
    store = operator.store
    assert store.db.execute("SELECT state FROM budget").fetchall() == [("committed",)]
    entries = [json.loads(data) for _, data in store.log_entries(0, store.log_size())]
    failed = [e for e in entries if e.get("decision") == "failed"]
    assert len(failed) == 1 and failed[0]["charged"] and "failed its audit" in failed[0]["reason"]
    assert [e["name"] for e in entries if e["type"] == "merchant_disabled"] == ["mallory"]
    with pytest.raises(AuthenticationError):  # suspended until the operator says otherwise
        api.budget(served.address, token)


def test_hanging_up_once_the_stream_arrived_is_charged(operator, serve, known_audience, monkeypatch):
    members, token = known_audience
    hostile_room(operator.store)

    class HangsUp(SecureMerchantSession):
        def returned_chunks(self, index):
            raise MatcherError("the merchant hangs up with the stream in hand")

    with_session(monkeypatch, HangsUp)
    with pytest.raises(MatcherError, match="hangs up"):
        api.match(serve().address, token, rows=customer_rows(), id_type="phone", count_only=True)
    assert operator.store.db.execute("SELECT state FROM budget").fetchall() == [("committed",)]
