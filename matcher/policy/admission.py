"""Admission: which jobs a policy refuses before any cryptography runs, and which protocol a
secure job runs. Each refusal is a :class:`~matcher.errors.PolicyRefused` with a stable ``reason``.
"""

from __future__ import annotations

from typing import Mapping

from matcher.errors import InputError, PolicyRefused
from matcher.policy.settings import Policy

# protocol "auto": the unbalanced protocol once the audience is this large and this many times the list.
UNBALANCED_MIN_AUDIENCE = 1_000_000
UNBALANCED_MIN_RATIO = 10


def choose_protocol(policy: Policy, *, requested: str, audience_size: int, list_size: int,
                    client_can_enroll: bool, several_identifiers: bool = False) -> str:
    """"balanced" or "unbalanced" for a secure job. The operator's fixed choice wins; under "auto" the
    merchant's wish does, else the sizes (UNBALANCED_MIN_AUDIENCE, UNBALANCED_MIN_RATIO). A client
    without an enrollment key runs balanced unless the operator requires unbalanced (then refused).
    ``several_identifiers`` (the audience's columns, or the list's): the unbalanced protocol keeps
    copies of one identifier a member, so "auto" runs balanced and "unbalanced" is refused."""
    wish = requested or "auto"
    if several_identifiers:
        if "unbalanced" in (policy.protocol, wish):
            raise PolicyRefused("the unbalanced protocol matches one identifier a person, and this job has several "
                                "(in the audience or in the list)", reason="protocol_not_allowed",
                                hint="run the job with --protocol balanced (or auto), or with one --id-column")
        return "balanced"
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
