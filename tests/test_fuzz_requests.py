"""Every field of every job-stream request, fuzzed over real gRPC (issue 14): whatever arrives, the
server answers with a documented status and a short text — never UNKNOWN or INTERNAL — and keeps
serving."""

from __future__ import annotations

import random

import grpc
import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, given, settings

from matcher.crypto import group
from matcher.v1 import match_pb2, match_pb2_grpc
from tests.conftest import phone

DOCUMENTED = {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION,
              grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.NOT_FOUND,
              grpc.StatusCode.OK}
POINT = group.base_mult(group.random_scalar())
counts = st.one_of(st.integers(0, 40), st.sampled_from([2**31, 2**32 - 1, 2**63, 2**64 - 1]))
points = st.one_of(st.just(POINT), st.binary(max_size=70), st.just(POINT * 3), st.just(bytes(32)),
                   st.just(b"\xff" * 32))
names = st.one_of(st.sampled_from(["all", "a", "b", "", "member", "phone"]), st.text(max_size=300))


def starts():
    return st.builds(match_pb2.JobStart, protocol_version=st.sampled_from([0, 1, 2, 2**32 - 1]),
                     id_kind=st.one_of(st.just("phone"), names), labels=st.lists(names, max_size=4),
                     label_sizes=st.lists(counts, max_size=4), merchant_base=points,
                     segments=st.lists(names, max_size=3), all_segments=st.booleans())


def requests():
    streams = st.one_of(st.integers(0, 3), st.just(2**32 - 1))
    return st.one_of(
        st.builds(lambda s: match_pb2.MatchRequest(start=s), starts()),
        st.builds(lambda p, lab, s: match_pb2.MatchRequest(blinded=match_pb2.BlindedChunk(points=p, labels=lab, stream=s)),
                  points, st.binary(max_size=4), streams),
        st.builds(lambda b, s: match_pb2.MatchRequest(list_end=match_pb2.ListEnd(merchant_base=b, stream=s)), points,
                  streams),
        st.builds(lambda p, s: match_pb2.MatchRequest(returned=match_pb2.StreamValues(points=p, stream=s)), points,
                  streams),
        st.builds(lambda s: match_pb2.MatchRequest(returned_end=match_pb2.ListEnd(stream=s)), streams),
        st.just(match_pb2.MatchRequest()),
    )


@pytest.fixture(scope="module")
def fuzz_target(tmp_path_factory):
    """One real server for the whole fuzz run (a server per example would dominate the time)."""
    from matcher.server.app import ServerConfig, build_server
    from tests.conftest import exact_policy, new_operator

    db = tmp_path_factory.mktemp("fuzz") / "op.db"
    operator = new_operator(db)
    store = operator.store
    operator.add_members({phone(i): random.Random(i).getrandbits(5) for i in range(30)})
    exact_policy(store, jobs_per_hour="100000", audit_rows="4")
    token = operator.token("merchant", "fuzzer")
    auditor = operator.token("auditor", "fuzz-auditor")
    server, port = build_server(ServerConfig(db=db, listen="127.0.0.1:0", parallel=False, streams_per_merchant=64,
                                             idle_timeout=30))
    server.start()
    yield f"127.0.0.1:{port}", token, auditor
    server.stop(grace=1)
    store.close()


VALID_START = match_pb2.MatchRequest(start=match_pb2.JobStart(
    protocol_version=1, id_kind="phone", labels=["all"], label_sizes=[20], merchant_base=POINT, all_segments=True))
VALID_CHUNK = match_pb2.MatchRequest(blinded=match_pb2.BlindedChunk(
    points=group.blind(group.random_scalar(), group.hash_to_curve_batch([phone(i).encode() for i in range(20)],
                                                                        group.dst_for("phone"))), labels=bytes(20)))
# Half the sequences open a valid job (and often send a valid list) before the fuzz, to reach
# the later stages: the list end, the streams, the returns.
sequences = st.one_of(
    st.lists(requests(), min_size=1, max_size=6),
    st.builds(lambda valid_list, rest: [VALID_START] + ([VALID_CHUNK] if valid_list else []) + rest,
              st.booleans(), st.lists(requests(), max_size=5)))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(sequence=sequences, rpc=st.sampled_from(["Count", "Activate", "Match"]))
def test_any_request_sequence_gets_a_documented_status(fuzz_target, sequence, rpc):
    address, token, _ = fuzz_target
    if rpc == "Activate" and sequence[0].WhichOneof("msg") == "start":
        sequence[0] = match_pb2.MatchRequest(activation=match_pb2.ActivationStart(job=sequence[0].start, name="x",
                                                                                  where="member"))
    with grpc.insecure_channel(address) as chan:
        call = getattr(match_pb2_grpc.MatchServiceStub(chan), rpc)(iter(sequence),
                                                                   metadata=[("authorization", f"Bearer {token}")],
                                                                   timeout=20)
        try:
            for _ in call:
                pass
            code = grpc.StatusCode.OK
        except grpc.RpcError as err:
            code, details = err.code(), err.details() or ""
            assert code in DOCUMENTED, (code, details)
            assert len(details) < 2_000
    assert code in DOCUMENTED


big = st.one_of(st.integers(0, 50), st.sampled_from([2**31, 2**32, 2**63 - 1, 2**63, 2**64 - 1]))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                  HealthCheck.function_scoped_fixture])
@given(call=st.sampled_from(["GetEntries", "GetInclusionProof", "GetConsistencyProof", "ListCheckpoints"]),
       a=big, b=big)
def test_audit_calls_with_any_numbers_get_a_documented_status(fuzz_target, call, a, b):
    from matcher.v1 import audit_pb2, audit_pb2_grpc

    address, merchant, auditor = fuzz_target
    token = auditor if call == "GetEntries" else merchant  # merchants may not read entries
    request = {"GetEntries": lambda: audit_pb2.GetEntriesRequest(start=a, end=b),
               "GetInclusionProof": lambda: audit_pb2.InclusionProofRequest(index=a, tree_size=b),
               "GetConsistencyProof": lambda: audit_pb2.ConsistencyProofRequest(old_size=a, new_size=b),
               "ListCheckpoints": lambda: audit_pb2.ListCheckpointsRequest(min_size=a)}[call]()
    with grpc.insecure_channel(address) as chan:
        method = getattr(audit_pb2_grpc.AuditServiceStub(chan), call)
        try:
            answer = method(request, metadata=[("authorization", f"Bearer {token}")], timeout=20)
            if call in ("GetEntries", "ListCheckpoints"):
                list(answer)
        except grpc.RpcError as err:
            assert err.code() in DOCUMENTED, (err.code(), err.details())
            assert len(err.details() or "") < 2_000
