"""The release policy's settings: the :class:`Policy` model, parsing and validation of each
setting from a CLI string, and the digest an auditor checks every decision against.

What the settings mean for a job lives beside the code that applies them: refusals in
:mod:`matcher.policy.admission`, the ε/δ arithmetic in :mod:`matcher.policy.accounting`, noisy
release in :mod:`matcher.policy.release`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from matcher.errors import InputError
from matcher.protocol.messages import MAX_LABELS, PROTOCOL_CHOICES

NOISE_KINDS = ("none", "discrete_laplace", "gaussian")

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


def positive_finite(value: float) -> bool:
    return math.isfinite(value) and value > 0


_RULES: dict[str, _Rule] = {
    "min_list_size": _Rule(int, "an integer >= 1", lambda v: v >= 1),
    # Labels ride in the stream as small integers: the protocol's bound caps the setting.
    "max_labels": _Rule(int, f"an integer from 1 to {MAX_LABELS}", lambda v: 1 <= v <= MAX_LABELS),
    # k = 0 turns the threshold off: allowed, as noise "none" is, only when the operator says so.
    "k": _Rule(int, "an integer >= 0", lambda v: v >= 0),
    "noise": _Rule(str, f"one of {', '.join(NOISE_KINDS)}", lambda v: v in NOISE_KINDS),
    "epsilon_per_job": _Rule(float, "a finite number > 0", positive_finite),
    "delta_per_job": _Rule(float, f"a number > 0 and < {_MAX_DELTA}", lambda v: 0 < v < _MAX_DELTA),
    "epsilon_budget": _Rule(float, "a finite number > 0", positive_finite),
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
