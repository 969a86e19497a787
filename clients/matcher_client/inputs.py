"""What a merchant's list can be, turned into batches of ``(raw id, label)`` rows for normalizing.

- a path (``str`` or :class:`os.PathLike`): CSV (any of , ; tab | as delimiter), ``.csv.gz``,
  Parquet, or ``-`` for stdin; read by :mod:`matcher.tabular`;
- a DataFrame: pandas, Polars or a pyarrow Table (each imported by whoever made the frame, never
  by us: none of them is a dependency);
- rows: an iterable of ``(id, label)`` pairs, or of bare ids.

With several identifier columns (``id_columns``: their names), a row is ``(id 1, id 2, ...,
label)``: from a file or a DataFrame by name; of the rows form, as a tuple of the ids in the order
of ``id_columns`` and then an optional label, or as a mapping by column name (the label under
``label_column``).

Typed values become the text a CSV file would hold (:func:`matcher.tabular.cell_text`): pandas
reads a phone column as int64 (``13800138000``), or as float64 when some cells are empty
(``13800138000.0``, NaN); both mean the digits, and NaN means a blank (counted as ``empty``).
"""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from collections.abc import Mapping
from typing import Any, Iterable, Iterator, Sequence

from matcher import tabular
from matcher.errors import InputError

Batches = Iterator[list[tuple[str | None, ...]]]  # (id, label), or (id 1, ..., id n, label)


@dataclass
class Source:
    """Rows to normalize, in batches, and how many there are (None: unknown until read)."""

    batches: Batches
    total: int | None


def is_path(data: Any) -> bool:
    return isinstance(data, (str, os.PathLike))


def dataframe_kind(data: Any) -> str | None:
    """"pandas", "polars", "arrow" or None, by the object's own module (so nothing is imported)."""
    module = type(data).__module__.split(".")[0]
    if module == "pandas" and hasattr(data, "columns"):
        return "pandas"
    if module == "polars" and hasattr(data, "get_column"):
        return "polars"
    if module == "pyarrow" and hasattr(data, "column_names"):
        return "arrow"
    return None


def check_local(data: Any) -> None:
    """What can be checked of ``data`` without reading it, before a network round trip: a path
    that cannot be opened (missing, a directory, no permission) or holds something we do not read
    (an Excel workbook, a ZIP, ...) fails here."""
    if is_path(data):
        tabular.check_readable(os.fspath(data))


def open_source(data: Any, *, id_column: str | None = None, label_column: str | None = None,
                delimiter: str | None = None, id_columns: Sequence[str] | None = None) -> Source:
    """``data`` (a path, a DataFrame or rows; see the module docstring) as batches of rows:
    ``(id, label)``, or with ``id_columns`` (the names of several identifier columns)
    ``(id 1, ..., id n, label)``."""
    if id_columns is not None:
        return _open_columns(data, list(id_columns), label_column, delimiter)
    if is_path(data):
        path = os.fspath(data)
        if not id_column:
            raise InputError(f"which column of {path} holds the IDs?", hint="give id_column= (--id-column)")
        total = tabular.count_rows(path)  # also refuses an Excel workbook & co. before any pool starts
        batches = ([(tabular.cell_text(r[0]) or "", r[1]) for r in batch]
                   for batch in tabular.read_columns(path, [id_column, label_column], delimiter=delimiter))
        return Source(batches, total)
    kind = dataframe_kind(data)
    if kind is not None:
        if not id_column:
            raise InputError("which column of the DataFrame holds the IDs?", hint="give id_column=")
        ids, labels = _frame_columns(data, kind, id_column, label_column)
        return Source(_batched(zip(ids, labels)), len(ids))
    if isinstance(data, (bytes, bytearray, dict)) or not isinstance(data, Iterable):
        raise InputError(f"cannot read a list from a {type(data).__name__}",
                         hint="give a path (CSV, .csv.gz, Parquet), a pandas or Polars DataFrame, or rows of "
                              "(id, label)")
    total = len(data) if hasattr(data, "__len__") else None
    return Source(_batched(_row(r) for r in data), total)


def _open_columns(data: Any, names: list[str], label_column: str | None, delimiter: str | None) -> Source:
    """Several identifier columns: batches of ``(id 1, ..., id n, label)``."""
    if not names:
        raise InputError("no identifier column", hint="give id_columns=[(COLUMN, TYPE), ...] (--id-column COLUMN:TYPE)")
    width = len(names)
    if is_path(data):
        path = os.fspath(data)
        total = tabular.count_rows(path)
        batches = ([(*(tabular.cell_text(v) or "" for v in r[:width]), r[width]) for r in batch]
                   for batch in tabular.read_columns(path, [*names, label_column], delimiter=delimiter))
        return Source(batches, total)
    kind = dataframe_kind(data)
    if kind is not None:
        *ids, labels = _frame_values(data, kind, [*names, label_column])
        return Source(_batched_columns(zip(*ids, labels), width), len(labels))
    if isinstance(data, (bytes, bytearray, dict)) or not isinstance(data, Iterable):
        raise InputError(f"cannot read a list from a {type(data).__name__}",
                         hint="give a path (CSV, .csv.gz, Parquet), a pandas or Polars DataFrame, or rows of "
                              f"({', '.join(names)}, label)")
    total = len(data) if hasattr(data, "__len__") else None
    return Source(_batched_columns((_wide_row(r, names, label_column) for r in data), width), total)


def _frame_columns(frame: Any, kind: str, id_column: str, label_column: str | None) -> tuple[list, list]:
    ids, labels = _frame_values(frame, kind, [id_column, label_column])
    return ids, labels


def _frame_values(frame: Any, kind: str, wanted: list[str | None]) -> list[list]:
    """The values of each ``wanted`` column (None: a column of None), after checking they all exist."""
    columns = [str(c) for c in (frame.column_names if kind == "arrow" else frame.columns)]
    for column in wanted:
        if column is not None and column not in columns:
            raise InputError(f"the DataFrame has no column '{column}'",
                             hint=f"columns are: {', '.join(columns)}")

    def values(column: str) -> list:
        if kind == "pandas":
            return frame[column].tolist()
        if kind == "polars":
            return frame.get_column(column).to_list()
        return frame.column(column).to_pylist()

    got = [values(c) if c is not None else None for c in wanted]
    length = next((len(v) for v in got if v is not None), 0)
    return [v if v is not None else [None] * length for v in got]


def _wide_row(row: Any, names: list[str], label_column: str | None) -> tuple:
    """A row of the rows form with several identifiers: a mapping by column name, or a tuple of the
    ids in ``names`` order and then an optional label."""
    if isinstance(row, Mapping):
        missing = [n for n in names if n not in row]
        if missing:
            raise InputError(f"a row of rows= has no {', '.join(repr(n) for n in missing)}: {row!r}",
                             hint=f"give each row's {', '.join(names)} (a blank one as '' or None)")
        return (*(row[n] for n in names), row.get(label_column) if label_column else None)
    if isinstance(row, (tuple, list)) and len(row) in (len(names), len(names) + 1):
        return (*row[:len(names)], row[len(names)] if len(row) > len(names) else None)
    if len(names) == 1 and not isinstance(row, (tuple, list)):
        return row, None  # a bare id
    raise InputError(f"a row of rows= is {row!r}",
                     hint=f"give ({', '.join(names)}) or ({', '.join(names)}, label) tuples, or mappings by "
                          "column name")


def _batched_columns(rows: Iterable[tuple], width: int) -> Batches:
    rows = iter(rows)
    while batch := list(itertools.islice(rows, tabular.BATCH_ROWS)):
        yield [(*(tabular.cell_text(v) or "" for v in row[:width]), tabular.cell_text(row[width])) for row in batch]


def _row(row: Any) -> tuple[Any, Any]:
    """A row of the rows form: ``(id, label)``, ``(id,)`` or a bare id."""
    if isinstance(row, (tuple, list)):
        if len(row) == 2:
            return row[0], row[1]
        if len(row) == 1:
            return row[0], None
        raise InputError(f"a row of rows= has {len(row)} values: {row!r}", hint="give (id, label) pairs or bare ids")
    return row, None


def _batched(rows: Iterable[tuple[Any, Any]]) -> Batches:
    rows = iter(rows)
    while batch := list(itertools.islice(rows, tabular.BATCH_ROWS)):
        yield [(tabular.cell_text(i) or "", tabular.cell_text(label)) for i, label in batch]
