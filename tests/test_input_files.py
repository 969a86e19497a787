"""Issue 14, item 7, "Input files": a file that is missing or unreadable is one clear error (never a
traceback) wherever it is given; an audience file with bad segment values fails before anything is
written (or, with --skip-invalid, is imported without those rows), naming the first lines; and a big
list is read from any caller, including a script without a ``__main__`` guard and ``python -``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from matcher_client import api
from matcher_client.cli import main as client_main

from matcher import tabular
from matcher.server.audience import import_file
from matcher.server.cli import main as operator_main
from matcher.errors import InputError
from matcher.server.store import Store
from tests.conftest import exact_policy, match_key, phone

ROOT = Path(__file__).resolve().parent.parent


def operator_cli(*args: str, input: str | None = None):
    return CliRunner().invoke(operator_main, list(args), input=input)


def client_cli(*args: str):
    return CliRunner().invoke(client_main, list(args))


def assert_clean_error(result, *fragments: str) -> None:
    """Exit code 1, one `error: ...` line naming the problem, no traceback."""
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    text = " ".join(result.stderr.split())  # rich wraps long lines
    assert "error:" in text
    for fragment in fragments:
        assert fragment in text, text


@pytest.fixture
def initialised(tmp_path):
    db = tmp_path / "op.db"
    assert operator_cli("init", "--db", str(db)).exit_code == 0
    return db


def audience_state(db: Path) -> dict:
    """What a failed import must leave as it was: members, their segments, the audience version."""
    store = Store(db)
    try:
        return {"info": store.audience_info(), "version": store.get_meta("audience_version"),
                "rows": sorted(store.db.execute("SELECT member_id, segments FROM audience").fetchall())}
    finally:
        store.close()


def import_args(db: Path, path: str, *extra: str) -> list[str]:
    return ["audience", "import", "--db", str(db), path, "--id-column", "member_id", "--id-type", "phone",
            "--segments", "member,paid", "--json", *extra]


def bad_paths(tmp_path: Path) -> list[tuple[str, str]]:
    """(path, the reason the message must give): a missing file and a directory."""
    folder = tmp_path / "a-folder.csv"
    folder.mkdir()
    return [(str(tmp_path / "nope.csv"), "no such file"), (str(folder), "is a directory, not a file")]


# -- 1. missing or unreadable files --------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["missing", "directory"])
def test_audience_import_of_a_missing_file_or_a_directory_is_one_error_line(initialised, tmp_path, kind):
    path, reason = bad_paths(tmp_path)[0 if kind == "missing" else 1]
    before = audience_state(initialised)
    result = operator_cli(*import_args(initialised, path))
    assert_clean_error(result, f"cannot read '{path}': {reason}")
    assert audience_state(initialised) == before


@pytest.mark.parametrize("command", ["match", "activate"])
@pytest.mark.parametrize("kind", ["missing", "directory"])
def test_client_commands_on_a_missing_file_or_a_directory_say_so(tmp_path, command, kind):
    path, reason = bad_paths(tmp_path)[0 if kind == "missing" else 1]
    extra = ["--where", "member", "--name", "x"] if command == "activate" else []
    # The file is read before any connection: no server is needed to see the error.
    result = client_cli(command, "--server", "127.0.0.1:1", "--token", "mt_x", path, "--id-column", "phone",
                        "--id-type", "phone", "--quiet", *extra)
    assert_clean_error(result, f"cannot read '{path}': {reason}")


def test_api_read_list_and_match_raise_input_error_naming_the_path(tmp_path):
    for path, reason in bad_paths(tmp_path):
        with pytest.raises(InputError, match=f"cannot read '{path}': {reason}"):
            api.read_list(path, id_column="phone", id_type="phone")
        with pytest.raises(InputError, match=f"cannot read '{path}': {reason}"):
            api.match("127.0.0.1:1", "mt_x", path, id_column="phone", id_type="phone")


def test_unreadable_file_is_permission_denied(tmp_path, monkeypatch):
    path = tmp_path / "secret.csv"
    path.write_text("phone\n13800138000\n")

    def refuse(*args, **kwargs):  # what open() does on a mode-000 file (chmod cannot show it to root)
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(tabular, "open", refuse, raising=False)
    with pytest.raises(InputError, match=f"cannot read '{path}': permission denied"):
        api.read_list(str(path), id_column="phone", id_type="phone")


def test_a_missing_or_broken_parquet_file_is_an_input_error(tmp_path):
    pytest.importorskip("pyarrow")
    with pytest.raises(InputError, match="no such file"):
        list(tabular.read_columns(str(tmp_path / "nope.parquet"), ["phone"]))
    broken = tmp_path / "broken.parquet"
    broken.write_text("phone\n13800138000\n")
    with pytest.raises(InputError, match="not a readable Parquet file"):
        list(tabular.read_columns(str(broken), ["phone"]))


# -- 2. invalid segment values and invalid ids in the audience -------------------------------------------

GOOD = "member_id,member,paid\n13800000001,1,0\n13800000002,yes,TRUE\n"


def write(tmp_path: Path, text: str, name: str = "members.csv") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_bad_segment_values_fail_the_import_and_leave_the_audience_as_it_was(initialised, tmp_path):
    assert operator_cli(*import_args(initialised, write(tmp_path, GOOD, "first.csv"))).exit_code == 0
    before = audience_state(initialised)
    assert before["info"]["members"] == 2 and before["version"]
    # 3 bad rows in 9: line 4 'maybe', line 6 blank, line 9 '2'; the good rows around them would be new members.
    path = write(tmp_path, "member_id,member,paid\n13800000003,1,0\n13800000004,0,1\n13800000005,1,maybe\n"
                           "13800000006,1,1\n13800000007,,1\n13800000008,no,no\n13800000009,y,n\n"
                           "13800000010,2,0\n13800000011,1,1\n")
    result = operator_cli(*import_args(initialised, path))
    assert_clean_error(result, "3 rows have invalid segment values: line 4 column 'paid' 'maybe', "
                               "line 6 column 'member' '', line 9 column 'member' '2'; nothing was imported",
                       "--skip-invalid")
    assert audience_state(initialised) == before


def test_the_message_lists_the_first_five_bad_rows(tmp_path, initialised):
    rows = "".join(f"{phone(i)},{'maybe' if i % 2 else '1'},0\n" for i in range(20))  # 10 bad, odd i
    path = write(tmp_path, "member_id,member,paid\n" + rows)
    result = operator_cli(*import_args(initialised, path))
    text = " ".join(result.stderr.split())
    assert_clean_error(result, "10 rows have invalid segment values: line 3 column 'member' 'maybe', line 5 ")
    assert "line 11 column 'member' 'maybe', ...;" in text and "line 13" not in text
    assert audience_state(initialised)["info"]["members"] == 0


def test_skip_invalid_imports_the_rest_and_reports_what_it_skipped(initialised, tmp_path):
    path = write(tmp_path, "member_id,member,paid\n13800000003,1,0\n13800000004,0,1\n13800000005,1,maybe\n"
                           "13800000006,1,1\n13800000007,,1\n13800000008,no,no\n")
    result = operator_cli(*import_args(initialised, path, "--skip-invalid"))
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["rows"], summary["imported"], summary["members"]) == (6, 4, 4)
    assert summary["invalid"] == {"bad_segment_paid": 1, "bad_segment_member": 1}
    assert summary["bad_segments"] == [
        {"line": 4, "column": "paid", "value": "maybe", "reason": "bad_segment_paid"},
        {"line": 6, "column": "member", "value": "", "reason": "bad_segment_member"}]
    text = " ".join(result.stderr.split())
    assert ("skipped 2 rows have invalid segment values: line 4 column 'paid' 'maybe', "
            "line 6 column 'member' ''") in text
    assert sorted(Store(initialised).db.execute("SELECT member_id FROM audience").fetchall()) == [
        ("+8613800000003",), ("+8613800000004",), ("+8613800000006",), ("+8613800000008",)]


def test_the_messy_csv_of_test_cli_imports_with_skip_invalid(initialised, tmp_path):
    """test_cli.py's messy file (one 'maybe') now needs --skip-invalid; with it, the same counts."""
    path = write(tmp_path, "member_id,member,paid\n"
                           "138 0000 0001,1,0\n+86 138-0000-0002,yes,true\n008613800000003,0,no\n"
                           "13800000001,1,1\nnot a phone,1,1\n,0,0\n13800000004,maybe,1\n")
    assert operator_cli(*import_args(initialised, path)).exit_code == 1
    result = operator_cli(*import_args(initialised, path, "--skip-invalid"))
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["rows"], summary["imported"], summary["duplicates"], summary["members"]) == (7, 3, 1, 3)
    assert summary["invalid"] == {"invalid_phone": 1, "empty": 1, "bad_segment_member": 1}
    text = " ".join(result.stderr.split())
    assert "invalid 3 (bad_segment_member: 1, empty: 1, invalid_phone: 1)" in text
    assert ("skipped 2 rows have invalid ids (empty: 1, invalid_phone: 1): line 6 column 'member_id' "
            "'not a phone', line 7 column 'member_id' ''") in text


def test_every_documented_yes_no_spelling_is_still_accepted(tmp_path):
    store = Store(tmp_path / "s.db", create=True)
    spellings = [("1", "0"), ("true", "false"), ("YES", "No"), (" Yes ", " NO "), ("t", "f"), ("y", "n"),
                 ("on", "off"), ("x", "0")]
    path = write(tmp_path, "member_id,member,paid\n" + "".join(f"{phone(i)},{a},{b}\n"
                                                               for i, (a, b) in enumerate(spellings)))
    summary = import_file(store, path, id_column="member_id", id_type="phone", segments=["member", "paid"])
    assert summary.invalid == {} and summary.members == len(spellings)
    assert {bits for (bits,) in store.db.execute("SELECT segments FROM audience")} == {0b01}


def test_line_numbers_count_file_lines_across_quoted_newlines(initialised, tmp_path):
    path = write(tmp_path, 'member_id,member,paid\n13800000001,"1",0\n"13800000002\n",1,0\n13800000003,1,bad\n')
    result = operator_cli(*import_args(initialised, path))
    assert_clean_error(result, "1 row has an invalid segment value: line 5 column 'paid' 'bad'")


def test_stdin_is_checked_then_imported(initialised):
    bad = operator_cli(*import_args(initialised, "-"), input="member_id,member,paid\n13800000001,1,nope\n")
    assert_clean_error(bad, "-: 1 row has an invalid segment value: line 2 column 'paid' 'nope'")
    good = operator_cli(*import_args(initialised, "-"), input=GOOD)
    assert good.exit_code == 0, good.output
    assert json.loads(good.stdout)["members"] == 2


def test_parquet_rows_are_named_by_row_number(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "members.parquet"
    pq.write_table(pa.table({"member_id": [phone(1), phone(2), phone(3)], "member": ["1", None, "0"]}), path)
    store = Store(tmp_path / "s.db", create=True)
    with pytest.raises(InputError, match="1 row has an invalid segment value: row 2 column 'member' ''"):
        import_file(store, str(path), id_column="member_id", id_type="phone", segments=["member"])
    assert store.audience_info()["members"] == 0


def test_invalid_ids_are_skipped_and_reported_unless_no_row_is_valid(initialised, tmp_path):
    ok = write(tmp_path, "member_id,member,paid\n13800000001,1,0\nnot a phone,1,1\n12,0,0\n", "ok.csv")
    result = operator_cli(*import_args(initialised, ok))
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["members"] == 1 and summary["invalid"] == {"invalid_phone": 2}
    assert [(b["line"], b["value"]) for b in summary["bad_ids"]] == [(3, "not a phone"), (4, "12")]
    before = audience_state(initialised)
    # A file of emails imported as phones: nothing is valid, so nothing is written.
    emails = write(tmp_path, "member_id,member,paid\na@example.com,1,0\nb@example.com,0,1\n", "emails.csv")
    result = operator_cli(*import_args(initialised, emails))
    assert_clean_error(result, "none of the 2 rows is valid: 2 rows have invalid ids (invalid_phone: 2): "
                               "line 2 column 'member_id' 'a@example.com', line 3", "--id-type (phone)")
    assert audience_state(initialised) == before


def test_a_header_only_file_is_still_an_empty_import(initialised, tmp_path):
    result = operator_cli(*import_args(initialised, write(tmp_path, "member_id,member,paid\n")))
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["rows"] == 0


# -- 3. big lists from any caller: no guard, python -c, python - -----------------------------------------

N = 70_000


@pytest.fixture(scope="module")
def big_list(tmp_path_factory) -> tuple[Path, dict]:
    """70,000 rows (more than one batch): 100 invalid, every 50th a duplicate in another spelling."""
    path = tmp_path_factory.mktemp("big") / "big.csv"
    rows = []
    for i in range(N):
        if i % 700 == 0:
            rows.append("not a phone,x")
        elif i % 50 == 0:
            rows.append(f"138 {i - 1:08d}"[:4] + f"{i - 1:08d},y")  # the previous row's number again
        else:
            rows.append(f"138{i:08d},{'ab'[i % 2]}")
    path.write_text("phone,store\n" + "\n".join(rows) + "\n")
    serial = api.read_list(str(path), id_column="phone", id_type="phone", label_column="store", parallel=False)
    expected = {"rows": serial.prepared.rows, "keys": len(serial.prepared.keys),
                "invalid": serial.prepared.invalid, "duplicates": serial.prepared.duplicates}
    assert expected["rows"] == N and expected["invalid"] == {"invalid_phone": 100} and expected["duplicates"] > 1000
    return path, expected


READ_SCRIPT = """\
import json
from matcher_client import api
m = api.read_list({path!r}, id_column="phone", id_type="phone", label_column="store")
p = m.prepared
print(json.dumps({{"rows": p.rows, "keys": len(p.keys), "invalid": p.invalid, "duplicates": p.duplicates}}))
"""


def run_python(how: str, script: str, tmp_path: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``script`` as a file without a guard, as ``python -c`` or as ``python -`` (stdin)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "clients")])}
    if how == "file":
        file = tmp_path / "unguarded.py"
        file.write_text(script)
        args, stdin = [str(file)], None
    elif how == "-c":
        args, stdin = ["-c", script], None
    else:
        args, stdin = ["-"], script
    return subprocess.run([sys.executable, *args], input=stdin, capture_output=True, text=True, timeout=timeout,
                          cwd=tmp_path, env=env, check=False)


@pytest.mark.parametrize("how", ["-"])  # file and -c: covered by the match test below
def test_read_list_of_a_big_file_works_without_a_main_guard(big_list, tmp_path, how):
    path, expected = big_list
    done = run_python(how, READ_SCRIPT.format(path=str(path)), tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Error" not in done.stderr and "Traceback" not in done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == expected


CONTEXT_SCRIPT = """\
from matcher_client import api
def which():
    context = api._worker_context()
    return context.get_start_method() if context else "in-process"
{call}
"""


@pytest.mark.parametrize("call, expected", [
    ('if __name__ == "__main__":\n    print(which())', "spawn"),      # a guarded script: the spawn pool, as before
    ('if "__main__" == __name__:\n    print(which())', "spawn"),
    ("print(which())", "fork" if sys.platform.startswith("linux") else "in-process"),
    (("import threading\nt = threading.Thread(target=__import__('time').sleep, args=(2,))\nt.start()\n"
      "print(which())"), "in-process"),                                  # unguarded and threaded: no pool
])
def test_the_pool_start_method_follows_what_a_worker_could_re_import(tmp_path, call, expected):
    done = run_python("file", CONTEXT_SCRIPT.format(call=call), tmp_path, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [expected]


def test_python_dash_c_keeps_the_spawn_pool(tmp_path):
    done = run_python("-c", CONTEXT_SCRIPT.format(call="print(which())"), tmp_path, timeout=60)
    assert done.stdout.split() == ["spawn"], done.stderr


MATCH_SCRIPT = """\
from matcher_client import api
{kernels}
r = api.match({address!r}, {token!r}, {path!r}, id_column="phone", id_type="phone", label_column="store",
              count_only=True{kernels_arg})
print(r["rows"], r["list_size"], sum(r["invalid"].values()), r["duplicates"],
      sum(cell["matched"] for cell in r["labels"].values()))
"""


MEMBERS = [f"+86138{i:08d}" for i in range(0, 2_000, 3)]


@pytest.fixture
def live(operator, serve, big_list):
    path, expected = big_list
    operator.add_members({m: 1 for m in MEMBERS})
    exact_policy(operator.store)
    serial = api.read_list(str(path), id_column="phone", id_type="phone", label_column="store", parallel=False)
    matched = len(set(serial.prepared.keys) & {match_key(m) for m in MEMBERS})
    line = [expected["rows"], expected["keys"], sum(expected["invalid"].values()), expected["duplicates"], matched]
    return serve().address, operator.token("merchant", "shop"), path, [str(v) for v in line]


@pytest.mark.parametrize("how", ["file", "-c", "-"])
def test_match_on_a_big_file_without_a_main_guard(live, tmp_path, how):
    """Reading the list and run_job's crypto kernels both start processes only where a worker can
    re-import __main__ harmlessly; the counts are exact either way."""
    address, token, path, line = live
    script = MATCH_SCRIPT.format(address=address, token=token, path=str(path), kernels="", kernels_arg="")
    done = run_python(how, script, tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == line
