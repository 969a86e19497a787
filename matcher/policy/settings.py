"""Release policy: what a job may ask for, how much privacy it spends, and what it may learn.

Pure functions only: no SQL, no gRPC, no clock. The server calls :func:`check_request`
before any cryptography runs, :func:`dummy_count` while streaming its audience,
:func:`release` on the decrypted aggregates, and records :meth:`Policy.digest` with each
decision so an auditor can check every release against the published policy.

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

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, Mapping, Protocol

from matcher.errors import InputError, PolicyRefused
from matcher.protocol.messages import PROTOCOL_CHOICES

NOISE_KINDS = ("none", "discrete_laplace", "gaussian")
PROTOCOL_MAX_LABELS = 32  # labels ride in the stream as small integers; see design.md

_PERIOD_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_PERIOD_PATTERN = re.compile(r"^([1-9][0-9]*)([smhdw])$")
_TRUE_WORDS = frozenset({"on", "true", "yes", "1"})
_FALSE_WORDS = frozenset({"off", "false", "no", "0"})
_MAX_DELTA = 0.01


@dataclass(frozen=True)
class Policy:
    """One operator's (or one merchant's overridden) release policy. Validated on construction."""

    min_list_size: int = 100
    max_labels: int = 32
    k: int = 50
    noise: str = "discrete_laplace"
    # A merchant's whole year is worth e^1 in likelihood ratio about any one person (README).
    epsilon_per_job: float = 0.1
    delta_per_job: float = 1e-6
    epsilon_budget: float = 1.0
    budget_period: str = "365d"
    jobs_per_hour: int = 10
    dummies: bool = True
    dummy_epsilon_share: float = 0.1
    max_list_size: int = 10_000_000
    activation_ttl: str = "30d"
    # Secure protocol: filler values per stream whose blinding the platform checks.
    audit_rows: int = 4096
    # The older protocol in which the merchant matches and sums: safe only against honest clients.
    semi_honest_match: bool = False
    # Which protocol a job runs: auto (by the sizes, UNBALANCED_RULE), balanced or unbalanced.
    protocol: str = "auto"

    def __post_init__(self) -> None:
        for key, rule in _RULES.items():
            value = rule.coerce(key, getattr(self, key))
            # Frozen dataclass: coercion (1 -> 1.0, "30D" -> "30d") keeps digests canonical.
            object.__setattr__(self, key, value)
        if self.min_list_size > self.max_list_size:
            raise InputError(
                f"min_list_size ({self.min_list_size}) is above max_list_size ({self.max_list_size})",
                hint="raise max_list_size or lower min_list_size",
            )

    @property
    def budget_period_seconds(self) -> int:
        return _period_seconds(self.budget_period)

    @property
    def activation_ttl_seconds(self) -> int:
        """How long an activated audience lives before it is deleted with its rows."""
        return _period_seconds(self.activation_ttl)

    def with_setting(self, key: str, value: str) -> Policy:
        """A copy with ``key`` set from a CLI string (``"0.3"``, ``"on"``, ``"12h"``)."""
        rule = _RULES.get(key)
        if rule is None:
            raise InputError(
                f"unknown policy setting {key!r}",
                hint=f"known settings: {', '.join(SETTABLE_KEYS)}",
            )
        return dataclasses.replace(self, **{key: rule.parse(key, value)})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Policy:
        """Inverse of :meth:`to_dict`; missing keys take defaults, unknown keys are refused."""
        unknown = sorted(set(data) - set(SETTABLE_KEYS))
        if unknown:
            raise InputError(
                f"unknown policy setting(s): {', '.join(unknown)}",
                hint=f"known settings: {', '.join(SETTABLE_KEYS)}",
            )
        return cls(**data)

    def digest(self) -> str:
        """SHA-256 hex of the canonical JSON (sorted keys, no spaces) of :meth:`to_dict`."""
        canonical = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class _Rule:
    """How one setting is parsed from a CLI string and which values it may take."""

    kind: type
    allowed: str
    accepts: Callable[[Any], bool]

    def parse(self, key: str, text: str) -> Any:
        raw = text.strip() if isinstance(text, str) else text
        try:
            if self.kind is bool:
                value = _parse_switch(raw)
            elif self.kind is int:
                value = int(raw)
            elif self.kind is float:
                value = float(raw)
            else:
                value = raw.lower() if isinstance(raw, str) else raw
        except (TypeError, ValueError):
            raise self._refusal(key, text) from None
        return self.coerce(key, value, shown=text)

    def coerce(self, key: str, value: Any, *, shown: Any = None) -> Any:
        shown = value if shown is None else shown
        # bool is an int subclass: True must not pass as a list size.
        if self.kind is bool:
            ok_type = isinstance(value, bool)
        elif self.kind is int:
            ok_type = isinstance(value, int) and not isinstance(value, bool)
        elif self.kind is float:
            ok_type = isinstance(value, (int, float)) and not isinstance(value, bool)
            if ok_type:
                value = float(value)
        else:
            ok_type = isinstance(value, str)
        if not ok_type or not self.accepts(value):
            raise self._refusal(key, shown)
        return value

    def _refusal(self, key: str, shown: Any) -> InputError:
        return InputError(
            f"invalid value {shown!r} for policy setting {key}",
            hint=f"{key} must be {self.allowed}",
        )


def _parse_switch(text: str) -> bool:
    word = text.lower()
    if word in _TRUE_WORDS:
        return True
    if word in _FALSE_WORDS:
        return False
    raise ValueError(text)


def _period_seconds(text: str) -> int:
    count, unit = _PERIOD_PATTERN.match(text).groups()
    return int(count) * _PERIOD_UNITS[unit]


_PERIOD_RULE_TEXT = "a positive whole number followed by s, m, h, d or w (e.g. 30d, 12h)"


def _positive_finite(value: float) -> bool:
    return math.isfinite(value) and value > 0


_RULES: dict[str, _Rule] = {
    "min_list_size": _Rule(int, "an integer >= 1", lambda v: v >= 1),
    "max_labels": _Rule(
        int, f"an integer from 1 to {PROTOCOL_MAX_LABELS}", lambda v: 1 <= v <= PROTOCOL_MAX_LABELS
    ),
    # k = 0 turns the threshold off: allowed, as noise "none" is, only when the operator says so.
    "k": _Rule(int, "an integer >= 0", lambda v: v >= 0),
    "noise": _Rule(str, f"one of {', '.join(NOISE_KINDS)}", lambda v: v in NOISE_KINDS),
    "epsilon_per_job": _Rule(float, "a finite number > 0", _positive_finite),
    "delta_per_job": _Rule(float, f"a number > 0 and < {_MAX_DELTA}", lambda v: 0 < v < _MAX_DELTA),
    "epsilon_budget": _Rule(float, "a finite number > 0", _positive_finite),
    "budget_period": _Rule(str, _PERIOD_RULE_TEXT, lambda v: _PERIOD_PATTERN.match(v) is not None),
    "activation_ttl": _Rule(str, _PERIOD_RULE_TEXT, lambda v: _PERIOD_PATTERN.match(v) is not None),
    "jobs_per_hour": _Rule(int, "an integer >= 0 (0 pauses matching)", lambda v: v >= 0),
    "dummies": _Rule(bool, "on or off", lambda v: True),
    "dummy_epsilon_share": _Rule(
        float, "a number strictly between 0 and 1", lambda v: 0 < v < 1
    ),
    "max_list_size": _Rule(int, "an integer >= 1", lambda v: v >= 1),
    "audit_rows": _Rule(int, "an integer from 1 to 1000000", lambda v: 1 <= v <= 1_000_000),
    "semi_honest_match": _Rule(bool, "on or off", lambda v: True),
    "protocol": _Rule(str, f"one of {', '.join(PROTOCOL_CHOICES)}", lambda v: v in PROTOCOL_CHOICES),
}

SETTABLE_KEYS: tuple[str, ...] = tuple(_RULES)


# protocol "auto": the unbalanced protocol once the audience is this large and this many times the list.
UNBALANCED_MIN_AUDIENCE = 1_000_000
UNBALANCED_MIN_RATIO = 10


def choose_protocol(policy: Policy, *, requested: str, audience_size: int, list_size: int,
                    client_can_enroll: bool) -> str:
    """"balanced" or "unbalanced" for a secure job. The operator's fixed choice wins; under "auto" the
    merchant's wish does, else the sizes (UNBALANCED_MIN_AUDIENCE, UNBALANCED_MIN_RATIO). A client
    without an enrollment key runs balanced unless the operator requires unbalanced (then refused)."""
    wish = requested or "auto"
    if policy.protocol != "auto" and wish not in ("auto", policy.protocol):
        raise PolicyRefused(f"this server runs the {policy.protocol} protocol only (policy 'protocol'); the job "
                            f"asked for {wish}", reason="protocol_not_allowed",
                            hint=f"run the job with --protocol auto or {policy.protocol}")
    chosen = policy.protocol if policy.protocol != "auto" else wish
    if chosen == "auto":
        big = audience_size >= UNBALANCED_MIN_AUDIENCE and audience_size >= UNBALANCED_MIN_RATIO * list_size
        chosen = "unbalanced" if big and client_can_enroll else "balanced"
    if chosen == "unbalanced" and not client_can_enroll:
        raise PolicyRefused("this server runs the unbalanced protocol, and this client sent no enrollment key",
                            reason="protocol_not_allowed", hint="upgrade matcher-client")
    return chosen


def check_request(
    policy: Policy, *, list_size: int, label_sizes: Mapping[str, int], n_segments: int
) -> None:
    """Refuse a job before any crypto: raise :class:`PolicyRefused` with a stable ``reason``.

    ``label_sizes`` counts unique IDs per label; an unlabeled list is ``{"all": list_size}``.
    """
    if n_segments < 0:
        raise InputError(f"n_segments must be >= 0, got {n_segments}")
    if sum(label_sizes.values()) != list_size:
        raise InputError(
            f"label sizes add up to {sum(label_sizes.values())}, not to the list size {list_size}"
        )
    if list_size > policy.max_list_size:
        raise PolicyRefused(
            f"list has {list_size} unique IDs; this server accepts at most {policy.max_list_size}",
            reason="list_too_large",
            hint="split the list into several jobs",
        )
    if list_size < policy.min_list_size:
        raise PolicyRefused(
            f"list has {list_size} unique IDs; this server requires at least {policy.min_list_size}",
            reason="list_too_small",
            hint="submit a larger list",
        )
    if len(label_sizes) > policy.max_labels:
        raise PolicyRefused(
            f"list has {len(label_sizes)} labels; this server allows at most {policy.max_labels}",
            reason="too_many_labels",
            hint="merge labels or drop the label column",
        )
    small = [label for label, size in label_sizes.items() if size < policy.min_list_size]
    if small:
        named = ", ".join(f"{label!r} ({label_sizes[label]})" for label in small)
        raise PolicyRefused(
            f"every label needs at least {policy.min_list_size} unique IDs; too small: {named}",
            reason="label_too_small",
            hint="merge the small labels into others or drop the label column",
        )


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

    Rounded to 12 decimals so that, e.g., ten jobs of 0.1 exactly exhaust a budget of 1.0
    instead of leaving a refusal-causing 1e-16 short.
    """
    return max(0.0, round(policy.epsilon_budget - spent, 12))


class NoiseSource(Protocol):
    """Integer noise for counts; inject a deterministic one in tests."""

    def discrete_laplace(self, scale: float) -> int: ...

    def gaussian_int(self, sigma: float) -> int: ...


class OpenDPNoise:
    """:class:`NoiseSource` backed by OpenDP's samplers (discrete Laplace, discrete Gaussian)."""

    def __init__(self) -> None:
        import opendp.prelude as dp

        # OpenDP gates its not-yet-vetted constructors behind this flag, measurements
        # over integers included.
        dp.enable_features("contrib")
        self._dp = dp
        self._samplers: dict[tuple[str, float], Callable[[int], int]] = {}

    def discrete_laplace(self, scale: float) -> int:
        return self._sampler("laplace", scale)(0)

    def gaussian_int(self, sigma: float) -> int:
        return self._sampler("gaussian", sigma)(0)

    def _sampler(self, kind: str, scale: float) -> Callable[[int], int]:
        if not _positive_finite(scale):
            raise InputError(f"noise scale must be a finite number > 0, got {scale!r}")
        key = (kind, float(scale))
        sampler = self._samplers.get(key)
        if sampler is None:
            dp = self._dp
            make = dp.m.make_laplace if kind == "laplace" else dp.m.make_gaussian
            sampler = make(dp.atom_domain(T=int), dp.absolute_distance(T=int), scale=float(scale))
            self._samplers[key] = sampler
        return sampler


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


def _noise_adder(policy: Policy, split: EpsilonSplit, noise: NoiseSource) -> Callable[[], int]:
    if policy.noise == "none":
        return lambda: 0
    if policy.noise == "discrete_laplace":
        scale = 1.0 / split.per_cell  # sensitivity 1
        return lambda: noise.discrete_laplace(scale)
    sigma = _gaussian_sigma(split.per_cell, split.per_cell_delta)
    return lambda: noise.gaussian_int(sigma)


@lru_cache(maxsize=256)
def _gaussian_sigma(epsilon: float, delta: float) -> float:
    """Smallest discrete-Gaussian sigma (sensitivity 1) that OpenDP certifies (epsilon, delta)-DP.

    OpenDP accounts the integer Gaussian in zero-concentrated DP and converts that to (ε, δ);
    going through zCDP costs a little: about 7% more sigma than the continuous analytic
    Gaussian (Balle & Wang 2018) at ε = 0.25, δ = 2.5e-7, never less.
    """
    import opendp.prelude as dp

    dp.enable_features("contrib")

    def epsilon_at(sigma: float) -> float:
        gaussian = dp.m.make_gaussian(dp.atom_domain(T=int), dp.absolute_distance(T=int), scale=sigma)
        return dp.c.make_zCDP_to_approxDP(gaussian).map(1).epsilon(delta)

    low, high = 1e-3, 1.0
    while epsilon_at(high) > epsilon:
        low, high = high, high * 2
    # Bisect to 1e-9 relative; `high` always satisfies the guarantee.
    while high - low > 1e-9 * high:
        middle = (low + high) / 2
        if epsilon_at(middle) > epsilon:
            low = middle
        else:
            high = middle
    return high
