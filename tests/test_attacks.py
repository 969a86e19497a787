"""Attacks a curious merchant can make with the standard client, each against a computed expectation."""

from __future__ import annotations

import math
import threading
from concurrent.futures import Future

import pytest


from matcher.crypto.kernels import Kernels
from matcher.errors import LimitExceeded, MatcherError
from matcher.policy import OpenDPNoise, Policy, dummy_count, split_epsilon
from matcher.server.store import Store
from matcher_client import api
from tests.conftest import exact_policy, phone
from tests.test_protocol import make_audience, run


class CountingKernels(Kernels):
    """Real kernels that count their calls, to prove a refusal came before any crypto."""

    def __init__(self):
        self.calls = 0

    def hash_to_curve(self, msgs, dst):
        self.calls += 1
        return super().hash_to_curve(msgs, dst)

    def blind(self, scalar, points, **options):
        self.calls += 1
        return super().blind(scalar, points, **options)

    def submit_encrypt(self, context, plaintexts):
        self.calls += 1
        return super().submit_encrypt(context, plaintexts)


class FakeClock:
    def __init__(self, now: float = 1_800_000_000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def budget_rows(store):
    return store.db.execute("SELECT state, epsilon FROM budget ORDER BY at").fetchall()


@pytest.mark.parametrize("size", [1, 99])
def test_small_list_is_refused_before_any_crypto_and_spends_nothing(operator, serve, size):
    operator.add_members({phone(i): 1 for i in range(200)})
    operator.store.set_policy("min_list_size", "100")
    token = operator.token("merchant", "shop")
    kernels = CountingKernels()
    served = serve(kernels=kernels)
    with pytest.raises(MatcherError, match="requires at least 100"):
        api.match(served.address, token, rows=[(phone(i), None) for i in range(size)], id_type="phone",
                  kernels=Kernels())
    assert kernels.calls == 0
    assert budget_rows(operator.store) == []
    assert operator.store.db.execute("SELECT state, reason FROM jobs").fetchall() == [("refused", "list_too_small")]


def test_one_small_label_is_refused(operator, serve):
    operator.add_members({phone(i): 1 for i in range(300)})
    operator.store.set_policy("min_list_size", "100")
    token = operator.token("merchant", "shop")
    rows = [(phone(i), "big") for i in range(150)] + [(phone(1000), "alone")]
    with pytest.raises(MatcherError, match="too small: 'alone' \\(1\\)"):
        api.match(serve().address, token, rows=rows, id_type="phone")
    assert budget_rows(operator.store) == []


def test_budget_fourth_job_refused_and_back_after_the_period(operator, serve):
    operator.add_members({phone(i): 1 for i in range(60)})
    for key, value in {"min_list_size": "10", "epsilon_budget": "1.0", "epsilon_per_job": "0.3",
                       "budget_period": "30d", "k": "0"}.items():
        operator.store.set_policy(key, value)
    token = operator.token("merchant", "shop")
    clock = FakeClock()
    served = serve(clock=clock)
    rows = [(phone(i), None) for i in range(30)]
    lefts = []
    for _ in range(3):
        lefts.append(api.match(served.address, token, rows=rows, id_type="phone")["epsilon_left"])
        clock.now += 60
    assert lefts == pytest.approx([0.7, 0.4, 0.1])
    with pytest.raises(LimitExceeded, match="budget"):
        api.match(served.address, token, rows=rows, id_type="phone")
    assert [s for s, _ in budget_rows(operator.store)] == ["committed"] * 3
    clock.now += 30 * 86400  # the first three jobs leave the rolling period
    assert api.match(served.address, token, rows=rows, id_type="phone")["epsilon_left"] == pytest.approx(0.7)


def test_two_concurrent_jobs_near_the_limit_exactly_one_passes(operator):
    """Two connections (as two server processes would have) race for the last 0.3 of budget."""
    for key, value in {"epsilon_budget": "1.0", "epsilon_per_job": "0.3"}.items():
        operator.store.set_policy(key, value)
    merchant, _ = operator.store.add_principal("merchant", "shop")
    pol = operator.store.effective_policy("shop")
    for i in range(3):  # 0.9 spent
        operator.store.open_job(f"old{i}", merchant, pol=pol, epsilon=0.3, list_size=100, labels=1)
        operator.store.finish_job(f"old{i}", released=True)
    operator.store.set_policy("epsilon_budget", "1.2")  # exactly one more 0.3 fits
    pol = operator.store.effective_policy("shop")
    for trial in range(5):
        stores = [Store(operator.db) for _ in range(2)]
        barrier = threading.Barrier(2)
        outcomes: list[str] = []

        def race(store, name):
            barrier.wait()
            try:
                store.open_job(name, merchant, pol=pol, epsilon=0.3, list_size=100, labels=1)
                outcomes.append("passed")
            except LimitExceeded:
                outcomes.append("refused")

        threads = [threading.Thread(target=race, args=(s, f"t{trial}-{i}")) for i, s in enumerate(stores)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(outcomes) == ["passed", "refused"]
        passed = [r for r in operator.store.db.execute("SELECT job_id FROM budget WHERE job_id LIKE ?", [f"t{trial}-%"])]
        assert len(passed) == 1
        operator.store.finish_job(passed[0][0], released=False)  # refund, so the next trial races again
        for s in stores:
            s.close()


def test_rate_limit(operator, serve):
    operator.add_members({phone(i): 1 for i in range(40)})
    exact_policy(operator.store, jobs_per_hour="2")
    token = operator.token("merchant", "shop")
    served = serve()
    rows = [(phone(i), None) for i in range(20)]
    api.match(served.address, token, rows=rows, id_type="phone")
    api.match(served.address, token, rows=rows, id_type="phone")
    with pytest.raises(LimitExceeded, match="rate"):
        api.match(served.address, token, rows=rows, id_type="phone")


class _UnitCiphertexts(Kernels):
    """The intersection-size attack never looks at ciphertexts: skip Paillier (c = 1 is a valid
    encryption of 0 with r = 1) so a thousand protocol runs take seconds."""

    def submit_encrypt(self, context, plaintexts):
        future: Future = Future()
        size = context.key.public_key.ciphertext_size
        future.set_result((1).to_bytes(size, "big") * len(plaintexts))
        return future


def _observed_intersection(audience, merchant_ids, policy, noise, seed) -> int:
    """One full protocol run through both engines; returns what the merchant counts."""
    dummies = [dummy_count(policy, noise)] if policy.dummies else []
    _, merchant, _ = run(audience, merchant_ids, ["all"] * len(merchant_ids), dummies=dummies, rerandomize=False,
                         seed=seed, kernels=_UnitCiphertexts())
    return int(merchant.matched_counts[0])


@pytest.mark.parametrize("dummies", ["on", "off"])
def test_membership_differencing_on_the_intersection_size(dummies):
    """L and L minus one platform member: with dummies on the adversary's advantage stays within the
    (ε, δ) bound; with dummies off it is exactly 1 — proving the test can fail."""
    policy = Policy(dummies=dummies == "on", noise="none", epsilon_per_job=1.0)
    split = split_epsilon(policy, n_labels=1, n_segments=1)
    audience = make_audience(list(range(8)), [0] * 8, 1)
    with_target, without_target = list(range(8)), list(range(1, 8))  # member 0's membership is at stake
    noise = OpenDPNoise()
    runs = 400 if dummies == "on" else 20
    shift = math.ceil(math.log(1 / split.dummy_delta) / split.dummies) + 1 if policy.dummies else 0
    # The adversary's test, fixed in advance: "in" when the count reaches the expected count with the person.
    threshold = len(with_target) + shift
    said_in_when_in = sum(_observed_intersection(audience, with_target, policy, noise, seed) >= threshold
                          for seed in range(runs))
    said_in_when_out = sum(_observed_intersection(audience, without_target, policy, noise, runs + seed) >= threshold
                           for seed in range(runs))
    advantage = (said_in_when_in - said_in_when_out) / runs
    if dummies == "off":
        assert advantage == 1.0
    else:
        eps = split.dummies
        bound = (math.exp(eps) - 1) / (math.exp(eps) + 1) + split.dummy_delta
        standard_error = math.sqrt(0.5 / runs)
        # This fixed test's true advantage is exactly the bound (P(DLap = 0) = tanh(ε/2)), so allow
        # 4 standard errors (a 3e-5 false alarm); dummies with half the noise give 0.46, six above.
        assert advantage <= bound + 4 * standard_error, (advantage, bound)
        assert advantage < 0.5  # far from the certainty the adversary has without dummies


def test_server_refuses_jobs_beyond_its_concurrency_limit_and_frees_slots(operator):
    """Slots are taken before any crypto and given back on every end: release, failure, refusal."""
    from matcher.server.jobs import JobRunner
    from matcher.server.auditlog import AuditLog
    from matcher.protocol.messages import JobStart
    from matcher.crypto import group

    operator.add_members({phone(i): 1 for i in range(30)})
    exact_policy(operator.store)
    merchant, _ = operator.store.add_principal("merchant", "shop")
    runner = JobRunner(operator.store, operator.keys, AuditLog(operator.store, operator.keys.signer, "matcher.test"),
                       max_concurrent_jobs=2)
    start = JobStart(id_kind="phone", labels=("all",), label_sizes=(20,),
                     merchant_base=group.base_mult(group.random_scalar()))
    first, second = runner.begin(merchant, start), runner.begin(merchant, start)
    with pytest.raises(LimitExceeded, match="already running 2 jobs"):
        runner.begin(merchant, start)
    first.abort("test")
    first.abort("again")  # idempotent: frees one slot, not two
    assert runner.active_jobs == 1
    third = runner.begin(merchant, start)
    small = JobStart(id_kind="phone", labels=("all",), label_sizes=(1,), merchant_base=start.merchant_base)
    with pytest.raises(LimitExceeded):
        runner.begin(merchant, small)
    second.abort("test")
    with pytest.raises(MatcherError, match="requires at least 10"):  # a refusal gives its slot back
        runner.begin(merchant, small)
    assert runner.active_jobs == 1
    third.abort("test")
    assert runner.active_jobs == 0
