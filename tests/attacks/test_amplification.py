"""Attack 4 of issue 13, modified client: make one person count many times. Before, a label of the
target plus 99 made-up IDs was summed as the target's ciphertext^100, which the count slot could
not tell from 100 rows: all five flags of 31/31 targets for 1 ε. Now the platform counts, and each
returned value meets at most one element of a de-duplicated list, so whatever the list holds, one
person adds at most 1 to each cell: here exactly (noise off, k 0)."""

from __future__ import annotations

import pytest

from matcher.crypto import group
from matcher.protocol.secure_merchant import SecureMerchantSession
from matcher_client import api
from tests.attacks._adversary import fakes, with_session
from tests.conftest import SEGMENTS, exact_policy, match_key, phone

P = 2**255 - 19


def twin(point: bytes) -> bytes:
    """The same point plus the 2-torsion point (0, 0): u -> 1/u. X25519 clears the cofactor, so
    both blind to the same value; de-duplicating raw points alone would count them twice."""
    return pow(int.from_bytes(point, "little"), P - 2, P).to_bytes(32, "little")


def amplifying(target: str, how: str):
    class Amplifying(SecureMerchantSession):
        """Every made-up ID's slot carries the target instead: ``how`` = 'copies' (the same a_s·H(x)),
        'twins' (alternately a_s·H(x) and its torsion twin) or 'scalars' (a fresh scalar each)."""

        def blinded_chunks(self, index):
            hashed = group.hash_to_curve(match_key(target).encode(), group.dst_for("phone"))
            honest = group.blind(self._scalars[index], hashed)
            fake_points = {group.blind(self._scalars[index], group.hash_to_curve(match_key(f).encode(),
                                                                                 group.dst_for("phone")))
                           for f in fakes(0, 99)}
            n = 0
            for chunk in super().blinded_chunks(index):
                points = bytearray(chunk.points)
                for at in range(0, len(points), 32):
                    if bytes(points[at:at + 32]) in fake_points:
                        n += 1
                        points[at:at + 32] = (honest if how == "copies" else
                                              (twin(honest) if n % 2 else honest) if how == "twins" else
                                              group.blind(group.random_scalar(), hashed))
                yield type(chunk)(points=bytes(points), labels=chunk.labels)

    return Amplifying


@pytest.mark.parametrize("how", ["copies", "twins", "scalars"])
@pytest.mark.parametrize("target, is_member", [(phone(11), True), (phone(90_000), False)])
def test_one_person_counts_at_most_once_in_every_cell(operator, serve, known_audience, monkeypatch, how,
                                                      target, is_member):
    members, token = known_audience
    exact_policy(operator.store, jobs_per_hour="1000", min_list_size="100")
    with_session(monkeypatch, amplifying(target, how))
    rows = [(target, "amp")] + [(f, "amp") for f in fakes(0, 99)]
    report = api.match(serve().address, token, rows=rows, id_type="phone")
    cells = report["labels"]["amp"]
    bits = members.get(target, 0)
    assert cells["matched"] == int(is_member)
    assert cells["segments"] == {name: int(is_member and bool(bits >> i & 1)) for i, name in enumerate(SEGMENTS)}
