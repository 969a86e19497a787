"""Attack 6 of issue 13, standard client: two lists that differ by one person, each submitted
many times; the adversary guesses "the target is a member" when the count of the list with the
target exceeds a cut. Noise alone decides, so the advantage (true minus false positive rate) is at
most tanh(ε/2) per job pair, plus sampling error. (The long version, ~3,200 jobs for 91%
confidence at the old ε 1, is the composition the yearly budget bounds; see README.)"""

from __future__ import annotations

import math

from matcher import policy as policy_mod
from matcher_client import api
from tests.attacks._adversary import fakes, hostile_room
from tests.conftest import phone

TARGET = phone(5)


def test_one_person_difference_is_hidden_by_the_noise(operator, serve, known_audience):
    members, token = known_audience
    hostile_room(operator.store, k="0")
    address = serve().address
    base = [(phone(i), None) for i in range(100, 300)] + [(p, None) for p in fakes(0, 50)]

    def count(rows) -> int:
        released = api.match(address, token, rows=rows, id_type="phone", count_only=True)["labels"]["all"]["matched"]
        return -1 if released is None else released

    trials = 12
    without = [count(base) for _ in range(trials)]
    with_target = [count(base + [(TARGET, None)]) for _ in range(trials)]
    cut = 200  # the true count without the target
    advantage = sum(c > cut for c in with_target) / trials - sum(c > cut for c in without) / trials
    per_cell = policy_mod.split_epsilon(operator.store.effective_policy("mallory"), n_labels=1, n_segments=0).per_cell
    assert advantage <= math.tanh(per_cell / 2) + 4 * math.sqrt(2 * 0.25 / trials)
    assert len(set(without)) > 1  # the releases really are noisy
    assert operator.store.db.execute("SELECT count(*) FROM budget WHERE state = 'committed'").fetchone() == (2 * trials,)
