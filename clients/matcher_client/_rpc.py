"""Channels with matcher's limits, and gRPC status codes mapped back onto matcher's error tree."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

import grpc

from matcher import errors
from matcher.protocol.wire import CHANNEL_OPTIONS

_BY_CODE = {
    grpc.StatusCode.INVALID_ARGUMENT: errors.InputError,
    grpc.StatusCode.FAILED_PRECONDITION: errors.ProtocolError,
    grpc.StatusCode.PERMISSION_DENIED: errors.ProtocolDeviation,
    grpc.StatusCode.NOT_FOUND: errors.NotFound,
    grpc.StatusCode.INTERNAL: errors.CryptoError,
}


def open_channel(server: str, tls_ca: str | None = None) -> grpc.Channel:
    """A channel to ``server`` with matcher's message limits, TLS when ``tls_ca`` names the CA file;
    the caller closes it."""
    if tls_ca:
        creds = grpc.ssl_channel_credentials(root_certificates=Path(tls_ca).read_bytes())
        return grpc.secure_channel(server, creds, options=CHANNEL_OPTIONS)
    return grpc.insecure_channel(server, options=CHANNEL_OPTIONS)


@contextlib.contextmanager
def channel(server: str, tls_ca: str | None = None) -> Iterator[grpc.Channel]:
    """:func:`open_channel`, closed on leaving the block."""
    chan = open_channel(server, tls_ca)
    try:
        yield chan
    finally:
        chan.close()


@contextlib.contextmanager
def connect(server: str, tls_ca: str | None = None, given: grpc.Channel | None = None) -> Iterator[grpc.Channel]:
    """The caller's channel ``given``, left open; else :func:`channel` to ``server``."""
    if given is not None:
        yield given
        return
    with channel(server, tls_ca) as chan:
        yield chan


@contextlib.contextmanager
def rpc_errors(server: str | None = None) -> Iterator[None]:
    """Re-raise a failed call as the matcher error its status code stands for, with the server's text.
    ``server``: the address dialled, for the message when it cannot be reached."""
    try:
        yield
    except grpc.RpcError as err:
        code, detail = err.code(), err.details() or ""
        if code == grpc.StatusCode.UNAUTHENTICATED:
            # Opaque on purpose (the server says nothing about why): the remedy is the same either way.
            raise errors.AuthenticationError("the server refused the token: ask the operator for a new one",
                                             hint="check --token (or MATCHER_TOKEN) holds the whole token") from None
        if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
            raise errors.LimitExceeded(detail, reason="limit") from None
        if code == grpc.StatusCode.UNAVAILABLE:
            raise errors.ConnectionFailed(f"cannot reach {server or 'the server'}: is `matcher serve` running? TLS?"
                                          f"{_why_unavailable(detail)}", hint=_UNAVAILABLE_HINT) from None
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            raise errors.MatcherError("the server did not answer in time", hint="raise --timeout") from None
        raise _BY_CODE.get(code, errors.MatcherError)(detail or code.name) from None


_UNAVAILABLE_HINT = ("check --server HOST:PORT; a server started with --tls-cert needs --tls-ca CA.pem here, "
                     "one without it needs no --tls-ca")


def _why_unavailable(detail: str) -> str:
    """gRPC's reason, shortened to what a person can act on ('' when it says nothing useful)."""
    text = detail.lower()
    for needle, why in (("connection refused", "connection refused"), ("handshake", "TLS handshake failed"),
                        ("ssl", "TLS handshake failed"), ("dns", "unknown host"), ("timeout", "timed out"),
                        ("deadline", "timed out"), ("socket closed", "the server closed the connection")):
        if needle in text:
            return f" ({why})"
    return ""
