"""Tags: 16-byte prefixes of blinded points, in sorted pieces, for the unbalanced protocol's copies.

A copy is the set of tags that occur an odd number of times over its pieces (each sync appends the
toggles of one delta). 16 of 32 bytes: a false match between one of 10^9 stored tags and one of
10^7 queried ones has probability about 2^-68, and finding one on purpose would need b_s.
"""

from __future__ import annotations

import numpy as np

TAG_BYTES = 16


def tags_of(points: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(points[:, :TAG_BYTES])


def sort_tags(tags: np.ndarray) -> np.ndarray:
    hi, lo = _halves(tags)
    return np.ascontiguousarray(tags[np.lexsort((lo, hi))])


def compact(tag_pieces: list[np.ndarray]) -> np.ndarray:
    """One sorted piece holding the tags that occur an odd number of times over ``tag_pieces``."""
    tags = sort_tags(np.concatenate(tag_pieces)) if tag_pieces else np.empty((0, TAG_BYTES), np.uint8)
    if not len(tags):
        return tags
    hi, lo = _halves(tags)
    starts = np.flatnonzero(np.r_[True, (hi[1:] != hi[:-1]) | (lo[1:] != lo[:-1])])
    lengths = np.diff(np.r_[starts, len(tags)])
    return np.ascontiguousarray(tags[starts[lengths % 2 == 1]])


def present(tag_pieces: list[np.ndarray], query: np.ndarray) -> np.ndarray:
    """For each query tag, whether it is in the copy: it occurs in an odd number of the pieces."""
    hits = np.zeros(len(query), np.int64)
    qhi, qlo = _halves(query)
    for piece in tag_pieces:
        if not len(piece) or not len(query):
            continue
        hi, lo = _halves(piece)
        left = np.searchsorted(hi, qhi, "left")
        right = np.searchsorted(hi, qhi, "right")
        span = right - left
        one = np.flatnonzero(span == 1)
        hits[one] += lo[left[one]] == qlo[one]
        for i in np.flatnonzero(span > 1):  # equal first halves: about never
            hits[i] += int((lo[left[i]:right[i]] == qlo[i]).any())
    return hits % 2 == 1


def _halves(tags: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Big-endian halves: sorting them sorts the tags bytewise."""
    hi = np.ascontiguousarray(tags[:, :8]).view(">u8").ravel()
    lo = np.ascontiguousarray(tags[:, 8:TAG_BYTES]).view(">u8").ravel()
    return hi, lo


def first_of_each(tags: np.ndarray) -> np.ndarray:
    """Positions of the first occurrence of each distinct tag, in increasing order."""
    if not len(tags):
        return np.empty(0, np.int64)
    hi, lo = _halves(tags)
    order = np.lexsort((np.arange(len(tags)), lo, hi))
    hi, lo = hi[order], lo[order]
    starts = np.r_[True, (hi[1:] != hi[:-1]) | (lo[1:] != lo[:-1])]
    return np.sort(order[starts])
