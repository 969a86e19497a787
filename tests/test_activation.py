"""Blind activation end to end: real gRPC, real SQLite, the operator's export against ground truth."""

from __future__ import annotations

import csv
import random

import pytest
from click.testing import CliRunner

from matcher.cli import main as operator_cli
from matcher.errors import InputError, MatcherError
from matcher.protocol.merchant import MerchantSession
from matcher_client import api
from tests.conftest import SEGMENTS, phone
from tests.test_attacks import FakeClock

WHERE = "member & paid_with_platform & !favourited_mini_program"
MEMBER, PAID, FAV = (SEGMENTS.index(s) for s in ("member", "paid_with_platform", "favourited_mini_program"))


def wanted(bits: int) -> bool:
    return bool(bits >> MEMBER & 1) and bool(bits >> PAID & 1) and not bits >> FAV & 1


@pytest.fixture
def world(operator):
    members, token = operator.seed(600, random.Random(42), k="5", dummies="on")
    customers = [(phone(i), "north" if i % 3 else "south") for i in range(300, 900)]
    return operator, members, token, customers


def log_types(store) -> list[str]:
    import json

    return [json.loads(d)["type"] + ":" + json.loads(d).get("decision", "")
            for _, d in store.log_entries(0, store.log_size())]


def test_export_equals_ground_truth_slice_and_merchant_sees_no_platform_id(world, serve, tmp_path):
    operator, members, token, customers = world
    served = serve()
    merchant_list = api.prepare_rows(customers, id_type="phone")
    result = api.activate(served.address, token, merchant_list, name="spring-coupon", where=WHERE, label="north")
    truth = sorted(n for n, label in customers if label == "north" and n in members and wanted(members[n]))
    assert result["noisy_size"] == len(truth)  # noise none in this policy

    out = tmp_path / "slice.csv"
    run = CliRunner().invoke(operator_cli, ["activation", "export", "--db", str(operator.db), result["handle"],
                                            "--out", str(out)])
    assert run.exit_code == 0, run.output
    with out.open() as f:
        exported = sorted(row["member_id"] for row in csv.DictReader(f))
    assert exported == truth
    # The merchant's output holds a handle and a size, no platform member id.
    assert not any(isinstance(v, str) and v.startswith("+86") for v in result.values())
    listed = api.activations(served.address, token)
    assert [a["handle"] for a in listed] == [result["handle"]] and listed[0]["state"] == "active"

    run = CliRunner().invoke(operator_cli, ["activation", "delete", "--db", str(operator.db), result["handle"]])
    assert run.exit_code == 0, run.output
    run = CliRunner().invoke(operator_cli, ["activation", "export", "--db", str(operator.db), result["handle"],
                                            "--out", str(out)])
    assert run.exit_code == 1 and "deleted" in run.output
    types = log_types(operator.store)
    assert "job:activated" in types and "activation_exported:" in types and "activation_deleted:" in types


def test_slice_under_k_is_refused_and_nothing_stored(world, serve):
    operator, members, token, customers = world
    operator.store.set_policy("k", "1000")
    with pytest.raises(MatcherError, match="fewer than k = 1000"):
        api.activate(serve().address, token, api.prepare_rows(customers, id_type="phone"), name="x", where=WHERE)
    assert operator.store.db.execute("SELECT count(*) FROM activations").fetchone()[0] == 0
    assert operator.store.db.execute("SELECT count(*) FROM activation_members").fetchone()[0] == 0
    assert operator.store.db.execute("SELECT state FROM budget").fetchall() == [("refunded",)]


def test_claim_on_a_position_that_did_not_match_is_refused(world, serve, monkeypatch):
    operator, members, token, customers = world
    original = MerchantSession.claims

    def shifted(self, label=None):
        for positions, values in original(self, label):
            yield (positions + 1) % self.stream_elements, values  # each genuine value on the next position

    monkeypatch.setattr(MerchantSession, "claims", shifted)
    with pytest.raises(InputError, match="does not hold"):
        api.activate(serve().address, token, api.prepare_rows(customers, id_type="phone"), name="x", where=WHERE)
    assert operator.store.db.execute("SELECT count(*) FROM activation_members").fetchone()[0] == 0


def test_unknown_segment_in_where_is_refused_before_crypto(world, serve):
    operator, members, token, customers = world
    with pytest.raises(InputError, match="unknown segment 'vip' at position 9"):
        api.activate(serve().address, token, api.prepare_rows(customers, id_type="phone"), name="x",
                     where="member & vip")
    assert operator.store.db.execute("SELECT count(*) FROM jobs").fetchone()[0] == 0


def test_expired_audience_cannot_be_exported(world, serve, tmp_path):
    operator, members, token, customers = world
    operator.store.set_policy("activation_ttl", "1h")
    clock = FakeClock(now=1_000_000_000.0)  # long ago: the audience is born expired for the real clock
    result = api.activate(serve(clock=clock).address, token, api.prepare_rows(customers, id_type="phone"),
                          name="old", where="member")
    run = CliRunner().invoke(operator_cli, ["activation", "export", "--db", str(operator.db), result["handle"],
                                            "--out", str(tmp_path / "x.csv")])
    assert run.exit_code == 1 and "expired" in run.output
    assert operator.store.db.execute("SELECT count(*) FROM activation_members").fetchone()[0] == 0
    assert "activation_expired:" in log_types(operator.store)
