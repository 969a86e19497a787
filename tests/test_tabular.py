"""Input files: CSV with a header, Parquet (with pyarrow), and stdin as '-'."""

from __future__ import annotations

import io
import sys

import pytest

from matcher import tabular
from matcher.errors import InputError


def read_all(path, columns):
    return [row for batch in tabular.read_columns(str(path), columns) for row in batch]


def test_csv_with_bom_quotes_and_missing_cells(tmp_path):
    path = tmp_path / "list.csv"
    path.write_bytes("\ufeffphone,store\n\"138 0013 8000\",north\n13900000000\n".encode())
    assert read_all(path, ["phone", "store"]) == [("138 0013 8000", "north"), ("13900000000", None)]
    assert read_all(path, ["phone", None]) == [("138 0013 8000", None), ("13900000000", None)]
    assert tabular.count_rows(str(path)) == 2


def test_parquet_reads_the_same_rows(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "list.parquet"
    pq.write_table(pa.table({"phone": ["13800138000", None, "+8613900000000"], "tier": [1, 2, 3]}), path)
    assert read_all(path, ["phone", "tier"]) == [("13800138000", "1"), (None, "2"), ("+8613900000000", "3")]
    with pytest.raises(InputError, match="no column 'mobile'"):
        read_all(path, ["mobile"])


def test_stdin_dash(monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"email\nA@Example.com\n")))
    assert read_all("-", ["email"]) == [("A@Example.com",)]


@pytest.mark.parametrize("content, message", [
    (b"", "is empty"),
    (b"\n\n", "is empty"),
    (b"phone\n\xff\n", "not UTF-8"),
    (b"name\nx\n", "no column 'phone'"),
])
def test_bad_files_name_the_problem(tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_bytes(content)
    with pytest.raises(InputError, match=message):
        read_all(path, ["phone"])


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        read_all(tmp_path / "nope.csv", ["phone"])


def test_missing_file_or_directory_names_the_path_for_reading_and_counting(tmp_path):
    missing = str(tmp_path / "nope.csv")
    for call in (lambda: read_all(missing, ["phone"]), lambda: tabular.count_rows(missing)):
        with pytest.raises(InputError, match=f"cannot read '{missing}': no such file"):
            call()
    with pytest.raises(InputError, match="is a directory, not a file"):
        tabular.count_rows(str(tmp_path))


def test_line_numbers_are_where_each_record_starts(tmp_path):
    path = tmp_path / "list.csv"
    path.write_text('phone,note\n1,a\n2,"two\nlines"\n\n3,c\n')
    rows = [row for batch in tabular.read_columns(str(path), ["phone"], line_numbers=True) for row in batch]
    assert rows == [(2, "1"), (3, "2"), (5, None), (6, "3")]  # line 5 is blank: a row of nothing
    assert tabular.location(str(path), 4) == "line 4" and tabular.location("x.parquet", 4) == "row 4"


def test_parquet_line_numbers_are_row_numbers(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "list.parquet"
    pq.write_table(pa.table({"phone": ["a", "b", "c"]}), path)
    rows = [row for batch in tabular.read_columns(str(path), ["phone"], line_numbers=True) for row in batch]
    assert rows == [(1, "a"), (2, "b"), (3, "c")]


def test_rereadable_stdin_is_a_private_copy(monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"email\nA@Example.com\n")))
    with tabular.rereadable("-") as path:
        first = [row for batch in tabular.read_columns(path, ["email"], name="-") for row in batch]
        again = [row for batch in tabular.read_columns(path, ["email"], name="-") for row in batch]
    assert first == again == [("A@Example.com",)]
