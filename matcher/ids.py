"""Identifier normalization: the same person must yield the same match key on both sides.

Merchant and platform run this same code, so any two spellings of one phone number
(``138 0013 8000``, ``+86 138-0013-8000``, ``008613800138000``) become one E.164 string,
and a list that arrives pre-hashed (``sha256`` of the normalized value, as ad platforms
accept) meets a raw list of the same kind.

Invalid rows are never fatal: :func:`prepare` counts them per stable reason word so the
merchant can see what was dropped and why. :func:`normalize` raises :class:`InvalidId`
carrying that reason.
"""

from __future__ import annotations

import hashlib
import itertools
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Iterable, Sequence

import phonenumbers

from matcher._phone_fast import NOT_HANDLED, cn_mobile_e164
from matcher.errors import InputError

ID_TYPES = ("phone", "email", "sha256", "opaque")
HASHED_KINDS = ("phone", "email")
DEFAULT_LABEL = "all"
MAX_OPAQUE_LENGTH = 256

# Spreadsheet exports wrap cells in straight or typographic quotes; none of them can be
# part of a phone number or a hex digest.
_QUOTES = "\"'`\u2018\u2019\u201c\u201d\uff02\uff07"
_HEX_DIGITS = frozenset("0123456789abcdef")
# Cc: control characters; Cs: lone surrogates (undecodable bytes) cannot be UTF-8 encoded,
# so they could never hash to the same key on the other side.
_FORBIDDEN_CATEGORIES = frozenset({"Cc", "Cs"})
# Exact-string memo for phones: normalize() is a pure function of (value, region), so a
# cached answer is never wrong, and real lists repeat raw strings often.
_PHONE_CACHE_SIZE = 1 << 16


class InvalidId(InputError):
    """One identifier that cannot be normalized. ``reason`` is a stable machine-readable word."""

    def __init__(self, reason: str, message: str | None = None, *, hint: str | None = None):
        super().__init__(message or f"invalid identifier: {reason}", hint=hint)
        self.reason = reason


@dataclass
class PreparedList:
    """A list ready for blinding: unique match keys in first-occurrence order, one label each.

    A list of several identifier columns (:func:`prepare_columns`) also says, per element, which of
    ``columns`` it came from (``column_idx``, a byte each; its kind is that column's ``kind``) and
    whether it is the first element sent for its row (``row_start``, a byte each); a list of one
    column leaves ``columns`` empty and both byte arrays empty."""

    keys: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    invalid: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0
    rows: int = 0
    columns: tuple[IdColumn, ...] = ()
    column_idx: bytearray = field(default_factory=bytearray)
    row_start: bytearray = field(default_factory=bytearray)
    invalid_rows: int = 0  # rows without any valid identifier (several columns; else sum(invalid))
    invalid_by_column: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def label_sizes(self) -> dict[str, int]:
        """Unique keys per label, in first-seen label order (what the release policy checks)."""
        return dict(Counter(self.labels))

    @property
    def label_rows(self) -> dict[str, int]:
        """Rows per label that sent at least one identifier: the customers behind the keys (several
        identifier columns: a customer known by phone and email is one row, two keys). The same as
        :attr:`label_sizes` for a list of one column."""
        if not self.columns:
            return self.label_sizes
        return dict(Counter(label for label, start in zip(self.labels, self.row_start) if start))

    @property
    def rows_sent(self) -> int:
        """Rows that sent at least one identifier."""
        return self.row_start.count(1) if self.columns else len(self.keys)

    def kinds(self) -> list[str] | None:
        """Each key's identifier kind (the DST it is hashed under), or None for a list of one column."""
        if not self.columns:
            return None
        names = [c.kind for c in self.columns]
        return [names[i] for i in self.column_idx]

    def ids_by_column(self) -> dict[str, int]:
        """Keys sent per identifier column (a key found in two columns counts under the first)."""
        return {c.column: self.column_idx.count(i) for i, c in enumerate(self.columns)}


def normalize(value: str, id_type: str, *, region: str = "CN") -> str:
    """Return the canonical form of ``value`` for ``id_type``; raise :class:`InvalidId` if none.

    phone: E.164 (``+8613800138000``), parsed with ``region`` as the default country and
    required to be a valid number; email: trimmed and lower-cased; sha256: 64 lower-case
    hex digits; opaque: trimmed, otherwise exact.
    """
    _check_id_type(id_type)
    if id_type == "phone":
        region = _check_region(region)
    if value is None:
        raise InvalidId("empty")
    if id_type == "opaque":
        return _normalize_opaque(value)
    if id_type == "email":
        return _normalize_email(value)
    # Quotes cannot be part of a phone number or a hex digest, so unwrapping them is safe.
    text = _strip_wrapping(value)
    if not text:
        raise InvalidId("empty")
    if id_type == "phone":
        return _normalize_phone(text, region)
    return _normalize_sha256(text)


def match_key(value: str, id_type: str, *, region: str = "CN") -> str:
    """The person's match key: SHA-256 hex of the normalized value (a sha256 id is one already)."""
    normalized = normalize(value, id_type, region=region)
    if id_type == "sha256":
        return normalized
    return _sha256_hex(normalized)


def hash_kind(id_type: str, hashed_kind: str = "phone") -> str:
    """The ID kind named in the hash-to-curve DST.

    A ``sha256`` list is named after what was hashed (``hashed_kind``), so that a
    pre-hashed phone list lands in the same group elements as a raw phone list.
    """
    _check_id_type(id_type)
    if hashed_kind not in HASHED_KINDS:
        raise InputError(
            f"unknown hashed kind {hashed_kind!r}",
            hint=f"--hashed-kind must be one of {', '.join(HASHED_KINDS)}",
        )
    return hashed_kind if id_type == "sha256" else id_type


@dataclass(frozen=True)
class IdColumn:
    """One identifier column of a file: its name, how to normalize it (``id_type``) and the kind
    its hash-to-curve DST names (``kind``: a ``sha256`` column is named after what was hashed)."""

    column: str
    id_type: str
    kind: str


def parse_id_columns(specs: Iterable[str], id_type: str | None = None, *,
                     hashed_kind: str = "phone") -> list[IdColumn]:
    """The identifier columns of ``--id-column`` options: ``COLUMN:TYPE`` (repeatable; TYPE one of
    :data:`ID_TYPES`, and ``COLUMN:sha256:email`` for a column of hashed emails), or one bare
    ``COLUMN`` with ``id_type`` (the older ``--id-column C --id-type T``). A column name may itself
    hold colons: only a known TYPE at the end is split off."""
    specs = list(specs)
    if not specs:
        raise InputError("no identifier column", hint="give --id-column COLUMN:TYPE (phone, email, sha256, opaque)")
    columns = []
    for spec in specs:
        name, typ, hashed = spec, None, hashed_kind
        for candidate in HASHED_KINDS:
            if spec.endswith(f":sha256:{candidate}"):
                name, typ, hashed = spec[:-len(f":sha256:{candidate}")], "sha256", candidate
        if typ is None:
            head, sep, tail = spec.rpartition(":")
            if sep and tail in ID_TYPES:
                name, typ = head, tail
        if typ is None:
            if len(specs) > 1 or id_type is None:
                raise InputError(f"--id-column {spec!r} does not say what it holds",
                                 hint=f"write COLUMN:TYPE with TYPE one of {', '.join(ID_TYPES)} "
                                      "(e.g. --id-column phone:phone --id-column email:email)"
                                      + ("" if len(specs) > 1 else ", or give --id-type"))
            typ = id_type
        elif id_type is not None and typ != id_type and len(specs) == 1:
            raise InputError(f"--id-column {spec!r} says {typ}, --id-type says {id_type}", hint="give the type once")
        if not name:
            raise InputError(f"--id-column {spec!r} names no column", hint="write COLUMN:TYPE")
        columns.append(IdColumn(name, typ, hash_kind(typ, hashed)))
    return check_distinct(columns, "--id-column")


def id_columns_of(id_columns=None, *, id_column: str | None = None, id_type: str | None = None,
                  hashed_kind: str = "phone") -> tuple[IdColumn, ...]:
    """The identifier columns of a call: ``id_columns`` (each an :class:`~matcher.IdColumn`, a
    ``(column, type)`` or ``(column, "sha256", hashed kind)`` pair, or a ``"COLUMN:TYPE"`` string as
    ``--id-column`` takes it), or the older ``id_column``/``id_type`` (one column; ``id_column`` may be
    None for rows). Giving both is an :class:`~matcher.errors.InputError`; so is a column given twice."""
    if id_columns is not None:
        if id_column is not None or id_type is not None:
            given = " and ".join(f"{name}=" for name, v in (("id_column", id_column), ("id_type", id_type))
                                 if v is not None)
            raise InputError(f"the identifier columns are given twice: id_columns= and {given}",
                             hint="give id_columns=[(COLUMN, TYPE), ...] alone (or id_column= and id_type= for "
                                  "one column)")
        if isinstance(id_columns, (str, IdColumn)) or not isinstance(id_columns, Iterable):
            id_columns = [id_columns]
        columns = tuple(_id_column(spec, hashed_kind) for spec in id_columns)
        if not columns:
            raise InputError("id_columns= is empty", hint="give at least one (COLUMN, TYPE)")
        return tuple(check_distinct(list(columns), "id_columns="))
    if id_type is None:
        raise InputError("which kind of IDs does the list hold?",
                         hint="give id_type= (phone, email, sha256, opaque), or id_columns=[(COLUMN, TYPE), ...]")
    return (IdColumn(id_column, id_type, hash_kind(id_type, hashed_kind)),)


def _id_column(spec, hashed_kind: str) -> IdColumn:
    if isinstance(spec, IdColumn):
        hash_kind(spec.id_type, spec.kind if spec.id_type == "sha256" else "phone")  # a known type and kind
        if spec.id_type != "sha256" and spec.kind != spec.id_type:
            raise InputError(f"column '{spec.column}': a {spec.id_type} column is hashed as {spec.id_type}, "
                             f"not {spec.kind}")
        return spec
    if isinstance(spec, str):
        return parse_id_columns([spec], hashed_kind=hashed_kind)[0]
    if isinstance(spec, (tuple, list)) and len(spec) in (2, 3) and all(isinstance(v, str) for v in spec):
        column, id_type, *hashed = spec
        if hashed and id_type != "sha256":
            raise InputError(f"id_columns: {tuple(spec)!r} names what was hashed, but '{column}' is {id_type}",
                             hint="only a sha256 column takes a third value (phone or email)")
        return IdColumn(column, id_type, hash_kind(id_type, hashed[0] if hashed else hashed_kind))
    raise InputError(f"id_columns: cannot read {spec!r}",
                     hint='give (COLUMN, TYPE) pairs, e.g. [("phone", "phone"), ("email", "email")], or '
                          '"COLUMN:TYPE" strings')


def check_distinct(columns: list[IdColumn], given_as: str) -> list[IdColumn]:
    """``columns``, unless one is named twice (an InputError naming it and where it was given)."""
    names = [c.column for c in columns]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise InputError(f"column {', '.join(repr(n) for n in repeated)} is given twice in {given_as}",
                         hint="name each identifier column once")
    return columns


def prepare(
    rows: Iterable[tuple[str, str | None]], id_type: str, *, region: str = "CN"
) -> PreparedList:
    """Normalize, key and de-duplicate ``(raw id, label)`` rows.

    A label of ``None`` (or blank) means ``"all"``. Invalid rows are counted per reason and
    skipped. A person seen twice, in any spelling and under any label, is kept once with
    the label of their first row; each later row counts in ``duplicates``.
    """
    _check_id_type(id_type)
    if id_type == "phone":
        region = _check_region(region)
    prepared = PreparedList()
    seen: set[str] = set()
    invalid: Counter[str] = Counter()
    keys_append = prepared.keys.append
    labels_append = prepared.labels.append
    row_count = 0
    duplicates = 0
    for raw, label in rows:
        row_count += 1
        try:
            key = match_key(raw, id_type, region=region)
        except InvalidId as bad:
            invalid[bad.reason] += 1
            continue
        if key in seen:
            duplicates += 1
            continue
        seen.add(key)
        keys_append(key)
        labels_append(_clean_label(label))
    prepared.rows = row_count
    prepared.duplicates = duplicates
    prepared.invalid = dict(invalid)
    prepared.invalid_rows = sum(invalid.values())
    return prepared


# At most this many identifier columns (an element's column is one byte).
MAX_ID_COLUMNS = 255


def prepare_columns(rows: Iterable[tuple], columns: Sequence[IdColumn], *, region: str = "CN") -> PreparedList:
    """Normalize, key and de-duplicate rows of several identifier columns: each row is
    ``(raw id of columns[0], raw id of columns[1], ..., label)``. One column is :func:`prepare`.

    Every identifier cell is normalized with its own column's type, and a row becomes one element
    per valid identifier, all with the row's label, each of its column's ``kind``. Counting:

    - a blank cell is normal (a customer without an email) and is not counted; a row whose cells are
      all blank counts once as ``empty`` in ``invalid``;
    - every non-blank cell that does not normalize counts once under its reason (``invalid_phone``,
      ``invalid_email``, ...) in ``invalid`` and in ``invalid_by_column[column]``, even when another
      cell of its row is valid (that cell is dropped, the row is not);
    - ``invalid_rows``: rows without any valid identifier (all blank, or only invalid cells);
    - an identifier whose (kind, match key) came earlier, in any row and any column of that kind,
      counts in ``duplicates`` and is not sent again: it keeps its first row's label.
    """
    columns = tuple(columns)
    if not columns:
        raise InputError("no identifier column", hint="give at least one --id-column COLUMN:TYPE")
    if len(columns) == 1:  # exactly :func:`prepare` (rows are (id, label) then); no per-element column
        prepared = prepare(rows, columns[0].id_type, region=region)
        bad = {reason: n for reason, n in prepared.invalid.items() if reason != "empty"}
        prepared.invalid_by_column = {columns[0].column: bad} if bad else {}
        return prepared
    if len(columns) > MAX_ID_COLUMNS:
        raise InputError(f"{len(columns)} identifier columns; at most {MAX_ID_COLUMNS}")
    for column in columns:
        _check_id_type(column.id_type)
        if column.kind not in HASHED_KINDS + ("opaque",):
            raise InputError(f"column '{column.column}': unknown identifier kind {column.kind!r}")
    if any(c.id_type == "phone" for c in columns):
        region = _check_region(region)
    prepared = PreparedList(columns=columns)
    kinds = list(dict.fromkeys(c.kind for c in columns))
    seen_of = [set() for _ in kinds]  # match keys seen, per kind (the DSTs keep kinds apart)
    plan = [(i, c.id_type, seen_of[kinds.index(c.kind)], Counter()) for i, c in enumerate(columns)]
    width = len(columns)
    labels_of: dict = {}  # one string object per label, however many elements carry it
    invalid: Counter[str] = Counter()
    keys_append, labels_append = prepared.keys.append, prepared.labels.append
    column_append, start_append = prepared.column_idx.append, prepared.row_start.append
    row_count = duplicates = invalid_rows = 0
    for row in rows:
        row_count += 1
        label = row[width] if len(row) > width else None
        first, valid, blank = True, False, True
        for i, id_type, seen, bad in plan:
            try:
                key = match_key(row[i], id_type, region=region)
            except InvalidId as err:
                if err.reason != "empty":
                    bad[err.reason] += 1
                    blank = False
                continue
            valid = True
            if key in seen:
                duplicates += 1
                continue
            seen.add(key)
            if first:
                label = labels_of.setdefault(label, _clean_label(label))
            keys_append(key)
            labels_append(label)
            column_append(i)
            start_append(first)
            first = False
        if not valid:
            invalid_rows += 1
            if blank:
                invalid["empty"] += 1
    for i, _, _, bad in plan:
        invalid.update(bad)
        if bad:
            prepared.invalid_by_column[columns[i].column] = dict(bad)
    prepared.rows, prepared.duplicates, prepared.invalid_rows = row_count, duplicates, invalid_rows
    prepared.invalid = dict(invalid)
    return prepared


def merge(parts: Iterable[PreparedList]) -> PreparedList:
    """Join lists prepared from consecutive pieces of one file (e.g. on several cores), with the
    same result as preparing the whole file at once: first occurrence wins across pieces too
    (per kind, for lists of several identifier columns, whose pieces must name the same columns)."""
    parts = iter(parts)
    first = next(parts, None)
    if first is None:
        return PreparedList()
    parts = itertools.chain([first], parts)
    merged = PreparedList(columns=first.columns)
    multi = bool(first.columns)
    kinds = list(dict.fromkeys(c.kind for c in first.columns))
    seen_of = [set() for _ in kinds] if multi else [set()]
    seen_by_column = [seen_of[kinds.index(c.kind)] for c in first.columns] if multi else seen_of
    invalid: Counter[str] = Counter()
    by_column: dict[str, Counter[str]] = {}
    for part in parts:
        if part.columns != merged.columns:
            raise ValueError("merge: the pieces of a list name different identifier columns")
        merged.rows += part.rows
        merged.duplicates += part.duplicates
        merged.invalid_rows += part.invalid_rows
        invalid.update(part.invalid)
        for column, bad in part.invalid_by_column.items():
            by_column.setdefault(column, Counter()).update(bad)
        if not multi:
            seen = seen_of[0]
            for key, label in zip(part.keys, part.labels):
                if key in seen:
                    merged.duplicates += 1
                    continue
                seen.add(key)
                merged.keys.append(key)
                merged.labels.append(label)
            continue
        # A row's elements are consecutive; its first surviving element carries the row's start.
        starting = False
        for key, label, column, start in zip(part.keys, part.labels, part.column_idx, part.row_start):
            starting = starting or bool(start)
            seen = seen_by_column[column]
            if key in seen:
                merged.duplicates += 1
                continue
            seen.add(key)
            merged.keys.append(key)
            merged.labels.append(label)
            merged.column_idx.append(column)
            merged.row_start.append(starting)
            starting = False
    merged.invalid = dict(invalid)
    merged.invalid_by_column = {column: dict(bad) for column, bad in by_column.items()}
    return merged


def _check_id_type(id_type: str) -> None:
    if id_type not in ID_TYPES:
        raise InputError(
            f"unknown id type {id_type!r}", hint=f"use one of {', '.join(ID_TYPES)}"
        )


def _check_region(region: str) -> str:
    canonical = region.upper() if isinstance(region, str) else region
    if canonical not in phonenumbers.SUPPORTED_REGIONS:
        raise InputError(
            f"unknown phone region {region!r}",
            hint="use an ISO 3166-1 alpha-2 code that phonenumbers knows, e.g. CN, US, GB",
        )
    return canonical


def _strip_wrapping(value: str) -> str:
    # Loop so that '" a@b.co "' and "' \"x\" '" both unwrap fully; a single pass would
    # leave a quote behind and break idempotence.
    previous = None
    text = value
    while text != previous:
        previous = text
        text = text.strip().strip(_QUOTES)
    return text


def _normalize_phone(text: str, region: str) -> str:
    # Common Chinese mobile spellings are answered from a table derived from phonenumbers'
    # metadata (same answers, over 10x faster); everything else goes to phonenumbers itself.
    e164 = cn_mobile_e164(text, region)
    if e164 is NOT_HANDLED:
        e164 = _phone_to_e164(text, region)
    if e164 is None:
        raise InvalidId("invalid_phone", "not a valid phone number for its country")
    return e164


@lru_cache(maxsize=_PHONE_CACHE_SIZE)
def _phone_to_e164(text: str, region: str) -> str | None:
    # Returns None rather than raising so that invalid spellings are memoized too.
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(number):
        return None
    # Exactly what format_number(..., E164) builds, without its formatting dispatch.
    return f"+{number.country_code}{phonenumbers.national_significant_number(number)}"


def _normalize_email(value: str) -> str:
    # Quotes are not unwrapped: an apostrophe is legal at either end of a local part.
    text = value.strip()
    if not text:
        raise InvalidId("empty")
    lowered = text.lower()
    local, at, domain = lowered.rpartition("@")
    if (
        not at
        or not local
        or "@" in local
        or not _looks_like_domain(domain)
        or _has_space_or_control(lowered)
    ):
        raise InvalidId("invalid_email", "not an email address")
    return lowered


def _looks_like_domain(domain: str) -> bool:
    # Letters (any script, for IDNs), digits and hyphens in at least two non-empty labels.
    labels = domain.split(".")
    return len(labels) >= 2 and all(
        label and all(ch.isalnum() or ch == "-" for ch in label) for label in labels
    )


def _has_space_or_control(text: str) -> bool:
    return any(ch.isspace() or unicodedata.category(ch) in _FORBIDDEN_CATEGORIES for ch in text)


def _normalize_sha256(text: str) -> str:
    digest = text.lower()
    if len(digest) != 64 or not _HEX_DIGITS.issuperset(digest):
        raise InvalidId("bad_sha256", "not 64 hex digits")
    return digest


def _normalize_opaque(value: str) -> str:
    text = value.strip()
    if not text:
        raise InvalidId("empty")
    if len(text) > MAX_OPAQUE_LENGTH:
        raise InvalidId("too_long", f"opaque id longer than {MAX_OPAQUE_LENGTH} characters")
    if any(unicodedata.category(ch) in _FORBIDDEN_CATEGORIES for ch in text):
        raise InvalidId("invalid_opaque", "opaque id contains control characters")
    return text


def _sha256_hex(normalized: str) -> str:
    return hashlib.sha256(normalized.encode("utf-8")).hexdigest()


def _clean_label(label: str | None) -> str:
    if label is None:
        return DEFAULT_LABEL
    text = label.strip()
    return text or DEFAULT_LABEL
