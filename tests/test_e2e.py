"""End to end over real gRPC on 127.0.0.1 against a real SQLite file: counts equal the plaintext truth."""

from __future__ import annotations

import json
import random

import pytest

from matcher_client import api
from tests.conftest import SEGMENTS, exact_policy, ground_truth, phone

MESSY = [
    lambda n: n,                                                      # +8613800000001
    lambda n: f"{n[3:6]} {n[6:10]} {n[10:]}",                         # 138 0000 0001
    lambda n: f"+86 {n[3:6]}-{n[6:10]}-{n[10:]}",                     # +86 138-0000-0001
    lambda n: f"0086{n[3:]}",                                         # 008613800000001
    lambda n: f"(+86){n[3:]}",
]


@pytest.mark.parametrize("dummies", ["off", "on"])
def test_report_equals_ground_truth_with_labels_and_messy_rows(operator, serve, tmp_path, dummies):
    members, token = operator.seed(400, random.Random(7), dummies=dummies)
    rng = random.Random(8)
    # 150 customers on the platform, 90 not; two stores; each written in a random messy format.
    customers = [(phone(i), rng.choice(["north", "south"])) for i in range(250, 400)]
    customers += [(phone(10_000 + i), rng.choice(["north", "south"])) for i in range(90)]
    lines = ["phone,store"] + [f"\"{rng.choice(MESSY)(n)}\",{label}" for n, label in customers]
    lines += ["not a phone,north", ",south", "12345,north"]            # invalid rows
    lines += [f"{customers[0][0][3:]},{customers[0][1]}"]               # a duplicate in another format
    csv_path = tmp_path / "customers.csv"
    csv_path.write_text("\n".join(lines) + "\n")

    served = serve()
    report = api.match(served.address, token, str(csv_path), id_column="phone", id_type="phone",
                       label_column="store")

    truth = ground_truth(members, customers)
    assert report["labels"] == truth
    assert report["list_size"] == len(customers)
    assert report["duplicates"] == 1
    assert report["invalid"] == {"invalid_phone": 2, "empty": 1}
    assert report["leaf_index"] >= 0 and report["checkpoint"].startswith("matcher.test\n")


def test_without_label_column_the_one_label_is_all(operator, serve):
    members, token = operator.seed(60, random.Random(3))
    rows = [(phone(i), None) for i in range(30, 90)]
    report = api.match(serve().address, token, rows=rows, id_type="phone")
    assert list(report["labels"]) == ["all"]
    assert report["labels"]["all"] == ground_truth(members, [(n, "all") for n, _ in rows])["all"]


def test_empty_and_full_intersection(operator, serve):
    members = {phone(i): 0b10101 for i in range(50)}
    operator.add_members(members)
    exact_policy(operator.store)
    token = operator.token("merchant", "shop")
    served = serve()
    none = api.match(served.address, token, rows=[(phone(1000 + i), None) for i in range(20)], id_type="phone")
    assert none["labels"]["all"]["matched"] == 0
    assert set(none["labels"]["all"]["segments"].values()) == {0}
    full = api.match(served.address, token, rows=[(n, None) for n in members], id_type="phone")
    assert full["labels"]["all"]["matched"] == 50
    assert full["labels"]["all"]["segments"] == {"member": 50, "paid_with_platform": 0, "visited_shop_page": 50,
                                                 "favourited_mini_program": 0, "holds_coupon": 50}


def test_threshold_suppresses_small_cells_end_to_end(operator, serve):
    members = {phone(i): (1 if i < 9 else 0) | (2 if i < 10 else 0) for i in range(40)}
    operator.add_members(members)
    exact_policy(operator.store, k="10")
    token = operator.token("merchant", "shop")
    report = api.match(serve().address, token, rows=[(n, None) for n in members], id_type="phone")
    cells = report["labels"]["all"]
    assert cells["matched"] == 40
    assert cells["segments"]["member"] is None          # true count 9 = k - 1
    assert cells["segments"]["paid_with_platform"] == 10  # true count 10 = k
    assert cells["segments"]["holds_coupon"] is None      # 0


def test_server_restart_keeps_audience_merchants_and_keys(operator, serve):
    members = {phone(i): 1 for i in range(30)}
    operator.add_members(members)
    exact_policy(operator.store)
    token = operator.token("merchant", "shop")
    rows = [(n, None) for n in list(members)[:20]] + [(phone(500 + i), None) for i in range(5)]
    first = serve()
    before = api.match(first.address, token, rows=rows, id_type="phone")
    first.server.stop(grace=1)
    second = serve()
    after = api.match(second.address, token, rows=rows, id_type="phone")
    assert before["labels"] == after["labels"] == {"all": {"matched": 20, "segments": {
        "member": 20, "paid_with_platform": 0, "visited_shop_page": 0, "favourited_mini_program": 0,
        "holds_coupon": 0}}}
    assert after["leaf_index"] > before["leaf_index"]


def test_process_pool_gives_the_same_counts(operator, serve):
    """The server's crypto on a process pool (as `matcher serve` runs it) against the same ground truth."""
    members, token = operator.seed(6_000, random.Random(11))
    rng = random.Random(12)
    customers = [(phone(i), rng.choice("ab")) for i in range(3_000, 9_000)]
    report = api.match(serve(parallel=True).address, token, rows=customers, id_type="phone")
    assert report["labels"] == ground_truth(members, customers)


def test_merchant_hash_cache_gives_the_same_report_and_skips_rehashing(operator, serve, tmp_path):
    from matcher.crypto.kernels import Kernels
    from matcher_client.hash_cache import CachingKernels, HashCache

    members = {phone(i): i % 4 for i in range(80)}
    operator.add_members(members)
    exact_policy(operator.store)
    token = operator.token("merchant", "shop")
    rows = [(phone(i), None) for i in range(40, 120)]
    served = serve()
    cache_path = tmp_path / "hashes.cache"
    first = api.match(served.address, token, rows=rows, id_type="phone", cache=str(cache_path))
    assert oct(cache_path.stat().st_mode & 0o777) == "0o600"
    counting = CachingKernels(Kernels(), HashCache(cache_path))
    second = api.match(served.address, token, rows=rows, id_type="phone", kernels=counting)
    assert (counting.hits, counting.misses) == (80, 0)
    assert first["labels"] == second["labels"] == ground_truth(members, [(n, "all") for n, _ in rows])


def test_merchant_cli_prints_a_table_and_writes_the_stable_report_json(operator, serve, tmp_path):
    from click.testing import CliRunner

    from matcher_client.cli import main as client_cli

    members = {phone(i): 0b11 for i in range(40)}
    operator.add_members(members)
    exact_policy(operator.store)
    token = operator.token("merchant", "shop")
    csv_path = tmp_path / "list.csv"
    csv_path.write_text("phone,store\n" + "".join(f"{phone(i)[3:]},{'a' if i % 2 else 'b'}\n" for i in range(20, 60))
                        + "oops,a\n")
    out = tmp_path / "report.json"
    result = CliRunner().invoke(client_cli, ["match", "--server", serve().address, "--token", token, str(csv_path),
                                             "--id-column", "phone", "--id-type", "phone", "--label-column", "store",
                                             "--json", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    # The public report interface (design.md): these keys, with these meanings.
    assert {"job_id", "list_size", "invalid", "duplicates", "labels", "epsilon_spent", "epsilon_left",
            "checkpoint", "leaf_index"} <= set(report)
    assert report["invalid"] == {"invalid_phone": 1} and report["list_size"] == 40
    assert report["labels"]["a"]["matched"] == 10 and report["labels"]["b"]["segments"]["member"] == 10
    assert "matched" in result.output and "paid_with_platform" in result.output  # the table


def test_concurrent_jobs_and_audit_reads_on_one_server(operator, serve):
    """Three merchants at once while an auditor verifies: every report equals its ground truth."""
    from concurrent.futures import ThreadPoolExecutor

    from matcher_client import audit

    rng = random.Random(31)
    members = {phone(i): rng.getrandbits(len(SEGMENTS)) for i in range(600)}
    operator.add_members(members)
    exact_policy(operator.store)
    tokens = [operator.token("merchant", f"shop{i}") for i in range(3)]
    auditor = operator.token("auditor", "audit")
    lists = [[(phone(i), "all") for i in range(k * 150, k * 150 + 400)] for k in range(3)]
    served = serve()
    with ThreadPoolExecutor(4) as pool:
        jobs = [pool.submit(api.match, served.address, t, rows=rows, id_type="phone") for t, rows in zip(tokens, lists)]
        verifications = [pool.submit(audit.verify, audit.GrpcLogSource(served.address, auditor)) for _ in range(3)]
        reports = [j.result() for j in jobs]
        for v in verifications:
            v.result()
    for report, rows in zip(reports, lists):
        assert report["labels"] == ground_truth(members, rows)
    final = audit.verify(audit.GrpcLogSource(served.address, auditor))
    assert final.jobs["released"] == 3
