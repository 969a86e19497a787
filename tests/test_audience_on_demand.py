"""The server reads an audience above ``audience_at_start`` members into memory for the first job
that streams it, not at start-up: an unbalanced job never reads it (issue 16, mem16b), and balanced
jobs after one are exact and share one read. A smaller one is read at start-up."""

from __future__ import annotations

import random

import pytest

from matcher.server.store import Store
from matcher_client import api
from tests.conftest import ground_truth, wait_until
from tests.test_unbalanced import _customers, _job


@pytest.fixture
def reads(monkeypatch) -> list[int]:
    """The members of each read of the audience into memory, in order, by any Store."""
    seen: list[int] = []
    read_rows = Store._audience_rows

    def audience_rows(self, points):
        seen.append(len(points))
        return read_rows(self, points)

    monkeypatch.setattr(Store, "_audience_rows", audience_rows)
    return seen


def test_the_audience_is_read_by_the_first_balanced_job_not_at_start_up_nor_by_an_unbalanced_job(
        operator, serve, reads):
    members, token = operator.seed(300, random.Random(21))
    customers = _customers(random.Random(22), 100, 400)
    truth = ground_truth(members, customers)
    served = serve(audience_at_start=0)  # as for an audience above the start-up threshold
    assert reads == []

    unbalanced, _ = _job(served, token, customers)
    assert unbalanced["protocol"] == "unbalanced" and unbalanced["labels"] == truth
    assert reads == []

    for _ in range(2):
        balanced = api.match(served.address, token, rows=customers, id_type="phone", mode="balanced")
        assert balanced["protocol"] == "secure" and balanced["labels"] == truth
        assert reads == [len(members)]  # read once, by the first balanced job

    again, _ = _job(served, token, customers)
    assert again["protocol"] == "unbalanced" and again["labels"] == truth


def test_a_server_with_stream_slots_reads_the_audience_while_idle(operator, serve, reads):
    members, token = operator.seed(200, random.Random(23))
    served = serve(stream_slots=1, audience_at_start=0)
    assert wait_until(lambda: operator.store.stream_slots(operator.store.get_meta("audience_version", "")) >= 1)
    assert reads and reads[0] == len(members)
    customers = _customers(random.Random(24), 50, 250)
    report = api.match(served.address, token, rows=customers, id_type="phone", mode="balanced")
    assert report["labels"] == ground_truth(members, customers)


def test_a_small_audience_is_read_at_start_up_so_the_first_job_does_not_wait(operator, serve, reads):
    members, token = operator.seed(150, random.Random(25))
    served = serve(audience_at_start=150)
    assert reads == [len(members)]  # before any job
    customers = _customers(random.Random(26), 40, 200)
    report = api.match(served.address, token, rows=customers, id_type="phone", mode="balanced")
    assert report["labels"] == ground_truth(members, customers)
    assert reads == [len(members)]  # the job used that read

    reads.clear()
    serve(audience_at_start=149)  # one member over the threshold: left for the first job
    assert reads == []
