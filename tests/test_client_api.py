"""Issue 17, "Merchants and analysts": the Python API, the client CLI and input files, as a new user
meets them. A DataFrame (int phones), a Path, .csv.gz and ;-delimited files, the Report (to_pandas,
plot), what an Excel file is called, a wrong token or a dead server before the file is read, and
``--json -`` on stdout. Real server on loopback, real SQLite; small lists."""

from __future__ import annotations

import gzip
import io
import json
import random
import socket
import time
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

import matcher_client
from matcher import tabular
from matcher.errors import AuthenticationError, ConnectionFailed, InputError, PolicyRefused
from matcher_client import Report, api
from matcher_client.cli import main as client_main
from tests.conftest import SEGMENTS, exact_policy, ground_truth, phone

pd = pytest.importorskip("pandas")


def national(n: str) -> int:
    """+8613800000042 -> 13800000042, what pd.read_csv makes of a column of such numbers."""
    return int(n[3:])


def customers(rng: random.Random, lo: int, hi: int, labels=("north", "south")) -> list[tuple[str, str]]:
    return [(phone(i), rng.choice(labels)) for i in range(lo, hi)]


def read_all(path, columns, **kwargs):
    return [row for batch in tabular.read_columns(str(path), columns, **kwargs) for row in batch]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_dataframe_of_int_phones_matches_exactly(operator, serve):
    members, token = operator.seed(300, random.Random(1))
    rows = customers(random.Random(2), 150, 350)  # 150 members, 50 not
    df = pd.DataFrame({"phone": [national(n) for n, _ in rows], "store": [label for _, label in rows]})
    assert df["phone"].dtype == "int64"
    report = matcher_client.match(serve().address, token, df, id_column="phone", id_type="phone",
                                  label_column="store")
    assert isinstance(report, Report) and isinstance(report, dict)
    assert report["labels"] == ground_truth(members, rows)
    assert report["list_size"] == 200 and report["invalid"] == {}
    assert json.loads(json.dumps(report)) == dict(report)  # the same JSON as the plain dict gave
    assert "checkpoint" not in repr(report) and report["job_id"][:12] in repr(report)


def test_whole_floats_and_nan_from_pandas_are_digits_and_blanks():
    df = pd.DataFrame({"phone": [13800000001.0, float("nan"), 13800000002.0]})  # an int column with a gap
    merchant_list = api.read_list(df, id_column="phone", id_type="phone")
    assert merchant_list.prepared.invalid == {"empty": 1} and len(merchant_list.prepared.keys) == 2
    with pytest.raises(InputError, match="no column 'mobile'") as err:
        api.read_list(df, id_column="mobile", id_type="phone")
    assert err.value.hint == "columns are: phone"
    pa = pytest.importorskip("pyarrow")
    for same in (pa.table({"phone": [13800000001, None, 13800000002]}),  # an Arrow table
                 zip([13800000001, None, "138 0000 0002"], ["a", "b", "a"])):  # rows, of unknown length
        again = api.read_list(same, id_column="phone", id_type="phone")
        assert again.prepared.keys == merchant_list.prepared.keys and again.prepared.invalid == {"empty": 1}


def test_a_path_to_a_gzipped_semicolon_file_matches_exactly(operator, serve, tmp_path):
    members, token = operator.seed(200, random.Random(3))
    rows = customers(random.Random(4), 100, 260)
    path = tmp_path / "customers.csv.gz"
    path.write_bytes(gzip.compress(("phone;store\n" + "".join(f"{national(n)};{lb}\n" for n, lb in rows)).encode()))
    report = api.match(serve().address, token, path, id_column="phone", id_type="phone", label_column="store")
    assert report["labels"] == ground_truth(members, rows)


def test_gzip_semicolon_and_tab_files_read_as_csv(tmp_path):
    expected = [("138 0013 8000", "north, upper"), ("13900000000", "south")]
    body = 'phone;store\n138 0013 8000;"north, upper"\n13900000000;south\n'
    (tmp_path / "semi.csv").write_text(body)
    (tmp_path / "list.csv.gz").write_bytes(gzip.compress(body.encode()))
    (tmp_path / "gzip-without-extension").write_bytes(gzip.compress(body.encode()))
    (tmp_path / "tabs.tsv").write_text(body.replace(";", "\t").replace('"north, upper"', "north, upper"))
    for name in ("semi.csv", "list.csv.gz", "gzip-without-extension", "tabs.tsv"):
        assert read_all(tmp_path / name, ["phone", "store"]) == expected, name
        assert tabular.count_rows(str(tmp_path / name)) == 2
    (tmp_path / "odd.csv").write_text("phone:store\n1:a\n")
    assert read_all(tmp_path / "odd.csv", ["store"], delimiter=":") == [("a",)]
    with pytest.raises(InputError, match="no column 'store'") as err:
        read_all(tmp_path / "odd.csv", ["store"])
    assert "--delimiter" in err.value.hint


def test_an_excel_workbook_is_named_as_one(tmp_path):
    path = tmp_path / "customers.csv"  # named .csv, but Excel saved it as a workbook
    with zipfile.ZipFile(path, "w") as book:
        book.writestr("[Content_Types].xml", "<Types/>")
        book.writestr("xl/workbook.xml", "<workbook/>")
    for call in (lambda: read_all(path, ["phone"]), lambda: tabular.count_rows(str(path)),
                 lambda: api.match("127.0.0.1:1", "mt_x", path, id_column="phone", id_type="phone")):  # no server
        with pytest.raises(InputError, match="is an Excel workbook") as err:
            call()
        assert "save it as CSV" in err.value.hint
    (tmp_path / "list.xz").write_bytes(b"\xfd7zXZ\x00\x00rest")
    with pytest.raises(InputError, match="xz-compressed"):
        read_all(tmp_path / "list.xz", ["phone"])


def test_a_wrong_token_fails_before_the_file_is_read(operator, serve, tmp_path):
    operator.seed(20, random.Random(5))
    bad = tmp_path / "unreadable.csv"
    bad.write_bytes(b"name\n\xff\xfe not utf-8\n")  # no 'phone' column, not UTF-8: reading it would fail
    served = serve()
    started = time.monotonic()
    with pytest.raises(AuthenticationError, match="the server refused the token: ask the operator for a new one"):
        api.match(served.address, "mt_wrong", bad, id_column="phone", id_type="phone")
    assert time.monotonic() - started < 5
    with pytest.raises(InputError, match="not UTF-8"):  # with the right token, the file's own problem
        api.match(served.address, operator.token("merchant", "other"), bad, id_column="phone", id_type="phone")


def test_an_unreachable_server_is_one_line_naming_it(tmp_path):
    path = tmp_path / "list.csv"
    path.write_text("phone\n13800000001\n")
    address = f"127.0.0.1:{closed_port()}"
    with pytest.raises(ConnectionFailed, match=f"cannot reach {address}: is `matcher serve` running"):
        api.match(address, "mt_x", path, id_column="phone", id_type="phone")
    result = CliRunner().invoke(client_main, ["match", "--server", address, "--token", "mt_x", str(path),
                                              "--id-column", "phone", "--id-type", "phone"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "error: cannot reach" in result.stderr and "TLS" in result.stderr


def test_a_list_under_the_policy_minimum_is_refused_naming_the_setting(operator, serve):
    operator.seed(20, random.Random(6))
    exact_policy(operator.store, min_list_size="12")
    token = operator.token("merchant", "small")
    rows = [phone(i) for i in range(8)] + ["oops"]  # bare ids work as rows too
    with pytest.raises(PolicyRefused, match="list has 8 unique IDs") as err:
        api.match(serve().address, token, rows, id_type="phone")
    assert err.value.reason == "list_too_small"
    assert err.value.hint.startswith("the policy's min_list_size is 12, the list has 8 unique IDs in 9 rows")
    assert operator.store.status()["jobs"] == {"refused": 1}  # the server refused it, and logged that


@pytest.fixture
def thresholded(operator, serve):
    """Two labels of 20 members each; k = 10, so a segment held by 9 of a label is suppressed."""
    members = {phone(i): (0b01 if i % 20 < 9 else 0) | (0b10 if i % 20 < 12 else 0) for i in range(40)}
    operator.add_members(members)
    exact_policy(operator.store, k="10")
    rows = [(phone(i), "a" if i < 20 else "b") for i in range(40)]
    return serve().address, operator.token("merchant", "shop"), rows


def test_to_pandas_is_tidy_and_suppressed_cells_are_na(thresholded):
    address, token, rows = thresholded
    report = api.match(address, token, rows=rows, id_type="phone", progress=True)
    df = report.to_pandas()
    assert list(df.columns) == ["label", "segment", "count", "rate", "suppressed"]
    assert df.shape == (2 * (1 + len(SEGMENTS)), 5)
    cell = df.set_index(["label", "segment"])
    assert cell.loc[("a", "matched"), "count"] == 20 and cell.loc[("a", "matched"), "rate"] == 1.0
    member = cell.loc[("a", "member")]  # true count 9 < k
    assert member["suppressed"] and pd.isna(member["count"]) and pd.isna(member["rate"])
    paid = cell.loc[("b", "paid_with_platform")]  # 12 of 20
    assert not paid["suppressed"] and paid["count"] == 12 and paid["rate"] == pytest.approx(0.6)
    assert df["suppressed"].sum() == sum(v is None for lb in report["labels"].values()
                                         for v in [lb["matched"], *lb["segments"].values()])


def test_plot_and_the_cli_plot_and_json_to_stdout(thresholded, tmp_path):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    address, token, rows = thresholded
    path = tmp_path / "list.csv"
    path.write_text("phone,store\n" + "".join(f"{n},{lb}\n" for n, lb in rows))
    png = tmp_path / "rates.png"
    result = CliRunner().invoke(client_main, ["match", "--server", address, "--token", token, str(path),
                                              "--id-column", "phone", "--id-type", "phone", "--label-column",
                                              "store", "--json", "-", "--plot", str(png)])
    assert result.exit_code == 0, result.stderr
    (tmp_path / "report.json").write_text(result.stdout)
    report = Report.load(tmp_path / "report.json")  # stdout is the JSON and nothing else
    assert report["labels"]["a"]["matched"] == 20 and report["labels"]["a"]["segments"]["member"] is None
    assert not (Path.cwd() / "-").exists()
    progress = [json.loads(line) for line in result.stderr.splitlines() if line.startswith("{")]
    assert {"normalize", "hash & blind", "stream", "match"} <= {p["phase"] for p in progress}
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ax = report.plot()
    assert len(ax.patches) == 2 * len(SEGMENTS)  # a bar per label and segment (0 wide when suppressed)
    buffer = io.BytesIO()
    ax.figure.savefig(buffer, format="png")
    assert buffer.getvalue()[:4] == b"\x89PNG"


def test_the_cli_table_explains_the_dash(thresholded, tmp_path):
    address, token, rows = thresholded
    path = tmp_path / "list.csv"
    path.write_text("phone\n" + "".join(f"{n}\n" for n, _ in rows[:20]))
    result = CliRunner().invoke(client_main, ["match", "--server", address, "--token", token, str(path),
                                              "--id-column", "phone", "--id-type", "phone", "--quiet"])
    assert result.exit_code == 0, result.stderr
    assert "—" in result.stdout and "below the policy's k threshold" in " ".join(result.stdout.split())


def test_audience_import_takes_a_delimiter(operator, tmp_path):
    from matcher.server.cli import main as operator_main

    path = tmp_path / "members.csv"
    path.write_text("phone:member\n13800000001:1\n13800000002:0\n")
    result = CliRunner().invoke(operator_main, ["audience", "import", "--db", str(operator.db), str(path),
                                                "--id-column", "phone", "--id-type", "phone", "--segments",
                                                "member", "--delimiter", ":"])
    assert result.exit_code == 0, result.output
    assert operator.store.audience_info()["members"] == 2


def test_stdin_may_be_gzip_or_parquet(monkeypatch):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    parquet = io.BytesIO()
    pq.write_table(pa.table({"phone": [13800000001, None]}), parquet)  # an int column with a gap
    for data, expected in [(gzip.compress(b"phone\n13800000001\n"), [("13800000001",)]),
                           (parquet.getvalue(), [("13800000001",), (None,)])]:
        monkeypatch.setattr("sys.stdin", io.TextIOWrapper(io.BytesIO(data)))
        assert read_all("-", ["phone"]) == expected
