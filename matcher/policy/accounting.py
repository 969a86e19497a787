"""Privacy accounting: how one job's ε and δ divide between dummies and released cells, what a
job reserves from the merchant's budget, and what is left of it.
"""

from __future__ import annotations

from dataclasses import dataclass

from matcher.errors import InputError
from matcher.policy.settings import Policy


@dataclass(frozen=True)
class EpsilonSplit:
    """How one job's ε (and δ) is divided; see :func:`split_epsilon`.

    ``per_cell`` and ``per_cell_delta`` are 0.0 when cells carry no noise (noise ``none``);
    ``dummies`` and ``dummy_delta`` are 0.0 when dummies are off.
    """

    dummies: float
    per_cell: float
    cells: int
    dummy_delta: float = 0.0
    per_cell_delta: float = 0.0


def split_epsilon(policy: Policy, *, n_labels: int, n_segments: int) -> EpsilonSplit:
    """Divide ``epsilon_per_job`` between the dummy matches and the released cells.

    Composition rule (basic sequential composition, add/remove-one-person neighbours):

    * The released report has ``cells = n_labels * (1 + n_segments)`` counts: per label,
      its matched count and one count per segment. A person sits in at most one label
      (labels are disjoint after de-duplication), so labels compose in *parallel*; within
      its label a person changes each of the ``1 + n_segments`` counts by at most 1, which
      compose *sequentially*. Hence ``per_cell = release_eps / (1 + n_segments)``, whatever
      the number of labels.
    * The dummies hide each label's exact intersection size (sensitivity 1, disjoint across
      labels, so again parallel): every label's dummy count uses the whole ``dummies`` ε.
    * ``dummies = dummy_epsilon_share * epsilon_per_job`` when dummies are on, and
      ``release_eps`` is the rest when noise is on. The job's total is their sum
      (:func:`job_epsilon`), which is ``epsilon_per_job`` when both are on.

    δ (``delta_per_job``) is split the same way: the dummies need a δ for their truncation;
    Gaussian cells need one each; discrete Laplace cells are pure ε-DP and need none.
    """
    if n_labels < 0 or n_segments < 0:
        raise InputError(f"n_labels and n_segments must be >= 0, got {n_labels}, {n_segments}")
    cells_per_label = 1 + n_segments
    eps, delta = policy.epsilon_per_job, policy.delta_per_job
    gaussian = policy.noise == "gaussian"
    noisy_cells = policy.noise != "none"

    dummy_eps = eps * policy.dummy_epsilon_share if policy.dummies else 0.0
    dummy_delta = 0.0
    if policy.dummies:
        dummy_delta = delta * policy.dummy_epsilon_share if gaussian else delta
    release_eps = eps - dummy_eps if noisy_cells else 0.0
    release_delta = delta - dummy_delta if gaussian else 0.0
    return EpsilonSplit(
        dummies=dummy_eps,
        per_cell=release_eps / cells_per_label,
        cells=n_labels * cells_per_label,
        dummy_delta=dummy_delta,
        per_cell_delta=release_delta / cells_per_label,
    )


def job_epsilon(policy: Policy) -> float:
    """The ε a job reserves from the budget (0.0 when noise is ``none`` and dummies are off)."""
    split = split_epsilon(policy, n_labels=1, n_segments=0)
    return split.dummies + split.per_cell


def budget_after(policy: Policy, spent: float) -> float:
    """ε left in the current period after ``spent``; never negative.

    Rounded to 12 decimals so that, e.g., ten jobs of 0.1 leave exactly 0.0 of a budget of 1.0,
    not the float sum's 1.1e-16. (Admission compares with its own 1e-9 tolerance:
    ``Store.open_job``.)
    """
    return max(0.0, round(policy.epsilon_budget - spent, 12))
