"""The merchant's side of several identifiers per customer (issue 19): reading a list of several
identifier columns against a plaintext truth (one element per valid identifier, deduplicated by kind
and match key, the first label kept; how invalid cells and rows count), every input form and the
process pool giving the same list, the id_columns= and --id-column COLUMN:TYPE spellings, the hash
cache with several kinds in one job, and real jobs: the secure engines on a list read here against
members of several identifiers, and a real server whose audience holds phones only (which accepts
the list's phones and refuses, clearly and before charging, the kinds it does not hold)."""

from __future__ import annotations

import gzip
import hashlib
import json
import random
import socket
from collections import Counter

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from matcher import ids, tabular
from matcher.crypto import group
from matcher.crypto.kernels import Kernels
from matcher.errors import InputError
from matcher_client import api
from matcher_client.cli import main as client_main
from matcher_client.hash_cache import CachingKernels, HashCache, HashCacheDir
from tests.conftest import ground_truth, phone
from tests.test_multi_id_protocol import counts, multi_audience, run

COLUMNS = [("phone", "phone"), ("email", "email"), ("openid", "opaque"), ("phone_sha", "sha256")]
KIND = {"phone": "phone", "email": "email", "openid": "opaque", "phone_sha": "phone"}


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# --- a plaintext model of a customer file -------------------------------------------------------
# A cell is ("blank", spelling), ("valid", person, spelling) or ("bad", reason); its raw text and
# the (kind, match key) it must give are computed here without matcher.ids.

def raw_cell(column: str, cell: tuple) -> str:
    state = cell[0]
    if state == "blank":
        return ["", "  ", '""'][cell[1] % 3] if column == "phone" else ["", "  "][cell[1] % 2]
    if state == "bad":
        return {"phone": "12345", "email": "not-an-email", "openid": "x" * 300, "phone_sha": "abc"}[column]
    person, spelling = cell[1], cell[2]
    digits = f"138{person:08d}"
    if column == "phone":
        return [digits, f"+86 {digits[:3]}-{digits[3:7]}-{digits[7:]}", "0086" + digits,
                f"{digits[:3]} {digits[3:7]} {digits[7:]}"][spelling % 4]
    if column == "email":
        email = f"user{person}@example.com"
        return [email, email.upper(), f"  {email} "][spelling % 3]
    if column == "openid":
        return [f"oid-{person}", f" oid-{person}  "][spelling % 2]
    return sha(f"+86{digits}").upper() if spelling % 2 else sha(f"+86{digits}")


def cell_key(column: str, cell: tuple) -> tuple[str, str] | None:
    if cell[0] != "valid":
        return None
    person = cell[1]
    normalized = {"phone": f"+86138{person:08d}", "phone_sha": f"+86138{person:08d}",
                  "email": f"user{person}@example.com", "openid": f"oid-{person}"}[column]
    return KIND[column], sha(normalized)


BAD_REASON = {"phone": "invalid_phone", "email": "invalid_email", "openid": "too_long", "phone_sha": "bad_sha256"}


def truth(rows: list[tuple[list[tuple], str | None]], columns: list[str]) -> dict:
    """What reading must give: elements in first-seen order, each (kind, key) once with the label of
    its first row; invalid per non-blank invalid cell, and 'empty' per row of blank cells only."""
    elements: dict[tuple[str, str], tuple[str, str]] = {}
    invalid, by_column, label_rows = Counter(), {}, Counter()
    invalid_rows = duplicates = 0
    for cells, label in rows:
        label = (label or "").strip() or "all"
        valid = new = False
        for column, cell in zip(columns, cells):
            if cell[0] == "bad":
                invalid[BAD_REASON[column]] += 1
                by_column.setdefault(column, Counter())[BAD_REASON[column]] += 1
            key = cell_key(column, cell)
            if key is None:
                continue
            valid = True
            if key in elements:
                duplicates += 1
            else:
                elements[key] = (label, column)
                new = True
        if not valid:
            invalid_rows += 1
            if all(cell[0] == "blank" for cell in cells):
                invalid["empty"] += 1
        label_rows[label] += new
    return {"keys": [k for _, k in elements], "kinds": [kind for kind, _ in elements],
            "labels": [label for label, _ in elements.values()], "invalid": dict(invalid),
            "by_column": {c: dict(n) for c, n in by_column.items()}, "invalid_rows": invalid_rows,
            "duplicates": duplicates, "rows": len(rows), "label_rows": {k: n for k, n in label_rows.items() if n},
            "ids_by_column": {c: sum(1 for _, col in elements.values() if col == c) for c in columns}}


def got(prepared: ids.PreparedList) -> dict:
    return {"keys": prepared.keys, "kinds": prepared.kinds(), "labels": prepared.labels,
            "invalid": prepared.invalid, "by_column": prepared.invalid_by_column,
            "invalid_rows": prepared.invalid_rows, "duplicates": prepared.duplicates, "rows": prepared.rows,
            "label_rows": prepared.label_rows, "ids_by_column": prepared.ids_by_column()}


cells = st.one_of(st.tuples(st.just("blank"), st.integers(0, 2)),
                  st.tuples(st.just("valid"), st.integers(0, 25), st.integers(0, 3)),
                  st.tuples(st.just("bad")))
rows_of = st.lists(st.tuples(st.lists(cells, min_size=4, max_size=4), st.sampled_from(["north", " south", None, ""])),
                   max_size=80)
COLUMN_NAMES = [c for c, _ in COLUMNS]
ID_COLUMNS = ids.id_columns_of(COLUMNS)


def raw_rows(rows) -> list[tuple]:
    return [(*(raw_cell(c, cell) for c, cell in zip(COLUMN_NAMES, cells)), label) for cells, label in rows]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=rows_of)
def test_reading_several_columns_equals_the_plaintext_truth(rows):
    prepared = ids.prepare_columns(raw_rows(rows), ID_COLUMNS)
    assert got(prepared) == truth(rows, COLUMN_NAMES)
    assert len(prepared.column_idx) == len(prepared.row_start) == len(prepared.keys)  # a byte each


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=rows_of, cuts=st.lists(st.integers(1, 80), max_size=6))
def test_pieces_merged_equal_one_pass(rows, cuts):
    raw = raw_rows(rows)
    whole = ids.prepare_columns(raw, ID_COLUMNS)
    bounds = sorted({0, len(raw), *[min(c, len(raw)) for c in cuts]})
    pieces = [raw[a:b] for a, b in zip(bounds, bounds[1:])] or [raw]
    merged = ids.merge(ids.prepare_columns(piece, ID_COLUMNS) for piece in pieces)
    assert merged == whole


def test_the_counting_rules_on_a_small_file():
    rows = [("138 0013 8000", "A@Example.com", "", "north"),     # two ids
            ("", "a@example.com", "oid-1", "south"),              # email again (dup, keeps north), openid new
            ("", "", "", "north"),                                # blank row: 'empty'
            ("12345", "nope", "", "north"),                       # two invalid cells, no valid id
            ("+86 138-0013-8000", "", "", "east"),                # phone again: nothing new, row sends nothing
            ("12345", "b@example.com", "  ", "east")]             # invalid phone dropped, email kept
    prepared = ids.prepare_columns(rows, ids.id_columns_of(["phone:phone", "email:email", "openid:opaque"]))
    assert prepared.rows == 6 and len(prepared.keys) == 4
    assert prepared.labels == ["north", "north", "south", "east"]
    assert prepared.kinds() == ["phone", "email", "opaque", "email"]
    assert prepared.invalid == {"empty": 1, "invalid_phone": 2, "invalid_email": 1}
    assert prepared.invalid_by_column == {"phone": {"invalid_phone": 2}, "email": {"invalid_email": 1}}
    assert prepared.invalid_rows == 2 and prepared.duplicates == 2
    assert prepared.label_sizes == {"north": 2, "south": 1, "east": 1}   # what the server checks
    assert prepared.label_rows == {"north": 1, "south": 1, "east": 1}    # customers, for the match rate
    assert prepared.rows_sent == 3


def test_one_column_is_exactly_the_single_column_reading():
    rows = [("138 0013 8000", "a"), ("", "b"), ("bad", None), ("13800138000", "c")]
    one = ids.prepare_columns(rows, ids.id_columns_of([("phone", "phone")]))
    single = ids.prepare(rows, "phone")
    assert (one.keys, one.labels, one.invalid, one.duplicates, one.rows, one.kinds()) == \
        (single.keys, single.labels, single.invalid, single.duplicates, single.rows, None)
    assert one.invalid_by_column == {"phone": {"invalid_phone": 1}}


# --- input forms -------------------------------------------------------------------------------

def sample_rows(n: int, seed: int = 1) -> list[tuple]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        cells = [("valid", rng.randrange(n), rng.randrange(4)) if rng.random() < 0.6 else
                 ("bad",) if rng.random() < 0.1 else ("blank", rng.randrange(3)) for _ in COLUMN_NAMES]
        rows.append((cells, rng.choice(["north", "south", "east"])))
    return rows


def write_csv(path, rows) -> str:
    import csv

    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*COLUMN_NAMES, "store"])
        writer.writerows(raw_rows(rows))
    return str(path)


def test_every_input_form_gives_the_same_list(tmp_path):
    rows = sample_rows(300)
    raw = raw_rows(rows)
    expected = truth(rows, COLUMN_NAMES)
    path = write_csv(tmp_path / "customers.csv", rows)
    gz = tmp_path / "customers.csv.gz"
    gz.write_bytes(gzip.compress((tmp_path / "customers.csv").read_bytes()))
    forms = [path, gz, raw, iter(raw),
             [dict(zip([*COLUMN_NAMES, "store"], r)) for r in raw]]  # mappings by column name
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame(raw, columns=[*COLUMN_NAMES, "store"])
    forms.append(frame)
    for form in forms:
        merchant_list = api.read_list(form, id_columns=COLUMNS, label_column="store")
        assert got(merchant_list.prepared) == expected, type(form)
        assert merchant_list.id_kind == "phone"
        assert merchant_list.session_kinds() == ("phone", expected["kinds"])
    table = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    pq.write_table(table.Table.from_pandas(frame), tmp_path / "customers.parquet")
    parquet = api.read_list(tmp_path / "customers.parquet", id_columns=COLUMNS, label_column="store")
    assert got(parquet.prepared) == expected


def test_several_cores_give_what_one_core_gives(tmp_path):
    rows = sample_rows(tabular.BATCH_ROWS + 3_000, seed=5)  # more than one batch: the process pool
    path = write_csv(tmp_path / "big.csv", rows)
    seen = []
    parallel = api.read_list(path, id_columns=COLUMNS, label_column="store",
                             progress=lambda phase, done, total: seen.append((done, total)))
    serial = api.read_list(path, id_columns=COLUMNS, label_column="store", parallel=False)
    assert parallel.prepared == serial.prepared
    assert got(serial.prepared) == truth(rows, COLUMN_NAMES)
    assert seen[-1] == (len(rows), len(rows))


def test_a_missing_column_is_named_with_the_files_columns(tmp_path):
    path = write_csv(tmp_path / "customers.csv", sample_rows(5))
    with pytest.raises(InputError, match="has no column 'mail'") as err:
        api.read_list(path, id_columns=[("phone", "phone"), ("mail", "email")], label_column="store")
    assert "columns are: phone, email, openid, phone_sha, store" in err.value.hint
    pd = pytest.importorskip("pandas")
    with pytest.raises(InputError, match="the DataFrame has no column 'mail'"):
        api.read_list(pd.DataFrame({"phone": ["1"], "email": ["a@b.co"]}), id_columns=[("mail", "email")])
    with pytest.raises(InputError, match="a row of rows= has no 'email'"):
        api.read_list([{"phone": "13800138000"}], id_columns=[("phone", "phone"), ("email", "email")])


# --- how the columns are named -------------------------------------------------------------------

def test_id_columns_in_every_spelling():
    expected = (ids.IdColumn("phone", "phone", "phone"), ids.IdColumn("email", "email", "email"),
                ids.IdColumn("oid", "opaque", "opaque"), ids.IdColumn("mail_sha", "sha256", "email"),
                ids.IdColumn("tel_sha", "sha256", "phone"))
    assert ids.id_columns_of([("phone", "phone"), ("email", "email"), ("oid", "opaque"),
                              ("mail_sha", "sha256", "email"), ("tel_sha", "sha256")]) == expected
    assert ids.id_columns_of(["phone:phone", "email:email", "oid:opaque", "mail_sha:sha256:email",
                              "tel_sha:sha256"]) == expected
    assert ids.id_columns_of(list(expected)) == expected
    assert ids.id_columns_of("phone:phone") == expected[:1]
    assert ids.id_columns_of(id_column="phone", id_type="phone") == expected[:1]
    assert ids.id_columns_of(id_column="h", id_type="sha256", hashed_kind="email") == \
        (ids.IdColumn("h", "sha256", "email"),)


@pytest.mark.parametrize("kwargs, message", [
    ({"id_columns": [("phone", "phone")], "id_column": "phone"}, "given twice: id_columns= and id_column="),
    ({"id_columns": [("phone", "phone")], "id_type": "phone"}, "given twice: id_columns= and id_type="),
    ({"id_columns": [("phone", "phone"), ("phone", "email")]}, "column 'phone' is given twice"),
    ({"id_columns": [("phone", "mobile")]}, "unknown id type 'mobile'"),
    ({"id_columns": [("email", "email", "phone")]}, "names what was hashed, but 'email' is email"),
    ({"id_columns": [("h", "sha256", "md5")]}, "unknown hashed kind 'md5'"),
    ({"id_columns": ["phone"]}, "does not say what it holds"),
    ({"id_columns": [ids.IdColumn("phone", "phone", "email")]}, "a phone column is hashed as phone"),
    ({"id_columns": []}, "id_columns= is empty"),
    ({"id_columns": [42]}, "cannot read 42"),
    ({}, "which kind of IDs"),
])
def test_bad_columns_are_refused_before_the_server_is_asked(kwargs, message):
    with pytest.raises(InputError, match=message):
        api.match(f"127.0.0.1:{closed_port()}", "token", [("13800138000", "a@b.co")], **kwargs)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("args, message", [
    (["--id-column", "phone", "--id-column", "email"], "--id-column 'phone' does not say what it holds"),
    (["--id-column", "phone:phone", "--id-type", "email"], "says phone, --id-type says email"),
    (["--id-column", "phone:phone", "--id-column", "phone:email"], "column 'phone' is given twice"),
    (["--id-column", ":phone"], "names no column"),
    (["--id-column", "phone"], "does not say what it holds"),
])
def test_the_cli_refuses_unclear_columns_before_the_server_is_asked(tmp_path, args, message):
    path = write_csv(tmp_path / "customers.csv", sample_rows(5))
    result = CliRunner().invoke(client_main, ["match", "--server", f"127.0.0.1:{closed_port()}", "--token", "t",
                                              path, *args, "--quiet"])
    assert result.exit_code == 1
    assert message in " ".join(result.stderr.split()), result.stderr


def test_the_semi_honest_protocol_refuses_several_kinds_before_connecting():
    merchant_list = api.prepare_rows([("13800138000", "a@b.co", "x")], id_columns=["phone:phone", "email:email"])
    with pytest.raises(InputError, match="semi-honest protocol matches one kind of identifier; this list has "
                                         "phone:phone, email:email"):
        api.run_job(f"127.0.0.1:{closed_port()}", "token", merchant_list, protocol="semi_honest")


# --- the hash cache with several kinds in one job ------------------------------------------------

def keys(lo: int, hi: int) -> list[bytes]:
    return [sha(str(i)).encode() for i in range(lo, hi)]


class CountingCache(HashCache):
    writes = 0

    def update(self, pending) -> None:
        type(self).writes += 1
        super().update(pending)


@pytest.mark.parametrize("kind_of_cache", ["file", "directory"])
def test_two_kinds_of_one_match_key_get_their_own_points_and_both_are_cached(tmp_path, kind_of_cache):
    phone_dst, email_dst = group.dst_for("phone"), group.dst_for("email")
    where = tmp_path / "cache"

    def cache():
        if kind_of_cache == "directory":
            where.mkdir(exist_ok=True)
            return HashCacheDir(where)
        return CountingCache(where)

    same = keys(0, 200)
    # The session hashes chunk by chunk and kind by kind: interleave them.
    with CachingKernels(Kernels(), cache()) as kernels:
        out = {dst: [] for dst in (phone_dst, email_dst)}
        for lo in range(0, 200, 50):
            for dst in (phone_dst, email_dst):
                out[dst].append(kernels.hash_to_curve(same[lo:lo + 50], dst))
    assert b"".join(out[phone_dst]) == group.hash_to_curve_batch(same, phone_dst)
    assert b"".join(out[email_dst]) == group.hash_to_curve_batch(same, email_dst)
    assert b"".join(out[phone_dst]) != b"".join(out[email_dst])
    assert (kernels.hits, kernels.misses) == (0, 400)
    if kind_of_cache == "file":
        assert CountingCache.writes == 1  # once, at the end, not at each switch of kind
    else:
        assert len(list(where.iterdir())) == 2  # a file per kind

    with CachingKernels(Kernels(), cache()) as again:
        mixed = same[::-1] + keys(200, 220)
        assert again.hash_to_curve(mixed, email_dst) == group.hash_to_curve_batch(mixed, email_dst)
        assert again.hash_to_curve(same, phone_dst) == group.hash_to_curve_batch(same, phone_dst)
    assert (again.hits, again.misses) == (400, 20)
    files = [where] if kind_of_cache == "file" else list(where.iterdir())
    assert all(oct(f.stat().st_mode & 0o777) == "0o600" for f in files)


def test_a_version_1_cache_file_is_still_read(tmp_path):
    dst = group.dst_for("phone")
    msgs = sorted(keys(0, 30))
    records = np.empty(len(msgs), [("msg", "S64"), ("point", "V32")])
    records["msg"] = msgs
    records["point"] = np.frombuffer(group.hash_to_curve_batch(msgs, dst), "V32")
    path = tmp_path / "old.cache"
    path.write_bytes(b"matcher-hash-cache-v1\n" + json.dumps({"suite": group.SUITE, "dst": dst.hex()}).encode()
                     + b"\n" + records.tobytes())
    with CachingKernels(Kernels(), HashCache(path)) as kernels:
        assert kernels.hash_to_curve(msgs, dst) == group.hash_to_curve_batch(msgs, dst)
        kernels.hash_to_curve(msgs[:5], group.dst_for("email"))
    assert (kernels.hits, kernels.misses) == (30, 5)
    assert sorted(HashCache(path).dsts()) == sorted([dst, group.dst_for("email")])  # both kept
    path.write_bytes(path.read_bytes()[:-7])  # cut short: ignored, never read
    assert not HashCache(path).get(msgs, dst)[0].any()


# --- real jobs -----------------------------------------------------------------------------------

def test_the_engines_count_a_list_read_here_against_members_of_several_identifiers(tmp_path):
    """Members hold a phone and maybe an email and an OpenID; the list is read from a CSV file of
    several columns by the API; the secure engines (in process) count exactly the plaintext truth:
    a member once, under the alphabetically first label of the rows naming any of its identifiers.
    Run twice through the hash cache: the second run hashes nothing and counts the same."""
    rng = random.Random(19)
    people = list(range(60))
    has = {p: {"email": rng.random() < 0.7, "openid": rng.random() < 0.4} for p in people}
    members = [[("phone", sha(f"+86138{p:08d}"))]
               + ([("email", sha(f"user{p}@example.com"))] if has[p]["email"] else [])
               + ([("opaque", sha(f"oid-{p}"))] if has[p]["openid"] else []) for p in people]
    bits = [rng.getrandbits(1) for _ in people]
    audience = multi_audience(members, bits, 1)
    rows = []
    for p in rng.sample(range(80), 50):  # 20 of them strangers
        cells = [("valid", p, rng.randrange(4)) if rng.random() < 0.5 else ("blank", 0),
                 ("valid", p, rng.randrange(3)) if rng.random() < 0.6 else ("blank", 1),
                 ("valid", p, 0) if rng.random() < 0.4 else ("blank", 0), ("blank", 0)]
        rows.append((cells, rng.choice(["north", "south", "east"])))
    path = write_csv(tmp_path / "customers.csv", rows)
    merchant_list = api.read_list(path, id_columns=COLUMNS, label_column="store")
    label_of = {}
    for cells, label in rows:
        for column, cell in zip(COLUMN_NAMES, cells):
            if cell_key(column, cell):
                label_of.setdefault(cell_key(column, cell), label)
    expected = {label: [0, [0]] for label in sorted({label for _, label in rows})}
    for member, b in zip(members, bits):
        hits = [label_of[i] for i in member if i in label_of]
        if hits:
            expected[min(hits)][0] += 1
            expected[min(hits)][1][0] += b
    expected = {label: cell for label, cell in expected.items() if label in set(merchant_list.prepared.labels)}

    id_kind, kinds = merchant_list.session_kinds()
    elements = list(zip(kinds, merchant_list.prepared.keys, merchant_list.prepared.labels))
    assert len({kind for kind, _, _ in elements}) == 3
    assert counts(run(audience, elements)) == expected

    cache = tmp_path / "cache"
    cache.mkdir()
    for attempt in range(2):
        with CachingKernels(Kernels(), HashCacheDir(cache)) as kernels:
            from matcher.protocol.secure_merchant import SecureMerchantSession

            class Cached(SecureMerchantSession):
                def __init__(self, *args, **kwargs):
                    super().__init__(*args, kernels=kernels, **kwargs)

            assert counts(run(audience, elements, merchant_cls=Cached, seed=7 + attempt)) == expected
        assert (kernels.hits, kernels.misses) == ((0, len(elements)) if attempt == 0 else (len(elements), 0))


@pytest.fixture
def phones_only(operator, serve):
    """A real server whose audience holds phone numbers only (members 0..299)."""
    members, token = operator.seed(300, random.Random(1))
    return members, token, serve()


def customers_file(path, rows: list[tuple[str, str, str]]) -> str:
    path.write_text("phone,email,store\n" + "".join(f"{p},{e},{s}\n" for p, e, s in rows))
    return str(path)


def test_a_server_of_phones_counts_the_phones_of_a_list_of_phone_and_email_columns(phones_only, tmp_path):
    """The list names phone and email columns; its emails are blank, so it holds phones only: the
    server takes the job and counts exactly the phone matches. Also through the CLI, whose JSON
    report gives the columns."""
    members, token, served = phones_only
    rows = [(phone(i), "", "north" if i % 3 else "south") for i in range(200, 380)]
    path = customers_file(tmp_path / "customers.csv", rows + [("", "", "north")])
    report = api.match(served.address, token, path, id_columns=[("phone", "phone"), ("email", "email")],
                       label_column="store")
    assert report["protocol"] == "secure"
    assert report["labels"] == ground_truth(members, [(p, s) for p, _, s in rows])
    assert report["list_size"] == 180 and report["rows"] == 181 and report["invalid"] == {"empty": 1}
    assert report["invalid_rows"] == 1
    assert report["id_columns"] == [{"column": "phone", "type": "phone", "kind": "phone", "ids": 180, "invalid": {}},
                                    {"column": "email", "type": "email", "kind": "email", "ids": 0, "invalid": {}}]

    result = CliRunner().invoke(client_main, ["match", "--server", served.address, "--token", token, path,
                                              "--id-column", "phone:phone", "--id-column", "email:email",
                                              "--label-column", "store", "--json", "-"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["labels"] == report["labels"]
    # The older spelling still works, with the same counts.
    result = CliRunner().invoke(client_main, ["match", "--server", served.address, "--token", token, path,
                                              "--id-column", "phone", "--id-type", "phone", "--label-column",
                                              "store", "--json", "-"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["labels"] == report["labels"]


def test_hashed_phones_beside_raw_phones_are_one_kind_and_count_once(phones_only, tmp_path):
    """A sha256 column of phones and a phone column: one kind, so the server takes it; a person in
    both columns (or twice) is sent once."""
    members, token, served = phones_only
    rows = []
    for i in range(250, 400):
        e164 = phone(i)
        raw, hashed = [(e164, ""), ("", sha(e164)), (e164, sha(e164))][i % 3]
        rows.append((raw, hashed, "all"))
    path = tmp_path / "customers.csv"
    path.write_text("tel,tel_sha,store\n" + "".join(f"{a},{b},{c}\n" for a, b, c in rows))
    report = api.match(served.address, token, str(path), id_columns=["tel:phone", "tel_sha:sha256:phone"],
                       label_column="store")
    assert report["list_size"] == 150 and report["duplicates"] == 50
    assert report["labels"] == ground_truth(members, [(phone(i), "all") for i in range(250, 400)])


def test_a_kind_the_audience_does_not_hold_is_refused_clearly_and_costs_nothing(phones_only, tmp_path):
    members, token, served = phones_only
    rows = [(phone(i) if i % 2 else "", f"user{i}@example.com", "north") for i in range(100, 200)]
    path = customers_file(tmp_path / "customers.csv", rows)
    before = api.budget(served.address, token)
    with pytest.raises(InputError, match="audience holds 'phone' identifiers.*it has no email") as err:
        api.match(served.address, token, path, id_columns=[("phone", "phone"), ("email", "email")],
                  label_column="store")
    assert err.value.hint.startswith("the platform cannot match column 'email': run without --id-column email:email")
    assert api.budget(served.address, token) == before

    result = CliRunner().invoke(client_main, ["match", "--server", served.address, "--token", token, path,
                                              "--id-column", "phone:phone", "--id-column", "email:email", "--quiet"])
    assert result.exit_code == 1
    text = " ".join(result.stderr.split())
    assert "it has no email" in text and "run without --id-column email:email" in text
    assert "100 rows: 150 unique ids (phone: 50, email: 100) from 100 rows, 0 duplicates, 0 rows without a valid id" \
        in text

    with pytest.raises(InputError, match="it has no email"):
        api.activate(served.address, token, path, id_columns=[("phone", "phone"), ("email", "email")],
                     label_column="store", name="x", where="member")
    assert api.budget(served.address, token) == before


def test_activation_takes_id_columns(phones_only, tmp_path):
    members, token, served = phones_only
    rows = [(phone(i), "", "north") for i in range(100, 200)]
    path = customers_file(tmp_path / "customers.csv", rows)
    result = api.activate(served.address, token, path, id_columns=[("phone", "phone"), ("email", "email")],
                          label_column="store", name="spring", where="member")
    truth = sum(1 for i in range(100, 200) if members[phone(i)] & 1)  # 'member' is the first segment
    assert result["noisy_size"] == truth and result["list_size"] == 100 and result["rows"] == 100
    assert [c["column"] for c in result["id_columns"]] == ["phone", "email"]
