"""Tamper tests for the auditor: real jobs on a real SQLite file behind a real gRPC server, then the
database is edited the way a dishonest operator would, and ``verify``/``prove`` must name the lie."""

from __future__ import annotations

import hashlib
import json
import os
import random
import sqlite3

import pytest
from click.testing import CliRunner

from matcher.server import keys as keys_mod
from matcher.errors import MatcherError, VerificationError
from matcher.log.entries import canonical_json
from matcher.server.auditlog import AuditLog
from matcher.log.checkpoint import Signer
from matcher.policy import Policy
from matcher_client import api
from matcher_client.audit import AuditState, GrpcLogSource, prove, verify
from matcher_client.audit_cli import main as audit_main
from tests.conftest import SEGMENTS, exact_policy, phone

ORIGIN = "matcher.test"


@pytest.fixture
def log(operator, serve):
    """Three released jobs (k 3, noise none) and one refused job (a 5-ID list under min_list_size 10)."""
    rng = random.Random(11)
    operator.add_members({phone(i): rng.getrandbits(len(SEGMENTS)) for i in range(120)})
    exact_policy(operator.store, k="3")
    merchant = operator.token("merchant", "shop")
    auditor = operator.token("auditor", "alice")
    served = serve()
    reports = [api.match(served.address, merchant, id_type="phone",
                         rows=[(phone(i), rng.choice(["a", "b"])) for i in range(lo, lo + 60)]) for lo in (0, 40, 80)]
    with pytest.raises(MatcherError, match="at least 10"):
        api.match(served.address, merchant, rows=[(phone(i), None) for i in range(5)], id_type="phone")
    return _Log(operator, served, merchant, auditor, reports)


class _Log:
    def __init__(self, operator, served, merchant, auditor, reports):
        self.operator, self.served, self.merchant, self.auditor, self.reports = (
            operator, served, merchant, auditor, reports)

    def verify(self, state=None, key=None, address=None):
        with GrpcLogSource(address or self.served.address, self.auditor) as source:
            return verify(source, state=state, pinned_key=key)

    def prove(self, report, key=None):
        with GrpcLogSource(self.served.address, self.merchant) as source:
            return prove(report, source, pinned_key=key)

    def sql(self, statement, params=()):
        with sqlite3.connect(self.operator.db) as db:
            return db.execute(statement, params).fetchall()

    def entry(self, index) -> dict:
        return json.loads(self.sql("SELECT data FROM log_entries WHERE idx = ?", [index])[0][0])

    def append(self, entries):
        return AuditLog(self.operator.store, self.operator.keys.signer, ORIGIN).append(entries)

    def truncate(self, size, *, drop_checkpoints):
        self.sql("DELETE FROM log_entries WHERE idx >= ?", [size])
        # A perfect subtree (level, idx) ends at leaf (idx + 1) * 2**level: drop those past the cut.
        self.sql("DELETE FROM log_nodes WHERE (idx + 1) << level > ?", [size])
        if drop_checkpoints:
            self.sql("DELETE FROM checkpoints WHERE size > ?", [size])


def _job_entry(**overrides) -> dict:
    pol = Policy(noise="none", k=50, min_list_size=10, dummies=False)
    entry = {"type": "job", "decision": "released", "job_id": "f" * 32, "merchant": "shop", "list_size": 20,
             "label_sizes": [20], "policy": pol.to_dict(), "policy_digest": pol.digest(), "epsilon_spent": 0.0,
             "time": 1.0, "report_digest": hashlib.sha256(b"forged").hexdigest(),
             "released": {"all": {"matched": 60, "segments": {s: None for s in SEGMENTS}}}}
    return {**entry, **overrides}


def test_untouched_log_verifies_and_counts_every_decision(log):
    result = log.verify()
    size = log.sql("SELECT count(*) FROM log_entries")[0][0]
    assert result.size == result.entries_checked == size == 4
    assert result.jobs == {"released": 3, "activated": 0, "refused": 1, "failed": 0}
    assert result.key_pinned_now and result.verifier_key == log.operator.keys.signer.verifier_key
    shop = result.merchants["shop"]
    assert (shop.released, shop.refused, shop.failed, shop.epsilon_spent) == (3, 1, 0, 0.0)
    assert result.warnings == []


def test_incremental_run_fetches_only_new_entries(log, tmp_path):
    state_file = tmp_path / "audit.json"
    log.verify().state.save(state_file)
    log.append([_job_entry(released={"all": {"matched": 70, "segments": {s: 55 for s in SEGMENTS}}})])
    fetched = []

    class Counting(GrpcLogSource):
        def entries(self, start, end):
            fetched.append((start, end))
            return super().entries(start, end)

    with Counting(log.served.address, log.auditor) as source:
        result = verify(source, state=AuditState.load(state_file), pinned_key=None)
    assert fetched == [(4, 5)]
    assert (result.previous_size, result.size, result.entries_checked) == (4, 5, 1)
    assert not result.key_pinned_now
    # The unannounced policy change (k 3 -> 50) is reported, not treated as a lie.
    assert len(result.warnings) == 1 and "no policy entry" in result.warnings[0]


def test_a_log_hiding_its_latest_checkpoint_from_the_list_is_caught(log):
    class Equivocating(GrpcLogSource):
        def checkpoints(self, min_size):
            return super().checkpoints(min_size)[:-1]  # shows auditors an older history than merchants

    with Equivocating(log.served.address, log.auditor) as source, pytest.raises(
            VerificationError, match=r"the latest checkpoint \(size 4\) is not among the checkpoints the log lists"):
        verify(source, state=None)


def test_edited_entry_is_caught_by_a_first_time_auditor(log):
    entry = log.entry(1)
    entry["released"]["a"]["matched"] += 1
    log.sql("UPDATE log_entries SET data = ? WHERE idx = 1", [canonical_json(entry)])
    with pytest.raises(VerificationError, match=r"entry 1 is not the entry the log signed"):
        log.verify()


def test_deleted_and_renumbered_entry_is_caught(log):
    log.sql("DELETE FROM log_entries WHERE idx = 1")
    for idx in (2, 3):
        log.sql("UPDATE log_entries SET idx = ? WHERE idx = ?", [idx - 1, idx])
    with pytest.raises(VerificationError, match=r"signed 4 entries but serves only 3: an entry was deleted; "
                                                r"the served entries leave the signed tree at entry 1"):
        log.verify()


def test_fork_keeping_old_checkpoints_is_caught_without_state(log):
    log.truncate(2, drop_checkpoints=False)
    log.append([_job_entry(job_id=f"{i:032x}", released={"all": {"matched": 60 + i, "segments": {
        s: None for s in SEGMENTS}}}) for i in range(3)])  # one batch: size 5, no clash with sizes 3, 4
    with pytest.raises(VerificationError,
                       match=r"rewritten: its signed checkpoints of size 2 and 3 are not consistent"):
        log.verify()


def test_fork_with_old_checkpoints_deleted_is_caught_by_saved_state_and_by_reports(log):
    state = log.verify().state
    log.truncate(2, drop_checkpoints=True)
    for i in range(3):  # regrown one job at a time, as the server would: checkpoints 3, 4, 5
        log.append([_job_entry(job_id=f"{i:032x}")])
    # A first-time auditor has no evidence left of the old history: this fork needs memory to catch.
    assert log.verify().size == 5
    with pytest.raises(VerificationError, match=r"the log forked: its checkpoint of size 4 has root"):
        log.verify(state=state)
    # Entry 2 is still included under the report's old checkpoint (size 3); the rewrite after it is what shows.
    with pytest.raises(VerificationError, match=r"forked after the report was logged: the latest checkpoint \(size 5\) "
                                                r"is not consistent with the report's \(size 3\)"):
        log.prove(log.reports[2])


def test_fork_to_a_different_size_is_caught_by_consistency_with_saved_state(log):
    state = log.verify().state
    log.truncate(2, drop_checkpoints=True)
    log.append([_job_entry(job_id=f"{i:032x}") for i in range(4)])  # size 6: no checkpoint of size 4 any more
    with pytest.raises(VerificationError, match=r"forked: its checkpoint of size 6 is not consistent with the "
                                                r"checkpoint of size 4 you verified before"):
        log.verify(state=state)


def test_truncated_log_is_caught_by_saved_state(log):
    state = log.verify().state
    log.truncate(2, drop_checkpoints=True)
    with pytest.raises(VerificationError, match=r"the log shrank: its latest checkpoint has size 2, below the size 4"):
        log.verify(state=state)


def test_swapped_signing_key_is_caught_by_the_pinned_key(log, serve):
    pinned = log.operator.keys.signer.verifier_key
    state = log.verify().state
    log.served.server.stop(grace=1)
    key_file = keys_mod.key_path_for(log.operator.db)
    os.remove(key_file)
    keys_mod.write(key_file, keys_mod.OperatorKeys(paillier=log.operator.keys.paillier,
                                                   signer=Signer.generate(ORIGIN)))
    address = serve().address
    for kwargs in ({"state": state}, {"key": pinned}):
        with pytest.raises(VerificationError, match=r"server's verifier key .* is not the pinned key .*swapped"):
            log.verify(address=address, **kwargs)


def test_checkpoint_signed_by_another_key_is_caught(log):
    impostor = AuditLog(log.operator.store, Signer.generate(ORIGIN), ORIGIN)
    impostor.append([_job_entry(released={"all": {"matched": 60, "segments": {s: 51 for s in SEGMENTS}}})])
    with pytest.raises(VerificationError, match=r"checkpoint \(size 5\) does not verify with the pinned key"):
        log.verify()


def test_forged_release_below_k_is_caught(log):
    log.append([_job_entry(released={"all": {"matched": 3, "segments": {s: None for s in SEGMENTS}}})])
    with pytest.raises(VerificationError, match=r"entry 4 \(job f{32}, merchant 'shop'\): label 'all', matched: "
                                                r"released 3, below the policy's k = 50 with noise none"):
        log.verify()


@pytest.mark.parametrize("overrides, problem", [
    ({"epsilon_spent": 0.5}, r"spent ε 0.5, but its policy charges 0 per job"),
    ({"label_sizes": [12, 8]}, r"released a label of 8 IDs, below the policy's min_list_size 10"),
    ({"decision": "refused", "reason": "list_too_small"}, r"a refused job carries released cells"),
    ({"policy_digest": "0" * 64}, r"policy_digest '0{64}' is not the digest"),
    ({"decision": "activated", "released": {"slice": {"matched": 3, "segments": {}}}},
     r"label 'slice', matched: released 3, below the policy's k = 50"),
    ({"released": {"all": {"matched": 60, "segments": {**{s: None for s in SEGMENTS}, "member": 61}}}},
     r"segment 'member' released 61 but matched is 60"),
])
def test_other_policy_violations_are_named(log, overrides, problem):
    log.append([_job_entry(**overrides)])
    with pytest.raises(VerificationError, match=r"entry 4 .*" + problem):
        log.verify()


def test_noisy_release_below_k_is_not_a_violation(log):
    # With noise on, a released 3 under k 50 can be an honest noisy value: the verifier must not cry wolf.
    pol = Policy(noise="discrete_laplace", k=50, min_list_size=10, dummies=False, epsilon_budget=1.0,
                 epsilon_per_job=1.0, budget_period="30d")
    entry = _job_entry(policy=pol.to_dict(), policy_digest=pol.digest(), epsilon_spent=1.0,
                       released={"all": {"matched": 3, "segments": {s: 0 for s in SEGMENTS}}})
    log.append([entry])
    assert log.verify().merchants["shop"].epsilon_spent == 1.0
    # ... but a second such job inside the 30-day period overspends the budget of 1.0.
    log.append([{**entry, "job_id": "e" * 32, "time": 2.0}])
    with pytest.raises(VerificationError, match=r"entry 5 \(merchant 'shop'\): ε over budget: 2 spent"):
        log.verify()


def test_a_charged_failed_job_counts_against_the_budget(log):
    """Secure protocol: a job that failed after its data left the server spent its ε; the verifier
    accepts exactly the policy's charge and counts it in the budget windows."""
    pol = Policy(noise="discrete_laplace", k=50, min_list_size=10, dummies=False, epsilon_budget=1.0,
                 epsilon_per_job=1.0, budget_period="30d")
    failed = {key: value for key, value in _job_entry(policy=pol.to_dict(), policy_digest=pol.digest()).items()
              if key not in ("released", "report_digest")}
    failed.update(decision="failed", reason="the client went away", charged=True, epsilon_spent=1.0)
    log.append([failed])
    assert log.verify().merchants["shop"].epsilon_spent == 1.0
    log.append([{**failed, "job_id": "e" * 32, "time": 2.0}])
    with pytest.raises(VerificationError, match=r"entry 5 \(merchant 'shop'\): ε over budget: 2 spent"):
        log.verify()


def test_a_charged_failed_job_must_charge_the_policy_amount(log):
    pol = Policy(noise="discrete_laplace", min_list_size=10, dummies=False, epsilon_per_job=1.0)
    failed = {key: value for key, value in _job_entry(policy=pol.to_dict(), policy_digest=pol.digest()).items()
              if key not in ("released", "report_digest")}
    failed.update(decision="failed", charged=True, epsilon_spent=0.5)
    log.append([failed])
    with pytest.raises(VerificationError, match="a charged failed job spent ε 0.5"):
        log.verify()


def test_prove_accepts_a_real_report_and_rejects_an_edited_count(log):
    pinned = log.operator.keys.signer.verifier_key
    report = json.loads(json.dumps(log.reports[0]))  # as read back from the --json file
    result = log.prove(report, key=pinned)
    assert (result.leaf_index, result.checkpoint_size, result.latest_size) == (0, 1, 4)
    edited = json.loads(json.dumps(report))
    edited["labels"]["a"]["matched"] += 1
    with pytest.raises(VerificationError,
                       match="the report's 'labels' field does not match the report_json it carries"):
        log.prove(edited, key=pinned)
    edited_json = json.loads(report["report_json"])
    edited_json["labels"]["a"]["matched"] += 1
    with pytest.raises(VerificationError, match="sha256 of the report is .* the report is not the one that was logged"):
        log.prove({**report, "report_json": canonical_json(edited_json).decode()}, key=pinned)


def test_cli_exit_codes(log, tmp_path):
    runner = CliRunner()
    state = tmp_path / "state.json"
    key_file = tmp_path / "operator.vkey"
    key_file.write_text(log.operator.keys.signer.verifier_key + "\n")
    args = ["verify", "--server", log.served.address, "--state", str(state), "--key", str(key_file)]
    ok = runner.invoke(audit_main, args, env={"MATCHER_TOKEN": log.auditor})
    assert ok.exit_code == 0, ok.output
    assert "OK: 4 entries verified" in ok.output and "new jobs refused " in ok.output
    assert json.loads(state.read_text())["size"] == 4

    report_file = tmp_path / "report.json"
    report_file.write_text(json.dumps(log.reports[1]))
    proved = runner.invoke(audit_main, ["prove", "--report", str(report_file), "--server", log.served.address,
                                        "--token", log.merchant, "--key", str(key_file)])
    assert proved.exit_code == 0 and "is entry 1 of the log" in proved.output, proved.output

    log.append([_job_entry(released={"all": {"matched": 3, "segments": {s: None for s in SEGMENTS}}})])
    before = state.read_text()
    lie = runner.invoke(audit_main, args + ["--token", log.auditor])
    assert lie.exit_code == 1 and "VIOLATION: entry 4" in lie.output and "below the policy's k" in lie.output
    assert state.read_text() == before  # a failed verification saves nothing

    wrong_token = runner.invoke(audit_main, args + ["--token", "mt_nope"])
    assert wrong_token.exit_code == 2 and "VIOLATION" not in wrong_token.output
    unreachable = runner.invoke(audit_main, ["verify", "--server", "127.0.0.1:1", "--token", log.auditor])
    assert unreachable.exit_code == 2
    assert runner.invoke(audit_main, ["verify", "--server", log.served.address]).exit_code == 2  # no token

