"""Importing the platform's audience: normalize each member id, hash it to the group once, store it.

H(y) is the expensive per-member work and does not depend on any job, so it is done here, at
import, and cached in the store; each job then only blinds the cached points with a fresh scalar.

Bad values, and what each does to an import:

* a segment value that is not a yes/no word (``1/0``, ``true/false``, ``yes/no``, any case; also
  ``t/f``, ``y/n``, ``on/off``, and ``x`` for yes) fails the whole import before anything is written,
  naming how many rows and the first few lines, columns and values. A blank (or missing) value is
  bad too: guessing "no" would silently take the member out of the segment. With
  ``skip_invalid=True`` those rows are skipped instead, counted under ``bad_segment_<column>``.
  A row with a bad segment value counts under that reason whatever its id;
* an id that does not normalize (see :mod:`matcher.ids`) never fails an import on its own, as
  before: the row is skipped and counted per reason, and the first few are reported with their
  lines. Only a file in which *no* row is valid fails (wrong ``--id-column``/``--id-type``/``--region``
  is far likelier than a file of garbage), and then nothing is written.
"""

from __future__ import annotations

import functools
import itertools
import multiprocessing
from collections import Counter, deque
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

from matcher import ids, tabular
from matcher.crypto import group
from matcher.crypto.kernels import Kernels
from matcher.errors import InputError
from matcher.server.store import MAX_SEGMENTS, MemberRow, Store

_TRUE = frozenset({"1", "true", "t", "yes", "y", "on", "x"})
_FALSE = frozenset({"0", "false", "f", "no", "n", "off"})
# How many bad rows a message or a summary spells out (line, column, value).
EXAMPLES = 5
# Longer values are cut in messages (an id column holding a whole JSON blob, say).
_SHOWN_CHARS = 40
SEGMENT_REASON = "bad_segment_"


@dataclass
class BadValue:
    """One rejected value and where it is: ``line`` is the file line (CSV) or data row (Parquet)."""

    line: int
    column: str
    value: str | None
    reason: str


IMPORT_MODES = ("upsert", "replace")


@dataclass
class ImportSummary:
    rows: int = 0
    imported: int = 0      # new members
    duplicates: int = 0    # valid rows whose member was already there (earlier in the file, or imported before)
    unchanged: int = 0     # of those, rows already in the audience with the same segments: not written again
    invalid: dict[str, int] = field(default_factory=dict)  # skipped rows per reason (bad_segment_<column>, ...)
    segments: list[str] = field(default_factory=list)
    members: int = 0
    removed: int = 0       # members the file did not name, taken out by --mode replace (or by `audience remove`)
    # Further identifiers (columns after the first) left out of a member that was imported: per
    # ``column:reason`` when the value does not normalize (a blank one is no identifier, not a fault).
    dropped_identifiers: dict[str, int] = field(default_factory=dict)
    shared_identifiers: int = 0  # further identifiers another member holds already: they stay with it
    id_columns: list[str] = field(default_factory=list)  # COLUMN:TYPE of each identifier column
    bad_segments: list[BadValue] = field(default_factory=list)  # the first EXAMPLES rows skipped for a segment
    bad_ids: list[BadValue] = field(default_factory=list)       # the first EXAMPLES rows skipped for their id

    @property
    def skipped_segments(self) -> int:
        return sum(n for reason, n in self.invalid.items() if reason.startswith(SEGMENT_REASON))

    @property
    def skipped_ids(self) -> int:
        return sum(n for reason, n in self.invalid.items() if not reason.startswith(SEGMENT_REASON))


def parse_flag(value: str | None, column: str) -> bool:
    text = (value or "").strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    what = "is blank" if not text else f"holds {value!r}"
    raise ids.InvalidId(f"{SEGMENT_REASON}{column}", f"segment column {column!r} {what}, not a yes/no value")


def describe(path: str, bad: Sequence[BadValue], count: int) -> str:
    """``line 4 column 'paid' 'maybe', line 9 column 'member' ''`` (``, ...`` when there are more)."""
    shown = ", ".join(f"{tabular.location(path, b.line)} column '{b.column}' {_show(b.value)}" for b in bad)
    return shown + (", ..." if count > len(bad) else "")


def _show(value: str | None) -> str:
    text = value or ""
    return repr(text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS] + "...")


def _rows(count: int) -> str:
    return f"{count} row{'' if count == 1 else 's'}"


def segment_problem(path: str, summary: ImportSummary) -> str:
    """How many rows have a bad segment value, and the first few (for errors and reports)."""
    count = summary.skipped_segments
    verb = "has an" if count == 1 else "have"
    value = "value" if count == 1 else "values"
    return f"{_rows(count)} {verb} invalid segment {value}: {describe(path, summary.bad_segments, count)}"


def id_problem(path: str, summary: ImportSummary) -> str:
    """How many rows have an id that does not normalize, per reason, and the first few."""
    count = summary.skipped_ids
    reasons = ", ".join(f"{r}: {n}" for r, n in sorted(summary.invalid.items()) if not r.startswith(SEGMENT_REASON))
    verb = "has an" if count == 1 else "have"
    noun = "id" if count == 1 else "ids"
    return f"{_rows(count)} {verb} invalid {noun} ({reasons}): {describe(path, summary.bad_ids, count)}"


_SEGMENT_HINT = ("segment values must be 1/0, true/false or yes/no (blank is not 'no'); fix the file, "
                 "or pass --skip-invalid to import the other rows")


def import_file(store: Store, path: str, *, id_column: str | None = None, id_type: str | None = None,
                id_columns: Sequence[ids.IdColumn] | None = None, segments: Sequence[str] = (),
                region: str = "CN", hashed_kind: str = "phone", kernels: Kernels | None = None,
                progress: Callable[[int], None] | None = None, skip_invalid: bool = False,
                workers: int = 1, drop_segments: Sequence[str] = (), delimiter: str | None = None,
                mode: str = "upsert") -> ImportSummary:
    """Stream ``path`` into the store, a batch at a time. Invalid rows are counted per reason;
    ``workers`` processes normalize the ids (start-up costs a second or two: for large files).

    The identifiers: ``id_column`` of ``id_type``, or several ``id_columns`` (a phone, an email, an
    OpenID ...: :func:`matcher.ids.parse_id_columns`). The first is the member's key: a row without
    a valid one is skipped, as with one column. The others are the member's further identifiers,
    each optional; a person matches through any of them and counts once (see
    :meth:`Store.import_audience` for who keeps an identifier two members share).
    ``segments`` must name every segment the audience has, except those in ``drop_segments``
    (removed from every member once the file's segment values have passed their check); any it
    lacks are added (see :meth:`Store.segments_after_import`).

    ``mode``: ``upsert`` adds new members, updates the ones it names and keeps the others;
    ``replace`` also removes every member the file does not name, when the import ends.

    A bad segment value raises :class:`InputError` before anything is written unless
    ``skip_invalid``; then, like a row with an invalid id, its row is skipped. A file none of whose
    rows is valid raises too, writing nothing. See the module docstring."""
    if len(segments) > MAX_SEGMENTS:
        raise InputError(f"{len(segments)} segments; at most {MAX_SEGMENTS} are supported")
    if len(set(segments)) != len(segments):
        raise InputError("segment names must be distinct")
    if mode not in IMPORT_MODES:
        raise InputError(f"unknown import mode {mode!r}", hint=f"use one of {', '.join(IMPORT_MODES)}")
    columns = ids.id_columns_of(id_columns, id_column=id_column, id_type=id_type, hashed_kind=hashed_kind)
    # A segment the audience lacks becomes a new column after the existing ones, whatever order the
    # flag lists them in: each segment keeps its bit (see Store.segments_after_import).
    segments = store.segments_after_import(segments, drop_segments)
    with tabular.rereadable(path) as readable:
        if segments and not skip_invalid:
            checked = _check_segments(readable, path, columns[0].column, segments, delimiter)
            if checked.skipped_segments:
                raise InputError(f"{path}: {segment_problem(path, checked)}; nothing was imported",
                                 hint=_SEGMENT_HINT)
        store.drop_segments(drop_segments)
        return _import(store, readable, path, columns=columns, segments=segments, region=region,
                       kernels=kernels or Kernels(), progress=progress, workers=workers, delimiter=delimiter,
                       replace=mode == "replace")


def _check_segments(path: str, name: str, id_column: str, segments: Sequence[str],
                    delimiter: str | None = None) -> ImportSummary:
    """A cheap first pass (no id work): every bad segment value, before the import writes anything."""
    checked = ImportSummary(segments=list(segments))
    invalid: Counter[str] = Counter()
    for rows in tabular.read_columns(path, [id_column, *segments], line_numbers=True, name=name, delimiter=delimiter):
        for line, _, *values in rows:
            _bad_segment(line, segments, values, invalid, checked.bad_segments)
    checked.invalid = dict(invalid)
    return checked


def _bad_segment(line: int, segments: Sequence[str], values, invalid: Counter, examples: list) -> int | None:
    """The row's segment bits, or None (counted, and kept as an example while there are few) if one is bad."""
    mask = 0
    for i, (column, value) in enumerate(zip(segments, values)):
        try:
            if parse_flag(value, column):
                mask |= 1 << i
        except ids.InvalidId as bad:
            invalid[bad.reason] += 1
            if len(examples) < EXAMPLES:
                examples.append(BadValue(line, column, value, bad.reason))
            return None
    return mask


@dataclass
class _Normalized:
    """One batch of rows, normalized (in a worker process, when the import has several)."""

    rows: int
    members: list[str]
    keys: list[str]
    bits: list[int]
    invalid: Counter
    bad_segments: list[BadValue]
    bad_ids: list[BadValue]
    # Per member: its further identifiers as (slot, kind, match key), when there are further columns.
    further: list[tuple[tuple[int, str, str], ...]] = field(default_factory=list)
    dropped: Counter = field(default_factory=Counter)  # further identifiers left out, per column:reason


def _normalize(rows: Sequence, segments: Sequence[str], columns: Sequence[ids.IdColumn], region: str) -> _Normalized:
    batch = _Normalized(len(rows), [], [], [], Counter(), [], [])
    first, others = columns[0], tuple(enumerate(columns[1:], 1))
    for line, raw, *values in rows:
        further_raw, values = values[:len(others)], values[len(others):]
        # Segments first: a row with a bad segment value counts under that reason whatever its
        # id, so the count matches the check that fails an import without --skip-invalid.
        mask = _bad_segment(line, segments, values, batch.invalid, batch.bad_segments)
        if mask is None:
            continue
        try:
            normalized = ids.normalize(raw or "", first.id_type, region=region)
        except ids.InvalidId as bad:
            batch.invalid[bad.reason] += 1
            if len(batch.bad_ids) < EXAMPLES:
                batch.bad_ids.append(BadValue(line, first.column, raw, bad.reason))
            continue
        key = ids.match_key(normalized, "sha256" if first.id_type == "sha256" else first.id_type, region=region)
        batch.members.append(normalized)
        batch.keys.append(key)
        batch.bits.append(mask)
        if others:
            batch.further.append(_further_identifiers(others, further_raw, (first.kind, key), region, batch.dropped))
    return batch


def _further_identifiers(columns, values, first: tuple[str, str], region: str, dropped: Counter):
    """A member's further identifiers, ``(slot, kind, match key)``: one each, none equal to its first."""
    held, seen = [], {first}
    for (slot, column), raw in zip(columns, values):
        if raw is None or not str(raw).strip():
            continue
        try:
            key = ids.match_key(raw, column.id_type, region=region)
        except ids.InvalidId as bad:
            dropped[f"{column.column}:{bad.reason}"] += 1
            continue
        if (column.kind, key) not in seen:
            seen.add((column.kind, key))
            held.append((slot, column.kind, key))
    return tuple(held)


def _normalized_batches(path: str, name: str, columns: Sequence[str], workers: int, work,
                        delimiter: str | None = None) -> Iterator[_Normalized]:
    """``work(rows)`` of each batch of the file, in file order: on ``workers`` processes (reading
    ahead a little), since phonenumbers is the import's slowest step, or here when there is one."""
    batches = tabular.read_columns(path, list(columns), line_numbers=True, name=name, delimiter=delimiter)
    if workers <= 1:
        yield from map(work, batches)
        return
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        pending: deque[Future] = deque()
        for rows in batches:
            pending.append(pool.submit(work, rows))
            if len(pending) > 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def _import(store: Store, path: str, name: str, *, columns: Sequence[ids.IdColumn], segments: Sequence[str],
            region: str, kernels: Kernels, progress: Callable[[int], None] | None,
            workers: int = 1, delimiter: str | None = None, replace: bool = False) -> ImportSummary:
    id_column, id_type, kind = columns[0].column, columns[0].id_type, columns[0].kind
    dst = group.dst_for(kind)
    added = 0
    summary = ImportSummary(segments=list(segments), id_columns=[f"{c.column}:{c.id_type}" for c in columns])
    invalid: Counter[str] = Counter()
    dropped: Counter[str] = Counter()
    before = store.audience_info()["members"]
    work = functools.partial(_normalize, segments=tuple(segments), columns=tuple(columns), region=region)
    several = len(columns) > 1

    def batches():
        nonlocal added
        for batch in _normalized_batches(path, name, [c.column for c in columns] + list(segments), workers, work,
                                         delimiter):
            members, keys, bits = batch.members, batch.keys, batch.bits
            invalid.update(batch.invalid)
            dropped.update(batch.dropped)
            summary.bad_segments += batch.bad_segments[:EXAMPLES - len(summary.bad_segments)]
            summary.bad_ids += batch.bad_ids[:EXAMPLES - len(summary.bad_ids)]
            summary.rows += batch.rows
            if progress:
                progress(batch.rows)
            # Members already imported keep their H(y) (hashing is the import's main cost); those
            # whose segments did not change are not written at all (nor touch the unbalanced
            # protocol's history, so a re-import of a mostly unchanged file costs little downstream).
            if replace:
                store.note_present(keys)
            known = store.known_members(keys)
            fresh = [i for i, k in enumerate(keys) if k not in known]
            added += len({keys[i] for i in fresh})
            hashed = kernels.hash_to_curve([keys[i].encode() for i in fresh], dst) if fresh else b""
            points = {i: hashed[32 * j:32 * j + 32] for j, i in enumerate(fresh)}
            further = batch.further or [()] * len(keys)
            stored = store.known_identifiers(keys) if several else {}
            rows = []
            for i, (m, k, b) in enumerate(zip(members, keys, bits)):
                if k in known and known[k][0] == b and (not several or stored.get(k, ()) == tuple(sorted(further[i]))):
                    summary.unchanged += 1
                    continue
                rows.append((m, k, points[i] if i in points else known[k][1], b, further[i]))
            if rows:
                found = _further_points(store, kernels, [row[4] for row in rows]) if several else {}
                yield [MemberRow(m, k, p, b, tuple((slot, id_kind, key, found[id_kind, key])
                                                   for slot, id_kind, key in identifiers))
                       for m, k, p, b, identifiers in rows]

    if replace:
        store.begin_replacement()
    pending = batches()
    first = next(pending, None)  # read up to the first valid row before touching the store
    summary.invalid = dict(invalid)
    if replace and first is None and not summary.unchanged:
        raise InputError(f"{name}: no valid row, so --mode replace would remove every member; nothing was changed",
                         hint="check the file, --id-column and --id-type; `matcher audience remove` removes "
                              "members by name")
    if first is None and summary.rows and not summary.unchanged:
        problems = "; ".join(p for p in (summary.skipped_segments and segment_problem(name, summary),
                                         summary.skipped_ids and id_problem(name, summary)) if p)
        raise InputError(f"{name}: none of the {_rows(summary.rows)} is valid: {problems}; nothing was imported",
                         hint=f"check --id-column ({id_column}) and --id-type ({id_type})"
                              + (f" and --region ({region})" if id_type == "phone" else ""))
    stats: dict = {}
    valid = store.import_audience(itertools.chain([first] if first else [], pending), id_kind=kind,
                                  segments=segments, replace=replace, further_kinds=[c.kind for c in columns[1:]],
                                  stats=stats)
    summary.invalid = dict(invalid)
    summary.dropped_identifiers = dict(dropped)
    summary.shared_identifiers = stats.get("shared_identifiers", 0)
    summary.members = store.audience_info()["members"]
    # Duplicates are left to the table's unique key (memory stays bounded by one batch): a valid row
    # that did not add a member repeated one seen earlier in this file or in an earlier import.
    summary.imported = added
    summary.removed = before + added - summary.members
    summary.duplicates = valid + summary.unchanged - summary.imported
    return summary


def _further_points(store: Store, kernels: Kernels, held: Sequence[tuple[tuple[int, str, str], ...]]
                    ) -> dict[tuple[str, str], bytes]:
    """H(identifier) of every further identifier of a batch, by (kind, match key): those the audience
    holds already are read back, the others hashed (one call a kind)."""
    by_kind: dict[str, set[str]] = {}
    for identifiers in held:
        for _, kind, key in identifiers:
            by_kind.setdefault(kind, set()).add(key)
    points: dict[tuple[str, str], bytes] = {}
    for kind, wanted in by_kind.items():
        keys = sorted(wanted)
        known = store.identifier_points(kind, keys)
        fresh = [k for k in keys if k not in known]
        hashed = kernels.hash_to_curve([k.encode() for k in fresh], group.dst_for(kind)) if fresh else b""
        points.update(((kind, k), p) for k, p in known.items())
        points.update(((kind, k), hashed[32 * j:32 * j + 32]) for j, k in enumerate(fresh))
    return points


def remove_file(store: Store, path: str, *, id_column: str | None = None, id_type: str | None = None,
                id_columns: Sequence[ids.IdColumn] | None = None, region: str = "CN", hashed_kind: str = "phone",
                delimiter: str | None = None) -> ImportSummary:
    """Remove the members ``path`` names (members who left, or asked to be forgotten), all at once
    when the file has been read: see :meth:`Store.remove_members`. A member is named by any of its
    identifiers, first or further, in any of the file's identifier columns (``id_columns``, or
    ``id_column`` of ``id_type``); it goes with all of them. Ids that do not normalize are counted
    per reason, as an import counts them (per ``column:reason`` for several columns, where a blank
    cell names nobody); ids that are not members are left alone."""
    columns = ids.id_columns_of(id_columns, id_column=id_column, id_type=id_type, hashed_kind=hashed_kind)
    info = store.audience_info()
    held = info["id_kinds"] or [info["id_kind"]]
    foreign = [c for c in columns if c.kind not in held]
    if info["members"] and foreign:
        raise InputError(f"the audience's identifiers are {', '.join(repr(k) for k in held)}; "
                         f"{', '.join(repr(c.column) for c in foreign)} holds '{foreign[0].kind}'",
                         hint="give the --id-type (and --hashed-kind) the audience was imported with")
    summary = ImportSummary(segments=list(info["segments"]), id_columns=[f"{c.column}:{c.id_type}" for c in columns])
    invalid: Counter[str] = Counter()
    keys: dict[str, set[str]] = {}
    with tabular.rereadable(path) as readable:
        for n, column in enumerate(columns):
            work = functools.partial(_normalize, segments=(), columns=(column,), region=region)
            for batch in _normalized_batches(readable, path, [column.column], 1, work, delimiter):
                summary.rows += batch.rows if n == 0 else 0
                if len(columns) == 1:
                    invalid.update(batch.invalid)
                    summary.bad_ids += batch.bad_ids[:EXAMPLES - len(summary.bad_ids)]
                else:
                    invalid.update({f"{column.column}:{r}": k for r, k in batch.invalid.items() if r != "empty"})
                keys.setdefault(column.kind, set()).update(batch.keys)
    summary.invalid = dict(invalid)
    first = info["id_kind"] or columns[0].kind
    further = [(kind, sorted(found)) for kind, found in keys.items()] if len(held) > 1 else []
    summary.removed = store.remove_members(sorted(keys.get(first, ())), further=further)
    summary.members = store.audience_info()["members"]
    return summary
