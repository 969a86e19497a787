"""Several identifiers per person, end to end (issue 19): `matcher audience import` with repeated
``--id-column COLUMN:KIND``, a merchant list of several identifier columns, real gRPC, a real SQLite
file, exact counts against a plaintext truth computed here; removal by a further identifier; the
protocols that match one identifier refuse such a job; the auditor's check passes."""

from __future__ import annotations

import json
import random

import pytest
from click.testing import CliRunner

from matcher.errors import MatcherError
from matcher.server.cli import main
from matcher_client import api
from matcher_client.audit import GrpcLogSource, verify
from tests.conftest import exact_policy, phone

SEGMENTS = ("paid", "visited")


def _people(rng: random.Random, n: int) -> list[dict]:
    """Members: every one has a phone, most an email, some an OpenID; segments at random."""
    people = []
    for i in range(n):
        people.append({"phone": phone(i), "email": f"user{i}@example.com" if rng.random() < 0.7 else "",
                       "openid": f"oid-{i:05d}" if rng.random() < 0.4 else "", "bits": rng.getrandbits(2)})
    return people


def _write_members(path, people) -> str:
    path.write_text("phone,email,openid,paid,visited\n" + "".join(
        f"{p['phone']},{p['email']},{p['openid']},{p['bits'] & 1},{p['bits'] >> 1}\n" for p in people))
    return str(path)


def _cli(*args: str) -> dict:
    result = CliRunner().invoke(main, [*args, "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout[result.stdout.index("{"):])


def _import(db, path, people) -> dict:
    return _cli("audience", "import", "--db", str(db), _write_members(path, people), "--id-column", "phone:phone",
                "--id-column", "email:email", "--id-column", "openid:opaque", "--segments", ",".join(SEGMENTS),
                "--executor", "inline")


def _truth(people, rows) -> dict:
    """A member counts once, under the alphabetically first label of the rows that name any of its
    identifiers (phones compared as numbers, emails without case)."""
    labels_of: dict[tuple[str, str], str] = {}
    for row in rows:
        number = row["phone"].replace(" ", "")
        number = number if not number or number.startswith("+") else "+86" + number
        for kind, value in (("phone", number), ("email", row["email"].lower()), ("openid", row["openid"])):
            if value:
                labels_of.setdefault((kind, value), row["label"])
    cells = {label: {"matched": 0, "segments": {s: 0 for s in SEGMENTS}} for label in {r["label"] for r in rows}}
    for p in people:
        hits = [labels_of[(k, p[k])] for k in ("phone", "email", "openid") if p[k] and (k, p[k]) in labels_of]
        if hits:
            cell = cells[min(hits)]
            cell["matched"] += 1
            for j, s in enumerate(SEGMENTS):
                cell["segments"][s] += (p["bits"] >> j) & 1
    return cells


def _customers(rng: random.Random, people, n_members: int, n_strangers: int) -> list[dict]:
    """Rows known to the merchant by 1-3 identifiers, other spellings; some people twice (once by
    phone, once by email, under other labels); strangers."""
    rows = []
    for p in rng.sample(people, n_members):
        known = [k for k in ("phone", "email", "openid") if p[k]]
        use = set(rng.sample(known, rng.randint(1, len(known))))
        national = p["phone"].removeprefix("+86")
        rows.append({"phone": f"{national[:3]} {national[3:7]} {national[7:]}" if "phone" in use else "",
                     "email": p["email"].upper() if "email" in use else "",
                     "openid": p["openid"] if "openid" in use else "", "label": rng.choice(["north", "south"])})
        if p["email"] and rng.random() < 0.15:  # the same person again, by email only, under another label
            rows.append({"phone": "", "email": p["email"], "openid": "", "label": "east"})
    for i in range(n_strangers):
        rows.append({"phone": phone(90_000 + i) if i % 2 else "", "email": f"stranger{i}@example.org",
                     "openid": "", "label": rng.choice(["north", "south"])})
    rows.sort(key=lambda r: rng.random())
    return rows


def _write_customers(path, rows) -> str:
    path.write_text("phone,email,openid,store\n" + "".join(
        f"{r['phone']},{r['email']},{r['openid']},{r['label']}\n" for r in rows))
    return str(path)


COLUMNS = [("phone", "phone"), ("email", "email"), ("openid", "opaque")]


def _match(served, token, path, **kwargs):
    return api.match(served.address, token, path, id_columns=COLUMNS, label_column="store", **kwargs)


def test_a_person_counts_once_through_any_identifier(operator, serve, tmp_path):
    rng = random.Random(19)
    people = _people(rng, 300)
    summary = _import(operator.db, tmp_path / "members.csv", people)
    assert summary["members"] == 300
    exact_policy(operator.store, min_list_size="1")
    token = operator.token("merchant", "shop")
    served = serve()
    rows = _customers(rng, people, 150, 60)
    report = _match(served, token, _write_customers(tmp_path / "customers.csv", rows))
    assert report["protocol"] == "secure"
    assert report["labels"] == _truth(people, rows)
    # One identifier column still works against the same audience (phones only).
    phones = [dict(r, email="", openid="") for r in rows if r["phone"]]
    single = api.match(served.address, token, _write_customers(tmp_path / "phones.csv", phones),
                       id_column="phone", id_type="phone", label_column="store")
    assert single["labels"] == _truth(people, phones)

    with GrpcLogSource(served.address, operator.token("auditor", "audit")) as source:
        result = verify(source)
    assert result.warnings == [] and result.jobs["released"] == 2


def test_removed_by_email_is_never_matched_again(operator, serve, tmp_path):
    rng = random.Random(7)
    people = _people(rng, 120)
    for p in people[:20]:
        p["email"] = p["email"] or f"user{people.index(p)}@example.com"
    _import(operator.db, tmp_path / "members.csv", people)
    exact_policy(operator.store, min_list_size="1")
    token = operator.token("merchant", "shop")
    served = serve()
    rows = [{"phone": "", "email": p["email"], "openid": "", "label": "all"} for p in people[:20]] + \
           [{"phone": p["phone"], "email": "", "openid": "", "label": "all"} for p in people[20:40]]
    path = _write_customers(tmp_path / "customers.csv", rows)
    assert _match(served, token, path)["labels"]["all"]["matched"] == 40

    (tmp_path / "forget.csv").write_text("email\n" + "".join(f"{p['email']}\n" for p in people[:10]))
    removed = _cli("audience", "remove", "--db", str(operator.db), str(tmp_path / "forget.csv"),
                   "--id-column", "email:email")
    assert removed["removed"] == 10
    left = people[10:]
    report = _match(served, token, path)
    assert report["labels"] == _truth(left, rows)
    assert report["labels"]["all"]["matched"] == 30


def test_the_unbalanced_protocol_refuses_several_identifiers_before_charging(operator, serve, tmp_path):
    rng = random.Random(3)
    people = _people(rng, 50)
    _import(operator.db, tmp_path / "members.csv", people)
    exact_policy(operator.store, min_list_size="1")
    token = operator.token("merchant", "shop")
    served = serve()
    path = _write_customers(tmp_path / "customers.csv", _customers(rng, people, 20, 5))
    before = api.budget(served.address, token)["epsilon_left"]
    with pytest.raises(MatcherError, match="unbalanced protocol matches one identifier"):
        _match(served, token, path, mode="unbalanced")
    assert api.budget(served.address, token)["epsilon_left"] == before
    assert _match(served, token, path, mode="auto")["protocol"] == "secure"


def test_activation_through_any_identifier_exports_each_member_once(operator, serve, tmp_path):
    """Blind activation on an audience of several identifiers: the slice the operator exports is
    exactly the members met through any identifier and holding the segment, each once."""
    import csv

    rng = random.Random(11)
    people = _people(rng, 200)
    _import(operator.db, tmp_path / "members.csv", people)
    exact_policy(operator.store, min_list_size="1", k="1")
    token = operator.token("merchant", "shop")
    served = serve()
    rows = [dict(r, label="all") for r in _customers(rng, people, 120, 30)]
    result = api.activate(served.address, token, _write_customers(tmp_path / "customers.csv", rows),
                          id_columns=COLUMNS, name="coupon", where="paid")
    cells = _truth([p for p in people if p["bits"] & 1], rows)
    truth = sorted(p["phone"] for p in people if p["bits"] & 1 and _truth([p], rows)["all"]["matched"])
    assert result["noisy_size"] == len(truth) == cells["all"]["matched"]  # noise none in this policy
    out = tmp_path / "slice.csv"
    run = CliRunner().invoke(main, ["activation", "export", "--db", str(operator.db), result["handle"],
                                    "--out", str(out)])
    assert run.exit_code == 0, run.output
    with out.open() as f:
        assert sorted(row["member_id"] for row in csv.DictReader(f)) == truth


def test_attack_untupling_over_grpc_fails_charged_and_suspends(operator, serve, tmp_path, monkeypatch):
    """A modified client returns a tuple audience's values in one flat shuffle, so that each of a
    person's identifiers would land in a tuple of its own and count on its own (one person listed
    by phone, email and OpenID would count three times). Over real gRPC the platform's audit sees the
    tuples broken: no report, the job's ε stays spent, and the merchant is suspended."""
    import numpy as np

    from matcher.crypto import group
    from matcher.errors import AuthenticationError, ProtocolDeviation
    from matcher.protocol.secure_merchant import SecureMerchantSession

    rng = random.Random(23)
    people = _people(rng, 80)
    for p in people[:10]:  # targets known to the merchant by all three identifiers
        p["email"], p["openid"] = p["email"] or f"user{people.index(p)}@example.com", p["openid"] or f"oid-t{people.index(p)}"
    _import(operator.db, tmp_path / "members.csv", people)
    exact_policy(operator.store, min_list_size="1")
    token = operator.token("merchant", "shop")
    served = serve()
    rows = [{"phone": p["phone"], "email": p["email"], "openid": p["openid"], "label": "all"} for p in people[:10]]
    path = _write_customers(tmp_path / "customers.csv", rows)
    assert _match(served, token, path, count_only=True)["labels"]["all"]["matched"] == 10  # honest: once each

    original = SecureMerchantSession.transform_returned

    def untupled(self, index, values):
        values = original(self, index, values)
        records = values.view(f"V{group.ELEMENT_SIZE}").ravel()
        np.random.default_rng(5).shuffle(records)
        return values

    monkeypatch.setattr(SecureMerchantSession, "transform_returned", untupled)
    with pytest.raises(ProtocolDeviation, match="tuple"):
        _match(served, token, path, count_only=True)
    assert operator.store.db.execute("SELECT state FROM budget").fetchall()[-1] == ("committed",)
    assert operator.store.db.execute("SELECT disabled FROM principals WHERE name = 'shop'").fetchone() == (1,)
    with pytest.raises(AuthenticationError):
        api.budget(served.address, token)
