"""The operator's key file: the Paillier private key and the Ed25519 log-signing key.

It is the one place a private key is written to disk, unencrypted by design (the server must start
unattended), so it is created with mode 0600 and refused when group or others can read it.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
from dataclasses import dataclass, field
from pathlib import Path

from matcher.crypto.paillier import PrivateKey
from matcher.errors import InputError, StoreError
from matcher.log.checkpoint import Signer


@dataclass(frozen=True)
class OperatorKeys:
    paillier: PrivateKey
    signer: Signer
    # AES-256-GCM key sealing the precomputed Paillier randomness at rest (see matcher.crypto.pool).
    pool_key: bytes = field(default_factory=lambda: secrets.token_bytes(32))


def key_path_for(db_path: str | Path) -> Path:
    return Path(f"{db_path}.keys")


def create(path: Path, *, origin: str, paillier_bits: int = 2048) -> OperatorKeys:
    keys = OperatorKeys(paillier=PrivateKey.generate(paillier_bits), signer=Signer.generate(origin))
    write(path, keys)
    return keys


def write(path: Path, keys: OperatorKeys) -> None:
    """Write a new key file, mode 0600 from the first byte (never chmod after the fact)."""
    data = json.dumps({"paillier": keys.paillier.to_bytes().hex(), "signer": keys.signer.key_string,
                       "pool": keys.pool_key.hex()}).encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise InputError(f"{path} already exists; refusing to overwrite operator keys") from None
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def load(path: Path) -> OperatorKeys:
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise StoreError(f"no key file at {path}", hint="run `matcher init --db PATH` first") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise StoreError(f"{path} is readable by group or others (mode {stat.S_IMODE(mode):o})",
                         hint=f"chmod 600 {path}")
    data = json.loads(path.read_text())
    return OperatorKeys(paillier=PrivateKey.from_bytes(bytes.fromhex(data["paillier"])),
                        signer=Signer.from_key_string(data["signer"]), pool_key=bytes.fromhex(data["pool"]))
