"""Cardinality only (`matcher-client match --count-only`) over real gRPC against a real SQLite file:
per-label overlap counts equal the plaintext truth, the policy applies, the release is logged and
verifies, and a merchant that sends the stream back wrong gets nothing."""

from __future__ import annotations

import json
import random

import grpc
import pytest
from click.testing import CliRunner

from matcher_client import api
from matcher_client.audit import GrpcLogSource, prove, verify
from matcher_client.cli import main as client_main
from matcher.v1 import match_pb2, match_pb2_grpc
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


def test_a_stream_sent_back_short_releases_nothing(operator, serve):
    """A merchant that returns part of the stream (say, to probe a subset) gets an error, no report,
    and its budget back."""
    members, token = operator.seed(300, random.Random(8))
    served = serve()
    spent_before = api.budget(served.address, token)["epsilon_spent"]
    from matcher.protocol.merchant import MerchantSession
    from matcher_client.api import prepare_rows

    prepared = prepare_rows([(phone(i), None) for i in range(100, 200)], id_type="phone").prepared
    session = MerchantSession(prepared.keys, prepared.labels, id_kind="phone", count_only=True)
    with grpc.insecure_channel(served.address) as chan:
        stub = match_pb2_grpc.MatchServiceStub(chan)
        talk = api._Conversation(stub.Count, token, timeout=30)
        talk.send(start=api._start_message(session))
        api._share_list(talk, session, len(prepared.keys), lambda *a: None)
        chunks = list(session.returned_chunks())
        talk.send(returned=match_pb2.StreamValues(points=chunks[0][:-32 * 10]))
        talk.send(returned_end=match_pb2.ListEnd())
        with pytest.raises(grpc.RpcError) as refused:
            talk.expect("report")
        talk.close()
    assert "came back" in refused.value.details()
    assert api.budget(served.address, token)["epsilon_spent"] == spent_before

