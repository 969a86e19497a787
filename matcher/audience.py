"""Importing the platform's audience: normalize each member id, hash it to the group once, store it.

H(y) is the expensive per-member work and does not depend on any job, so it is done here, at
import, and cached in the store; each job then only blinds the cached points with a fresh scalar.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Sequence

from matcher import ids, tabular
from matcher.crypto import group
from matcher.crypto.kernels import Kernels
from matcher.errors import InputError
from matcher.store import MAX_SEGMENTS, Store

_TRUE = frozenset({"1", "true", "t", "yes", "y", "on", "x"})
_FALSE = frozenset({"", "0", "false", "f", "no", "n", "off"})


@dataclass
class ImportSummary:
    rows: int = 0
    imported: int = 0      # new members
    duplicates: int = 0    # valid rows whose member was already there (earlier in the file, or imported before)
    invalid: dict[str, int] = field(default_factory=dict)
    segments: list[str] = field(default_factory=list)
    members: int = 0


def parse_flag(value: str | None, column: str) -> bool:
    text = (value or "").strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ids.InvalidId(f"bad_segment_{column}", f"segment column {column!r} holds {value!r}, not a yes/no value")


def import_file(store: Store, path: str, *, id_column: str, id_type: str, segments: Sequence[str] = (),
                region: str = "CN", hashed_kind: str = "phone", kernels: Kernels | None = None,
                progress: Callable[[int], None] | None = None) -> ImportSummary:
    """Stream ``path`` into the store, a batch at a time. Invalid rows are counted per reason."""
    if len(segments) > MAX_SEGMENTS:
        raise InputError(f"{len(segments)} segments; at most {MAX_SEGMENTS} are supported")
    if len(set(segments)) != len(segments):
        raise InputError("segment names must be distinct")
    kind = ids.hash_kind(id_type, hashed_kind)
    dst = group.dst_for(kind)
    kernels = kernels or Kernels()
    summary = ImportSummary(segments=list(segments))
    invalid: Counter[str] = Counter()
    before = store.audience_info()["members"]

    def batches():
        for rows in tabular.read_columns(path, [id_column, *segments]):
            members, keys, bits = [], [], []
            for row in rows:
                try:
                    normalized = ids.normalize(row[0] or "", id_type, region=region)
                    mask = 0
                    for i, (column, value) in enumerate(zip(segments, row[1:])):
                        if parse_flag(value, column):
                            mask |= 1 << i
                except ids.InvalidId as bad:
                    invalid[bad.reason] += 1
                    continue
                key = ids.match_key(normalized, "sha256" if id_type == "sha256" else id_type, region=region)
                members.append(normalized)
                keys.append(key)
                bits.append(mask)
            summary.rows += len(rows)
            if progress:
                progress(len(rows))
            if not keys:
                continue
            points = kernels.hash_to_curve([k.encode() for k in keys], dst)
            yield [(m, k, points[32 * i:32 * i + 32], b) for i, (m, k, b) in enumerate(zip(members, keys, bits))]

    valid = store.import_audience(batches(), id_kind=kind, segments=segments)
    summary.invalid = dict(invalid)
    summary.members = store.audience_info()["members"]
    # Duplicates are left to the table's unique key (memory stays bounded by one batch): a valid row
    # that did not add a member repeated one seen earlier in this file or in an earlier import.
    summary.imported = summary.members - before
    summary.duplicates = valid - summary.imported
    return summary
