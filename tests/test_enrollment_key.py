"""The merchant's enrollment key: stable scalars, encrypted at rest, never silently replaced."""

from __future__ import annotations

import json
import os
import random
import stat
import subprocess
import sys

import pytest

from matcher.crypto import group
from matcher.errors import InputError
from matcher_client import enrollment_key
from matcher_client.enrollment_key import EnrollmentKey, default_path

TOKEN = "mt_test_token_0123456789abcdef"
STREAMS = ("matched", "member", "paid_with_platform", "holds_coupon")
PRODUCTION_N = enrollment_key._SCRYPT_N  # read before any fixture lowers it


@pytest.fixture(autouse=True)
def cheap_scrypt(monkeypatch):
    monkeypatch.setattr(enrollment_key, "_SCRYPT_N", 2**4)


def seeded(seed: int):
    rand = random.Random(seed)
    return lambda n: rand.randbytes(n)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_production_cost_is_scrypt_2_15(tmp_path, monkeypatch):
    assert PRODUCTION_N == 2**15 and (enrollment_key._SCRYPT_R, enrollment_key._SCRYPT_P) == (8, 1)
    monkeypatch.setattr(enrollment_key, "_SCRYPT_N", PRODUCTION_N)
    created = EnrollmentKey.load_or_create(tmp_path / "a.key", TOKEN)
    assert EnrollmentKey.load_or_create(tmp_path / "a.key", TOKEN).scalar("matched") == created.scalar("matched")


def test_create_then_load_gives_the_same_key_and_scalars(tmp_path):
    path = tmp_path / "a.key"
    created = EnrollmentKey.load_or_create(path, TOKEN)
    loaded = EnrollmentKey.load_or_create(path, TOKEN)
    assert len(created.key_id) == 16 and loaded.key_id == created.key_id
    for stream in STREAMS:
        assert loaded.scalar(stream) == created.scalar(stream) == created.scalar(stream)
        assert len(created.scalar(stream)) == 32


def test_scalars_are_fixed_by_the_master_secret(tmp_path):
    # Same rng -> same master -> same scalars, in another file and (by construction) another process.
    one = EnrollmentKey.load_or_create(tmp_path / "one.key", TOKEN, rng=seeded(7))
    two = EnrollmentKey.load_or_create(tmp_path / "two.key", TOKEN, rng=seeded(7))
    assert one.key_id == two.key_id
    assert [one.scalar(s) for s in STREAMS] == [two.scalar(s) for s in STREAMS]


def test_scalars_differ_per_stream_and_per_key(tmp_path):
    one = EnrollmentKey.load_or_create(tmp_path / "one.key", TOKEN)
    two = EnrollmentKey.load_or_create(tmp_path / "two.key", TOKEN)
    assert one.key_id != two.key_id
    scalars = [key.scalar(s) for key in (one, two) for s in STREAMS]
    assert len(set(scalars)) == len(scalars)


def test_base_is_the_scalar_times_g(tmp_path):
    key = EnrollmentKey.load_or_create(tmp_path / "a.key", TOKEN)
    for stream in STREAMS:
        assert key.base(stream) == group.base_mult(key.scalar(stream))


def test_wrong_token_is_an_error_and_leaves_the_file_alone(tmp_path):
    path = tmp_path / "a.key"
    EnrollmentKey.load_or_create(path, TOKEN)
    before = path.read_bytes()
    with pytest.raises(InputError) as err:
        EnrollmentKey.load_or_create(path, "mt_another_token")
    assert str(path) in err.value.message and "does not decrypt" in err.value.message
    assert f"delete {path}" in err.value.hint and "re-enrolls" in err.value.hint
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.key"]


def test_an_altered_key_id_does_not_decrypt(tmp_path):
    path = tmp_path / "a.key"
    EnrollmentKey.load_or_create(path, TOKEN)
    record = json.loads(path.read_text())
    record["key_id"] = "00" * 16
    path.write_text(json.dumps(record))
    with pytest.raises(InputError, match="does not decrypt"):
        EnrollmentKey.load_or_create(path, TOKEN)


@pytest.mark.parametrize("content", [
    b"", b"not json", b"\xff\xfe", b"[1, 2]", b'{"version": 1}',
    b'{"version": 1, "key_id": "zz", "salt": "", "nonce": "", "ciphertext": ""}',
    b'{"version": 1, "key_id": "00", "salt": "00", "nonce": "00", "ciphertext": "00"}',
])
def test_a_corrupt_file_is_an_error_naming_it(tmp_path, content):
    path = tmp_path / "a.key"
    path.write_bytes(content)
    with pytest.raises(InputError, match="is corrupt") as err:
        EnrollmentKey.load_or_create(path, TOKEN)
    assert str(path) in err.value.message and f"delete {path}" in err.value.hint
    assert path.read_bytes() == content


def test_an_unknown_version_is_an_error(tmp_path):
    path = tmp_path / "a.key"
    EnrollmentKey.load_or_create(path, TOKEN)
    record = json.loads(path.read_text())
    record["version"] = 2
    path.write_text(json.dumps(record))
    with pytest.raises(InputError, match="unsupported version 2"):
        EnrollmentKey.load_or_create(path, TOKEN)


def test_file_is_0600_in_dirs_created_0700(tmp_path):
    old = os.umask(0o022)
    try:
        path = tmp_path / "home" / "enrollment" / "a.key"
        EnrollmentKey.load_or_create(path, TOKEN)
    finally:
        os.umask(old)
    assert mode(path) == 0o600
    assert mode(path.parent) == 0o700 and mode(path.parent.parent) == 0o700
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.key"]  # no temp file left
    record = json.loads(path.read_bytes())
    assert sorted(record) == ["ciphertext", "key_id", "nonce", "salt", "version"] and record["version"] == 1


def test_a_readable_file_still_loads_and_is_tightened(tmp_path):
    path = tmp_path / "a.key"
    created = EnrollmentKey.load_or_create(path, TOKEN)
    os.chmod(path, 0o644)
    assert EnrollmentKey.load_or_create(path, TOKEN).key_id == created.key_id
    assert mode(path) == 0o600


def test_the_file_holds_no_secret(tmp_path):
    path = tmp_path / "a.key"
    key = EnrollmentKey.load_or_create(path, TOKEN)
    data = path.read_bytes()
    secrets = [key._master] + [key.scalar(s) for s in STREAMS]
    for secret in secrets:
        assert secret not in data
        assert secret.hex().encode() not in data.lower()
    assert TOKEN.encode() not in data
    assert key._master.hex() not in repr(key)


def test_default_path_is_per_server_and_account_and_hides_both(monkeypatch, tmp_path):
    monkeypatch.delenv("MATCHER_CLIENT_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    a = default_path("platform.example:50051", TOKEN)
    assert a.parent == tmp_path / ".matcher-client" / "enrollment"
    assert a.suffix == ".key" and len(a.stem) == 32
    assert default_path("platform.example:50051", TOKEN) == a
    assert default_path("other.example:50051", TOKEN) != a
    assert default_path("platform.example:50051", "mt_another_token") != a
    assert TOKEN not in str(a) and "platform" not in str(a)


def test_matcher_client_home_is_respected(monkeypatch, tmp_path):
    monkeypatch.setenv("MATCHER_CLIENT_HOME", str(tmp_path / "mc"))
    path = default_path("platform.example:50051", TOKEN)
    assert path.parent == tmp_path / "mc" / "enrollment"
    key = EnrollmentKey.load_or_create(path, TOKEN)
    assert path.exists() and mode(tmp_path / "mc") == 0o700
    assert EnrollmentKey.load_or_create(default_path("platform.example:50051", TOKEN), TOKEN).key_id == key.key_id


def test_hkdf_stream_serves_one_expansion_in_order():
    master, info = bytes(range(32)), b"info"
    whole = enrollment_key._HkdfStream(master, info)(100)
    parts = enrollment_key._HkdfStream(master, info)
    assert parts(32) + parts(5) + parts(63) == whole


def test_an_empty_token_is_refused(tmp_path):
    with pytest.raises(InputError, match="token"):
        EnrollmentKey.load_or_create(tmp_path / "a.key", "")
    assert not (tmp_path / "a.key").exists()


def test_scalar_is_the_first_32_hkdf_bytes():
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    master = bytes(range(32))
    key = EnrollmentKey(bytes(16), master)
    info = b"matcher unbalanced a_s v1\x00matched"
    assert key.scalar("matched") == HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(master)


def test_another_process_derives_the_same_scalars(tmp_path):
    path = tmp_path / "a.key"
    key = EnrollmentKey.load_or_create(path, TOKEN)
    code = ("import sys; from matcher_client import enrollment_key as e; e._SCRYPT_N = 2**4; "
            "k = e.EnrollmentKey.load_or_create(sys.argv[1], sys.argv[2]); "
            "print(k.key_id.hex(), *(k.scalar(s).hex() for s in sys.argv[3:]))")
    out = subprocess.run([sys.executable, "-c", code, str(path), TOKEN, *STREAMS],
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == [key.key_id.hex(), *(key.scalar(s).hex() for s in STREAMS)]


def test_a_lazy_key_names_the_file_key_and_decrypts_only_when_used(tmp_path):
    from matcher_client.enrollment_key import LazyEnrollmentKey

    path = tmp_path / "k" / "lazy.key"
    lazy = LazyEnrollmentKey(path, "tok")
    assert not path.exists()  # nothing written (no scrypt) until a scalar is needed
    scalar = lazy.scalar("matched")
    assert path.exists()
    again = LazyEnrollmentKey(path, "tok")
    assert again.key_id == lazy.key_id
    assert EnrollmentKey.load_or_create(path, "tok").scalar("matched") == scalar == again.scalar("matched")
    with pytest.raises(InputError, match="does not decrypt"):
        LazyEnrollmentKey(path, "other").scalar("matched")
