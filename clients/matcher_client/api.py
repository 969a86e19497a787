"""The merchant's Python API: ``match(...)`` runs one job against a matcher server and returns the report.

Everything secret stays in this process: raw IDs are normalized and hashed here, blinded with a
scalar that never leaves memory, and only a·H(x) goes on the wire.

    >>> report = match("platform.example:50051", token, "customers.csv", id_column="phone",
    ...                id_type="phone", label_column="store")
    >>> report["labels"]["all"]["matched"]
"""

from __future__ import annotations

import json
import os
import queue
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

import grpc

from matcher import ids, tabular
from matcher.crypto.kernels import Kernels, local_kernels
from matcher.errors import ProtocolError
from matcher.protocol.merchant import MerchantSession
from matcher.protocol.messages import AudienceChunk, BlindedChunk, JobAccepted
from matcher.v1 import match_pb2, match_pb2_grpc
from matcher_client._rpc import channel, rpc_errors

# Called as progress(phase, done, total); total may be None.
Progress = Callable[[str, int, "int | None"], None]


@dataclass
class MerchantList:
    """A list read and prepared locally, before any network traffic."""

    prepared: ids.PreparedList
    id_kind: str


def read_list(file: str, *, id_column: str, id_type: str, label_column: str | None = None, region: str = "CN",
              hashed_kind: str = "phone") -> MerchantList:
    rows: list[tuple[str, str | None]] = []
    for batch in tabular.read_columns(file, [id_column, label_column]):
        rows.extend((r[0] if r[0] is not None else "", r[1]) for r in batch)
    return prepare_rows(rows, id_type=id_type, region=region, hashed_kind=hashed_kind)


def prepare_rows(rows: Iterable[tuple[str, str | None]], *, id_type: str, region: str = "CN",
                 hashed_kind: str = "phone") -> MerchantList:
    return MerchantList(prepared=ids.prepare(rows, id_type, region=region), id_kind=ids.hash_kind(id_type, hashed_kind))


def match(server: str, token: str, file: str | None = None, *, id_column: str | None = None, id_type: str,
          label_column: str | None = None, rows: Iterable[tuple[str, str | None]] | None = None,
          region: str = "CN", hashed_kind: str = "phone", tls_ca: str | None = None,
          progress: Progress | None = None, kernels: Kernels | None = None, timeout: float | None = None,
          rng: Callable[[int], bytes] = os.urandom) -> dict:
    """Run a match job on ``file`` (or on in-memory ``rows`` of (id, label)) and return the report dict."""
    if (file is None) == (rows is None):
        raise ValueError("give exactly one of file= or rows=")
    if file is not None:
        if not id_column:
            raise ValueError("id_column is required with file=")
        merchant_list = read_list(file, id_column=id_column, id_type=id_type, label_column=label_column,
                                  region=region, hashed_kind=hashed_kind)
    else:
        merchant_list = prepare_rows(rows, id_type=id_type, region=region, hashed_kind=hashed_kind)
    return run_job(server, token, merchant_list, tls_ca=tls_ca, progress=progress, kernels=kernels,
                   timeout=timeout, rng=rng)


def run_job(server: str, token: str, merchant_list: MerchantList, *, tls_ca: str | None = None,
            progress: Progress | None = None, kernels: Kernels | None = None, timeout: float | None = None,
            rng: Callable[[int], bytes] = os.urandom) -> dict:
    prepared = merchant_list.prepared
    notify = progress or (lambda phase, done, total: None)
    own_kernels = kernels is None
    kernels = kernels or local_kernels(parallel=len(prepared.keys) > 20_000)
    try:
        session = MerchantSession(prepared.keys, prepared.labels, id_kind=merchant_list.id_kind, rng=rng,
                                  kernels=kernels)
        with rpc_errors(), channel(server, tls_ca) as chan:
            stub = match_pb2_grpc.MatchServiceStub(chan)
            report = _exchange(stub, token, session, len(prepared.keys), notify, timeout)
    finally:
        if own_kernels:
            kernels.close()
    released = json.loads(report.report_json)
    return {
        "job_id": report.job_id,
        "list_size": released["list_size"],
        "rows": prepared.rows,
        "invalid": dict(prepared.invalid),
        "duplicates": prepared.duplicates,
        "labels": released["labels"],
        "epsilon_spent": released["epsilon_spent"],
        "epsilon_left": released["epsilon_left"],
        "checkpoint": report.checkpoint,
        "leaf_index": report.leaf_index,
        "segments": list(session.segments),
        "policy_digest": released.get("policy_digest"),
        # What `matcher-audit prove` needs to show this report is in the log.
        "report_json": report.report_json,
        "log_entry": report.log_entry.decode(),
    }


def _exchange(stub, token: str, session: MerchantSession, list_size: int, notify: Progress,
              timeout: float | None) -> match_pb2.Report:
    # gRPC pulls requests from this iterator on its own thread; a small bound keeps memory flat.
    outbox: queue.Queue = queue.Queue(maxsize=4)

    def requests():
        while (item := outbox.get()) is not None:
            yield item

    responses = stub.Match(requests(), metadata=[("authorization", f"Bearer {token}")], timeout=timeout)
    try:
        start = session.start()
        outbox.put(match_pb2.MatchRequest(start=match_pb2.JobStart(
            protocol_version=start.protocol_version, id_kind=start.id_kind, labels=start.labels,
            label_sizes=start.label_sizes, merchant_base=start.merchant_base)))
        first = _expect(responses, "accepted").accepted
        session.accept(JobAccepted(job_id=first.job_id, paillier_n=first.paillier_n, segments=tuple(first.segments),
                                   layout_json=first.layout_json, max_chunk_elements=first.max_chunk_elements,
                                   stream_elements=first.stream_elements))
        sent = 0
        for chunk in session.blinded_chunks():
            outbox.put(match_pb2.MatchRequest(blinded=match_pb2.BlindedChunk(points=chunk.points, labels=chunk.labels)))
            sent += len(chunk)
            notify("blinding", sent, list_size)
        outbox.put(match_pb2.MatchRequest(list_end=match_pb2.ListEnd()))
        for response in responses:
            kind = response.WhichOneof("msg")
            if kind == "double_blinded":
                session.receive_double_blinded(BlindedChunk(points=response.double_blinded.points,
                                                            labels=response.double_blinded.labels))
            elif kind == "audience":
                session.receive_audience(AudienceChunk(points=response.audience.points,
                                                       ciphertexts=response.audience.ciphertexts))
                notify("matching", session.stream_elements, first.stream_elements or None)
            elif kind == "audience_end":
                if response.audience_end.elements != session.stream_elements:
                    raise ProtocolError(f"the server announced {response.audience_end.elements} audience elements "
                                        f"but sent {session.stream_elements}")
                break
            else:
                raise ProtocolError(f"unexpected '{kind}' from the server")
        else:
            raise ProtocolError("the server closed the stream before the audience ended")
        sums = session.finish()
        outbox.put(match_pb2.MatchRequest(sums=match_pb2.LabelSums(sums=sums.sums)))
        report = _expect(responses, "report").report
        notify("done", 1, 1)
        return report
    finally:
        outbox.put(None)


def _expect(responses, kind: str):
    response = next(responses, None)
    if response is None or response.WhichOneof("msg") != kind:
        raise ProtocolError(f"expected '{kind}' from the server")
    return response


def budget(server: str, token: str, *, tls_ca: str | None = None) -> Mapping[str, float]:
    with rpc_errors(), channel(server, tls_ca) as chan:
        reply = match_pb2_grpc.MatchServiceStub(chan).GetBudget(
            match_pb2.GetBudgetRequest(), metadata=[("authorization", f"Bearer {token}")])
    return {"epsilon_budget": reply.epsilon_budget, "epsilon_spent": reply.epsilon_spent,
            "epsilon_left": reply.epsilon_left, "period": reply.period, "epsilon_per_job": reply.epsilon_per_job}
