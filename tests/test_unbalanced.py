"""The unbalanced protocol over real gRPC against a real SQLite file: exact counts against a
plaintext truth computed here, through the first job (the whole audience), later jobs (nothing or
only the changes), imports that add members and move them between segments, a new merchant key,
and a merchant that returns a delta wrong."""

from __future__ import annotations

import random
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from matcher import policy as policy_mod
from matcher.server import unbalanced
from matcher.crypto import group
from matcher.errors import MatcherError, PolicyRefused, ProtocolDeviation
from matcher.protocol import _tags
from matcher.protocol._tags import compact, first_of_each, present, sort_tags, tags_of
from matcher.protocol.secure_merchant import SecureMerchantSession
from matcher.server.store import Store
from matcher_client import api
from tests.attacks._adversary import with_session
from tests.conftest import SEGMENTS, ground_truth, match_key, phone

AUDIT_ROWS = 256  # exact_policy's


def _job(served, token, customers, members=None, **kwargs):
    """One unbalanced job; the report, and how many stream values the server sent (progress)."""
    totals = []

    def progress(phase, done, total):
        if phase == "matching":
            totals.append(total)

    report = api.match(served.address, token, rows=customers, id_type="phone", mode="unbalanced",
                       progress=progress, **kwargs)
    return report, (totals[-1] if totals else 0)


def _customers(rng, lo, hi, labels=("north", "south")):
    return [(phone(i), rng.choice(labels)) for i in range(lo, hi)]


def test_counts_are_exact_first_and_later_jobs_and_later_jobs_send_only_changes(operator, serve, tmp_path):
    members, token = operator.seed(600, random.Random(1))
    served = serve()
    rng = random.Random(2)
    customers = _customers(rng, 300, 900)
    first, sent = _job(served, token, customers)
    assert first["protocol"] == "unbalanced"
    assert first["labels"] == ground_truth(members, customers)
    streams = 1 + len(SEGMENTS)
    in_segments = sum(bin(bits).count("1") for bits in members.values())
    assert sent == len(members) + in_segments + streams * AUDIT_ROWS  # the whole audience, once per stream

    other = _customers(rng, 0, 450, labels=("a", "b", "c"))
    second, sent = _job(served, token, other)
    assert second["labels"] == ground_truth(members, other)
    assert sent == streams * AUDIT_ROWS  # nothing changed: audit rows only

    # An import: 50 new members, 40 who change segments (some leave every segment), 510 unchanged.
    changed = {phone(i): members[phone(i)] ^ 0b10101 for i in range(100, 140)}
    changed.update({phone(i): 0 for i in range(140, 145)})
    new = {phone(i): rng.getrandbits(len(SEGMENTS)) for i in range(600, 650)}
    moves = sum(bin(members[m] ^ bits).count("1") for m, bits in changed.items())
    operator.add_members({**changed, **new})
    members = operator.members
    third, sent = _job(served, token, customers)
    assert third["labels"] == ground_truth(members, customers)
    assert sent == len(new) + sum(bin(b).count("1") for b in new.values()) + moves + streams * AUDIT_ROWS


def test_segments_and_count_only_use_their_own_copies(operator, serve):
    members, token = operator.seed(300, random.Random(3))
    served = serve()
    customers = _customers(random.Random(4), 100, 400)
    truth = ground_truth(members, customers)
    counts, _ = _job(served, token, customers, count_only=True)
    assert {label: cell["matched"] for label, cell in counts["labels"].items()} == \
        {label: cell["matched"] for label, cell in truth.items()}
    some, _ = _job(served, token, customers, segments=["paid_with_platform", "holds_coupon"])
    for label, cell in some["labels"].items():
        assert cell["segments"] == {s: truth[label]["segments"][s] for s in ("paid_with_platform", "holds_coupon")}
    everything, _ = _job(served, token, customers)
    assert everything["labels"] == truth


def test_a_new_merchant_key_starts_a_new_copy(operator, serve, tmp_path):
    members, token = operator.seed(200, random.Random(5))
    served = serve()
    customers = _customers(random.Random(6), 50, 250)
    _job(served, token, customers, enrollment_key=str(tmp_path / "one.key"))
    report, sent = _job(served, token, customers, enrollment_key=str(tmp_path / "two.key"))
    assert report["labels"] == ground_truth(members, customers)
    assert sent > len(members)  # a full copy again


def test_two_merchants_have_separate_copies(operator, serve):
    members, token = operator.seed(200, random.Random(7))
    other = operator.token("merchant", "other-shop")
    served = serve()
    mine, theirs = _customers(random.Random(8), 0, 120), _customers(random.Random(9), 80, 260)
    assert _job(served, token, mine)[0]["labels"] == ground_truth(members, mine)
    assert _job(served, other, theirs)[0]["labels"] == ground_truth(members, theirs)
    assert _job(served, token, theirs)[0]["labels"] == ground_truth(members, theirs)


class TogglesAMemberOut(SecureMerchantSession):
    """Honest in its first job; in the next, slips a member's value from that job's copy into its
    delta in place of one value, which would take that member out of its stored copy."""

    kept: list[bytes] = []

    def transform_returned(self, index, values):
        values = super().transform_returned(index, values)
        if index == 0 and not TogglesAMemberOut.kept:
            TogglesAMemberOut.kept.append(values[0].tobytes())
        elif index == 0:
            values[0] = np.frombuffer(TogglesAMemberOut.kept[0], np.uint8)
        return values


def test_a_tampered_delta_is_refused_and_the_copy_is_not_changed(operator, serve, monkeypatch):
    members, token = operator.seed(200, random.Random(10))
    served = serve()
    customers = _customers(random.Random(11), 0, 200)
    with_session(monkeypatch, TogglesAMemberOut)
    _job(served, token, customers)
    merchant = operator.store.principal("merchant", "shop")
    before = unbalanced.enrollment(operator.store, merchant.id, "")
    stored = "SELECT bucket, idx, tags FROM enrollment_pieces ORDER BY enrollment_id, bucket, idx"
    pieces_before = operator.store.db.execute(stored).fetchall()
    with pytest.raises(ProtocolDeviation, match="failed its audit"):
        _job(served, token, customers)
    assert unbalanced.enrollment(operator.store, merchant.id, "") == before
    assert operator.store.db.execute(stored).fetchall() == pieces_before
    assert [m["disabled"] for m in operator.store.list_principals("merchant")] == [1]


def test_the_operator_can_fix_the_protocol(operator, serve):
    members, token = operator.seed(100, random.Random(12), protocol="balanced")
    served = serve()
    customers = _customers(random.Random(13), 0, 100)
    with pytest.raises(MatcherError, match="balanced protocol only"):
        _job(served, token, customers)
    report = api.match(served.address, token, rows=customers, id_type="phone")
    assert report["protocol"] == "secure"


@pytest.mark.parametrize("audience, listed, wish, expected", [
    (10**6, 10**5, "auto", "unbalanced"),
    (10**6, 2 * 10**5, "auto", "balanced"),
    (10**5, 10**3, "auto", "balanced"),
    (10**5, 10**3, "unbalanced", "unbalanced"),
    (10**9, 10**4, "balanced", "balanced"),
])
def test_auto_picks_by_the_sizes(audience, listed, wish, expected):
    assert policy_mod.choose_protocol(policy_mod.Policy(), requested=wish, audience_size=audience, list_size=listed,
                                      client_can_enroll=True) == expected


def test_a_client_without_a_key_gets_balanced_unless_unbalanced_is_required():
    assert policy_mod.choose_protocol(policy_mod.Policy(), requested="", audience_size=10**9, list_size=10,
                                      client_can_enroll=False) == "balanced"
    with pytest.raises(PolicyRefused):
        policy_mod.choose_protocol(policy_mod.Policy(protocol="unbalanced"), requested="", audience_size=10,
                                   list_size=10, client_can_enroll=False)


def copy_synced_at(store, seq: int, name: str = "shop") -> None:
    """A merchant's (empty) copy synced at import ``seq``: it keeps the history after ``seq`` from
    being pruned, as a real copy would (with no copy, nothing needs an old import's records)."""
    merchant, _ = store.add_principal("merchant", name)
    assert unbalanced.save_sync(store, merchant.id, "", key_id=b"k", merchant_base=b"b", was=None, synced=seq,
                                toggles=np.empty((0, 16), np.uint8))


def test_delta_follows_members_in_and_out_of_a_segment(operator):
    store = operator.store
    operator.add_members({phone(1): 0b01, phone(2): 0b10, phone(3): 0b11})
    v1 = unbalanced.audience_seq(store)
    copy_synced_at(store, v1)
    operator.add_members({phone(1): 0b10})          # leaves segment 0
    v2 = unbalanced.audience_seq(store)
    operator.add_members({phone(1): 0b01, phone(4): 0b01})  # back in, and a new member
    v3 = unbalanced.audience_seq(store)
    seg0 = lambda since, upto: len(unbalanced.delta(store, 0, since=since, upto=upto))
    assert seg0(-1, v1) == 2 and seg0(-1, v2) == 1 and seg0(-1, v3) == 3
    assert seg0(v1, v2) == 1     # phone 1 left
    assert seg0(v1, v3) == 1     # phone 1 left and came back (nothing), phone 4 came
    assert seg0(v2, v3) == 2
    assert len(unbalanced.delta(store, None, since=v1, upto=v3)) == 1
    assert store.status()["preprocessing_ready"]


def test_tags_are_in_a_copy_when_they_occur_an_odd_number_of_times():
    rng = np.random.default_rng(1)
    points = rng.integers(0, 256, size=(50, 32), dtype=np.uint8)
    points[1, :8] = points[0, :8]  # equal first halves
    tags = tags_of(points)
    pieces = [sort_tags(tags[:30]), sort_tags(tags[20:40]), sort_tags(tags[25:28])]
    expected = np.zeros(50, bool)
    expected[:20] = expected[30:40] = True
    expected[25:28] = True
    assert (present(pieces, tags) == expected).all()
    assert (present([compact(pieces)], tags) == expected).all()
    assert list(first_of_each(np.concatenate([tags[5:8], tags[:10]]))) == [0, 1, 2, 3, 4, 5, 6, 7, 11, 12]


def test_a_copy_is_read_by_the_buckets_of_the_list_and_compacted(operator, serve, monkeypatch):
    """Bucketed storage: a later job reads about BUCKET_TAGS stored tags per tag of its list, not the
    whole copy; a bucket patched COMPACT_AFTER times is merged, and counts stay exact throughout."""
    monkeypatch.setattr(_tags, "BUCKET_TAGS", 8)
    members, token = operator.seed(2_000, random.Random(16), jobs_per_hour="100")
    served = serve()
    customers = _customers(random.Random(17), 1_950, 2_050)
    _job(served, token, customers, count_only=True)
    copy = unbalanced.enrollment(operator.store, operator.store.principal("merchant", "shop").id, "")
    assert copy.bucket_bits == 8  # 2,000 + audit rows' worth of tags, 8 a bucket
    read = unbalanced.stored_tags(operator.store, copy, tags_of(np.zeros((1, 32), np.uint8)))
    assert 0 < len(read) < 40
    for round_ in range(unbalanced.COMPACT_AFTER + 2):
        operator.add_members({phone(i): round_ % 2 for i in range(2_000 + round_ * 5, 2_000 + round_ * 5 + 5)})
        report, _ = _job(served, token, customers, count_only=True)
        truth = ground_truth(operator.members, customers)
        assert {k: v["matched"] for k, v in report["labels"].items()} == {k: v["matched"] for k, v in truth.items()}
    most = operator.store.db.execute("SELECT max(n) FROM (SELECT count(*) AS n FROM enrollment_pieces "
                                     "GROUP BY enrollment_id, bucket)").fetchone()[0]
    assert most <= unbalanced.COMPACT_AFTER


def test_an_import_is_invisible_to_copies_until_it_ends(operator):
    store = operator.store
    operator.add_members({phone(1): 1})

    def row(number):
        point = group.hash_to_curve(match_key(number).encode(), group.dst_for("phone"))
        return [(number, match_key(number), point, 1)]

    seen = []

    def batches():
        yield row(phone(2))
        everyone = unbalanced.delta(store, None, since=-1, upto=unbalanced.audience_seq(store))
        seen.append((store.status()["preprocessing_ready"], len(everyone)))
        yield row(phone(3))

    store.import_audience(batches(), id_kind="phone", segments=SEGMENTS)
    assert seen == [(False, 1)]
    assert len(unbalanced.delta(store, None, since=-1, upto=unbalanced.audience_seq(store))) == 3
    assert store.status()["preprocessing_ready"]


def _remove(operator, numbers):
    """Members leave (the audience has no remove command yet: the delete trigger is what counts)."""
    with operator.store.transaction() as conn:
        conn.executemany("DELETE FROM audience WHERE member_id = ?", [[n] for n in numbers])
        conn.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'audience_seq'")
    for number in numbers:
        del operator.members[number]


class RecordsStreams(SecureMerchantSession):
    received: list[set[bytes]] = []

    def receive_stream(self, index, points):
        if index == 0 and self.received_count_reset():
            RecordsStreams.received.append(set())
        RecordsStreams.received[-1].update(points[i:i + 32] for i in range(0, len(points), 32))
        super().receive_stream(index, points)

    def received_count_reset(self):
        return self.received == 0 and self._current == -1


def test_a_member_who_leaves_is_sent_as_a_value_never_seen_before(operator, serve, monkeypatch):
    """A delta's values are masked afresh: the merchant cannot tell a member leaving (whose value it
    would otherwise recognise from its first job) from a new member or an audit row."""
    members, token = operator.seed(150, random.Random(14))
    served = serve()
    with_session(monkeypatch, RecordsStreams)
    customers = _customers(random.Random(15), 0, 150)
    _job(served, token, customers, count_only=True)
    operator.add_members({phone(i): 1 for i in range(150, 160)})  # 10 join
    _remove(operator, [phone(3), phone(4)])                        # 2 leave
    report, sent = _job(served, token, customers, count_only=True)
    assert sent == 10 + 2 + AUDIT_ROWS
    assert report["labels"]["north"]["matched"] + report["labels"]["south"]["matched"] == 148
    first, second = RecordsStreams.received
    assert len(first) == 150 + AUDIT_ROWS and len(second) == sent
    assert not first & second


def test_a_reimport_hashes_only_new_members_and_writes_only_changed_ones(operator, tmp_path, monkeypatch):
    from matcher.server import audience as audience_mod
    from matcher.crypto.kernels import Kernels

    def write(rows):
        path = tmp_path / f"a{len(rows)}.csv"
        path.write_text("phone,member,paid\n" + "".join(f"{p},{m},{q}\n" for p, m, q in rows))
        return str(path)

    hashed = []
    real = Kernels.hash_to_curve
    monkeypatch.setattr(Kernels, "hash_to_curve", lambda self, keys, dst: hashed.append(len(keys)) or
                        real(self, keys, dst))
    first = [(phone(i), i % 2, 1) for i in range(100)]
    audience_mod.import_file(operator.store, write(first), id_column="phone", id_type="phone",
                             segments=["member", "paid"])
    seq = unbalanced.audience_seq(operator.store)
    copy_synced_at(operator.store, seq)
    history = operator.store.db.execute("SELECT count(*) FROM audience_history").fetchone()[0]
    again = first[:90] + [(phone(i), 1 - i % 2, 1) for i in range(90, 100)] + [(phone(i), 1, 0) for i in range(100, 105)]
    hashed.clear()
    summary = audience_mod.import_file(operator.store, write(again), id_column="phone", id_type="phone",
                                       segments=["member", "paid"])
    assert sum(hashed) == 5                            # only the new members were hashed
    assert (summary.imported, summary.unchanged, summary.duplicates) == (5, 90, 100)
    # 10 changed (a closed and an opened record each) and 5 new: the other 90 untouched.
    assert operator.store.db.execute("SELECT count(*) FROM audience_history").fetchone()[0] == history + 15
    assert len(unbalanced.delta(operator.store, 0, since=seq, upto=unbalanced.audience_seq(operator.store))) == 15
    assert operator.store.audience_info()["members"] == 105


@settings(max_examples=25, deadline=None)
@given(st.lists(st.dictionaries(st.integers(0, 11), st.one_of(st.none(), st.integers(0, 3)), max_size=6),
                min_size=1, max_size=6))
def test_delta_is_the_difference_between_any_two_imports(imports):
    """Random imports (a value per member: its segments, or None: it leaves) against a plaintext
    replay: the delta between any two imports is exactly the members whose presence differs."""
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "h.db", create=True)
        copy_synced_at(store, 0)   # every import's records stay: deltas from any point are asked for
        points = {i: group.hash_to_curve(b"m%d" % i, group.dst_for("phone")) for i in range(12)}
        state: dict[int, int] = {}
        snapshots = [dict(state)]
        for changes in imports:
            # Members leave within the import (its rows wait for its end), then it writes the rest.
            with store.transaction() as conn:
                conn.executemany("DELETE FROM audience WHERE match_key = ?",
                                 [[f"k{i}"] for i, bits in changes.items() if bits is None])
            store.import_audience([[(f"m{i}", f"k{i}", points[i], bits) for i, bits in changes.items()
                                    if bits is not None]], id_kind="phone", segments=("a", "b"))
            for i, bits in changes.items():
                if bits is None:
                    state.pop(i, None)
                else:
                    state[i] = bits
            snapshots.append(dict(state))
        last = unbalanced.audience_seq(store)
        seqs = list(range(last - len(imports), last + 1))
        for bit in (None, 0, 1):
            holds = lambda snap: {i for i, b in snap.items() if bit is None or (b >> bit) & 1}
            for a in range(len(snapshots)):
                for b in range(a, len(snapshots)):
                    # A new copy (since -1) lacks everyone; a copy synced at import a lacks the difference.
                    want = holds(snapshots[a]) ^ holds(snapshots[b]) if a else holds(snapshots[b])
                    got = unbalanced.delta(store, bit, since=seqs[a] if a else -1, upto=seqs[b])
                    assert sorted(p.tobytes() for p in got) == sorted(points[i] for i in want)
        store.close()


def test_a_member_twice_in_one_batch_has_one_current_record(operator):
    point = group.hash_to_curve(b"twice", group.dst_for("phone"))
    operator.store.import_audience([[("m", "k", point, 1), ("m", "k", point, 2)]], id_kind="phone",
                                   segments=SEGMENTS)
    store = operator.store
    assert store.db.execute("SELECT bits FROM audience_history WHERE until IS NULL").fetchall() == [(2,)]
    upto = unbalanced.audience_seq(store)
    assert len(unbalanced.delta(store, 0, since=-1, upto=upto)) == 0
    assert len(unbalanced.delta(store, 1, since=-1, upto=upto)) == 1
