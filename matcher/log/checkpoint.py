"""Checkpoints (c2sp.org/tlog-checkpoint) in signed notes (c2sp.org/signed-note), Ed25519 only.

The encodings are those of golang.org/x/mod/sumdb/note, so notes and keys made here
open with the Go tooling and vice versa:

    private key   PRIVATE+KEY+<name>+<hex key ID>+base64(0x01 || 32-byte seed)
    verifier key  <name>+<hex key ID>+base64(0x01 || 32-byte public key)
    note          <text ending in \\n>\\n— <name> base64(key ID || signature)\\n ...

Parsing is strict (canonical base64, no leading zeros, no extension lines) because
a verifier that accepts two spellings of one checkpoint gives a lying log room to
equivocate in ways an auditor's byte comparison would miss.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NamedTuple

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from matcher.errors import CryptoError, InputError, VerificationError

__all__ = [
    "Checkpoint",
    "Signer",
    "VerifierKey",
    "key_hash",
    "open_checkpoint",
    "open_note",
    "parse_checkpoint",
    "parse_verifier_key",
    "sign_checkpoint",
]

ALG_ED25519 = 0x01
# x/mod/sumdb/note's limit; the spec only asks verifiers to accept at least 16.
MAX_SIGNATURES = 100
_SIG_PREFIX = "\u2014 "  # em dash, space
_MAX_SIZE = 2**64 - 1  # tree sizes are uint64 everywhere else (Go, RFC 9162)
_DECIMAL = re.compile(r"0|[1-9][0-9]*")  # [0-9] is ASCII-only; int() alone would take " 7", "+7", "7_0", "٧"


def _b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _b64decode(text: str) -> bytes | None:
    """Standard base64, canonical spelling only; None when it is anything else."""
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error, ValueError):
        return None
    return raw if _b64encode(raw) == text else None


def _bad_char(text: str) -> str | None:
    """Why `text` cannot appear in a signed note (UTF-8, no controls but newline), or None."""
    for ch in text:
        if ch < " " and ch != "\n":
            return f"control character U+{ord(ch):04X}"
        if "\ud800" <= ch <= "\udfff":
            return "invalid UTF-8 (lone surrogate)"
    return None


def _valid_name(name: str) -> bool:
    return bool(name) and "+" not in name and not any(c.isspace() for c in name) and _bad_char(name) is None


def key_hash(name: str, public_key_with_alg_byte: bytes) -> bytes:
    """The 4-byte key ID: SHA-256(name || "\\n" || alg || public key)[:4]."""
    return hashlib.sha256(name.encode("utf-8") + b"\n" + public_key_with_alg_byte).digest()[:4]


# ---------------------------------------------------------------------------
# Checkpoint body (c2sp.org/tlog-checkpoint "Note text")
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Checkpoint:
    """origin, tree size and RFC 9162 root hash; the body has no extension lines."""

    origin: str
    size: int
    root: bytes

    def __post_init__(self) -> None:
        if not isinstance(self.origin, str) or not self.origin or "\n" in self.origin or _bad_char(self.origin):
            raise InputError(f"checkpoint origin {self.origin!r} must be one non-empty line of printable text")
        if isinstance(self.size, bool) or not isinstance(self.size, int) or not 0 <= self.size <= _MAX_SIZE:
            raise InputError(f"checkpoint size {self.size!r} must be an integer in 0..2^64-1")
        if not isinstance(self.root, bytes) or len(self.root) != 32:
            raise InputError("checkpoint root must be 32 bytes")

    def body(self) -> str:
        return f"{self.origin}\n{self.size}\n{_b64encode(self.root)}\n"


def parse_checkpoint(body: str) -> Checkpoint:
    """The inverse of Checkpoint.body(); anything body() would not produce raises VerificationError.

    Extension lines are refused rather than skipped: Checkpoint cannot carry them, and
    dropping signed lines silently would make two different notes look identical.
    """
    if not isinstance(body, str) or not body.endswith("\n"):
        raise VerificationError("malformed checkpoint: the body must end with a newline")
    lines = body[:-1].split("\n")
    if len(lines) != 3:
        raise VerificationError(
            f"malformed checkpoint: expected 3 lines (origin, size, root hash), got {len(lines)}"
            + (" (extension lines are not accepted)" if len(lines) > 3 else "")
        )
    origin, size_text, root_text = lines
    if not origin or _bad_char(origin):
        raise VerificationError("malformed checkpoint: the origin line must be non-empty printable text")
    if not _DECIMAL.fullmatch(size_text) or int(size_text) > _MAX_SIZE:
        raise VerificationError(f"malformed checkpoint: tree size {size_text!r} is not a canonical decimal uint64")
    root = _b64decode(root_text)
    if root is None or len(root) != 32:
        raise VerificationError(f"malformed checkpoint: root hash {root_text!r} is not canonical base64 of 32 bytes")
    return Checkpoint(origin, int(size_text), root)


# ---------------------------------------------------------------------------
# Keys
# ---------------------------------------------------------------------------


class VerifierKey(NamedTuple):
    name: str
    key_hash: bytes  # 4 bytes
    public_key: bytes  # 32 bytes, without the algorithm byte

    def __str__(self) -> str:
        return f"{self.name}+{self.key_hash.hex()}+{_b64encode(bytes([ALG_ED25519]) + self.public_key)}"


def parse_verifier_key(vkey: str) -> VerifierKey:
    """Parse "<name>+<hex key ID>+base64(0x01 || public key)"; InputError if it is not exactly that."""
    # maxsplit: base64 has '+' in its alphabet; names and hex key IDs cannot contain one.
    parts = vkey.split("+", 2) if isinstance(vkey, str) else []
    if len(parts) != 3:
        raise InputError("malformed verifier key: expected <name>+<key id>+<base64 key>")
    name, hash_hex, key_b64 = parts
    raw = _b64decode(key_b64)
    if not _valid_name(name) or not re.fullmatch(r"[0-9a-f]{8}", hash_hex) or raw is None:
        raise InputError("malformed verifier key: expected <name>+<8 hex digits>+<base64 key>")
    if len(raw) != 33 or raw[0] != ALG_ED25519:
        raise InputError("verifier key is not an Ed25519 key (algorithm byte 0x01 and 32 bytes)")
    if key_hash(name, raw) != bytes.fromhex(hash_hex):
        raise InputError(f"verifier key for {name!r}: key ID {hash_hex} does not match the key")
    try:
        Ed25519PublicKey.from_public_bytes(raw[1:])
    except ValueError:
        raise InputError(f"verifier key for {name!r} is not a usable Ed25519 public key") from None
    return VerifierKey(name, bytes.fromhex(hash_hex), raw[1:])


@dataclass(frozen=True)
class Signer:
    """A named Ed25519 note signer. The private key stays out of repr() and logs."""

    name: str
    private_key: Ed25519PrivateKey = field(repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _valid_name(self.name):
            raise InputError(f"key name {self.name!r} must be non-empty, without spaces or '+'")

    @classmethod
    def generate(cls, name: str, rng: Callable[[int], bytes] | None = None) -> Signer:
        """A fresh key; `rng(n) -> n bytes` is injectable so tests are exact (default os.urandom)."""
        seed = (rng or os.urandom)(32)
        if len(seed) != 32:
            raise CryptoError("the random source returned the wrong number of bytes")
        return cls(name, Ed25519PrivateKey.from_private_bytes(bytes(seed)))

    @classmethod
    def from_key_string(cls, skey: str) -> Signer:
        """Parse PRIVATE+KEY+<name>+<hex key ID>+base64(0x01 || seed); CryptoError if it is not exactly that."""
        parts = skey.split("+", 4) if isinstance(skey, str) else []
        if len(parts) != 5 or parts[:2] != ["PRIVATE", "KEY"]:
            raise CryptoError("malformed private key: expected PRIVATE+KEY+<name>+<key id>+<base64 key>")
        name, hash_hex, key_b64 = parts[2:]
        raw = _b64decode(key_b64)
        if not _valid_name(name) or not re.fullmatch(r"[0-9a-f]{8}", hash_hex) or raw is None:
            raise CryptoError("malformed private key: expected PRIVATE+KEY+<name>+<8 hex digits>+<base64 key>")
        if len(raw) != 33 or raw[0] != ALG_ED25519:
            raise CryptoError("private key is not an Ed25519 key (algorithm byte 0x01 and a 32-byte seed)")
        signer = cls(name, Ed25519PrivateKey.from_private_bytes(raw[1:]))
        if signer.key_hash != bytes.fromhex(hash_hex):
            raise CryptoError(f"private key for {name!r}: key ID {hash_hex} does not match the key")
        return signer

    @property
    def public_key(self) -> bytes:
        return self.private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    @property
    def key_hash(self) -> bytes:
        return key_hash(self.name, bytes([ALG_ED25519]) + self.public_key)

    @property
    def key_string(self) -> str:
        seed = self.private_key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        return f"PRIVATE+KEY+{self.name}+{self.key_hash.hex()}+{_b64encode(bytes([ALG_ED25519]) + seed)}"

    @property
    def verifier_key(self) -> str:
        return str(VerifierKey(self.name, self.key_hash, self.public_key))

    def sign(self, body: str) -> str:
        """The signed note: body, blank line, one signature line. Ed25519 is deterministic."""
        if not isinstance(body, str) or not body.endswith("\n"):
            raise InputError("a note body must be text ending with a newline")
        problem = _bad_char(body)
        if problem:
            raise InputError(f"a note body cannot contain {problem}")
        sig = self.private_key.sign(body.encode("utf-8"))
        return f"{body}\n{_SIG_PREFIX}{self.name} {_b64encode(self.key_hash + sig)}\n"


# ---------------------------------------------------------------------------
# Opening notes
# ---------------------------------------------------------------------------


def _malformed(why: str) -> VerificationError:
    return VerificationError(f"malformed note: {why}")


def open_note(note: str | bytes, verifier_key: str) -> str:
    """Verify `note` against one trusted key and return its text (the body, with its final newline).

    Signature lines by other keys are ignored, as the spec requires, so witnesses can
    cosign. Every line by the trusted key must verify (the spec's SHOULD), and there
    must be at least one. A malformed verifier key is the caller's InputError; every
    problem with the note itself is a VerificationError.
    """
    vk = parse_verifier_key(verifier_key)
    if isinstance(note, (bytes, bytearray)):
        try:
            note = bytes(note).decode("utf-8")
        except UnicodeDecodeError:
            raise _malformed("not valid UTF-8") from None
    if not isinstance(note, str):
        raise _malformed(f"expected text, got {type(note).__name__}")
    problem = _bad_char(note)
    if problem:
        raise _malformed(f"contains {problem}")
    split = note.rfind("\n\n")
    if split < 0:
        raise _malformed("no blank line between the text and the signatures")
    text, sig_block = note[: split + 1], note[split + 2 :]
    if not sig_block:
        raise _malformed("no signature lines after the blank line")
    if not sig_block.endswith("\n"):
        raise _malformed("the last signature line does not end with a newline")
    lines = sig_block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise _malformed(f"more than {MAX_SIGNATURES} signature lines")

    ours: list[bytes] = []
    same_name_ids: list[bytes] = []
    for n, line in enumerate(lines, start=1):
        if not line.startswith(_SIG_PREFIX):
            raise _malformed(f"signature line {n} does not start with an em dash and a space")
        name, space, sig_b64 = line[len(_SIG_PREFIX) :].partition(" ")
        raw = _b64decode(sig_b64) if space else None
        if not _valid_name(name) or raw is None or len(raw) < 5:
            raise _malformed(f"signature line {n} is not '<key name> <base64 key ID and signature>'")
        if name != vk.name:
            continue
        if raw[:4] == vk.key_hash:
            ours.append(raw[4:])
        else:
            same_name_ids.append(raw[:4])

    wanted = f"{vk.name}+{vk.key_hash.hex()}"
    if not ours:
        others = f" (only by other keys named {vk.name!r}: {', '.join(h.hex() for h in same_name_ids)})"
        raise VerificationError(
            f"unknown key: the note has no signature by {wanted}" + (others if same_name_ids else ""),
            hint="check that you trust the right log key",
        )
    public = Ed25519PublicKey.from_public_bytes(vk.public_key)
    message = text.encode("utf-8")
    for sig in ours:
        try:
            if len(sig) != 64:
                raise InvalidSignature
            public.verify(sig, message)
        except InvalidSignature:
            raise VerificationError(f"invalid signature for key {wanted}") from None
    return text


# ---------------------------------------------------------------------------
# Signed checkpoints
# ---------------------------------------------------------------------------


def sign_checkpoint(signer: Signer, cp: Checkpoint) -> str:
    return signer.sign(cp.body())


def open_checkpoint(note: str | bytes, verifier_key: str, origin: str | None = None) -> Checkpoint:
    """Verify the note's signature, parse its body strictly and, if given, insist on the origin."""
    cp = parse_checkpoint(open_note(note, verifier_key))
    if origin is not None and cp.origin != origin:
        raise VerificationError(f"checkpoint is for log {cp.origin!r}, expected {origin!r}")
    return cp
