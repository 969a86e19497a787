"""Reading the columns we need from CSV (header row) or Parquet files, or stdin (``-``), in batches.

Both parties use this: the operator to import an audience, the merchant to read its list. Problems
with the file itself (missing, empty, not UTF-8, no such column) are errors that name the file and
the fix; problems with single values are not this module's business (see :mod:`matcher.ids`).
"""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path
from typing import BinaryIO, Iterator, Sequence

from matcher.errors import InputError

BATCH_ROWS = 65_536
csv.field_size_limit(1 << 20)


def count_rows(path: str) -> int | None:
    """Data rows in a CSV file (for progress bars); None when unknown (stdin, Parquet)."""
    if path == "-" or _is_parquet(path):
        return None
    with open(path, "rb") as f:
        lines = sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
    return max(0, lines - 1)


def read_columns(path: str, columns: Sequence[str | None]) -> Iterator[list[tuple]]:
    """Batches of tuples, one value per requested column (None for a column given as None)."""
    if path != "-" and not Path(path).exists():
        raise InputError(f"{path}: no such file")
    if _is_parquet(path):
        yield from _read_parquet(path, columns)
        return
    stream: BinaryIO = sys.stdin.buffer if path == "-" else open(path, "rb")
    try:
        yield from _read_csv(path, stream, columns)
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()


def _is_parquet(path: str) -> bool:
    return path.lower().endswith((".parquet", ".pq"))


def _read_csv(name: str, stream: BinaryIO, columns: Sequence[str | None]) -> Iterator[list[tuple]]:
    text = io.TextIOWrapper(stream, encoding="utf-8-sig", errors="strict", newline="")
    reader = csv.reader(text)
    line = 1
    try:
        header = next(reader, None)
        if not header or not any(h.strip() for h in header):
            raise InputError(f"{name} is empty: expected a header row naming the columns")
        positions = _positions(name, [h.strip() for h in header], columns)
        batch: list[tuple] = []
        for line, row in enumerate(reader, start=2):
            batch.append(tuple(row[p] if p is not None and p < len(row) else None for p in positions))
            if len(batch) >= BATCH_ROWS:
                yield batch
                batch = []
        if batch:
            yield batch
    except UnicodeDecodeError as err:
        raise InputError(f"{name} is not UTF-8 text (byte 0x{err.object[err.start]:02x} near line {line + 1})",
                         hint="re-save the file as UTF-8, e.g. `iconv -f GBK -t UTF-8`") from None
    except csv.Error as err:
        raise InputError(f"{name}: malformed CSV near line {line + 1}: {err}") from None


def _positions(name: str, header: list[str], columns: Sequence[str | None]) -> list[int | None]:
    positions: list[int | None] = []
    for column in columns:
        if column is None:
            positions.append(None)
        elif column in header:
            positions.append(header.index(column))
        else:
            raise InputError(f"{name} has no column '{column}'", hint=f"columns are: {', '.join(header)}")
    return positions


def _read_parquet(path: str, columns: Sequence[str | None]) -> Iterator[list[tuple]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise InputError(f"{path}: reading Parquet needs pyarrow", hint="pip install 'matcher[parquet]'") from None
    parquet = pq.ParquetFile(path)
    names = parquet.schema_arrow.names
    wanted = [c for c in columns if c is not None]
    _positions(path, names, wanted)
    for record_batch in parquet.iter_batches(batch_size=BATCH_ROWS, columns=wanted):
        data = {c: [None if v is None else str(v) for v in record_batch.column(c).to_pylist()] for c in wanted}
        size = record_batch.num_rows
        yield [tuple(data[c][i] if c is not None else None for c in columns) for i in range(size)]
