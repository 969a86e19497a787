"""The Dask executor gives byte-identical kernels and the same job results as the local pool."""

from __future__ import annotations

import random

import pytest

distributed = pytest.importorskip("distributed")

from matcher.crypto import group  # noqa: E402
from matcher.crypto.kernels import DaskKernels, EncryptionContext, Kernels, PoolKernels  # noqa: E402
from matcher_client import api  # noqa: E402
from tests.conftest import ground_truth, phone, test_private_key, wait_until  # noqa: E402


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  silence_logs=50) as local, distributed.Client(local) as client:
        yield client


def test_kernels_identical_to_local_pool(cluster):
    msgs = [phone(i).encode() for i in range(6_000)]
    dst = group.dst_for("phone")
    scalar = group.random_scalar()
    with PoolKernels(workers=2) as pool:
        dask = DaskKernels(cluster)
        hashed = pool.hash_to_curve(msgs, dst)
        assert dask.hash_to_curve(msgs, dst) == hashed == Kernels().hash_to_curve(msgs, dst)
        assert dask.blind(scalar, hashed) == pool.blind(scalar, hashed)
    key = test_private_key()
    plaintexts = list(range(600))
    ciphertexts = DaskKernels(cluster).submit_encrypt(EncryptionContext(key), plaintexts).result()
    size = key.public_key.ciphertext_size
    assert [key.decrypt(int.from_bytes(ciphertexts[i:i + size], "big")) for i in range(0, len(ciphertexts), size)] \
        == plaintexts


def test_job_on_the_cluster_equals_ground_truth(operator, serve, cluster):
    members, token = operator.seed(5_000, random.Random(17))
    rng = random.Random(18)
    customers = [(phone(i), rng.choice("xy")) for i in range(2_500, 7_500)]
    report = api.match(serve(kernels=DaskKernels(cluster)).address, token, rows=customers, id_type="phone")
    assert report["labels"] == ground_truth(members, customers)


def test_precomputed_stream_and_count_only_on_the_cluster(operator, serve, cluster):
    """The idle precomputation (b·H(y) and every member's ciphertext) runs on the cluster too."""
    members, token = operator.seed(3_000, random.Random(19))
    served = serve(kernels=DaskKernels(cluster), stream_slots=1)
    version = operator.store.load_audience().version
    assert wait_until(lambda: operator.store.stream_slots(version) == 1)
    customers = [(phone(i), "all") for i in range(1_500, 4_500)]
    report = api.match(served.address, token, rows=customers, id_type="phone")
    assert report["labels"] == ground_truth(members, customers)
    counted = api.match(served.address, token, rows=customers, id_type="phone", count_only=True)
    assert counted["labels"] == {"all": {"matched": 1_500, "segments": {}}}


def test_unbalanced_jobs_and_an_import_on_the_cluster(operator, serve, cluster, tmp_path):
    """Unbalanced mode's per-job work (list copies, the delta, taking c off) and an import's hashing
    run on the cluster; counts stay exact across an import that changes members."""
    from matcher.server.audience import import_file

    members, token = operator.seed(2_000, random.Random(21), protocol="unbalanced")
    served = serve(kernels=DaskKernels(cluster))
    customers = [(phone(i), "all") for i in range(1_000, 3_000)]
    assert api.match(served.address, token, rows=customers, id_type="phone")["labels"] == \
        ground_truth(members, customers)
    changes = tmp_path / "changes.csv"
    names = ",".join(operator.segments)
    changes.write_text(f"phone,{names}\n" + "".join(
        f"{phone(i)},{','.join('1' for _ in operator.segments)}\n" for i in range(1_900, 2_100)))
    import_file(operator.store, str(changes), id_column="phone", id_type="phone", segments=operator.segments,
                kernels=DaskKernels(cluster))
    members.update({phone(i): 2 ** len(operator.segments) - 1 for i in range(1_900, 2_100)})
    report = api.match(served.address, token, rows=customers, id_type="phone")
    assert report["protocol"] == "unbalanced"
    assert report["labels"] == ground_truth(members, customers)
