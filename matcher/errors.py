"""The one exception tree of matcher.

Every error a caller can see derives from :class:`MatcherError`. Each class knows the gRPC
status code it maps to (by name, so this module, the crypto and the protocol code never
import grpc) and carries a hint the user can act on::

    MatcherError
    ├── InputError                 INVALID_ARGUMENT   bad file, column, flag, setting
    │   ├── InvalidPoint           INVALID_ARGUMENT   not a valid 32-byte group element
    │   ├── InvalidCiphertext      INVALID_ARGUMENT   not in Z*_{n^2}
    │   └── ChunkTooLarge          INVALID_ARGUMENT   a stream chunk over the limit
    ├── ProtocolError              FAILED_PRECONDITION  call out of order, truncated stream
    │   └── ProtocolDeviation      PERMISSION_DENIED    a returned stream fails its audit
    ├── PolicyRefused              FAILED_PRECONDITION  list too small, too many labels, ...
    ├── LimitExceeded              RESOURCE_EXHAUSTED   privacy budget or rate limit
    ├── NotFound                   NOT_FOUND            unknown job/merchant (also: not yours)
    ├── AuthenticationError        UNAUTHENTICATED      opaque by design: no detail, ever
    ├── ConnectionFailed           UNAVAILABLE          (client side) the server cannot be reached
    ├── CryptoError                INTERNAL             overflow on unpack, key problems
    ├── StoreError                 FAILED_PRECONDITION  database missing, schema too new
    └── VerificationError          (client side)        the audit log lied
"""

from __future__ import annotations


class MatcherError(Exception):
    """Base of every matcher error. ``str(err)`` is the diagnostic; ``hint`` says what to do."""

    grpc_code = "INTERNAL"

    def __init__(self, message: str, *, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} ({self.hint})" if self.hint else self.message


class InputError(MatcherError):
    grpc_code = "INVALID_ARGUMENT"


class InvalidPoint(InputError):
    """A value that is not a usable X25519 u-coordinate, or a blinding that gave the identity."""


class InvalidCiphertext(InputError):
    """A Paillier ciphertext outside Z*_{n^2}."""


class ChunkTooLarge(InputError):
    pass


class ProtocolError(MatcherError):
    grpc_code = "FAILED_PRECONDITION"


class ProtocolDeviation(ProtocolError):
    """What the merchant sent back cannot come from the protocol as written (an audit row is missing,
    a value repeats, a stream is short or long). The job's ε stays spent and the merchant is suspended."""

    grpc_code = "PERMISSION_DENIED"


class PolicyRefused(MatcherError):
    """The release policy refused a job. ``reason`` is a stable machine-readable word."""

    grpc_code = "FAILED_PRECONDITION"

    def __init__(self, message: str, *, reason: str, hint: str | None = None):
        super().__init__(message, hint=hint)
        self.reason = reason


class LimitExceeded(PolicyRefused):
    """Budget or rate exhausted: retry later, not with a different list."""

    grpc_code = "RESOURCE_EXHAUSTED"


class NotFound(MatcherError):
    grpc_code = "NOT_FOUND"


class AuthenticationError(MatcherError):
    """Deliberately says nothing about why: wrong token, unknown token and no token look alike."""

    grpc_code = "UNAUTHENTICATED"

    def __init__(self, message: str = "authentication required", *, hint: str | None = None):
        super().__init__(message, hint=hint)


class ConnectionFailed(MatcherError):
    """The client could not reach the server (down, wrong address, TLS on one side only)."""

    grpc_code = "UNAVAILABLE"


class CryptoError(MatcherError):
    grpc_code = "INTERNAL"


class StoreError(MatcherError):
    grpc_code = "FAILED_PRECONDITION"


class VerificationError(MatcherError):
    """Raised by verifiers (Merkle proofs, signed notes, the auditor) when the evidence is wrong."""

    grpc_code = "DATA_LOSS"
