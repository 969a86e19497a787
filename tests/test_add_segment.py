"""A segment column added to an existing audience by `matcher audience import`: same keys, log and
merchants; jobs over real gRPC (balanced, with precomputed streams, and unbalanced, with stored
copies made before the column existed) count it exactly against a plaintext truth."""

from __future__ import annotations

import json
import random

import pytest
from click.testing import CliRunner

from matcher.server.cli import main
from matcher.errors import InputError
from matcher_client import api
from matcher_client.audit import GrpcLogSource, verify
from tests.conftest import exact_policy, ground_truth, phone, wait_until

AB, ABC = ("a", "b"), ("a", "b", "c")


def _import(db, path, members: dict[str, int], segments, *flags: str) -> dict:
    """Write ``members`` (phone -> bits over a, b, c) as a CSV with the columns ``segments``, in that
    order, and import it through the CLI."""
    lines = ["phone," + ",".join(segments)]
    lines += [f"{m}," + ",".join("yes" if bits >> ABC.index(s) & 1 else "no" for s in segments)
              for m, bits in members.items()]
    path.write_text("\n".join(lines) + "\n")
    result = CliRunner().invoke(main, ["audience", "import", "--db", str(db), str(path), "--id-column", "phone",
                                       "--id-type", "phone", "--segments", ",".join(segments), "--executor", "inline",
                                       "--json", *flags], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout[result.stdout.index("{"):])


def _two_imports(operator, tmp_path, rng):
    """200 members with a, b; then 150 of them again with a, b and a new c (50 left out: not in c).
    Returns (members before, members after) as phone -> bits over a, b, c."""
    first = {phone(i): rng.getrandbits(2) for i in range(200)}
    _import(operator.db, tmp_path / "one.csv", first, AB)
    second = {m: bits | rng.getrandbits(1) << 2 for m, bits in list(first.items())[50:]}
    second[phone(60)] ^= 0b01  # one member also moves out of (or into) a
    return first, second


@pytest.mark.parametrize("mode", ["balanced", "unbalanced"])
def test_a_new_segment_is_counted_exactly_on_the_same_database(operator, serve, tmp_path, mode):
    rng = random.Random(17)
    first, second = _two_imports(operator, tmp_path, rng)
    exact_policy(operator.store)
    token = operator.token("merchant", "shop")
    auditor = operator.token("auditor", "watch")
    served = serve(stream_slots=1 if mode == "balanced" else 0)
    customers = [(phone(i), rng.choice(["x", "y"])) for i in range(100, 260)]
    if mode == "balanced":  # a precomputed stream of the old audience exists when the column arrives
        assert wait_until(lambda: operator.store.stream_slots(operator.store.load_audience().version) >= 1)
    before = api.match(served.address, token, rows=customers, id_type="phone", mode=mode)
    assert before["labels"] == ground_truth(first, customers, segments=AB)

    summary = _import(operator.db, tmp_path / "two.csv", second, ("c", "a", "b"))  # any order: c is added last
    assert summary["segments"] == list(ABC)
    now = {**first, **second}
    assert operator.store.audience_info()["segments"] == list(ABC)
    after = api.match(served.address, token, rows=customers, id_type="phone", mode=mode)
    truth = ground_truth(now, customers, segments=ABC)
    assert after["labels"] == truth
    assert any(cell["segments"]["c"] for cell in truth.values())  # c is not trivially all zero
    only_c = api.match(served.address, token, rows=customers, id_type="phone", mode=mode, segments=["c"])
    assert {label: cell["segments"] for label, cell in only_c["labels"].items()} == \
        {label: {"c": cell["segments"]["c"]} for label, cell in truth.items()}

    with GrpcLogSource(served.address, auditor) as source:
        audit = verify(source)
    assert audit.warnings == []
    assert audit.state.entry_types["audience_segments"] == 2  # the first import (a, b), then c
    entries = [json.loads(data) for _, data in operator.store.log_entries(0, operator.store.log_size())]
    added = [e for e in entries if e["type"] == "audience_segments"]
    assert [(e["segments"], e["added"], e["removed"]) for e in added] == [(list(AB), list(AB), []),
                                                                           (list(ABC), ["c"], [])]
    assert added[1]["audience_version"] == operator.store.get_meta("audience_version")


def test_a_new_column_nobody_holds_still_changes_the_audience(operator, tmp_path):
    """No row changes (c is "no" for all): the audience's segments and version change anyway, so no
    cached audience or precomputed stream of the old layout is used."""
    members = {phone(i): i % 4 for i in range(30)}
    _import(operator.db, tmp_path / "one.csv", members, AB)
    version = operator.store.get_meta("audience_version")
    assert operator.store.load_audience().segments == AB
    summary = _import(operator.db, tmp_path / "two.csv", members, ABC)
    assert summary["unchanged"] == 30
    assert operator.store.get_meta("audience_version") != version
    assert operator.store.load_audience().segments == ABC


def test_leaving_out_a_segment_is_refused_and_changes_nothing(operator, tmp_path):
    members = {phone(i): i % 4 for i in range(30)}
    _import(operator.db, tmp_path / "one.csv", members, AB)
    (tmp_path / "a.csv").write_text("phone,a\n" + "".join(f"{m},yes\n" for m in members))
    result = CliRunner().invoke(main, ["audience", "import", "--db", str(operator.db), str(tmp_path / "a.csv"),
                                       "--id-column", "phone", "--id-type", "phone", "--segments", "a"])
    assert result.exit_code == 1
    assert "error: the audience has segment b, which this import does not list" in result.output
    assert "--drop-segment b" in result.output and "Traceback" not in result.output
    assert operator.store.audience_info()["segments"] == list(AB)
    with pytest.raises(InputError, match="--drop-segment a"):
        operator.store.segments_after_import(["b"])
    with pytest.raises(InputError, match="cannot drop z"):
        operator.store.segments_after_import(["a", "b"], drop=["z"])


def test_drop_segment_removes_it_and_unbalanced_copies_stay_exact(operator, serve, tmp_path):
    """a, b, c with stored copies of every stream; then b is dropped (c moves down a bit): the copy of
    c is made again, a's and the whole audience's are kept, and every count stays exact."""
    from matcher.server import unbalanced

    rng = random.Random(23)
    members = {phone(i): rng.getrandbits(3) for i in range(200)}
    _import(operator.db, tmp_path / "one.csv", members, ABC)
    exact_policy(operator.store)
    token = operator.token("merchant", "shop")
    served = serve()
    customers = [(phone(i), "all") for i in range(100, 260)]
    before = api.match(served.address, token, rows=customers, id_type="phone", mode="unbalanced")
    assert before["labels"] == ground_truth(members, customers, segments=ABC)
    shop = operator.store.principal("merchant", "shop").id
    kept = {s: unbalanced.enrollment(operator.store, shop, s) for s in ("", "a")}

    later = {m: bits ^ (0b100 if i % 3 == 0 else 0) for i, (m, bits) in enumerate(list(members.items())[:120])}
    summary = _import(operator.db, tmp_path / "two.csv", later, ("a", "c"), "--drop-segment", "b")
    assert summary["segments"] == ["a", "c"]
    assert [unbalanced.enrollment(operator.store, shop, s) for s in ("b", "c")] == [None, None]
    assert {s: unbalanced.enrollment(operator.store, shop, s).id for s in kept} == {s: e.id for s, e in kept.items()}
    now = {m: (bits & 1) | (bits >> 2 & 1) << 1 for m, bits in {**members, **later}.items()}  # over a, c
    after = api.match(served.address, token, rows=customers, id_type="phone", mode="unbalanced")
    assert after["labels"] == ground_truth(now, customers, segments=("a", "c"))
    entries = [json.loads(data) for _, data in operator.store.log_entries(0, operator.store.log_size())]
    assert [e for e in entries if e["type"] == "audience_segments"][-1]["removed"] == ["b"]
