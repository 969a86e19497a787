"""Attack 1 of issue 13, standard client: each label holds k-1 known members, the target and
made-up IDs, so the label's count reaches k exactly when the target is a member. With k applied
to the true count, 'released or null' was the target's membership for 1 ε a job (20/20 right).
With k applied to the noisy value, the answer is ε-DP: the guess is right no more often than
e^ε/(1+e^ε) allows, and every job is charged."""

from __future__ import annotations

from matcher import policy as policy_mod
from matcher_client import api
from tests.attacks._adversary import accuracy_bound, fakes, hostile_room
from tests.conftest import phone

K = 50
TARGETS_PER_JOB = 5


def straddling_rows(targets: list[str], job: int) -> list[tuple[str, str]]:
    rows = []
    for t, target in enumerate(targets):
        label = f"probe{t}"
        known = [phone(t * (K - 1) + i) for i in range(K - 1)]  # members the merchant knows to be members
        rows += [(p, label) for p in known + [target] + fakes(1_000 * job + 100 * t, 50)]
    return rows


def test_straddling_lists_learn_no_more_than_the_noise_allows(operator, serve, known_audience):
    members, token = known_audience
    hostile_room(operator.store, k=str(K))
    address = serve().address
    # Half the targets are members (phone(300..319)), half are not.
    targets = [(phone(300 + i), True) for i in range(20)] + [(phone(50_000 + i), False) for i in range(20)]
    correct = 0
    for job in range(len(targets) // TARGETS_PER_JOB):
        batch = targets[job::len(targets) // TARGETS_PER_JOB][:TARGETS_PER_JOB]
        report = api.match(address, token, rows=straddling_rows([t for t, _ in batch], job), id_type="phone",
                           count_only=True)
        for t, (_, is_member) in enumerate(batch):
            guessed_member = report["labels"][f"probe{t}"]["matched"] is not None
            correct += guessed_member == is_member
    pol = operator.store.effective_policy("mallory")
    per_cell = policy_mod.split_epsilon(pol, n_labels=1, n_segments=0).per_cell
    assert correct / len(targets) <= accuracy_bound(per_cell, len(targets))
    jobs = operator.store.db.execute("SELECT state FROM budget").fetchall()
    assert jobs == [("committed",)] * (len(targets) // TARGETS_PER_JOB)
