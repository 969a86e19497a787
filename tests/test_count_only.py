"""Cardinality only (`matcher-client match --count-only`) over real gRPC against a real SQLite file:
per-label overlap counts equal the plaintext truth, the policy applies, the release is logged and
verifies, and a merchant that sends the stream back wrong gets nothing."""

from __future__ import annotations

import json
import random

import pytest
from click.testing import CliRunner

from matcher.errors import AuthenticationError, ProtocolDeviation
from matcher.protocol.secure_merchant import SecureMerchantSession
from matcher_client import api
from matcher_client.audit import GrpcLogSource, prove, verify
from matcher_client.cli import main as client_main
from tests.conftest import exact_policy, ground_truth, phone, wait_until


def _counts(truth: dict) -> dict:
    return {label: {"matched": cells["matched"], "segments": {}} for label, cells in truth.items()}


@pytest.mark.parametrize("stream_slots", [0, 1])
def test_counts_equal_ground_truth_per_label(operator, serve, stream_slots):
    members, token = operator.seed(500, random.Random(5), dummies="on")  # dummies are for the other mode
    rng = random.Random(6)
    customers = [(phone(i), rng.choice(["north", "south", "west"])) for i in range(300, 700)]
    served = serve(stream_slots=stream_slots)
    if stream_slots:
        version = operator.store.load_audience().version
        assert wait_until(lambda: operator.store.stream_slots(version) == 1)
    report = api.match(served.address, token, rows=customers, id_type="phone", count_only=True)
    assert report["labels"] == _counts(ground_truth(members, customers))
    assert report["segments"] == []
    assert report["list_size"] == 400


def test_count_only_release_is_logged_and_verifies(operator, serve):
    members, token = operator.seed(200, random.Random(9))
    auditor = operator.token("auditor", "alice")
    served = serve()
    customers = [(phone(i), None) for i in range(100, 300)]
    report = api.match(served.address, token, rows=customers, id_type="phone", count_only=True)
    assert report["labels"]["all"]["matched"] == 100
    with GrpcLogSource(served.address, auditor) as source:
        result = verify(source, state=None, pinned_key=None)
    assert result.size >= 1
    with GrpcLogSource(served.address, token) as source:
        prove(report, source, pinned_key=None)
    entry = json.loads(report["log_entry"])
    assert entry["released"] == {"all": {"matched": 100, "segments": {}}}


def test_threshold_applies_to_counts(operator, serve):
    members, token = operator.seed(100, random.Random(2))
    exact_policy(operator.store, k="30")
    customers = [(phone(i), "big") for i in range(0, 50)] + [(phone(i), "small") for i in range(90, 150)]
    report = api.match(serve().address, token, rows=customers, id_type="phone", count_only=True)
    assert report["labels"] == {"big": {"matched": 50, "segments": {}}, "small": {"matched": None, "segments": {}}}


def test_cli_count_only_prints_counts_and_writes_json(operator, serve, tmp_path):
    members, token = operator.seed(80, random.Random(4))
    csv_path = tmp_path / "list.csv"
    csv_path.write_text("phone\n" + "\n".join(phone(i) for i in range(40, 120)) + "\n")
    out = tmp_path / "report.json"
    result = CliRunner().invoke(client_main, ["match", "--server", serve().address, "--token", token, str(csv_path),
                                              "--id-column", "phone", "--id-type", "phone", "--count-only",
                                              "--json", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "matched" in result.output and "40" in result.output
    assert json.loads(out.read_text())["labels"] == {"all": {"matched": 40, "segments": {}}}


def test_cli_segments_counts_only_the_segments_asked_for(operator, serve, tmp_path):
    members, token = operator.seed(80, random.Random(4))
    csv_path = tmp_path / "list.csv"
    csv_path.write_text("phone\n" + "\n".join(phone(i) for i in range(40, 120)) + "\n")
    out = tmp_path / "report.json"
    result = CliRunner().invoke(client_main, ["match", "--server", serve().address, "--token", token, str(csv_path),
                                              "--id-column", "phone", "--id-type", "phone", "--segments",
                                              "holds_coupon,member", "--json", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "secure protocol" in result.output
    report = json.loads(out.read_text())
    truth = ground_truth(members, [(phone(i), "all") for i in range(40, 120)])
    assert report["protocol"] == "secure" and report["segments"] == ["member", "holds_coupon"]
    assert report["labels"]["all"]["segments"] == {s: truth["all"]["segments"][s] for s in ("member", "holds_coupon")}
    bad = CliRunner().invoke(client_main, ["match", "--server", serve().address, "--token", token, str(csv_path),
                                           "--id-column", "phone", "--id-type", "phone", "--segments", "vip"])
    assert bad.exit_code != 0 and "unknown segment(s): vip" in bad.output


def test_a_stream_sent_back_short_is_a_deviation_charged_and_suspended(operator, serve, monkeypatch):
    """A merchant that returns part of the stream (say, to probe a subset) gets no report, keeps
    its ε spent, and is suspended until the operator restores it."""
    members, token = operator.seed(300, random.Random(8), noise="discrete_laplace")
    served = serve()
    spent_before = api.budget(served.address, token)["epsilon_spent"]
    original = SecureMerchantSession.transform_returned
    monkeypatch.setattr(SecureMerchantSession, "transform_returned",
                        lambda self, index, values: original(self, index, values)[10:])
    with pytest.raises(ProtocolDeviation, match="came back with"):
        api.match(served.address, token, rows=[(phone(i), None) for i in range(100, 200)], id_type="phone",
                  count_only=True)
    assert operator.store.db.execute("SELECT state FROM budget").fetchall()[-1] == ("committed",)
    assert operator.store.db.execute("SELECT disabled FROM principals WHERE name = 'shop'").fetchone() == (1,)
    with pytest.raises(AuthenticationError):
        api.budget(served.address, token)
    assert spent_before == 0