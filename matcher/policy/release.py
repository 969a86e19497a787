"""Release: noise every cell of a job's true aggregates, then suppress the cells whose noisy
value is under ``k``.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from matcher.errors import InputError
from matcher.policy.accounting import EpsilonSplit, split_epsilon
from matcher.policy.noise import NoiseSource, gaussian_sigma
from matcher.policy.settings import Policy


def release(
    policy: Policy,
    aggregates: Mapping[str, Mapping[str, Any]],
    *,
    n_segments: int,
    noise: NoiseSource,
) -> dict[str, dict[str, Any]]:
    """Apply noise, then the threshold, to true aggregates ``{label: {"matched", "segments"}}``.

    Every cell gets noise at the per-cell scale of :func:`split_epsilon`; a cell whose *noisy*
    value is under ``k`` becomes ``None``. Deciding on the noisy value makes suppression
    post-processing of a DP output, so it costs no ε beyond the noise's and a list built to
    straddle ``k`` learns no more than the noise allows.
    """
    split = split_epsilon(policy, n_labels=len(aggregates), n_segments=n_segments)
    add_noise = _noise_adder(policy, split, noise)

    def released(true_count: int) -> int | None:
        noisy = true_count + add_noise()
        return None if noisy < max(policy.k, 0) or noisy < 0 else noisy

    report: dict[str, dict[str, Any]] = {}
    for label, cells in aggregates.items():
        segments = cells["segments"]
        if len(segments) != n_segments:
            raise InputError(
                f"label {label!r} has {len(segments)} segment counts, expected {n_segments}"
            )
        report[label] = {
            "matched": released(cells["matched"]),
            "segments": {name: released(count) for name, count in segments.items()},
        }
    return report


def _noise_adder(policy: Policy, split: EpsilonSplit, noise: NoiseSource) -> Callable[[], int]:
    if policy.noise == "none":
        return lambda: 0
    if policy.noise == "discrete_laplace":
        scale = 1.0 / split.per_cell  # sensitivity 1
        return lambda: noise.discrete_laplace(scale)
    sigma = gaussian_sigma(split.per_cell, split.per_cell_delta)
    return lambda: noise.gaussian_int(sigma)
