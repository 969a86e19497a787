"""An audience that changes: `matcher audience import --mode replace` and `matcher audience remove`.

Members who left are never matched again: not by a balanced job with a stream precomputed before
they left, not by an unbalanced job whose stored copies held them, not in an activation slice.
Counts are checked against a plaintext truth over real gRPC and a real SQLite file."""

from __future__ import annotations

import json
import random

import pytest
from click.testing import CliRunner

from matcher.server.cli import main
from matcher_client import api
from matcher_client.audit import GrpcLogSource, verify
from tests.conftest import exact_policy, ground_truth, match_key, phone, wait_until

SEGMENTS = ("a", "b")


def _write(path, members: dict[str, int]) -> str:
    path.write_text("phone,a,b\n" + "".join(f"{m},{'yes' if bits & 1 else 'no'},{'yes' if bits & 2 else 'no'}\n"
                                            for m, bits in members.items()))
    return str(path)


def _cli(*args: str) -> dict:
    result = CliRunner().invoke(main, [*args, "--json"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout[result.stdout.index("{"):])


def _import(db, path, members, *flags: str) -> dict:
    return _cli("audience", "import", "--db", str(db), _write(path, members), "--id-column", "phone",
                "--id-type", "phone", "--segments", ",".join(SEGMENTS), "--executor", "inline", *flags)


def _remove(db, path, phones) -> dict:
    path.write_text("phone\n" + "".join(f"{p}\n" for p in phones))
    return _cli("audience", "remove", "--db", str(db), str(path), "--id-column", "phone", "--id-type", "phone")


@pytest.mark.parametrize("mode", ["balanced", "unbalanced"])
def test_removed_members_are_never_matched_again(operator, serve, tmp_path, mode):
    rng = random.Random(23)
    members = {phone(i): rng.getrandbits(2) for i in range(200)}
    _import(operator.db, tmp_path / "members.csv", members)
    exact_policy(operator.store)
    token = operator.token("merchant", "shop")
    served = serve(stream_slots=1 if mode == "balanced" else 0)
    customers = [(phone(i), rng.choice(["x", "y"])) for i in range(100, 260)]
    if mode == "balanced":  # a stream precomputed while the leavers were still members
        assert wait_until(lambda: operator.store.stream_slots(operator.store.load_audience().version) >= 1)
    assert api.match(served.address, token, rows=customers, id_type="phone", mode=mode)["labels"] == \
        ground_truth(members, customers, segments=SEGMENTS)   # unbalanced: the copies now hold every member

    leaving = [phone(i) for i in range(120, 160)] + ["+8613999999999"]   # the last one was never a member
    version = operator.store.get_meta("audience_version")
    leaving_points = [bytes(p) for (p,) in operator.store.db.execute(
        f"SELECT point FROM audience WHERE member_id IN ({','.join('?' * len(leaving))})", leaving)]
    assert len(leaving_points) == 40
    summary = _remove(operator.db, tmp_path / "leaving.csv", leaving)
    assert (summary["removed"], summary["members"]) == (40, 160)
    assert operator.store.get_meta("audience_version") != version
    after = {m: bits for m, bits in members.items() if m not in leaving}
    report = api.match(served.address, token, rows=customers, id_type="phone", mode=mode)
    assert report["labels"] == ground_truth(after, customers, segments=SEGMENTS)
    assert report["labels"] != ground_truth(members, customers, segments=SEGMENTS)   # the removal mattered
    # Forgotten: once no stored copy can need them (at the removal without copies, after the next
    # job's sync with them), the leavers' H(y) are gone from the unbalanced history too.
    held = operator.store.db.execute(f"SELECT count(*) FROM audience_history WHERE point IN "
                                     f"({','.join('?' * len(leaving_points))})", leaving_points).fetchone()[0]
    assert held == 0

    entries = [json.loads(data) for _, data in operator.store.log_entries(0, operator.store.log_size())]
    changes = [e for e in entries if e["type"] == "audience_changed"]
    assert [e["change"] for e in changes] == ["import", "remove"]
    assert changes[-1]["audience_version"] == operator.store.get_meta("audience_version")
    assert "removed" not in changes[-1] and "members" not in changes[-1]   # no count in the log
    released = [e for e in entries if e["type"] == "job" and e["decision"] == "released"]
    assert released[0]["audience_version"] == version
    assert released[-1]["audience_version"] == operator.store.get_meta("audience_version")
    with GrpcLogSource(served.address, operator.token("auditor", "watch")) as source:
        assert verify(source).warnings == []


def test_replace_removes_the_members_the_file_does_not_name_at_its_end(operator, serve, tmp_path):
    rng = random.Random(5)
    old = {phone(i): rng.getrandbits(2) for i in range(150)}
    _import(operator.db, tmp_path / "old.csv", old)
    new = {phone(i): rng.getrandbits(2) for i in range(50, 220)}   # 50 left, 70 joined, 100 stayed
    summary = _import(operator.db, tmp_path / "new.csv", new, "--mode", "replace")
    assert (summary["imported"], summary["removed"], summary["members"]) == (70, 50, 170)
    exact_policy(operator.store)
    token = operator.token("merchant", "shop")
    served = serve(stream_slots=0)
    customers = [(phone(i), "all") for i in range(0, 260, 2)]
    assert api.match(served.address, token, rows=customers, id_type="phone")["labels"] == \
        ground_truth(new, customers, segments=SEGMENTS)
    # upsert, the default, keeps members a file does not name
    summary = _import(operator.db, tmp_path / "few.csv", {phone(1000): 1})
    assert (summary["imported"], summary["removed"], summary["members"]) == (1, 0, 171)


def test_a_removed_member_leaves_every_activation_slice(operator, tmp_path):
    """A slice stores audience row ids, and SQLite gives a deleted row id to a later member: the
    removal must take the leaver out of stored slices, or a newcomer would inherit its place."""
    store = operator.store
    _import(operator.db, tmp_path / "members.csv", {phone(i): 1 for i in range(10)})
    merchant, _ = store.add_principal("merchant", "shop")
    rows = [r for (r,) in store.db.execute("SELECT row_id FROM audience ORDER BY row_id")]
    store.db.execute("INSERT INTO activations (handle, merchant_id, job_id, name, where_expr, label, size, "
                     "noisy_size, created, expires, state) VALUES ('act_x', ?, 'j', 'n', 'a', NULL, 10, 10, 0, 1e12, "
                     "'active')", [merchant.id])
    store.db.conn.executemany("INSERT INTO activation_members (handle, row_id) VALUES ('act_x', ?)", [(r,) for r in rows])
    _remove(operator.db, tmp_path / "leaving.csv", [phone(9)])   # the highest row id: the next insert reuses it
    _import(operator.db, tmp_path / "newcomer.csv", {phone(500): 1})
    slice_members = {m for (m,) in store.db.execute(
        "SELECT member_id FROM audience JOIN activation_members USING (row_id) WHERE handle = 'act_x'")}
    assert slice_members == {phone(i) for i in range(9)}


def test_a_running_unbalanced_job_keeps_the_history_it_will_read(operator):
    """A job reads the history as of its start, stream after stream; a removal in between must not
    prune what a new copy at that point still needs. The job's end releases it."""
    from matcher.policy import Policy
    from matcher.server import unbalanced

    store = operator.store
    operator.add_members({phone(i): 1 for i in range(5)})
    merchant, _ = store.add_principal("merchant", "shop")
    store.open_job("job1", merchant, pol=Policy(), epsilon=0.0, list_size=10, labels=1)
    upto = store.read_history_for("job1")
    point = bytes(store.db.execute("SELECT point FROM audience WHERE member_id = ?", [phone(0)]).fetchone()[0])
    assert store.remove_members([match_key(phone(0))]) == 1
    kept = lambda: store.db.execute("SELECT count(*) FROM audience_history WHERE point = ?", [point]).fetchone()[0]
    assert kept() == 1
    assert point in {p.tobytes() for p in unbalanced.delta(store, None, since=-1, upto=upto)}
    store.finish_job("job1", released=False, reason="test")
    store.prune_history()
    assert kept() == 0


def test_replace_with_a_file_of_no_valid_row_removes_nobody(operator, tmp_path):
    _import(operator.db, tmp_path / "members.csv", {phone(i): 1 for i in range(20)})
    (tmp_path / "bad.csv").write_text("phone,a,b\nnot-a-phone,yes,no\n")
    result = CliRunner().invoke(main, ["audience", "import", "--db", str(operator.db), str(tmp_path / "bad.csv"),
                                       "--id-column", "phone", "--id-type", "phone", "--segments", "a,b",
                                       "--executor", "inline", "--mode", "replace"])
    assert result.exit_code == 1 and "would remove every member" in result.output
    assert operator.store.audience_info()["members"] == 20
