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
