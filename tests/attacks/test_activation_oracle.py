"""Attack 2 of issue 13, standard client: a list holding k-1 members known to carry a segment,
plus the target, activated with --where on that segment, is accepted exactly when the target
carries it; refusals were refunded, so the oracle was nearly free (8/8 flags for 6 ε). Now the
decision is made on the noisy slice size and every activation, refused or not, is charged."""

from __future__ import annotations

from matcher import policy as policy_mod
from matcher.errors import PolicyRefused, ProtocolError
from matcher_client import api
from tests.attacks._adversary import accuracy_bound, fakes, hostile_room
from tests.conftest import SEGMENTS

K = 50
SEGMENT = "paid_with_platform"


def test_accept_or_refuse_tells_no_more_than_the_noise_allows_and_is_never_free(operator, serve, known_audience):
    members, token = known_audience
    hostile_room(operator.store, k=str(K))
    address = serve().address
    bit = 1 << SEGMENTS.index(SEGMENT)
    carriers = [p for p, bits in members.items() if bits & bit]
    others = [p for p, bits in members.items() if not bits & bit]
    known = carriers[:K - 1]
    targets = [(p, True) for p in carriers[K - 1:K + 9]] + [(p, False) for p in others[:10]]
    correct = 0
    for n, (target, has_segment) in enumerate(targets):
        rows = [(p, None) for p in known + [target] + fakes(100 * n, 60)]
        try:
            api.activate(address, token, api.prepare_rows(rows, id_type="phone"), name=f"probe{n}", where=SEGMENT)
            accepted = True
        except ProtocolError as refused:  # PolicyRefused travels as FAILED_PRECONDITION
            assert "noisy size is under k" in str(refused)
            accepted = False
        correct += accepted == has_segment
    per_cell = policy_mod.split_epsilon(operator.store.effective_policy("mallory"), n_labels=1, n_segments=0).per_cell
    assert correct / len(targets) <= accuracy_bound(per_cell, len(targets))
    # Every answer was paid for: as many committed charges as activations, refused ones included.
    assert operator.store.db.execute("SELECT state FROM budget").fetchall() == [("committed",)] * len(targets)
    assert PolicyRefused.grpc_code == "FAILED_PRECONDITION"
