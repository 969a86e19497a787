"""Reading the columns we need from CSV (header row) or Parquet files, or stdin (``-``), in batches.

Both parties use this: the operator to import an audience, the merchant to read its list. Problems
with the file itself (missing, a directory, unreadable, empty, not UTF-8, no such column) are
:class:`InputError` errors that name the file and the fix, never a traceback; problems with single values
are not this module's business (see :mod:`matcher.ids`), but :func:`read_columns` can give each row's
line number (``line_numbers=True``) so that whoever judges the values can say where they are.
"""

from __future__ import annotations

import contextlib
import csv
import io
import shutil
import sys
import tempfile
from typing import BinaryIO, Iterator, Sequence

from matcher.errors import InputError

BATCH_ROWS = 65_536
csv.field_size_limit(1 << 20)


def count_rows(path: str) -> int | None:
    """Data rows in a CSV file (for progress bars); None when unknown (stdin, Parquet)."""
    if path == "-" or _is_parquet(path):
        return None
    with open_input(path) as f:
        lines = sum(chunk.count(b"\n") for chunk in iter(lambda: _read_chunk(path, f), b""))
    return max(0, lines - 1)


def open_input(path: str) -> BinaryIO:
    """``path`` opened for reading in binary, or an :class:`InputError` that names it and says why not."""
    try:
        return open(path, "rb")
    except OSError as err:
        raise _unreadable(path, err) from None


def location(path: str, line: int) -> str:
    """Where a row is, for messages: ``line 4`` in a CSV file (the header is line 1), ``row 3`` (counting
    data rows from 1) in a Parquet file."""
    return f"row {line}" if _is_parquet(path) else f"line {line}"


@contextlib.contextmanager
def rereadable(path: str) -> Iterator[str]:
    """A path that can be read more than once: ``path`` itself, or for stdin (``-``) a private
    temporary copy of it (deleted afterwards). Pass ``name=path`` to :func:`read_columns` so that
    messages still say ``-``."""
    if path != "-":
        yield path
        return
    with tempfile.NamedTemporaryFile(prefix="matcher-stdin-", suffix=".csv") as copy:
        shutil.copyfileobj(sys.stdin.buffer, copy, 1 << 20)
        copy.flush()
        yield copy.name


def read_columns(path: str, columns: Sequence[str | None], *, line_numbers: bool = False,
                 name: str | None = None) -> Iterator[list[tuple]]:
    """Batches of tuples, one value per requested column (None for a column given as None).

    ``line_numbers``: each tuple starts with the row's line number (where its record starts, so a
    quoted value spanning lines does not shift the count; for Parquet, the data row's number from 1).
    ``name``: what messages call the file (default ``path``)."""
    name = name or path
    if _is_parquet(path):
        yield from _read_parquet(path, name, columns, line_numbers)
        return
    stream: BinaryIO = sys.stdin.buffer if path == "-" else open_input(path)
    try:
        yield from _read_csv(name, stream, columns, line_numbers)
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()


_REASONS = {FileNotFoundError: "no such file", IsADirectoryError: "is a directory, not a file",
            PermissionError: "permission denied"}


def _unreadable(path: str, err: OSError) -> InputError:
    reason = next((text for kind, text in _REASONS.items() if isinstance(err, kind)), None)
    reason = reason or (err.strerror or str(err)).lower()
    hint = "check the path (give - to read standard input)" if isinstance(err, FileNotFoundError) else None
    return InputError(f"cannot read '{path}': {reason}", hint=hint)


def _read_chunk(path: str, stream: BinaryIO) -> bytes:
    try:
        return stream.read(1 << 20)
    except OSError as err:  # e.g. EIO, or a FIFO/device that refuses reads
        raise _unreadable(path, err) from None


def _is_parquet(path: str) -> bool:
    return path.lower().endswith((".parquet", ".pq"))


def _read_csv(name: str, stream: BinaryIO, columns: Sequence[str | None],
              line_numbers: bool = False) -> Iterator[list[tuple]]:
    text = io.TextIOWrapper(stream, encoding="utf-8-sig", errors="strict", newline="")
    reader = csv.reader(text)
    line = 1  # where the record being read starts
    try:
        header = next(reader, None)
        if not header or not any(h.strip() for h in header):
            raise InputError(f"{name} is empty: expected a header row naming the columns")
        positions = _positions(name, [h.strip() for h in header], columns)
        batch: list[tuple] = []
        line = reader.line_num + 1
        for row in reader:
            values = tuple(row[p] if p is not None and p < len(row) else None for p in positions)
            batch.append((line, *values) if line_numbers else values)
            line = reader.line_num + 1
            if len(batch) >= BATCH_ROWS:
                yield batch
                batch = []
        if batch:
            yield batch
    except UnicodeDecodeError as err:
        raise InputError(f"{name} is not UTF-8 text (byte 0x{err.object[err.start]:02x} near line {line})",
                         hint="re-save the file as UTF-8, e.g. `iconv -f GBK -t UTF-8`") from None
    except csv.Error as err:
        raise InputError(f"{name}: malformed CSV near line {line}: {err}") from None
    except OSError as err:
        raise _unreadable(name, err) from None


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


def _read_parquet(path: str, name: str, columns: Sequence[str | None],
                  line_numbers: bool = False) -> Iterator[list[tuple]]:
    try:
        import pyarrow
        import pyarrow.parquet as pq
    except ImportError:
        raise InputError(f"{name}: reading Parquet needs pyarrow", hint="pip install 'matcher[parquet]'") from None
    with open_input(path) as stream:
        try:
            parquet = pq.ParquetFile(stream)
        except (pyarrow.ArrowException, OSError) as err:
            raise InputError(f"{name} is not a readable Parquet file: {err}") from None
        names = parquet.schema_arrow.names
        wanted = [c for c in columns if c is not None]
        _positions(name, names, wanted)
        start = 1
        for record_batch in parquet.iter_batches(batch_size=BATCH_ROWS, columns=wanted):
            data = {c: [None if v is None else str(v) for v in record_batch.column(c).to_pylist()] for c in wanted}
            size = record_batch.num_rows
            rows = [tuple(data[c][i] if c is not None else None for c in columns) for i in range(size)]
            yield [(start + i, *row) for i, row in enumerate(rows)] if line_numbers else rows
            start += size
