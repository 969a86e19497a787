"""Channels with matcher's limits, and gRPC status codes mapped back onto matcher's error tree."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

import grpc

from matcher import errors

MAX_MESSAGE_BYTES = 8 * 1024 * 1024
_OPTIONS = [("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)]
_BY_CODE = {
    grpc.StatusCode.INVALID_ARGUMENT: errors.InputError,
    grpc.StatusCode.FAILED_PRECONDITION: errors.ProtocolError,
    grpc.StatusCode.PERMISSION_DENIED: errors.ProtocolDeviation,
    grpc.StatusCode.NOT_FOUND: errors.NotFound,
    grpc.StatusCode.INTERNAL: errors.CryptoError,
}


@contextlib.contextmanager
def channel(server: str, tls_ca: str | None = None) -> Iterator[grpc.Channel]:
    if tls_ca:
        creds = grpc.ssl_channel_credentials(root_certificates=Path(tls_ca).read_bytes())
        chan = grpc.secure_channel(server, creds, options=_OPTIONS)
    else:
        chan = grpc.insecure_channel(server, options=_OPTIONS)
    try:
        yield chan
    finally:
        chan.close()


@contextlib.contextmanager
def rpc_errors() -> Iterator[None]:
    """Re-raise a failed call as the matcher error its status code stands for, with the server's text."""
    try:
        yield
    except grpc.RpcError as err:
        code, detail = err.code(), err.details() or ""
        if code == grpc.StatusCode.UNAUTHENTICATED:
            raise errors.AuthenticationError("the server refused the token",
                                             hint="check --token (or MATCHER_TOKEN)") from None
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            raise errors.LimitExceeded(detail, reason="limit") from None
        if code == grpc.StatusCode.UNAVAILABLE:
            raise errors.MatcherError(f"cannot reach the server: {detail}",
                                      hint="check --server HOST:PORT and that `matcher serve` is running") from None
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            raise errors.MatcherError("the server did not answer in time", hint="raise --timeout") from None
        raise _BY_CODE.get(code, errors.MatcherError)(detail or code.name) from None
