"""The client takes a gRPC channel instead of dialling: every call goes through it, and it stays open."""

from __future__ import annotations

import random

import grpc

from matcher_client import api
from matcher_client._rpc import open_channel
from matcher_client.audit import GrpcLogSource, verify
from tests.conftest import exact_policy, ground_truth, phone


class _Counting(grpc.UnaryUnaryClientInterceptor, grpc.StreamStreamClientInterceptor):
    def __init__(self):
        self.methods: list[str] = []
        self.sent = 0
        self.received = 0

    def intercept_unary_unary(self, continuation, details, request):
        self.methods.append(details.method)
        return continuation(details, request)

    def intercept_stream_stream(self, continuation, details, requests):
        self.methods.append(details.method)

        def sent():
            for request in requests:
                self.sent += 1
                yield request

        def received(responses):
            for response in responses:
                self.received += 1
                yield response

        return received(continuation(details, sent()))


def test_match_runs_over_the_given_channel_and_leaves_it_open(operator, serve):
    members, token = operator.seed(200, random.Random(3))
    exact_policy(operator.store)
    customers = [(phone(i), "north") for i in range(100, 300)]
    served = serve()
    counting = _Counting()
    raw = open_channel(served.address)
    chan = grpc.intercept_channel(raw, counting)
    try:
        # No server address to dial: only the channel can reach the server.
        report = api.match("nowhere.invalid:1", token, rows=customers, id_type="phone", channel=chan)
        assert report["labels"] == ground_truth(members, customers)
        assert counting.methods == ["/matcher.v1.MatchService/GetBudget", "/matcher.v1.MatchService/Count"]
        assert counting.sent > 2 and counting.received > 2
        # Still open: the caller's to close.
        assert api.budget("nowhere.invalid:1", token, channel=chan)["epsilon_spent"] == report["epsilon_spent"]
        auditor = operator.token("auditor", "alice")
        with GrpcLogSource("nowhere.invalid:1", auditor, channel=chan) as source:
            assert verify(source).size >= 1
        assert api.activations("nowhere.invalid:1", token, channel=chan) == []
    finally:
        raw.close()
