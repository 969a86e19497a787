"""Several identifiers per member in the operator's store (issue 19): `matcher audience import` and
`audience remove` with repeated ``--id-column COLUMN:TYPE``, against a real SQLite file; the audience
they load is run through the secure protocol's engines and counted exactly against a plaintext truth.

Rules checked: the first column is the member's key; a further identifier names one member only
(a member's first identifier wins, else the member that held it first keeps it); an upsert gives a
member exactly its row's identifiers; removal by any identifier takes the member with all of them."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from matcher import ids
from matcher.crypto import group
from matcher.errors import InputError
from matcher.server.audience import import_file, remove_file
from matcher.server.cli import main
from tests.test_multi_id_protocol import counts, run

COLUMNS = ids.parse_id_columns(["phone:phone", "email:email", "openid:opaque"])


def write(path, rows) -> str:
    path.write_text("phone,email,openid,paid\n" + "".join(f"{p},{e},{o},{b}\n" for p, e, o, b in rows))
    return str(path)


def point(kind: str, value: str) -> bytes:
    key = ids.match_key(value, kind if kind != "opaque" else "opaque")
    return group.hash_to_curve_batch([key.encode()], group.dst_for(kind))


def identifiers_of(store) -> dict[str, set[tuple[str, bytes]]]:
    """Each member (by its normalized first identifier): the (kind, point) of each further identifier."""
    audience = store.load_audience()
    members = [m for (m,) in store.db.execute("SELECT member_id FROM audience ORDER BY row_id")]
    held: dict[str, set] = {m: set() for m in members}
    if audience.extra_points is not None:
        kinds = dict(store.db.execute("SELECT hex(point), kind FROM audience_ids"))
        for owner, p in zip(audience.extra_owner, audience.extra_points):
            held[members[owner]].add((kinds[bytes(p).hex().upper()], bytes(p)))
    return held


PEOPLE = [("13800000001", "a@x.com", "oid-1", 1), ("13800000002", "", "oid-2", 0),
          ("13800000003", "c@x.com", "", 1), ("13800000004", "", "", 0)]


def test_import_keeps_each_members_identifiers_and_the_tuple_width(operator, tmp_path):
    summary = import_file(operator.store, write(tmp_path / "m.csv", PEOPLE), id_columns=COLUMNS, segments=["paid"])
    assert (summary.imported, summary.members, summary.shared_identifiers) == (4, 4, 0)
    info = operator.store.audience_info()
    assert info["id_kinds"] == ["phone", "email", "opaque"] and operator.store.identifier_columns() == 3
    audience = operator.store.load_audience()
    assert audience.width == 3 and audience.kinds == ("phone", "email", "opaque")
    assert identifiers_of(operator.store) == {
        "+8613800000001": {("email", point("email", "a@x.com")), ("opaque", point("opaque", "oid-1"))},
        "+8613800000002": {("opaque", point("opaque", "oid-2"))},
        "+8613800000003": {("email", point("email", "c@x.com"))},
        "+8613800000004": set()}
    # The members' first points are their phones' H, in row order.
    assert bytes(audience.points[0]) == point("phone", "13800000001")


def test_counts_through_any_identifier_once_from_the_stored_audience(operator, tmp_path):
    import_file(operator.store, write(tmp_path / "m.csv", PEOPLE), id_columns=COLUMNS, segments=["paid"])
    audience = operator.store.load_audience()
    key = lambda kind, value: ids.match_key(value, kind)  # noqa: E731
    elements = [("email", key("email", "A@X.COM"), "north"),       # member 1 by email
                ("phone", key("phone", "138 0000 0001"), "south"),  # member 1 again, by phone: counts once
                ("opaque", key("opaque", "oid-2"), "south"),       # member 2 by OpenID
                ("email", key("email", "c@x.com"), "south"),       # member 3 by email
                ("email", key("email", "nobody@x.com"), "north")]
    got = counts(run(audience, elements))
    # Member 1 counts once, under the alphabetically first of its labels; its segment bit too.
    assert got == {"north": [1, [1]], "south": [2, [1]]}


def test_a_shared_identifier_stays_with_the_member_that_held_it_first(operator, tmp_path):
    rows = [("13800000001", "family@x.com", "", 0), ("13800000002", "family@x.com", "", 0)]
    summary = import_file(operator.store, write(tmp_path / "m.csv", rows), id_columns=COLUMNS, segments=["paid"])
    assert summary.shared_identifiers == 1
    held = identifiers_of(operator.store)
    assert held["+8613800000001"] == {("email", point("email", "family@x.com"))}
    assert held["+8613800000002"] == set()
    # No two points of the audience are equal.
    audience = operator.store.load_audience()
    everything = np.concatenate([audience.points, audience.extra_points])
    assert len({bytes(p) for p in everything}) == len(everything)


def test_a_further_identifier_equal_to_another_members_first_is_not_kept(operator, tmp_path):
    two_phones = ids.parse_id_columns(["phone:phone", "home:phone"])
    (tmp_path / "m.csv").write_text("phone,home,paid\n13800000001,13800000002,1\n13800000002,,0\n"
                                    "13800000003,13800000009,0\n")
    summary = import_file(operator.store, str(tmp_path / "m.csv"), id_columns=two_phones, segments=["paid"])
    assert summary.members == 3
    held = identifiers_of(operator.store)
    # 138...02 is member 2's own first identifier: member 1 does not keep it as its home phone.
    assert held["+8613800000001"] == set() and held["+8613800000003"] == {("phone", point("phone", "13800000009"))}
    # A later member whose first identifier is 138...09 takes it from member 3.
    (tmp_path / "n.csv").write_text("phone,home,paid\n13800000009,,1\n")
    import_file(operator.store, str(tmp_path / "n.csv"), id_columns=two_phones, segments=["paid"])
    assert identifiers_of(operator.store)["+8613800000003"] == set()


def test_upsert_gives_a_member_exactly_its_rows_identifiers_and_skips_unchanged_rows(operator, tmp_path):
    import_file(operator.store, write(tmp_path / "m.csv", PEOPLE), id_columns=COLUMNS, segments=["paid"])
    version = operator.store.get_meta("audience_version")
    again = import_file(operator.store, write(tmp_path / "m.csv", PEOPLE), id_columns=COLUMNS, segments=["paid"])
    assert (again.unchanged, again.imported) == (4, 0)
    assert operator.store.get_meta("audience_version") == version
    changed = [("13800000001", "new@x.com", "", 1), ("13800000004", "d@x.com", "", 0)]
    summary = import_file(operator.store, write(tmp_path / "c.csv", changed), id_columns=COLUMNS, segments=["paid"])
    assert (summary.unchanged, summary.imported, summary.members) == (0, 0, 4)
    held = identifiers_of(operator.store)
    assert held["+8613800000001"] == {("email", point("email", "new@x.com"))}
    assert held["+8613800000004"] == {("email", point("email", "d@x.com"))}
    assert held["+8613800000002"] == {("opaque", point("opaque", "oid-2"))}  # upsert keeps the others
    assert operator.store.get_meta("audience_version") != version


def test_invalid_further_identifiers_are_counted_and_the_member_kept(operator, tmp_path):
    rows = [("13800000001", "not-an-email", "oid-1", 1), ("bad-phone", "b@x.com", "", 0)]
    summary = import_file(operator.store, write(tmp_path / "m.csv", rows), id_columns=COLUMNS, segments=["paid"])
    assert summary.members == 1
    assert summary.invalid == {"invalid_phone": 1}  # no valid first identifier: the row is skipped
    assert summary.dropped_identifiers == {"email:invalid_email": 1}
    assert identifiers_of(operator.store)["+8613800000001"] == {("opaque", point("opaque", "oid-1"))}


def test_removed_by_a_further_identifier_goes_with_all_of_them(operator, tmp_path):
    import_file(operator.store, write(tmp_path / "m.csv", PEOPLE), id_columns=COLUMNS, segments=["paid"])
    (tmp_path / "forget.csv").write_text("mail,oid\nA@x.com,\n,oid-2\nstranger@x.com,\n")
    summary = remove_file(operator.store, str(tmp_path / "forget.csv"),
                          id_columns=ids.parse_id_columns(["mail:email", "oid:opaque"]))
    assert (summary.removed, summary.members) == (2, 2)
    assert operator.store.db.execute("SELECT count(*) FROM audience_ids").fetchone()[0] == 1  # c@x.com's
    audience = operator.store.load_audience()
    assert len(audience) == 2 and len(audience.extra_points) == 1
    key = lambda kind, value: ids.match_key(value, kind)  # noqa: E731
    got = counts(run(audience, [("email", key("email", "a@x.com"), "x"), ("opaque", key("opaque", "oid-1"), "x"),
                                ("phone", key("phone", "13800000002"), "x"), ("email", key("email", "c@x.com"), "x")]))
    assert got == {"x": [1, [1]]}  # only member 3 is left of those named


def test_the_identifier_columns_stay_in_order_and_may_grow(operator, tmp_path):
    import_file(operator.store, write(tmp_path / "m.csv", PEOPLE), id_columns=COLUMNS[:2], segments=["paid"])
    assert operator.store.identifier_columns() == 2
    with pytest.raises(InputError, match="identifier columns"):
        import_file(operator.store, write(tmp_path / "m.csv", PEOPLE), id_columns=[COLUMNS[0], COLUMNS[2]],
                    segments=["paid"])
    import_file(operator.store, write(tmp_path / "m.csv", PEOPLE), id_columns=COLUMNS, segments=["paid"])
    assert operator.store.identifier_columns() == 3 and operator.store.load_audience().width == 3


def _cli(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_cli_takes_repeated_id_columns_and_the_old_form(operator, tmp_path):
    path = write(tmp_path / "m.csv", PEOPLE)
    result = _cli("audience", "import", "--db", str(operator.db), path, "--id-column", "phone:phone",
                  "--id-column", "email:email", "--segments", "paid", "--executor", "inline", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout[result.stdout.index("{"):])
    assert summary["id_columns"] == ["phone:phone", "email:email"] and summary["members"] == 4
    assert _cli("audience", "import", "--db", str(operator.db), path, "--id-column", "phone", "--id-type", "phone",
                "--id-column", "email:email", "--segments", "paid").exit_code == 2
    untyped = _cli("audience", "import", "--db", str(operator.db), path, "--id-column", "phone",
                   "--segments", "paid")
    assert untyped.exit_code == 2 and "does not say what it holds" in untyped.output
    old = _cli("audience", "remove", "--db", str(operator.db), str(tmp_path / "m.csv"), "--id-column", "email",
               "--id-type", "email", "--json")
    assert old.exit_code == 0, old.output
    assert json.loads(old.stdout[old.stdout.index("{"):])["removed"] == 2


def test_load_audience_reads_one_snapshot_while_an_import_commits_beside_it(operator, tmp_path):
    """The counts that size load_audience's arrays and the rows it reads come from one read
    transaction: members another connection commits in between are not seen (WAL)."""
    from matcher.server.store import Store

    import_file(operator.store, write(tmp_path / "m.csv", PEOPLE), id_columns=COLUMNS, segments=["paid"])
    writer = Store(operator.db)
    with operator.store.snapshot():
        before = operator.store.db.execute("SELECT count(*) FROM audience").fetchone()[0]
        import_file(writer, write(tmp_path / "n.csv", [("13800000009", "z@x.com", "", 1)]), id_columns=COLUMNS,
                    segments=["paid"])
        assert operator.store.db.execute("SELECT count(*) FROM audience").fetchone()[0] == before == 4
    assert len(operator.store.load_audience()) == 5
