"""What hides the sizes the merchant sees: dummy matches added to each label's intersection
(:func:`dummy_count`) and, in the secure protocol, filler rows padding each stream
(:func:`stream_padding`). Both draw a shifted, truncated discrete Laplace paid from the
``dummies`` share of :func:`~matcher.policy.accounting.split_epsilon`.
"""

from __future__ import annotations

import math

from matcher.policy.accounting import split_epsilon
from matcher.policy.noise import NoiseSource
from matcher.policy.settings import Policy


def dummy_count(policy: Policy, noise: NoiseSource) -> int:
    """How many dummy matches to add to one label's intersection (0 when dummies are off).

    Shifted, truncated discrete Laplace: ``max(0, shift + DLap(scale))`` with
    ``scale = 1 / eps_d`` and ``shift = ceil(scale * ln(1 / delta_d)) + 1``, where
    ``(eps_d, delta_d)`` are the ``dummies`` / ``dummy_delta`` of :func:`split_epsilon`.
    The clamp at 0 is hit with probability ``alpha**shift / (1 + alpha) < delta_d``
    (``alpha = e**(-eps_d)``), so the merchant's view of a label's intersection size (true
    size + dummies) is ``(eps_d, delta_d)``-DP for one person added or removed. The mean is
    ``shift``: that many extra matches per label on average.
    """
    split = split_epsilon(policy, n_labels=1, n_segments=0)
    if not policy.dummies:
        return 0
    scale = 1.0 / split.dummies
    shift = _dummy_shift(scale, split.dummy_delta)
    return max(0, shift + noise.discrete_laplace(scale))


def stream_padding(policy: Policy, *, n_streams: int, noise: NoiseSource) -> int:
    """Secure protocol: extra filler rows for one of a job's ``n_streams`` streams, hiding its true
    size (a count of platform members, sensitivity 1) from the merchant.

    The same shifted, truncated discrete Laplace as :func:`dummy_count`, with the ``dummies`` share
    of ε and δ divided over the streams (a person is in each stream at most once, so the streams
    compose sequentially): each stream's size is ``(eps_d / n, delta_d / n)``-DP.
    """
    if not policy.dummies or n_streams < 1:
        return 0
    split = split_epsilon(policy, n_labels=1, n_segments=0)
    scale = n_streams / split.dummies
    return max(0, _dummy_shift(scale, split.dummy_delta / n_streams) + noise.discrete_laplace(scale))


def _dummy_shift(scale: float, delta: float) -> int:
    return math.ceil(scale * math.log(1.0 / delta)) + 1
