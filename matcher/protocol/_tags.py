"""Tags: 16-byte prefixes of blinded points, for the unbalanced protocol's stored copies.

A tag is one numpy ``V16`` item, so that sorting and binary search compare whole tags bytewise in
C. A copy is the set of tags that occur an odd number of times over its pieces (each sync appends
the toggles of one delta); tags within one piece are distinct. 16 of 32 bytes: a false match
between one of 10^9 stored tags and one of 10^7 queried ones has probability about 2^-68, and
finding one on purpose would need b_s.

Pieces are stored per bucket (the tag's leading bits), so that a job reads only the buckets its
own list's tags fall in, not the whole copy.
"""

from __future__ import annotations

import numpy as np

TAG_BYTES = 16
_TAG = f"V{TAG_BYTES}"
# About this many tags per stored bucket (4 KiB): a job reads one bucket per tag of its list.
BUCKET_TAGS = 256
MAX_BUCKET_BITS = 24


def tags_of(points: np.ndarray) -> np.ndarray:
    """The tag of each (n, 32) point, as an (n,) array of V16."""
    return np.ascontiguousarray(points[:, :TAG_BYTES]).view(_TAG).ravel()


def empty_tags(n: int) -> np.ndarray:
    return np.empty(n, _TAG)


def from_bytes(data: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype=_TAG)


def sort_tags(tags: np.ndarray) -> np.ndarray:
    return np.sort(tags)


def present(sorted_pieces: list[np.ndarray], query: np.ndarray) -> np.ndarray:
    """For each query tag, whether it is in the copy: it occurs an odd number of times over the
    pieces, each sorted (a tag may repeat within one). Searched piece by piece, not joined: the
    toggles of a merchant's first job are the whole copy."""
    count = np.zeros(len(query), np.int64)
    for piece in sorted_pieces:
        if len(piece) and len(query):
            count += np.searchsorted(piece, query, "right") - np.searchsorted(piece, query, "left")
    return count % 2 == 1


def compact(tag_pieces: list[np.ndarray]) -> np.ndarray:
    """One sorted piece holding the tags that occur an odd number of times over ``tag_pieces``."""
    if not tag_pieces:
        return np.empty(0, _TAG)
    unique, counts = np.unique(np.concatenate(tag_pieces), return_counts=True)
    return unique[counts % 2 == 1]


def first_of_each(tags: np.ndarray) -> np.ndarray:
    """Positions of the first occurrence of each distinct tag, in increasing order."""
    return np.sort(np.unique(tags, return_index=True)[1])


def bucket_bits(expected_tags: int) -> int:
    """Leading bits that split a copy of about ``expected_tags`` into buckets of ~BUCKET_TAGS."""
    return min(MAX_BUCKET_BITS, max(0, int(np.ceil(np.log2(max(1, expected_tags) / BUCKET_TAGS)))))


def buckets(tags: np.ndarray, bits: int) -> np.ndarray:
    """The bucket of each tag: its first ``bits`` bits, as uint32. Read in place from the tags'
    leading 4 bytes (no copy of the tags: a first sync's toggles are a whole copy)."""
    if bits == 0 or not len(tags):
        return np.zeros(len(tags), np.uint32)
    lead = np.ascontiguousarray(tags).view(">u4")[::TAG_BYTES // 4]
    return lead >> np.uint32(32 - bits)
