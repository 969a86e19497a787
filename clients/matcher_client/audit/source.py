"""Where the verifier's log comes from: the :class:`LogSource` protocol and the gRPC AuditService behind it.

Every answer is hostile until checked; this module only fetches. :func:`served` turns a refusal
of what the log owes (an entry or proof its signed checkpoints cover) into a VerificationError.
"""

from __future__ import annotations

import collections
import contextlib
from typing import Iterable, Iterator, Protocol, Sequence

import grpc

from matcher.errors import CryptoError, InputError, NotFound, ProtocolError, VerificationError
from matcher.v1 import audit_pb2, audit_pb2_grpc
from matcher_client._rpc import open_channel, rpc_errors

__all__ = ["GrpcLogSource", "LogSource", "served"]

# Consistency-proof calls kept in flight at once by GrpcLogSource.
_IN_FLIGHT = 4


class LogSource(Protocol):
    """What the verifier asks of a log: the AuditService RPCs, one method each.

    Every answer is treated as hostile. Errors that mean "the server answered, but not with
    what was asked" (NotFound, InputError, ...) become VerificationErrors when the log owes
    the answer; connection and authentication errors pass through unchanged.
    """

    def verifier_key(self) -> tuple[str, str]:
        """(verifier key, origin) as the server publishes them."""
        ...

    def latest_checkpoint(self) -> tuple[int, str] | None:
        """(size, signed note) of the newest checkpoint; None when the log is empty."""
        ...

    def checkpoints(self, min_size: int) -> list[tuple[int, str]]:
        """Every checkpoint with size >= min_size as (size, signed note)."""
        ...

    def entries(self, start: int, end: int) -> Iterable[tuple[int, bytes]]:
        """Entries [start, end) as (index, canonical JSON bytes)."""
        ...

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        ...

    def consistency_proofs(self, pairs: Sequence[tuple[int, int]]) -> list[list[bytes]]:
        """One consistency proof per (old_size, new_size) pair; batched so a remote source can pipeline."""
        ...


class GrpcLogSource:
    """A :class:`LogSource` over a matcher server's AuditService. Use as a context manager (or call close).

    ``channel``: a gRPC channel to use instead of dialling ``address``; closing the source leaves it open.
    """

    def __init__(self, address: str, token: str, tls_ca: str | None = None, *, timeout: float = 60.0,
                 channel: grpc.Channel | None = None):
        self._own_channel = channel is None
        self._channel = open_channel(address, tls_ca) if channel is None else channel
        self._stub = audit_pb2_grpc.AuditServiceStub(self._channel)
        self._metadata = [("authorization", f"Bearer {token}")]
        self._timeout = timeout

    def __enter__(self) -> GrpcLogSource:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._own_channel:
            self._channel.close()

    def _call(self, method, request):
        with rpc_errors():
            return method(request, metadata=self._metadata, timeout=self._timeout)

    def verifier_key(self) -> tuple[str, str]:
        reply = self._call(self._stub.GetVerifierKey, audit_pb2.GetVerifierKeyRequest())
        return reply.key, reply.origin

    def latest_checkpoint(self) -> tuple[int, str] | None:
        try:
            reply = self._call(self._stub.GetCheckpoint, audit_pb2.GetCheckpointRequest())
        except NotFound:
            return None
        return reply.size, reply.note

    def checkpoints(self, min_size: int) -> list[tuple[int, str]]:
        with rpc_errors():
            stream = self._stub.ListCheckpoints(audit_pb2.ListCheckpointsRequest(min_size=min_size),
                                                metadata=self._metadata, timeout=self._timeout)
            return [(c.size, c.note) for c in stream]

    def entries(self, start: int, end: int) -> Iterator[tuple[int, bytes]]:
        with rpc_errors():
            stream = self._stub.GetEntries(audit_pb2.GetEntriesRequest(start=start, end=end),
                                           metadata=self._metadata, timeout=self._timeout)
            for e in stream:
                yield e.index, bytes(e.data)

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        reply = self._call(self._stub.GetInclusionProof, audit_pb2.InclusionProofRequest(index=index, tree_size=size))
        return [bytes(h) for h in reply.hashes]

    def consistency_proofs(self, pairs: Sequence[tuple[int, int]]) -> list[list[bytes]]:
        # A few calls in flight hide the round trips (a first audit needs one proof per checkpoint)
        # while staying far under the server's concurrent-RPC limit, which merchants' jobs share.
        proofs: list[list[bytes]] = []
        pending: collections.deque = collections.deque()
        with rpc_errors():
            for old, new in pairs:
                if len(pending) == _IN_FLIGHT:
                    proofs.append([bytes(h) for h in pending.popleft().result().hashes])
                pending.append(self._stub.GetConsistencyProof.future(
                    audit_pb2.ConsistencyProofRequest(old_size=old, new_size=new),
                    metadata=self._metadata, timeout=self._timeout))
            proofs.extend([bytes(h) for h in f.result().hashes] for f in pending)
        return proofs


@contextlib.contextmanager
def served(what: str) -> Iterator[None]:
    """The server answered, but refused what its own signed checkpoints promise: that is a lie too.
    Connection and authentication errors are not caught; they are not evidence about the log."""
    try:
        yield
    except (InputError, NotFound, ProtocolError, CryptoError) as err:
        raise VerificationError(f"the log cannot serve {what}, which its signed checkpoints cover: "
                                f"{err.message}") from None
