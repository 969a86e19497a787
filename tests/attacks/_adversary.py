"""What the attacks share: an audience whose members the test knows, a hostile merchant's policy
room (many jobs, a large budget: the tests measure what one job tells, not how many jobs are
allowed), and modified clients built from the client library by swapping its session class."""

from __future__ import annotations

import math

from matcher_client import api
from tests.conftest import phone

# Members phone(0 .. MEMBERS-1); everything from FAKE up is made up.
MEMBERS = 400
FAKE = 100_000


def hostile_room(store, **policy) -> None:
    """The default privacy policy (noise, k, ε per job) with room for many jobs."""
    settings = {"jobs_per_hour": "10000", "epsilon_budget": "1000", "audit_rows": "256", **policy}
    for key, value in settings.items():
        store.set_policy(key, value)


def with_session(monkeypatch, session_class) -> None:
    """The standard client, with its merchant session replaced by a modified one."""
    monkeypatch.setattr(api, "SecureMerchantSession", session_class)


def fakes(start: int, count: int) -> list[str]:
    return [phone(FAKE + start + i) for i in range(count)]


def accuracy_bound(epsilon: float, trials: int, sigmas: float = 3.0) -> float:
    """The best accuracy an ε-DP answer allows for a member/non-member guess at a 50% prior
    (e^ε / (1 + e^ε)), plus ``sigmas`` standard errors of an observed rate over ``trials``."""
    return math.exp(epsilon) / (1 + math.exp(epsilon)) + sigmas * math.sqrt(0.25 / trials)
