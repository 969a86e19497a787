"""Release policy: what a job may ask for, how much privacy it spends, and what it may learn.

Pure functions only: no SQL, no gRPC, no clock. The server calls :func:`check_request`
before any cryptography runs, :func:`dummy_count` while streaming its audience,
:func:`release` on the decrypted aggregates, and records :meth:`Policy.digest` with each
decision so an auditor can check every release against the published policy.

One module per concern; import from here:

* :mod:`~matcher.policy.settings` -- the :class:`Policy` model: parsing, validation, digest.
* :mod:`~matcher.policy.admission` -- refusals (:func:`check_request`) and the choice of
  protocol (:func:`choose_protocol`).
* :mod:`~matcher.policy.accounting` -- the ε/δ split (:func:`split_epsilon`), a job's ε
  (:func:`job_epsilon`) and what is left of a budget (:func:`budget_after`).
* :mod:`~matcher.policy.dummies` -- dummy matches (:func:`dummy_count`) and the secure
  protocol's stream padding (:func:`stream_padding`).
* :mod:`~matcher.policy.noise` -- :class:`NoiseSource` and its OpenDP backend.
* :mod:`~matcher.policy.release` -- noising and ``k``-threshold suppression (:func:`release`).

Privacy accounting (per job; see :func:`split_epsilon`):

* The merchant learns each label's intersection size plus server-inserted dummy matches
  (:func:`dummy_count`), which costs ``dummies`` ε and δ per label.
* The released report holds, per label, the matched count and one count per segment;
  each gets noise calibrated to ``per_cell`` ε (discrete Laplace, or a discrete Gaussian
  with ``per_cell_delta``).
* Cells whose *noisy* value is under ``k`` are suppressed: post-processing of the noisy
  value, so inside the ε accounting (a threshold on the true count would tell a list built
  to straddle ``k`` one person's membership for free).
* Secure protocol: the ``dummies`` share pays for the DP padding of the stream sizes
  (:func:`stream_padding`) instead of dummy matches; the merchant sees no intersection size.

Noise comes from OpenDP's samplers (:class:`OpenDPNoise`), never from :mod:`random`;
callers may inject any :class:`NoiseSource` (tests use deterministic ones).
"""

from matcher.policy.accounting import EpsilonSplit, budget_after, job_epsilon, split_epsilon
from matcher.policy.admission import (
    UNBALANCED_MIN_AUDIENCE,
    UNBALANCED_MIN_RATIO,
    check_request,
    choose_protocol,
)
from matcher.policy.dummies import dummy_count, stream_padding
from matcher.policy.noise import NoiseSource, OpenDPNoise
from matcher.policy.release import release
from matcher.policy.settings import NOISE_KINDS, SETTABLE_KEYS, Policy

__all__ = [
    "NOISE_KINDS",
    "SETTABLE_KEYS",
    "UNBALANCED_MIN_AUDIENCE",
    "UNBALANCED_MIN_RATIO",
    "EpsilonSplit",
    "NoiseSource",
    "OpenDPNoise",
    "Policy",
    "budget_after",
    "check_request",
    "choose_protocol",
    "dummy_count",
    "job_epsilon",
    "release",
    "split_epsilon",
    "stream_padding",
]
