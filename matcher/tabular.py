"""Reading the columns we need from CSV (header row) or Parquet files, or stdin (``-``), in batches.

Both parties use this: the operator to import an audience, the merchant to read its list. What a
file is comes from its first bytes, not its name: gzip is decompressed on the fly (``list.csv.gz``,
or gzip on stdin), Parquet is read by magic or by extension, and a file we cannot read (an Excel
workbook, a ZIP, xz, UTF-16 text) is named as what it is, with how to turn it into CSV. A CSV
file's delimiter (``,`` ``;`` tab ``|``) is sniffed from its header line unless given.

Problems with the file itself (missing, a directory, unreadable, empty, not UTF-8, no such column)
are :class:`InputError` errors that name the file and the fix, never a traceback; problems with
single values are not this module's business (see :mod:`matcher.ids`), but :func:`read_columns`
can give each row's line number (``line_numbers=True``) so that whoever judges the values can say
where they are.
"""

from __future__ import annotations

import contextlib
import csv
import difflib
import gzip
import io
import itertools
import math
import shutil
import sys
import tempfile
import zlib
from typing import BinaryIO, Iterator, Sequence

from matcher.errors import InputError

BATCH_ROWS = 65_536
csv.field_size_limit(1 << 20)
DELIMITERS = ",;\t|"  # what the header line is sniffed for; anything else needs --delimiter
_GZIP_ERRORS = (gzip.BadGzipFile, EOFError, zlib.error)


def count_rows(path: str) -> int | None:
    """Data rows in a file (for progress bars); None when unknown (stdin, Parquet without pyarrow).

    Also the cheap first look at a file: one that is missing, or not something we read (an Excel
    workbook, ...), fails here, before anything slow starts."""
    if path == "-":
        return None
    with open_input(path) as raw:
        kind, stream = _detect(path, raw, parquet_name=_is_parquet(path))
        if kind == "parquet":
            return _parquet_rows(stream)
        try:
            lines = sum(chunk.count(b"\n") for chunk in iter(lambda: _read_chunk(path, stream), b""))
        except _GZIP_ERRORS as err:
            raise _broken_gzip(path, err) from None
    return max(0, lines - 1)


def check_readable(path: str) -> None:
    """Raise the :class:`InputError` that opening ``path`` would (missing, a directory, no
    permission, an Excel workbook or anything else :func:`read_columns` does not read), from its
    first few KiB: what to check before a slower step (say, asking a server)."""
    if path != "-":
        with open_input(path) as raw:
            _detect(path, raw, parquet_name=_is_parquet(path))


def parse_delimiter(text: str | None) -> str | None:
    """A ``--delimiter`` value as the one character it names (``tab`` or ``\\t`` for a tab); None: sniff."""
    if text is None or text == "":
        return None
    named = {"tab": "\t", "\\t": "\t", "comma": ",", "semicolon": ";", "pipe": "|"}
    value = named.get(text.lower(), text)
    if len(value) != 1 or value in "\r\n\"":
        raise InputError(f"--delimiter must be one character, got {text!r}",
                         hint="e.g. --delimiter ';' or --delimiter tab")
    return value


def cell_text(value) -> str | None:
    """A typed cell (Parquet, a DataFrame) as the text a CSV file would hold: None for a missing
    value (None, NaN, pandas' NA), an integer's digits, a whole float's digits too (pandas stores an
    integer column with gaps as floats: 13800138000.0 is the phone 13800138000), anything else str()."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return None
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    try:
        if value != value:  # noqa: PLR0124 (a missing value of some library: pandas.NaT, a numpy NaN)
            return None
    except (TypeError, ValueError):  # pandas.NA refuses to be a bool
        return None
    if hasattr(value, "item"):  # numpy scalars: numpy.int64(5) -> 5
        return cell_text(value.item())
    return str(value)


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
                 name: str | None = None, delimiter: str | None = None) -> Iterator[list[tuple]]:
    """Batches of tuples, one value per requested column (None for a column given as None).

    ``line_numbers``: each tuple starts with the row's line number (where its record starts, so a
    quoted value spanning lines does not shift the count; for Parquet, the data row's number from 1).
    ``name``: what messages call the file (default ``path``). ``delimiter``: the CSV delimiter
    (default: sniffed from the header line among ``DELIMITERS``, else a comma)."""
    name = name or path
    raw: BinaryIO = sys.stdin.buffer if path == "-" else open_input(path)
    try:
        kind, stream = _detect(name, raw, parquet_name=_is_parquet(path))
        if kind == "parquet":
            yield from _read_parquet(name, stream, columns, line_numbers)
        else:
            yield from _read_csv(name, stream, columns, line_numbers, delimiter)
    finally:
        if raw is not sys.stdin.buffer:
            raw.close()


# Leading bytes of files that are not CSV text, and what to tell the person who gave one.
_SAVE_AS_CSV = ("save it as CSV (Excel: File > Save As > CSV UTF-8), or in Python read it with "
                "pandas.read_excel and pass the DataFrame to matcher_client.match")
_NOT_READ = [
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "an Excel 97-2003 workbook (.xls), not CSV", _SAVE_AS_CSV),
    (b"\xfd7zXZ\x00", "xz-compressed", "decompress it first (`xz -d FILE`); gzip files are read as they are"),
    (b"BZh", "bzip2-compressed", "decompress it first (`bunzip2 FILE`); gzip files are read as they are"),
    (b"\x28\xb5\x2f\xfd", "zstd-compressed", "decompress it first (`zstd -d FILE`); gzip files are read as they are"),
    (b"\xff\xfe", "UTF-16 text, not UTF-8", "re-save it as UTF-8, e.g. `iconv -f UTF-16 -t UTF-8`"),
    (b"\xfe\xff", "UTF-16 text, not UTF-8", "re-save it as UTF-8, e.g. `iconv -f UTF-16 -t UTF-8`"),
    (b"%PDF", "a PDF document, not CSV", "export the table as CSV"),
]


def _detect(name: str, raw: BinaryIO, *, parquet_name: bool = False, inner: bool = False) -> tuple[str, BinaryIO]:
    """What ``raw`` holds, by its first bytes: ``("csv" | "parquet", stream to read)``. Gzip is
    unwrapped (once); anything else we can name but not read is an :class:`InputError`.
    ``parquet_name``: the file is named as Parquet (then pyarrow says what is wrong with it)."""
    stream = raw if hasattr(raw, "peek") else io.BufferedReader(raw)  # stdin replaced by a BytesIO, say
    try:
        head = stream.peek(4096)[:4096]
    except _GZIP_ERRORS as err:
        raise _broken_gzip(name, err) from None
    except OSError as err:
        raise _unreadable(name, err) from None
    if head.startswith(b"\x1f\x8b") and not inner:
        return _detect(name, gzip.GzipFile(fileobj=stream, mode="rb"), inner=True)
    if head.startswith(b"PAR1") or (parquet_name and not inner):
        return "parquet", stream
    if head.startswith(b"PK\x03\x04"):
        if b"opendocument.spreadsheet" in head:
            raise InputError(f"{name} is an OpenDocument spreadsheet (.ods), not CSV",
                             hint="save it as CSV (File > Save As > Text CSV, UTF-8)")
        if b"xl/" in head or b"[Content_Types].xml" in head:
            raise InputError(f"{name} is an Excel workbook (.xlsx), not CSV", hint=_SAVE_AS_CSV)
        raise InputError(f"{name} is a ZIP archive", hint="unzip it and give the CSV or Parquet file inside")
    for magic, what, hint in _NOT_READ:
        if head.startswith(magic):
            raise InputError(f"{name} is {what}", hint=hint)
    return "csv", stream


def _broken_gzip(name: str, err: Exception) -> InputError:
    return InputError(f"{name} looks like gzip but does not decompress ({err or 'cut short'})",
                      hint="check the file was copied whole (`gzip -t FILE`)")


def _sniff_delimiter(header_line: str) -> str:
    """The delimiter of a CSV file from its header line alone (its data rows may hold anything:
    phone numbers with spaces, addresses with commas); a comma when the header is one column."""
    try:
        return csv.Sniffer().sniff(header_line, delimiters=DELIMITERS).delimiter
    except csv.Error:
        return ","


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


def _read_csv(name: str, stream: BinaryIO, columns: Sequence[str | None], line_numbers: bool = False,
              delimiter: str | None = None) -> Iterator[list[tuple]]:
    text = io.TextIOWrapper(stream, encoding="utf-8-sig", errors="strict", newline="")
    line = 1  # where the record being read starts
    try:
        first = text.readline()
        reader = csv.reader(itertools.chain([first], text), delimiter=delimiter or _sniff_delimiter(first))
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
    except _GZIP_ERRORS as err:
        raise _broken_gzip(name, err) from None
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
            raise InputError(f"{name} has no column '{column}'", hint=_columns_hint(column, header))
    return positions


def _columns_hint(column: str, header: list[str]) -> str:
    found = ", ".join(header)
    if len(header) == 1 and any(d in header[0] for d in DELIMITERS + " :"):
        return f"columns are: {found} (one column: give the file's delimiter with --delimiter)"
    lowered = [h.lower() for h in header]
    close = difflib.get_close_matches(column.lower(), lowered, n=1, cutoff=0.6)
    if close:
        return f"columns are: {found} (did you mean '{header[lowered.index(close[0])]}'?)"
    return f"columns are: {found}"


def _parquet_rows(stream: BinaryIO) -> int | None:
    """Rows in a Parquet file from its footer (cheap); None without pyarrow or when the footer is bad
    (reading the file then says why)."""
    try:
        import pyarrow
        import pyarrow.parquet as pq
    except ImportError:
        return None
    try:
        return pq.ParquetFile(stream).metadata.num_rows
    except (pyarrow.ArrowException, OSError):
        return None


@contextlib.contextmanager
def _seekable(stream: BinaryIO) -> Iterator[BinaryIO]:
    """Parquet is read from its footer backwards: a pipe (stdin) is spooled to a temporary file first."""
    try:
        if stream.seekable():
            yield stream
            return
    except (OSError, ValueError):
        pass
    with tempfile.SpooledTemporaryFile(max_size=64 << 20, prefix="matcher-stdin-") as copy:
        shutil.copyfileobj(stream, copy, 1 << 20)
        copy.seek(0)
        yield copy


def _read_parquet(name: str, raw: BinaryIO, columns: Sequence[str | None],
                  line_numbers: bool = False) -> Iterator[list[tuple]]:
    try:
        import pyarrow
        import pyarrow.parquet as pq
    except ImportError:
        raise InputError(f"{name}: reading Parquet needs pyarrow", hint="pip install 'matcher[parquet]'") from None
    with _seekable(raw) as stream:
        try:
            parquet = pq.ParquetFile(stream)
        except (pyarrow.ArrowException, OSError) as err:
            raise InputError(f"{name} is not a readable Parquet file: {err}") from None
        names = parquet.schema_arrow.names
        wanted = [c for c in columns if c is not None]
        _positions(name, names, wanted)
        start = 1
        for record_batch in parquet.iter_batches(batch_size=BATCH_ROWS, columns=wanted):
            data = {c: [cell_text(v) for v in record_batch.column(c).to_pylist()] for c in wanted}
            size = record_batch.num_rows
            rows = [tuple(data[c][i] if c is not None else None for c in columns) for i in range(size)]
            yield [(start + i, *row) for i, row in enumerate(rows)] if line_numbers else rows
            start += size
