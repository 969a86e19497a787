"""One merchant cannot block the server (issue 14, item 3): job streams per merchant are capped,
streams that send nothing are cancelled (their job fails, logged, its slot freed), health and the
read-only calls keep answering, and the client retries a busy server with backoff."""

from __future__ import annotations

import json
import queue
import random
import threading
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from matcher.crypto import group
from matcher.v1 import match_pb2, match_pb2_grpc
from matcher_client import api
from tests.conftest import ground_truth, phone, wait_until


def stalled_stream(address: str, token: str, *, send_start: bool):
    """A job stream that (optionally) opens a job and then sends nothing; returns (call, outbox)."""
    outbox: queue.Queue = queue.Queue()

    def requests():
        while (item := outbox.get()) is not None:
            yield item

    chan = grpc.insecure_channel(address)
    call = match_pb2_grpc.MatchServiceStub(chan).Count(requests(), metadata=[("authorization", f"Bearer {token}")],
                                                      timeout=120)
    if send_start:
        outbox.put(match_pb2.MatchRequest(start=match_pb2.JobStart(
            protocol_version=1, id_kind="phone", labels=["all"], label_sizes=[20],
            merchant_base=group.base_mult(group.random_scalar()))))
    return call, outbox, chan


def healthy(address: str) -> bool:
    with grpc.insecure_channel(address) as chan:
        reply = health_pb2_grpc.HealthStub(chan).Check(health_pb2.HealthCheckRequest(), timeout=5)
        return reply.status == health_pb2.HealthCheckResponse.SERVING


def test_stalled_streams_of_one_merchant_block_neither_others_nor_health(operator, serve):
    members, mallory = operator.seed(300, random.Random(1))
    honest = operator.token("merchant", "honest")
    address = serve(idle_timeout=2.0, streams_per_merchant=2).address
    stalls = [stalled_stream(address, mallory, send_start=i == 0) for i in range(2)]
    time.sleep(0.3)  # both streams are open on the server
    # A third stream of the same merchant is refused at once, with a retry hint; nothing is charged.
    third, outbox, chan = stalled_stream(address, mallory, send_start=False)
    with pytest.raises(grpc.RpcError) as refused:
        next(third)
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "retry" in refused.value.details()
    outbox.put(None)
    chan.close()
    # Another merchant's job, health and the budget call all go through meanwhile.
    assert healthy(address)
    customers = [(phone(i), "all") for i in range(100, 400)]
    assert api.match(address, honest, rows=customers, id_type="phone")["labels"] == ground_truth(members, customers)
    assert api.budget(address, honest)["epsilon_left"] >= 0
    # The stalled streams are cancelled after the idle timeout; the one that opened a job fails it, logged.
    store = operator.store
    assert wait_until(lambda: store.db.execute("SELECT state FROM jobs j JOIN principals p ON p.id = j.merchant_id "
                                               "WHERE p.name = 'shop'").fetchall() == [("failed",)], timeout=20)
    entries = [json.loads(data) for _, data in store.log_entries(0, store.log_size())]
    assert [e["decision"] for e in entries if e.get("merchant") == "shop"] == ["failed"]
    for call, outbox, chan in stalls:
        with pytest.raises(grpc.RpcError) as ended:
            for _ in call:
                pass
        assert ended.value.code() == grpc.StatusCode.CANCELLED
        outbox.put(None)
        chan.close()
    # ... after which the merchant may run a job again.
    assert api.match(address, mallory, rows=customers, id_type="phone")["labels"] == ground_truth(members, customers)


def test_the_client_retries_a_busy_server_until_a_slot_frees(operator, serve):
    members, token = operator.seed(300, random.Random(2))
    holder = operator.token("merchant", "holder")
    address = serve(idle_timeout=1.5, max_concurrent_jobs=1).address
    call, outbox, chan = stalled_stream(address, holder, send_start=True)  # holds the only job slot
    assert next(call).WhichOneof("msg") == "accepted"
    waited = []
    customers = [(phone(i), "all") for i in range(100, 400)]
    report = api.match(address, token, rows=customers, id_type="phone",
                       progress=lambda phase, done, total: waited.append(phase) if phase.startswith("waiting") else None)
    assert report["labels"] == ground_truth(members, customers)
    assert waited  # it was refused as busy at least once, and retried
    outbox.put(None)
    chan.close()


def test_budget_refusals_are_not_retried(operator, serve):
    operator.seed(300, random.Random(3), noise="discrete_laplace", epsilon_budget="0.1", epsilon_per_job="0.1")
    token = operator.token("merchant", "poor")
    address = serve().address
    customers = [(phone(i), "all") for i in range(100, 400)]
    api.match(address, token, rows=customers, id_type="phone")
    started = time.monotonic()
    with pytest.raises(Exception, match="budget exhausted"):
        api.match(address, token, rows=customers, id_type="phone")
    assert time.monotonic() - started < 5  # refused once, not retried with backoff


class _Context:
    def __init__(self):
        self.cancelled = threading.Event()

    def cancel(self):
        self.cancelled.set()

    def abort(self, code, details):
        raise AssertionError(f"aborted: {code} {details}")


def _guarded(guard, behavior):
    return guard.wrap(grpc.stream_stream_rpc_method_handler(behavior), "shop").stream_stream


def test_a_client_that_reads_a_long_stream_is_not_cut_off_but_one_that_does_nothing_is():
    """While the platform streams a big audience the merchant only reads (for minutes at 10^7
    members): reading keeps the stream alive. A stream in which nothing moves is still cancelled."""
    from matcher.server.app import _StreamGuard

    guard = _StreamGuard(max_streams=4, per_merchant=2, idle_timeout=0.6)
    try:
        def streaming(requests, context):  # sends 12 chunks over ~1.8 s, reads no request
            for i in range(12):
                time.sleep(0.15)
                yield i

        reading = _Context()
        assert list(_guarded(guard, streaming)(iter(()), reading)) == list(range(12))
        assert not reading.cancelled.is_set()

        def stuck(requests, context):  # neither reads nor sends
            context.cancelled.wait(5)
            yield "too late"

        idle = _Context()
        started = time.monotonic()
        list(_guarded(guard, stuck)(iter(()), idle))
        assert idle.cancelled.is_set() and time.monotonic() - started < 3
    finally:
        guard.stop()


def test_a_client_whose_stream_the_server_cancelled_gets_the_status_instead_of_hanging(operator, serve):
    """The server cancels a stream that stalled (idle timeout); the client's next sends find no
    reader. They raise the call's status within a second or so instead of blocking forever."""
    from matcher_client.api import _Conversation

    operator.seed(300, random.Random(4))
    token = operator.token("merchant", "slow")
    address = serve(idle_timeout=1.0).address
    chan = grpc.insecure_channel(address)
    talk = _Conversation(match_pb2_grpc.MatchServiceStub(chan).Count, token, timeout=60)
    outcome: list = []

    def client():
        talk.send(start=match_pb2.JobStart(protocol_version=1, id_kind="phone", labels=["all"], label_sizes=[20],
                                           merchant_base=group.base_mult(group.random_scalar())))
        talk.expect("accepted")
        time.sleep(2.5)  # stalls: the server cancels the stream
        try:
            for _ in range(50):
                talk.send(returned_end=match_pb2.ListEnd(stream=0))
        except grpc.RpcError as ended:
            outcome.append(ended.code())
        finally:
            talk.close()

    thread = threading.Thread(target=client, daemon=True)
    thread.start()
    thread.join(timeout=20)
    assert not thread.is_alive(), "the client hung on a stream the server had cancelled"
    assert outcome == [grpc.StatusCode.CANCELLED]
    chan.close()
