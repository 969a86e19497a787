"""Blind activation end to end: real gRPC, real SQLite, the operator's export against ground truth."""

from __future__ import annotations

import csv
import random

import pytest
from click.testing import CliRunner

from matcher.server.cli import main as operator_cli
from matcher.errors import AuthenticationError, InputError, MatcherError, ProtocolDeviation
from matcher.protocol.secure_merchant import SecureMerchantSession
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


def test_slice_under_k_is_refused_nothing_stored_and_the_job_charged(world, serve):
    """The refusal is decided on the noisy size and the ε is spent either way: a refusal is an
    answer about the data (issue 13's accept/refuse oracle), so it is never free."""
    operator, members, token, customers = world
    operator.store.set_policy("k", "1000")
    with pytest.raises(MatcherError, match="noisy size is under k = 1000"):
        api.activate(serve().address, token, api.prepare_rows(customers, id_type="phone"), name="x", where=WHERE)
    assert operator.store.db.execute("SELECT count(*) FROM activations").fetchone()[0] == 0
    assert operator.store.db.execute("SELECT count(*) FROM activation_members").fetchone()[0] == 0
    assert operator.store.db.execute("SELECT state FROM budget").fetchall() == [("committed",)]
    assert "job:failed" in log_types(operator.store)


def test_a_return_out_of_stream_order_is_refused_and_the_merchant_suspended(world, serve, monkeypatch):
    """Moving values around in an activation's ordered return would hang the merchant's matches on
    other members; the audit rows sit at known positions, so the move is caught."""
    operator, members, token, customers = world
    monkeypatch.setattr(SecureMerchantSession, "transform_returned", lambda self, index, values: values[::-1])
    served = serve()
    with pytest.raises(ProtocolDeviation, match="failed its audit"):
        api.activate(served.address, token, api.prepare_rows(customers, id_type="phone"), name="x", where=WHERE)
    assert operator.store.db.execute("SELECT count(*) FROM activation_members").fetchone()[0] == 0
    monkeypatch.undo()
    with pytest.raises(AuthenticationError):
        api.activate(served.address, token, api.prepare_rows(customers, id_type="phone"), name="x", where=WHERE)


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
