"""The merchant's long-lived blinding scalars for the unbalanced protocol mode.

In unbalanced mode the server keeps the merchant-blinded copy of its audience between jobs, so
the merchant must blind with the same scalar a_s every time (one per stream name: ``matched``
and each segment), for one server and one merchant account. Every a_s is derived with HKDF from
one 32-byte master secret kept in a key file on the merchant's machine.

The file is never written unencrypted: it holds the master secret under AES-256-GCM with a key
derived by scrypt from the merchant's API token, so a stolen file alone is useless. Format
(JSON; the key_id is the AES-GCM associated data)::

    {"version": 1, "key_id": hex, "salt": hex, "nonce": hex, "ciphertext": hex}

It is written atomically (a temp file in the same dir, then ``os.replace``) with mode 0600, in
dirs created 0700. A file that does not decrypt with the token (token rotated, another
account's file) is an error, never overwritten: deleting it starts a new enrollment, and the
next job then re-enrolls in full.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from matcher.crypto import group
from matcher.errors import InputError

__all__ = ["EnrollmentKey", "LazyEnrollmentKey", "default_path"]

_VERSION = 1
_MASTER_SIZE = 32
_KEY_ID_SIZE = 16
_SALT_SIZE = 16
_NONCE_SIZE = 12
_SCRYPT_N = 2**15  # tests lower this; a file written with another cost does not decrypt
_SCRYPT_R = 8
_SCRYPT_P = 1
_INFO = b"matcher unbalanced a_s v1\x00"
_HKDF_MAX = 255 * 32  # RFC 5869: at most 255 SHA-256 blocks
_FIELDS = ("version", "key_id", "salt", "nonce", "ciphertext")


class EnrollmentKey:
    """One master secret and the public ``key_id`` naming it (sent to the server; a new key has a new id)."""

    def __init__(self, key_id: bytes, master: bytes):
        if len(key_id) != _KEY_ID_SIZE or len(master) != _MASTER_SIZE:
            raise InputError("enrollment key has the wrong size",
                             hint=f"key_id is {_KEY_ID_SIZE} bytes and the master secret {_MASTER_SIZE}")
        self.key_id = bytes(key_id)
        self._master = bytes(master)

    def __repr__(self) -> str:
        return f"EnrollmentKey(key_id={self.key_id.hex()})"

    @classmethod
    def load_or_create(cls, path: str | os.PathLike, token: str, *,
                       rng: Callable[[int], bytes] = os.urandom, key_id: bytes | None = None) -> EnrollmentKey:
        """The key in ``path``, decrypted with ``token``; a new one (named ``key_id``, if given),
        written there, if there is no file."""
        if not token:
            raise InputError("an enrollment key needs the merchant's API token", hint="pass --token")
        path = Path(path)
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return cls._create(path, token, rng, key_id)
        except OSError as err:
            raise InputError(f"cannot read enrollment key file {path}: {err.strerror}",
                             hint="check its permissions") from err
        with os.fdopen(fd, "rb") as f:
            if stat.S_IMODE(os.fstat(f.fileno()).st_mode) & 0o077:
                os.fchmod(f.fileno(), 0o600)
            data = f.read()
        return cls._decrypt(path, data, token)

    def scalar(self, stream: str) -> bytes:
        """a_s: the 32-byte scalar of ``stream``, the same on every call and in every process."""
        source = _HkdfStream(self._master, _INFO + stream.encode())
        scalar = group.random_scalar(source)
        if source.served != group.ELEMENT_SIZE:  # pragma: no cover - random_scalar reads exactly 32 bytes
            raise InputError(f"scalar derivation read {source.served} bytes, expected {group.ELEMENT_SIZE}")
        return scalar

    def base(self, stream: str) -> bytes:
        """a_s·G: the scalar of ``stream`` times the base point."""
        return group.base_mult(self.scalar(stream))

    @classmethod
    def _create(cls, path: Path, token: str, rng: Callable[[int], bytes], key_id: bytes | None) -> EnrollmentKey:
        master, key_id = _take(rng, _MASTER_SIZE), key_id or _take(rng, _KEY_ID_SIZE)
        salt, nonce = _take(rng, _SALT_SIZE), _take(rng, _NONCE_SIZE)
        ciphertext = AESGCM(_file_key(token, salt)).encrypt(nonce, master, key_id)
        record = {"version": _VERSION, "key_id": key_id.hex(), "salt": salt.hex(), "nonce": nonce.hex(),
                  "ciphertext": ciphertext.hex()}
        _write_atomically(path, (json.dumps(record) + "\n").encode())
        return cls(key_id, master)

    @classmethod
    def _decrypt(cls, path: Path, data: bytes, token: str) -> EnrollmentKey:
        fresh = f"delete {path} to start a new enrollment (the next job then re-enrolls in full)"
        try:
            record = json.loads(data)
            if not isinstance(record, dict):
                raise TypeError("not a JSON object")
            missing = [name for name in _FIELDS if name not in record]
            if missing:
                raise ValueError(f"missing {', '.join(missing)}")
            version = record["version"]
            if type(version) is not int or version != _VERSION:
                raise InputError(f"enrollment key file {path} has unsupported version {version!r}",
                                 hint=f"upgrade matcher-client, or {fresh}")
            key_id, salt, nonce, ciphertext = (bytes.fromhex(record[name]) for name in _FIELDS[1:])
            sizes = {"key_id": (key_id, _KEY_ID_SIZE), "salt": (salt, _SALT_SIZE), "nonce": (nonce, _NONCE_SIZE),
                     "ciphertext": (ciphertext, _MASTER_SIZE + 16)}
            for name, (value, size) in sizes.items():
                if len(value) != size:
                    raise ValueError(f"{name} has {len(value)} bytes, expected {size}")
        except InputError:
            raise
        except (ValueError, TypeError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise InputError(f"enrollment key file {path} is corrupt: {err}", hint=fresh) from err
        try:
            master = AESGCM(_file_key(token, salt)).decrypt(nonce, ciphertext, key_id)
        except InvalidTag as err:
            raise InputError(f"enrollment key file {path} does not decrypt with this API token "
                             "(the token was rotated, the file belongs to another account, or it was altered)",
                             hint=fresh) from err
        return cls(key_id, master)


def peek_key_id(path: str | os.PathLike) -> bytes | None:
    """The key_id a key file names (public, in clear), without the token; None if there is no
    readable, well-formed file (loading it then says what is wrong)."""
    try:
        key_id = bytes.fromhex(json.loads(Path(path).read_bytes())["key_id"])
    except (OSError, ValueError, TypeError, KeyError):
        return None
    return key_id if len(key_id) == _KEY_ID_SIZE else None


class LazyEnrollmentKey:
    """The key of ``path`` as a job needs it: its id at once (JobStart names it), its secret (scrypt,
    a fifth of a second; a new file's creation) only if the server picks the unbalanced protocol."""

    def __init__(self, path: str | os.PathLike, token: str, *, rng: Callable[[int], bytes] = os.urandom):
        self._path, self._token, self._rng = Path(path), token, rng
        self.key_id = peek_key_id(path) or _take(rng, _KEY_ID_SIZE)
        self._key: EnrollmentKey | None = None

    def scalar(self, stream: str) -> bytes:
        if self._key is None:
            key = EnrollmentKey.load_or_create(self._path, self._token, rng=self._rng, key_id=self.key_id)
            if key.key_id != self.key_id:
                raise InputError(f"enrollment key file {self._path} changed during the job", hint="run the job again")
            self._key = key
        return self._key.scalar(stream)


def default_path(server: str, token: str) -> Path:
    """Where the key of one server and one merchant account lives; its name reveals neither.

    Under ``$MATCHER_CLIENT_HOME`` if set, else ``~/.matcher-client``:
    ``enrollment/<first 32 hex digits of sha256(server + "\\0" + sha256(token))>.key``.
    """
    home = os.environ.get("MATCHER_CLIENT_HOME")
    root = Path(home).expanduser() if home else Path.home() / ".matcher-client"
    account = hashlib.sha256(token.encode()).hexdigest()
    name = hashlib.sha256((server + "\0" + account).encode()).hexdigest()[:32]
    return root / "enrollment" / f"{name}.key"


class _HkdfStream:
    """A deterministic rng (n -> n bytes): the HKDF-SHA256 output of (master, info), served in order.

    HKDF-Expand's blocks do not depend on the requested length, so each call expands to
    ``served + n`` bytes and returns the last n: the bytes a single long expansion would give.
    """

    def __init__(self, master: bytes, info: bytes):
        self._master, self._info = master, info
        self.served = 0

    def __call__(self, n: int) -> bytes:
        end = self.served + n
        if n < 0 or end > _HKDF_MAX:
            raise InputError(f"cannot derive {n} more bytes after {self.served}",
                             hint=f"HKDF gives at most {_HKDF_MAX}")
        out = HKDF(algorithm=hashes.SHA256(), length=end, salt=None, info=self._info).derive(self._master)
        self.served = end
        return out[end - n:]


def _file_key(token: str, salt: bytes) -> bytes:
    return Scrypt(salt=salt, length=32, n=_SCRYPT_N, r=_SCRYPT_R, p=_SCRYPT_P).derive(token.encode())


def _take(rng: Callable[[int], bytes], n: int) -> bytes:
    out = bytes(rng(n))
    if len(out) != n:
        raise InputError(f"random source returned {len(out)} bytes instead of {n}")
    return out


def _write_atomically(path: Path, data: bytes) -> None:
    _make_dirs(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")  # mode 0600
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def _make_dirs(directory: Path) -> None:
    """Create ``directory`` and its missing parents, each 0700 whatever the umask (existing ones are left alone)."""
    missing = []
    while not directory.exists():
        missing.append(directory)
        if directory.parent == directory:
            break
        directory = directory.parent
    for created in reversed(missing):
        try:
            created.mkdir(mode=0o700)
        except FileExistsError:
            continue
        os.chmod(created, 0o700)
