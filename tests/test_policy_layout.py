"""The policy package's seams: one label bound shared with the protocol, one budget arithmetic."""

from __future__ import annotations

import pytest

from matcher.errors import InputError
from matcher.policy import Policy, budget_after
from matcher.protocol.messages import MAX_LABELS


def test_max_labels_is_bounded_by_the_protocols_label_limit():
    assert Policy(max_labels=MAX_LABELS).max_labels == MAX_LABELS
    with pytest.raises(InputError, match=f"from 1 to {MAX_LABELS}"):
        Policy(max_labels=MAX_LABELS + 1)


def test_budget_left_after_three_jobs_of_three_tenths_is_exact():
    # 1.0 - (0.3 + 0.3 + 0.3) in floats is 0.10000000000000009: what a report must not show.
    assert budget_after(Policy(epsilon_budget=1.0), 0.3 + 0.3 + 0.3) == 0.1
