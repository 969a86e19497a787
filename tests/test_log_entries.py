"""matcher.log.entries: the entries both sides agree on, and the verifier's typed ledger rows."""

import json

from matcher.log import entries
from matcher.policy import Policy
from matcher_client.audit.rules import LedgerItem


def test_canonical_json_is_sorted_compact_utf8():
    assert entries.canonical_json({"b": 1, "a": ["é", None]}) == '{"a":["é",null],"b":1}'.encode()


def test_every_builder_writes_a_type_the_verifier_knows():
    pol = Policy()
    built = [
        entries.job_entry("released", "j", "m", pol, [3, 5], 10.0, protocol="secure"),
        entries.policy_entry("k", "7", None, pol),
        entries.audience_segments_entry(["a"], ["a"], [], "1"),
        *(entries.audience_entry(change, "1") for change in entries.AUDIENCE_CHANGES),
        *(entries.principal_entry(role, event, "n") for role in ("merchant", "auditor")
          for event in ("added", "token_rotated", "disabled", "enabled")),
        *(entries.activation_entry(event, "act_1") for event in ("exported", "deleted", "expired")),
    ]
    assert {e["type"] for e in built} == set(entries.KNOWN_TYPES)
    assert not set(entries.CHECKED_TYPES) & set(entries.RECORDED_TYPES)


def test_job_entry_records_the_policy_and_its_digest():
    pol = Policy()
    entry = entries.job_entry("failed", "j", "m", pol, [5, 3], 10.00049, protocol="secure", started=9.0,
                              epsilon=0.5, charged=True, reason="boom")
    assert entry["list_size"] == 8 and entry["label_sizes"] == [3, 5]
    assert entry["policy"] == pol.to_dict() and entry["policy_digest"] == pol.digest()
    assert (entry["time"], entry["started"], entry["charged"], entry["reason"]) == (10.0, 9.0, True, "boom")
    assert "report_digest" not in entry and "released" not in entry
    # Without `started` the job started when it was decided (a refusal).
    assert entries.job_entry("refused", "j", "m", pol, [8], 4.0, protocol="secure")["started"] == 4.0


def test_operator_entries_keep_their_fields():
    assert entries.principal_entry("merchant", "disabled", "acme", reason="why") == {
        "type": "merchant_disabled", "name": "acme", "reason": "why"}
    assert entries.activation_entry("exported", "act_1", rows=4) == {
        "type": "activation_exported", "activation": "act_1", "rows": 4}


def test_ledger_item_round_trips_through_the_state_file_row():
    item = LedgerItem.of_job({"time": 20.0, "started": 12.5}, 7, 0.25, Policy())
    assert item.at == 12.5 and item.index == 7 and item.budget == Policy().epsilon_budget
    row = json.loads(json.dumps(item.row()))
    assert LedgerItem.from_row(row) == item
    assert LedgerItem.of_job({"time": 20.0}, 7, 0.25, Policy()).at == 20.0
