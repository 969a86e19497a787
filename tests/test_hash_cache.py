"""The merchant's hash cache returns exactly what hashing returns, and never another DST's points."""

from __future__ import annotations

import hashlib

from matcher.crypto import group
from matcher.crypto.kernels import Kernels
from matcher_client.hash_cache import CachingKernels, HashCache


def keys(lo: int, hi: int) -> list[bytes]:
    return [hashlib.sha256(str(i).encode()).hexdigest().encode() for i in range(lo, hi)]


def test_mixed_hits_and_misses_equal_direct_hashing(tmp_path):
    dst = group.dst_for("phone")
    path = tmp_path / "cache"
    with CachingKernels(Kernels(), HashCache(path)) as kernels:
        kernels.hash_to_curve(keys(0, 300), dst)
    cache = HashCache(path)
    mixed = keys(150, 450)[::-1]  # half cached, half not, out of order
    with CachingKernels(Kernels(), cache) as kernels:
        assert kernels.hash_to_curve(mixed, dst) == group.hash_to_curve_batch(mixed, dst)
    assert (kernels.hits, kernels.misses) == (150, 150)
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_another_dst_never_reads_the_cached_points(tmp_path):
    path = tmp_path / "cache"
    with CachingKernels(Kernels(), HashCache(path)) as kernels:
        kernels.hash_to_curve(keys(0, 50), group.dst_for("phone"))
    cache = HashCache(path)
    with CachingKernels(Kernels(), cache) as kernels:
        email = kernels.hash_to_curve(keys(0, 50), group.dst_for("email"))
    assert email == group.hash_to_curve_batch(keys(0, 50), group.dst_for("email"))
    assert kernels.hits == 0


def test_a_list_that_comes_back_with_new_rows_hashes_only_those(operator, serve, tmp_path, monkeypatch):
    """The CLI's default cache is the merchant's own (not one per file): next month's file, with 2%
    new rows and in another order, hashes only the new rows and says so in its progress output."""
    import json

    from click.testing import CliRunner

    from matcher_client.cli import main
    from tests.conftest import exact_policy, ground_truth, phone

    monkeypatch.setenv("MATCHER_CLIENT_HOME", str(tmp_path / "home"))
    members = {phone(i): i % 4 for i in range(300)}
    operator.add_members(members)
    exact_policy(operator.store)
    token = operator.token("merchant", "shop")
    served = serve()

    def run(name: str, customers: list[str]) -> tuple[dict, dict]:
        path = tmp_path / name
        path.write_text("phone\n" + "".join(f"{c}\n" for c in customers))
        result = CliRunner().invoke(main, ["match", "--server", served.address, "--token", token, str(path),
                                           "--id-column", "phone", "--id-type", "phone", "--json", "-"],
                                    catch_exceptions=False)
        assert result.exit_code == 0, result.output
        progress = {line["phase"]: line for line in map(json.loads, (
            text for text in result.stderr.splitlines() if text.startswith("{")))}
        return json.loads(result.stdout), progress

    march = [phone(i) for i in range(100, 350)]
    report, progress = run("march.csv", march)
    assert progress["from the hash cache"]["done"] == 0
    april = [phone(i) for i in range(355, 350, -1)] + march[::-1]   # 5 new rows (2%), another order
    report, progress = run("april.csv", april)
    assert (progress["from the hash cache"]["done"], progress["from the hash cache"]["total"]) == (250, 255)
    assert report["labels"] == ground_truth(members, [(c, "all") for c in april])
    files = list((tmp_path / "home" / "hash-cache").iterdir())
    assert len(files) == 1 and oct(files[0].stat().st_mode & 0o777) == "0o600"
