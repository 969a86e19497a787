"""The merchant's list as both protocols' sessions take it: checked, labelled, and shuffled."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from matcher.errors import InputError
from matcher.protocol.messages import MAX_CHUNK_ELEMENTS, MAX_LABELS


@dataclass(frozen=True)
class ShuffledList:
    """Match keys in a random order (nothing about the file's order reaches the platform), each with
    the index of its label in ``label_names`` (sorted)."""

    keys: list[str]
    label_idx: np.ndarray
    label_names: tuple[str, ...]
    kind_idx: np.ndarray | None = None  # each key's kind, an index into kind_names (None: one kind)
    kind_names: tuple[str, ...] = ()


def shuffled_list(keys: Sequence[str], labels: Sequence[str], rng: Callable[[int], bytes],
                  chunk_size: int, kinds: Sequence[str] | None = None) -> ShuffledList:
    """``kinds``: each key's kind, when the list holds several (the first one's kind comes first in
    ``kind_names``)."""
    if not keys:
        raise InputError("the merchant list is empty", hint="check the id column and the invalid-row counts")
    if len(keys) != len(labels):
        raise InputError("every key needs exactly one label")
    if kinds is not None and len(kinds) != len(keys):
        raise InputError("every key needs exactly one kind")
    if not 0 < chunk_size <= MAX_CHUNK_ELEMENTS:
        raise InputError(f"chunk size must be in 1..{MAX_CHUNK_ELEMENTS}")
    label_names = tuple(sorted(set(labels)))
    if len(label_names) > MAX_LABELS:
        raise InputError(f"{len(label_names)} labels; at most {MAX_LABELS} are allowed",
                         hint="merge small labels or run one job per group")
    index_of = {name: i for i, name in enumerate(label_names)}
    order = np.random.default_rng(int.from_bytes(rng(32), "big")).permutation(len(keys))
    kind_idx, kind_names = None, ()
    if kinds is not None and len(set(kinds)) > 1:
        kind_names = tuple(dict.fromkeys(kinds))
        kind_of = {name: i for i, name in enumerate(kind_names)}
        kind_idx = np.fromiter((kind_of[kinds[i]] for i in order), dtype=np.uint8, count=len(keys))
    return ShuffledList(keys=[keys[i] for i in order],
                        label_idx=np.fromiter((index_of[labels[i]] for i in order), dtype=np.uint8, count=len(keys)),
                        label_names=label_names, kind_idx=kind_idx, kind_names=kind_names)
