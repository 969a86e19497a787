"""Attack fixtures: the repository's operator and server fixtures, and a known audience."""

from __future__ import annotations

import random

import pytest

from tests.attacks._adversary import MEMBERS
from tests.conftest import SEGMENTS, phone  # noqa: F401  (fixtures come from tests/conftest.py)


@pytest.fixture
def known_audience(operator):
    """MEMBERS members with random segments; returns (members by phone, merchant token)."""
    rng = random.Random(1313)
    members = {phone(i): rng.getrandbits(len(SEGMENTS)) for i in range(MEMBERS)}
    operator.add_members(members)
    return members, operator.token("merchant", "mallory")
