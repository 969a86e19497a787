"""Bad clients and bad files: each gets a clear error, and nothing stored changes."""

from __future__ import annotations

import json

import grpc
import pytest

from matcher.crypto import group
from matcher.errors import AuthenticationError, InputError, NotFound
from matcher.protocol.messages import MAX_CHUNK_ELEMENTS
from matcher.v1 import match_pb2, match_pb2_grpc
from matcher_client import api
from tests.conftest import exact_policy, phone, wait_until


@pytest.fixture
def ready(operator, serve):
    operator.add_members({phone(i): 1 for i in range(40)})
    exact_policy(operator.store)
    token = operator.token("merchant", "shop")
    served = serve()
    return operator, served.address, token


def snapshot(store) -> dict:
    """Everything a bad call must leave untouched (the audit log may grow by a 'failed' entry)."""
    db = store.db
    return {
        "audience": db.execute("SELECT count(*), total(segments) FROM audience").fetchone(),
        "principals": db.execute("SELECT count(*) FROM principals").fetchone(),
        "committed": db.execute("SELECT count(*) FROM budget WHERE state IN ('reserved', 'committed')").fetchone(),
        "released": db.execute("SELECT count(*) FROM jobs WHERE state = 'released'").fetchone(),
    }


def raw_match(address: str, token: str | None, requests: list, rpc: str = "Count") -> list:
    """A raw call of the secure protocol (``Count``), or of another MatchService stream RPC."""
    with grpc.insecure_channel(address) as chan:
        stub = match_pb2_grpc.MatchServiceStub(chan)
        metadata = [("authorization", f"Bearer {token}")] if token is not None else None
        return list(getattr(stub, rpc)(iter(requests), metadata=metadata, timeout=30))


def budget_states(store) -> list[tuple[str]]:
    return store.db.execute("SELECT state FROM budget").fetchall()


def start_request(size: int, base: bytes | None = None) -> match_pb2.MatchRequest:
    return match_pb2.MatchRequest(start=match_pb2.JobStart(
        protocol_version=1, id_kind="phone", labels=["all"], label_sizes=[size],
        merchant_base=base or group.base_mult(group.random_scalar())))


def valid_points(n: int) -> bytes:
    return group.blind(group.random_scalar(), group.hash_to_curve_batch([phone(i).encode() for i in range(n)],
                                                                        group.dst_for("phone")))


@pytest.mark.parametrize("token", [None, "mt_wrong", ""])
def test_missing_or_wrong_token_is_unauthenticated_without_detail(ready, token):
    operator, address, _ = ready
    before = snapshot(operator.store)
    with pytest.raises(grpc.RpcError) as err:
        raw_match(address, token, [start_request(20)])
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert err.value.details() == "authentication required"
    assert snapshot(operator.store) == before


def test_client_api_maps_wrong_token(ready):
    _, address, _ = ready
    with pytest.raises(AuthenticationError):
        api.match(address, "mt_nope", rows=[(phone(i), None) for i in range(20)], id_type="phone")


def test_auditor_token_cannot_run_jobs(ready):
    operator, address, _ = ready
    auditor = operator.token("auditor", "acme-audit")
    with pytest.raises(grpc.RpcError) as err:
        raw_match(address, auditor, [start_request(20)])
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_every_rpc_has_its_roles_and_a_wrong_role_is_refused_before_the_handler(ready):
    """One table (METHOD_ROLES) decides who may call what; the interceptor enforces it."""
    from matcher.server.service import AUDITOR, MERCHANT, METHOD_ROLES
    from matcher.v1 import audit_pb2, audit_pb2_grpc

    every_rpc = {f"/{d.full_name}/{m.name}" for module, name in ((match_pb2, "MatchService"), (audit_pb2, "AuditService"))
                 for d in [module.DESCRIPTOR.services_by_name[name]] for m in d.methods}
    assert set(METHOD_ROLES) == every_rpc
    assert METHOD_ROLES["/matcher.v1.AuditService/GetEntries"] == (AUDITOR,)
    assert all(roles == (MERCHANT,) for rpc, roles in METHOD_ROLES.items() if "/matcher.v1.MatchService/" in rpc)

    operator, address, merchant = ready
    auditor = operator.token("auditor", "acme-audit")
    with grpc.insecure_channel(address) as chan:
        audit, match = audit_pb2_grpc.AuditServiceStub(chan), match_pb2_grpc.MatchServiceStub(chan)
        as_merchant, as_auditor = [("authorization", f"Bearer {merchant}")], [("authorization", f"Bearer {auditor}")]
        assert audit.GetVerifierKey(audit_pb2.GetVerifierKeyRequest(), metadata=as_merchant).key
        assert audit.GetVerifierKey(audit_pb2.GetVerifierKeyRequest(), metadata=as_auditor).key
        list(audit.GetEntries(audit_pb2.GetEntriesRequest(start=0, end=1), metadata=as_auditor))
        for refused in (lambda: list(audit.GetEntries(audit_pb2.GetEntriesRequest(start=0, end=1), metadata=as_merchant)),
                        lambda: match.GetBudget(match_pb2.GetBudgetRequest(), metadata=as_auditor)):
            with pytest.raises(grpc.RpcError) as err:
                refused()
            assert (err.value.code(), err.value.details()) == (grpc.StatusCode.UNAUTHENTICATED, "authentication required")


def test_truncated_stream_fails_the_job_and_charges_it(ready):
    """Accepted means charged: the acceptance carries the (noisy) stream sizes, so nothing after it
    gives the ε back, and the audit log says so."""
    operator, address, token = ready
    operator.store.set_policy("noise", "discrete_laplace")  # so the job reserves ε
    with pytest.raises(grpc.RpcError) as err:
        raw_match(address, token, [start_request(20),
                                   match_pb2.MatchRequest(blinded=match_pb2.BlindedChunk(points=valid_points(10),
                                                                                         labels=bytes(10)))])
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "stream ended" in err.value.details()
    assert budget_states(operator.store) == [("committed",)]
    store = operator.store
    failed = [json.loads(data) for _, data in store.log_entries(0, store.log_size()) if b'"failed"' in data]
    assert [(e["charged"], e["epsilon_spent"], e["protocol"]) for e in failed] == [(True, 0.1, "secure")]


def test_the_semi_honest_protocol_is_refused_unless_enabled(ready):
    operator, address, token = ready
    operator.store.set_policy("noise", "discrete_laplace")
    before = snapshot(operator.store)
    with pytest.raises(grpc.RpcError) as err:
        raw_match(address, token, [start_request(20)], rpc="Match")
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "semi-honest" in err.value.details()
    assert snapshot(operator.store) == before and budget_states(operator.store) == []


def test_chunk_over_the_limit_is_refused(ready):
    operator, address, token = ready
    before = snapshot(operator.store)
    n = MAX_CHUNK_ELEMENTS + 1
    with pytest.raises(grpc.RpcError) as err:
        raw_match(address, token, [start_request(n),
                                   match_pb2.MatchRequest(blinded=match_pb2.BlindedChunk(points=bytes(32) * n,
                                                                                         labels=bytes(n)))])
    assert err.value.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.RESOURCE_EXHAUSTED)
    assert snapshot(operator.store)["released"] == before["released"]


@pytest.mark.parametrize("garbage", [bytes(32), b"\x01" + bytes(31), b"\xff" * 32, b"\x05" * 31])
def test_garbage_points_are_refused(ready, garbage):
    operator, address, token = ready
    before = snapshot(operator.store)
    points = valid_points(19)
    with pytest.raises(grpc.RpcError) as err:
        raw_match(address, token, [start_request(20),
                                   match_pb2.MatchRequest(blinded=match_pb2.BlindedChunk(points=points + garbage,
                                                                                         labels=bytes(20)))])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert snapshot(operator.store)["released"] == before["released"]


def test_garbage_merchant_base_is_refused_before_acceptance_and_spends_nothing(ready):
    operator, address, token = ready
    operator.store.set_policy("noise", "discrete_laplace")
    with pytest.raises(grpc.RpcError) as err:
        raw_match(address, token, [start_request(20, base=bytes(32))])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert budget_states(operator.store) == [("refunded",)]


def test_label_index_out_of_range_is_refused(ready):
    _, address, token = ready
    with pytest.raises(grpc.RpcError) as err:
        raw_match(address, token, [start_request(20),
                                   match_pb2.MatchRequest(blinded=match_pb2.BlindedChunk(points=valid_points(20),
                                                                                         labels=b"\x03" * 20))])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_another_merchants_job_id_looks_unknown(ready):
    operator, address, token = ready
    report = api.match(address, token, rows=[(phone(i), None) for i in range(20)], id_type="phone")
    other = operator.token("merchant", "rival")
    with grpc.insecure_channel(address) as chan:
        stub = match_pb2_grpc.MatchServiceStub(chan)
        own = stub.GetJob(match_pb2.GetJobRequest(job_id=report["job_id"]),
                          metadata=[("authorization", f"Bearer {token}")])
        assert own.state == "released"
        for job_id in (report["job_id"], "no-such-job"):
            with pytest.raises(grpc.RpcError) as err:
                stub.GetJob(match_pb2.GetJobRequest(job_id=job_id), metadata=[("authorization", f"Bearer {other}")])
            assert err.value.code() == grpc.StatusCode.NOT_FOUND
            assert err.value.details() == f"no job '{job_id}'"


def test_list_below_min_size_is_refused_before_crypto(ready):
    operator, address, token = ready
    operator.store.set_policy("min_list_size", "100")
    before = snapshot(operator.store)
    with pytest.raises(grpc.RpcError) as err:
        raw_match(address, token, [start_request(99)])
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "100" in err.value.details()
    assert snapshot(operator.store) == before


@pytest.mark.parametrize("content, message", [
    (b"", "is empty"),
    (b"mobile,store\n13800000001,a\n", "no column 'phone'"),
    ("phone\n13800000001\n\xb5\xe7\xbb\xb0\n".encode("latin-1"), "not UTF-8"),
])
def test_bad_files_get_a_clear_error(ready, tmp_path, content, message):
    operator, address, token = ready
    before = snapshot(operator.store)
    path = tmp_path / "bad.csv"
    path.write_bytes(content)
    with pytest.raises(InputError, match=message):
        api.match(address, token, str(path), id_column="phone", id_type="phone")
    assert snapshot(operator.store) == before


def test_file_with_only_invalid_rows_is_refused_locally(ready, tmp_path):
    _, address, token = ready
    path = tmp_path / "junk.csv"
    path.write_text("phone\nabc\n\n123\n")
    with pytest.raises(InputError, match="empty"):
        api.match(address, token, str(path), id_column="phone", id_type="phone")


def test_unknown_job_is_not_found_in_client_errors(ready):
    _, address, token = ready
    with grpc.insecure_channel(address) as chan, pytest.raises(grpc.RpcError) as err:
        match_pb2_grpc.MatchServiceStub(chan).GetJob(match_pb2.GetJobRequest(job_id="x"),
                                                     metadata=[("authorization", f"Bearer {token}")])
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert NotFound.grpc_code == "NOT_FOUND"


@pytest.mark.parametrize("how", ["cancel", "deadline"])
def test_client_vanishing_mid_stream_fails_the_job_and_charges_it(operator, serve, how):
    """A merchant that walks away after the audience started streaming (attack 3 of issue 13 drops
    the stream like this): the job ends failed, its ε stays spent, the failure is audited, and the
    server goes on serving."""
    operator.add_members({phone(i): 1 for i in range(8_000)})  # a stream of a few chunks
    exact_policy(operator.store, noise="discrete_laplace")
    token = operator.token("merchant", "shop")
    address = serve().address
    outbox = __import__("queue").Queue()

    def requests():
        while (item := outbox.get()) is not None:
            yield item

    with grpc.insecure_channel(address) as chan:
        stub = match_pb2_grpc.MatchServiceStub(chan)
        call = stub.Count(requests(), metadata=[("authorization", f"Bearer {token}")],
                          timeout=3 if how == "deadline" else 60)
        scalar = group.random_scalar()
        outbox.put(start_request(20, base=group.base_mult(scalar)))
        assert next(call).WhichOneof("msg") == "accepted"
        points = group.blind(scalar, group.hash_to_curve_batch([phone(i).encode() for i in range(20)],
                                                               group.dst_for("phone")))
        outbox.put(match_pb2.MatchRequest(blinded=match_pb2.BlindedChunk(points=points, labels=bytes(20))))
        outbox.put(match_pb2.MatchRequest(list_end=match_pb2.ListEnd(merchant_base=group.base_mult(scalar))))
        assert next(call).WhichOneof("msg") == "audience"
        if how == "cancel":
            call.cancel()
        with pytest.raises(grpc.RpcError) as ended:
            for _ in call:  # the audience streams; the sums never come
                pass
        assert ended.value.code() == (grpc.StatusCode.CANCELLED if how == "cancel" else grpc.StatusCode.DEADLINE_EXCEEDED)
        outbox.put(None)
    store = operator.store
    assert wait_until(lambda: store.db.execute("SELECT state FROM jobs").fetchall() == [("failed",)])
    assert budget_states(store) == [("committed",)]
    assert wait_until(lambda: any(b'"decision":"failed"' in data for _, data in store.log_entries(0, store.log_size())))
    report = api.match(address, token, rows=[(phone(i), None) for i in range(20)], id_type="phone")
    assert report["list_size"] == 20  # and the server still serves


@pytest.mark.parametrize("start, named", [
    (dict(merchant_base=b""), "32-byte point"),
    (dict(merchant_base=bytes(64)), "32-byte point"),
    (dict(label_sizes=[2**64 - 1]), "label sizes"),
    (dict(labels=["a", "b"], label_sizes=[2**63, 2**63]), "label sizes"),
    (dict(labels=["x" * 1000]), "at most 200 characters"),
])
def test_every_start_field_is_validated_at_the_edge_and_nothing_is_stored(ready, start, named):
    """Issue 14, item 6: each bad field gets INVALID_ARGUMENT naming it, never UNKNOWN, and nothing
    reaches the database or the log."""
    operator, address, token = ready
    before = snapshot(operator.store), operator.store.log_size()
    fields = {"protocol_version": 1, "id_kind": "phone", "labels": ["all"], "label_sizes": [20],
              "merchant_base": group.base_mult(group.random_scalar()), **start}
    with pytest.raises(grpc.RpcError) as err:
        raw_match(address, token, [match_pb2.MatchRequest(start=match_pb2.JobStart(**fields))])
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert named in err.value.details()
    assert (snapshot(operator.store), operator.store.log_size()) == before


def test_a_huge_job_id_or_checkpoint_size_gets_a_short_clear_answer(ready):
    from matcher.v1 import audit_pb2, audit_pb2_grpc

    _, address, token = ready
    with grpc.insecure_channel(address) as chan:
        with pytest.raises(grpc.RpcError) as err:
            match_pb2_grpc.MatchServiceStub(chan).GetJob(match_pb2.GetJobRequest(job_id="j" * 100_000),
                                                         metadata=[("authorization", f"Bearer {token}")])
        assert err.value.code() == grpc.StatusCode.NOT_FOUND and len(err.value.details()) < 100
        listed = list(audit_pb2_grpc.AuditServiceStub(chan).ListCheckpoints(
            audit_pb2.ListCheckpointsRequest(min_size=2**64 - 1), metadata=[("authorization", f"Bearer {token}")]))
        assert listed == []
