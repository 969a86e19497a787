"""Release policy: refusals, ε accounting, thresholds and the noise that protects one person."""

from __future__ import annotations

import dataclasses
import math
from statistics import NormalDist

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from matcher.errors import InputError, PolicyRefused
from matcher.policy import (
    NOISE_KINDS,
    SETTABLE_KEYS,
    NoiseSource,
    OpenDPNoise,
    Policy,
    budget_after,
    check_request,
    dummy_count,
    job_epsilon,
    release,
    split_epsilon,
)


class ConstantNoise:
    """Deterministic noise that records the scales it was asked for."""

    def __init__(self, value: int = 0):
        self.value = value
        self.laplace_scales: list[float] = []
        self.gaussian_sigmas: list[float] = []

    def discrete_laplace(self, scale: float) -> int:
        self.laplace_scales.append(scale)
        return self.value

    def gaussian_int(self, sigma: float) -> int:
        self.gaussian_sigmas.append(sigma)
        return self.value


@pytest.fixture(scope="module")
def opendp_noise() -> OpenDPNoise:
    return OpenDPNoise()


def _aggregates(matched: int, **segments: int) -> dict:
    return {"all": {"matched": matched, "segments": dict(segments)}}


# --- the policy object -----------------------------------------------------------------


def test_defaults_are_safe():
    policy = Policy()
    assert policy.noise != "none"
    assert policy.k >= 1
    assert policy.dummies is True
    assert policy.min_list_size >= policy.k
    assert 0 < policy.epsilon_per_job <= policy.epsilon_budget
    assert policy.semi_honest_match is False
    assert policy.audit_rows >= 1024


def test_default_yearly_budget_bounds_what_one_person_can_be_told():
    """README's arithmetic: over 365 days a merchant spends at most e^1 in likelihood ratio."""
    policy = Policy()
    per_year = policy.epsilon_budget * (365 * 86400 / policy.budget_period_seconds)
    assert per_year <= 1.0
    assert math.exp(per_year) * 0.5 / (math.exp(per_year) * 0.5 + 0.5) < 0.74  # a 50% prior stays under 74%


@pytest.mark.parametrize(
    "key, text, expected",
    [
        ("min_list_size", " 500 ", 500),
        ("max_labels", "8", 8),
        ("k", "20", 20),
        ("noise", "none", "none"),
        ("noise", "Gaussian", "gaussian"),
        ("epsilon_per_job", "0.3", 0.3),
        ("delta_per_job", "1e-7", 1e-7),
        ("epsilon_budget", "25", 25.0),
        ("budget_period", "12h", "12h"),
        ("budget_period", "7D", "7d"),
        ("jobs_per_hour", "0", 0),
        ("dummies", "off", False),
        ("dummies", "ON", True),
        ("dummy_epsilon_share", "0.25", 0.25),
        ("max_list_size", "1000000", 1_000_000),
    ],
)
def test_with_setting_parses_cli_strings(key, text, expected):
    updated = Policy().with_setting(key, text)
    assert getattr(updated, key) == expected
    assert type(getattr(updated, key)) is type(expected)
    others = {k: v for k, v in updated.to_dict().items() if k != key}
    assert others == {k: v for k, v in Policy().to_dict().items() if k != key}


@pytest.mark.parametrize(
    "key, bad",
    [
        ("min_list_size", "0"),
        ("min_list_size", "1.5"),
        ("min_list_size", "20000000"),  # above max_list_size
        ("max_labels", "0"),
        ("max_labels", "33"),
        ("k", "-1"),
        ("k", "ten"),
        ("noise", "laplace"),
        ("epsilon_per_job", "0"),
        ("epsilon_per_job", "-1"),
        ("epsilon_per_job", "inf"),
        ("epsilon_per_job", "nan"),
        ("delta_per_job", "0"),
        ("delta_per_job", "0.5"),
        ("epsilon_budget", "0"),
        ("budget_period", "30"),
        ("budget_period", "0d"),
        ("budget_period", "1.5d"),
        ("budget_period", "1y"),
        ("jobs_per_hour", "-1"),
        ("dummies", "maybe"),
        ("dummy_epsilon_share", "0"),
        ("dummy_epsilon_share", "1"),
        ("max_list_size", "50"),  # below min_list_size
    ],
)
def test_with_setting_names_the_key_and_the_bad_value(key, bad):
    with pytest.raises(InputError) as caught:
        Policy().with_setting(key, bad)
    message = str(caught.value)
    assert key in message
    assert bad in message


def test_with_setting_explains_the_allowed_values():
    with pytest.raises(InputError) as caught:
        Policy().with_setting("noise", "laplace")
    assert all(kind in str(caught.value) for kind in NOISE_KINDS)
    with pytest.raises(InputError) as caught:
        Policy().with_setting("dummies", "maybe")
    assert "on or off" in str(caught.value)


def test_unknown_setting_lists_the_known_keys():
    with pytest.raises(InputError) as caught:
        Policy().with_setting("epsilon", "1")
    assert all(key in str(caught.value) for key in SETTABLE_KEYS)
    assert {"min_list_size", "k", "noise", "epsilon_per_job", "epsilon_budget",
            "budget_period", "jobs_per_hour", "dummies"} <= set(SETTABLE_KEYS)


@pytest.mark.parametrize("period, seconds", [("30d", 2_592_000), ("12h", 43_200), ("7d", 604_800),
                                             ("90m", 5_400), ("2w", 1_209_600)])
def test_budget_period_seconds(period, seconds):
    assert Policy(budget_period=period).budget_period_seconds == seconds


def test_dict_round_trip_and_type_checks():
    policy = Policy(k=7, noise="gaussian", dummies=False, epsilon_budget=3)
    assert Policy.from_dict(policy.to_dict()) == policy
    assert Policy.from_dict({"k": 7}) == Policy(k=7)
    assert isinstance(Policy(epsilon_budget=3).epsilon_budget, float)
    with pytest.raises(InputError, match="bogus"):
        Policy.from_dict({"bogus": 1})
    with pytest.raises(InputError, match="dummies"):
        Policy.from_dict({"dummies": 1})  # a bool field wants a bool
    with pytest.raises(InputError, match="k"):
        Policy.from_dict({"k": True})  # and an int field does not take one


def test_digest_is_sha256_of_canonical_json():
    import hashlib
    import json

    policy = Policy()
    canonical = json.dumps(policy.to_dict(), sort_keys=True, separators=(",", ":"))
    assert policy.digest() == hashlib.sha256(canonical.encode()).hexdigest()
    # An int spelling of a float setting is the same policy, so the same digest.
    assert Policy(epsilon_budget=1).digest() == policy.digest()


def test_digest_changes_when_any_field_changes():
    base = Policy()
    changed = {
        "min_list_size": 101, "max_labels": 31, "k": 51, "noise": "gaussian",
        "epsilon_per_job": 1.5, "delta_per_job": 2e-6, "epsilon_budget": 11.0,
        "budget_period": "31d", "jobs_per_hour": 11, "dummies": False,
        "dummy_epsilon_share": 0.4, "max_list_size": 9_999_999, "activation_ttl": "7d",
        "audit_rows": 1000, "semi_honest_match": True, "protocol": "unbalanced",
    }
    assert set(changed) == {f.name for f in dataclasses.fields(Policy)}
    digests = {base.digest()}
    for key, value in changed.items():
        digests.add(dataclasses.replace(base, **{key: value}).digest())
    assert len(digests) == 1 + len(changed)


# --- refusals before any crypto --------------------------------------------------------


def test_a_list_that_meets_the_policy_passes():
    check_request(Policy(), list_size=300, label_sizes={"a": 100, "b": 200}, n_segments=4)


@pytest.mark.parametrize(
    "list_size, label_sizes, reason, named",
    [
        (99, {"all": 99}, "list_too_small", "100"),
        (10_000_001, {"all": 10_000_001}, "list_too_large", "10000000"),
        (33 * 100, {f"l{i}": 100 for i in range(33)}, "too_many_labels", "32"),
        (300, {"big": 250, "tiny-store": 50}, "label_too_small", "tiny-store"),
    ],
)
def test_each_refusal_reason(list_size, label_sizes, reason, named):
    with pytest.raises(PolicyRefused) as caught:
        check_request(Policy(), list_size=list_size, label_sizes=label_sizes, n_segments=2)
    assert caught.value.reason == reason
    assert named in str(caught.value)
    assert caught.value.hint


def test_label_sizes_must_account_for_the_whole_list():
    with pytest.raises(InputError):
        check_request(Policy(), list_size=500, label_sizes={"a": 100}, n_segments=0)


# --- ε accounting ----------------------------------------------------------------------


def test_default_split_by_hand():
    split = split_epsilon(Policy(), n_labels=3, n_segments=4)
    assert split.dummies == pytest.approx(0.01) and split.per_cell == pytest.approx(0.09 / 5)
    assert (split.cells, split.dummy_delta, split.per_cell_delta) == (15, 1e-6, 0.0)


@settings(max_examples=200)
@given(
    eps=st.floats(0.01, 20),
    share=st.floats(0.01, 0.99),
    n_labels=st.integers(1, 32),
    n_segments=st.integers(0, 40),
    noise=st.sampled_from(NOISE_KINDS),
    dummies=st.booleans(),
)
def test_split_sums_to_what_the_job_reserves(eps, share, n_labels, n_segments, noise, dummies):
    policy = Policy(epsilon_per_job=eps, dummy_epsilon_share=share, noise=noise, dummies=dummies)
    split = split_epsilon(policy, n_labels=n_labels, n_segments=n_segments)
    # One person: all dummies of their label plus each of their label's 1 + n_segments cells.
    spent_on_one_person = split.dummies + split.per_cell * (1 + n_segments)
    assert spent_on_one_person == pytest.approx(job_epsilon(policy))
    assert split.cells == n_labels * (1 + n_segments)
    if noise != "none" and dummies:
        assert spent_on_one_person == pytest.approx(eps)
    total_delta = split.dummy_delta + split.per_cell_delta * (1 + n_segments)
    assert total_delta <= policy.delta_per_job * (1 + 1e-12)


def test_job_epsilon_is_zero_only_without_noise_and_dummies():
    assert job_epsilon(Policy(noise="none", dummies=False)) == 0.0
    assert job_epsilon(Policy(noise="none", dummies=True, epsilon_per_job=1.0, dummy_epsilon_share=0.5)) == \
        pytest.approx(0.5)
    assert job_epsilon(Policy(dummies=False)) == pytest.approx(0.1)
    assert job_epsilon(Policy()) == pytest.approx(0.1)


def test_budget_after():
    policy = Policy(epsilon_budget=1.0)
    assert budget_after(policy, 0.25) == 0.75
    assert budget_after(policy, 5.0) == 0.0
    assert budget_after(policy, sum([0.1] * 10)) == 0.0  # float sum is 0.9999999999999999


# --- threshold and release -------------------------------------------------------------


def test_threshold_without_noise_is_on_the_true_count():
    policy = Policy(noise="none", k=50)
    report = release(policy, _aggregates(49, paid=50, visited=49), n_segments=2, noise=ConstantNoise(99))
    assert report == {"all": {"matched": None, "segments": {"paid": 50, "visited": None}}}


def test_threshold_applies_to_the_noisy_value():
    """A true count of 49 with noise +2 is released (51); 60 with noise -11 is suppressed (49):
    the decision is a function of the noisy value only."""
    policy = Policy(k=50)
    assert release(policy, _aggregates(49), n_segments=0, noise=ConstantNoise(2)) == \
        {"all": {"matched": 51, "segments": {}}}
    assert release(policy, _aggregates(60), n_segments=0, noise=ConstantNoise(-11)) == \
        {"all": {"matched": None, "segments": {}}}


def test_release_keeps_labels_and_segment_names():
    aggregates = {
        "north": {"matched": 120, "segments": {"paid": 60, "coupon": 3}},
        "south": {"matched": 10, "segments": {"paid": 0, "coupon": 0}},
    }
    report = release(Policy(noise="none", k=5), aggregates, n_segments=2, noise=ConstantNoise())
    assert report == {
        "north": {"matched": 120, "segments": {"paid": 60, "coupon": None}},
        "south": {"matched": 10, "segments": {"paid": None, "coupon": None}},
    }


def test_laplace_release_uses_the_per_cell_scale_and_never_releases_below_zero():
    noise = ConstantNoise(-1000)
    policy = Policy(k=0, epsilon_per_job=2.0, dummy_epsilon_share=0.25)
    report = release(policy, _aggregates(60, a=70, b=80, c=90), n_segments=3, noise=noise)
    assert report == {"all": {"matched": None, "segments": {"a": None, "b": None, "c": None}}}
    per_cell = 2.0 * (1 - 0.25) / (1 + 3)
    assert noise.laplace_scales == pytest.approx([1 / per_cell] * 4)
    assert noise.gaussian_sigmas == []


def test_noise_is_added_to_released_cells():
    report = release(Policy(k=50), _aggregates(60, a=70), n_segments=1, noise=ConstantNoise(7))
    assert report == {"all": {"matched": 67, "segments": {"a": 77}}}


def _analytic_gaussian_sigma(eps: float, delta: float) -> float:
    """Balle & Wang (2018) Algorithm 1 for sensitivity 1, solved by bisection."""
    phi = NormalDist().cdf

    def delta_at(sigma: float) -> float:
        return phi(1 / (2 * sigma) - eps * sigma) - math.exp(eps) * phi(-1 / (2 * sigma) - eps * sigma)

    low, high = 1e-3, 1e3
    for _ in range(200):
        middle = (low + high) / 2
        low, high = (middle, high) if delta_at(middle) > delta else (low, middle)
    return high


def test_gaussian_sigma_is_between_the_analytic_optimum_and_the_classical_bound():
    noise = ConstantNoise()
    policy = Policy(noise="gaussian", epsilon_per_job=1.0, dummy_epsilon_share=0.5, delta_per_job=1e-6, k=1)
    release(policy, _aggregates(10, a=10), n_segments=1, noise=noise)
    per_cell_eps, per_cell_delta = 0.5 / 2, 0.5e-6 / 2
    sigma = noise.gaussian_sigmas[0]
    analytic = _analytic_gaussian_sigma(per_cell_eps, per_cell_delta)
    classical = math.sqrt(2 * math.log(1.25 / per_cell_delta)) / per_cell_eps
    assert analytic <= sigma <= classical
    assert sigma <= 1.1 * analytic  # OpenDP's accounting is not wildly loose either
    assert noise.gaussian_sigmas == [sigma, sigma]


def test_release_refuses_a_segment_count_mismatch():
    with pytest.raises(InputError):
        release(Policy(), _aggregates(100, a=100), n_segments=2, noise=ConstantNoise())


# --- OpenDP samplers -------------------------------------------------------------------


def test_opendp_discrete_laplace_moments(opendp_noise):
    scale = 2.0
    samples = [opendp_noise.discrete_laplace(scale) for _ in range(20_000)]
    assert all(isinstance(x, int) for x in samples)
    mean = sum(samples) / len(samples)
    variance = sum((x - mean) ** 2 for x in samples) / len(samples)
    alpha = math.exp(-1 / scale)
    assert abs(mean) < 0.1
    assert variance == pytest.approx(2 * alpha / (1 - alpha) ** 2, rel=0.10)


def test_opendp_discrete_gaussian_moments(opendp_noise):
    samples = [opendp_noise.gaussian_int(3.0) for _ in range(10_000)]
    mean = sum(samples) / len(samples)
    variance = sum((x - mean) ** 2 for x in samples) / len(samples)
    assert abs(mean) < 0.15
    assert variance == pytest.approx(9.0, rel=0.10)


@pytest.mark.parametrize("scale", [0.0, -1.0, float("inf"), float("nan")])
def test_opendp_noise_refuses_unusable_scales(opendp_noise, scale):
    with pytest.raises(InputError):
        opendp_noise.discrete_laplace(scale)
    with pytest.raises(InputError):
        opendp_noise.gaussian_int(scale)


# --- dummies ---------------------------------------------------------------------------


def test_dummy_count_is_nonnegative_with_mean_at_the_shift(opendp_noise):
    policy = Policy(epsilon_per_job=1.0, dummy_epsilon_share=0.5)  # dummies get 0.5 ε and δ = 1e-6: scale 2
    shift = math.ceil(2 * math.log(1e6)) + 1
    counts = [dummy_count(policy, opendp_noise) for _ in range(5_000)]
    assert min(counts) >= 0
    assert abs(sum(counts) / len(counts) - shift) < 0.25


def test_dummy_count_shift_and_truncation_by_hand():
    policy = Policy(epsilon_per_job=1.0, dummy_epsilon_share=0.5, delta_per_job=1e-6)
    expected_shift = math.ceil(2.0 * math.log(1 / 1e-6)) + 1
    noise = ConstantNoise(0)
    assert dummy_count(policy, noise) == expected_shift
    assert noise.laplace_scales == [2.0]
    assert dummy_count(policy, ConstantNoise(-10_000)) == 0
    assert dummy_count(Policy(dummies=False), ConstantNoise(5)) == 0
    # The truncation probability is below δ: P(DLap(2) <= -shift) = alpha**shift / (1 + alpha).
    alpha = math.exp(-1 / 2.0)
    assert alpha**expected_shift / (1 + alpha) < 1e-6


# --- one person's difference -----------------------------------------------------------


def _threshold_advantage(policy: Policy, noise: NoiseSource, c: int, trials: int) -> float:
    """TPR - FPR of guessing "the extra person is there" when the segment count reads >= c + 1."""

    def guesses_present(true_segment_count: int) -> int:
        report = release(policy, _aggregates(1_000, paid=true_segment_count), n_segments=1, noise=noise)
        released = report["all"]["segments"]["paid"]
        return released is not None and released >= c + 1

    true_positive = sum(guesses_present(c + 1) for _ in range(trials)) / trials
    false_positive = sum(guesses_present(c) for _ in range(trials)) / trials
    return true_positive - false_positive


def test_differencing_adversary_is_bounded_by_the_per_cell_epsilon(opendp_noise):
    policy = Policy(k=0, epsilon_per_job=1.0, dummy_epsilon_share=0.5)
    per_cell_eps = policy.epsilon_per_job * (1 - policy.dummy_epsilon_share) / (1 + 1)
    bound = (math.exp(per_cell_eps) - 1) / (math.exp(per_cell_eps) + 1)
    trials = 2_000
    margin = 5 * math.sqrt(2 * 0.25 / trials)  # five standard errors of a difference of rates
    c = policy.k + 30
    advantage = _threshold_advantage(policy, opendp_noise, c, trials)
    assert advantage <= bound + margin


def test_differencing_adversary_wins_without_noise(opendp_noise):
    policy = Policy(noise="none")
    assert _threshold_advantage(policy, opendp_noise, policy.k + 30, 200) == 1.0
