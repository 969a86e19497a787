"""Signed notes and checkpoints: x/mod/sumdb/note and C2SP vectors, round trips, tampering."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from matcher.errors import CryptoError, InputError, VerificationError
from matcher.log.checkpoint import (
    Checkpoint,
    Signer,
    key_hash,
    open_checkpoint,
    open_note,
    parse_checkpoint,
    parse_verifier_key,
    sign_checkpoint,
)

VECTORS = json.loads((Path(__file__).parent / "vectors" / "c2sp_signed_note.json").read_text(encoding="utf-8"))
XMOD, C2SP = VECTORS["x_mod"], VECTORS["c2sp"]
PETER_VKEY = XMOD["peter_verifier_key"]
ROOT = bytes(range(32))


def fixed_rng(byte: int):
    return lambda n: bytes([byte]) * n


def sig_line_parts(note: str) -> tuple[str, bytes]:
    """(text before the signature line, raw key ID || signature) of a note with one signature."""
    text, _, line = note[:-1].rpartition("\n")
    return text + "\n", base64.b64decode(line.split(" ")[2])


# -- golang.org/x/mod/sumdb/note vectors -------------------------------------------------------------------


def test_xmod_private_key_round_trips_and_derives_the_published_verifier_key():
    signer = Signer.from_key_string(XMOD["peter_private_key"])
    assert signer.name == "PeterNeumann"
    assert signer.key_string == XMOD["peter_private_key"]
    assert signer.verifier_key == PETER_VKEY
    assert signer.key_hash.hex() == XMOD["peter_key_hash"]
    assert key_hash("PeterNeumann", b"\x01" + signer.public_key).hex() == XMOD["peter_key_hash"]


def test_xmod_sign_is_byte_identical():
    signer = Signer.from_key_string(XMOD["peter_private_key"])
    assert signer.sign(XMOD["text"]) == XMOD["signed_by_peter"]


def test_xmod_notes_open():
    assert open_note(XMOD["signed_by_peter"], PETER_VKEY) == XMOD["text"]
    assert open_note(XMOD["signed_by_peter"].encode("utf-8"), PETER_VKEY) == XMOD["text"]
    # Enoch's line is by a key we were not given: ignored, not an error.
    assert open_note(XMOD["signed_by_peter_and_enoch"], PETER_VKEY) == XMOD["text"]
    assert open_note(XMOD["signed_by_peter_and_enoch"], XMOD["enoch_verifier_key"]) == XMOD["text"]


def test_xmod_note_without_our_key_is_unknown_key():
    with pytest.raises(VerificationError, match=r"unknown key.*EnochRoot\+af0cfe78"):
        open_note(XMOD["signed_by_peter"], XMOD["enoch_verifier_key"])


@pytest.mark.parametrize("case", XMOD["malformed_notes"], ids=lambda c: c["desc"])
def test_xmod_malformed_notes(case):
    note = bytes.fromhex(case["note_hex"]) if "note_hex" in case else case["note"]
    with pytest.raises(VerificationError, match="^malformed note"):
        open_note(note, PETER_VKEY)


def test_xmod_invalid_signature():
    with pytest.raises(VerificationError, match=r"^invalid signature for key PeterNeumann\+c74f20a3$"):
        open_note(XMOD["invalid_signature_note"], PETER_VKEY)


@pytest.mark.parametrize("vkey", XMOD["bad_verifier_keys"])
def test_xmod_bad_verifier_keys(vkey):
    with pytest.raises(InputError):
        parse_verifier_key(vkey)


def test_xmod_every_mangled_verifier_key_is_rejected():
    # As TestNewVerifier: every proper substring and every single-byte increment.
    k = PETER_VKEY
    assert str(parse_verifier_key(k)) == k
    mangled = {k[i:j] for i in range(len(k) + 1) for j in range(i + 1, len(k) + 1)} - {k}
    mangled |= {k[:i] + chr(ord(k[i]) + 1) + k[i + 1 :] for i in range(len(k))}
    for bad in mangled:
        with pytest.raises(InputError):
            parse_verifier_key(bad)


def test_xmod_every_mangled_private_key_is_rejected():
    k = XMOD["peter_private_key"]
    mangled = {k[i:j] for i in range(len(k) + 1) for j in range(i + 1, len(k) + 1)} - {k}
    mangled |= {k[:i] + chr(ord(k[i]) + 1) + k[i + 1 :] for i in range(len(k))}
    for bad in mangled:
        with pytest.raises(CryptoError):
            Signer.from_key_string(bad)


# -- C2SP spec examples ------------------------------------------------------------------------------------


def test_c2sp_signed_note_example_opens():
    assert open_note(C2SP["signed_note"], C2SP["signed_note_verifier_key"]) == "This is an example message.\n"


def test_c2sp_checkpoint_example_parses_and_reencodes():
    want = C2SP["checkpoint"]
    body = C2SP["checkpoint_note"].split("\n\n")[0] + "\n"
    cp = parse_checkpoint(body)
    assert cp == Checkpoint(want["origin"], want["size"], base64.b64decode(want["root_b64"]))
    assert cp.body() == body
    # Its log key is not published in the spec, so no key we hold can open it.
    with pytest.raises(VerificationError, match="unknown key"):
        open_checkpoint(C2SP["checkpoint_note"], PETER_VKEY)


# -- Round trips ------------------------------------------------------------------------------------------------


def test_generated_signer_round_trips_a_checkpoint():
    signer = Signer.generate("matcher.example/log", rng=fixed_rng(7))
    assert Signer.generate("matcher.example/log", rng=fixed_rng(7)).key_string == signer.key_string
    assert Signer.generate("matcher.example/log", rng=fixed_rng(8)).key_string != signer.key_string
    again = Signer.from_key_string(signer.key_string)
    assert (again.name, again.public_key) == (signer.name, signer.public_key)
    cp = Checkpoint("matcher.example/log", 42, ROOT)
    note = sign_checkpoint(signer, cp)
    assert note.startswith(cp.body() + "\n\u2014 matcher.example/log ")
    assert open_checkpoint(note, signer.verifier_key, origin="matcher.example/log") == cp


@settings(max_examples=60, deadline=None)
@given(
    origin=st.text(st.characters(blacklist_categories=["Cs", "Cc"]), min_size=1, max_size=30),
    size=st.integers(0, 2**64 - 1),
    root=st.binary(min_size=32, max_size=32),
    seed=st.binary(min_size=32, max_size=32),
)
def test_any_checkpoint_round_trips(origin, size, root, seed):
    cp = Checkpoint(origin, size, root)
    assert parse_checkpoint(cp.body()) == cp
    signer = Signer.generate("log", rng=lambda n: seed)
    assert open_checkpoint(sign_checkpoint(signer, cp), signer.verifier_key) == cp


def test_body_with_blank_lines_survives():
    signer = Signer.generate("n", rng=fixed_rng(1))
    for body in ("a\n\nb\n", "a\n\n", "\n", "one\n\n\n"):
        assert open_note(signer.sign(body), signer.verifier_key) == body


def test_private_key_stays_out_of_repr():
    signer = Signer.generate("n", rng=fixed_rng(3))
    seed_b64 = signer.key_string.rsplit("+", 1)[1]
    assert seed_b64 not in repr(signer) and "PRIVATE" not in repr(signer)


# -- Tampering -------------------------------------------------------------------------------------------------


@pytest.fixture
def signed():
    signer = Signer.generate("matcher.example/log", rng=fixed_rng(9))
    return signer, sign_checkpoint(signer, Checkpoint("matcher.example/log", 1000, ROOT))


def test_altered_body_is_rejected(signed):
    signer, note = signed
    with pytest.raises(VerificationError, match="^invalid signature"):
        open_checkpoint(note.replace("\n1000\n", "\n1001\n"), signer.verifier_key)


@pytest.mark.parametrize("bit", [0, 31, 32, 100, 543])  # key ID bits 0..31, then signature bits
def test_altered_signature_is_rejected(signed, bit):
    signer, note = signed
    text, raw = sig_line_parts(note)
    raw = bytearray(raw)
    raw[bit // 8] ^= 1 << (bit % 8)
    forged = f"{text}\n\u2014 {signer.name} {base64.b64encode(bytes(raw)).decode()}\n"
    # A flip in the key ID makes it someone else's signature; a flip in the signature makes it wrong.
    with pytest.raises(VerificationError, match="unknown key" if bit < 32 else "invalid signature"):
        open_note(forged, signer.verifier_key)


def test_signature_by_another_key_with_the_same_name_is_rejected(signed):
    signer, _ = signed
    impostor = Signer.generate(signer.name, rng=fixed_rng(10))
    note = sign_checkpoint(impostor, Checkpoint("matcher.example/log", 1000, ROOT))
    with pytest.raises(VerificationError, match="only by other keys named") as err:
        open_checkpoint(note, signer.verifier_key)
    assert impostor.key_hash.hex() in str(err.value)
    # ... and the same with the impostor's key ID copied over ours: now it is a bad signature.
    text, raw = sig_line_parts(note)
    forged = f"{text}\n\u2014 {signer.name} {base64.b64encode(signer.key_hash + raw[4:]).decode()}\n"
    with pytest.raises(VerificationError, match="^invalid signature"):
        open_checkpoint(forged, signer.verifier_key)


def test_wrong_verifier_key_is_rejected(signed):
    _, note = signed
    with pytest.raises(VerificationError, match="unknown key"):
        open_checkpoint(note, PETER_VKEY)


def test_cosignatures_are_ignored_but_a_bad_line_by_our_key_is_not(signed):
    signer, note = signed
    witness = Signer.generate("witness.example", rng=fixed_rng(11))
    cosigned = note + witness.sign(note.split("\n\n")[0] + "\n").rpartition("\n\n")[2]
    assert open_checkpoint(cosigned, signer.verifier_key).size == 1000
    assert open_checkpoint(cosigned, witness.verifier_key).size == 1000
    # Two lines by our key: the first is valid, the second is not. The spec says SHOULD reject; we do.
    text, raw = sig_line_parts(note)
    bad = f"\u2014 {signer.name} {base64.b64encode(raw[:4] + bytes(64)).decode()}\n"
    with pytest.raises(VerificationError, match="^invalid signature"):
        open_checkpoint(note + bad, signer.verifier_key)


def test_missing_blank_line_is_rejected(signed):
    signer, note = signed
    with pytest.raises(VerificationError, match="no blank line"):
        open_note(note.replace("\n\n", "\n"), signer.verifier_key)


def test_body_without_trailing_newline_is_rejected(signed):
    signer, note = signed
    with pytest.raises(InputError, match="ending with a newline"):
        signer.sign("matcher.example/log\n1000\n" + base64.b64encode(ROOT).decode())
    with pytest.raises(VerificationError, match="must end with a newline"):
        parse_checkpoint("matcher.example/log\n1000\n" + base64.b64encode(ROOT).decode())
    # Without the last newline of the text, the blank line is gone too.
    text, _, sig = note.rpartition("\n\n")
    with pytest.raises(VerificationError, match="no blank line"):
        open_note(text + "\n" + sig, signer.verifier_key)


def test_sign_refuses_what_it_could_not_open():
    signer = Signer.generate("n", rng=fixed_rng(2))
    for body in ("tab\there\n", "cr\r\n", "\x00\n", "surrogate \ud800\n", b"bytes\n"):
        with pytest.raises(InputError):
            signer.sign(body)


@pytest.mark.parametrize("name", ["", "a b", "a+b", "tab\t", "nbsp\u00a0x", "\x01"])
def test_invalid_key_names_are_refused(name):
    with pytest.raises(InputError):
        Signer.generate(name, rng=fixed_rng(1))


# -- Strict checkpoint parsing ------------------------------------------------------------------------------------

GOOD_ROOT = base64.b64encode(ROOT).decode()
NONCANONICAL_ROOT = GOOD_ROOT[:-2] + chr(ord(GOOD_ROOT[-2]) + 1) + "="  # same bytes, padding bit set


@pytest.mark.parametrize(
    "body",
    [
        f"log\n01\n{GOOD_ROOT}\n",  # leading zero
        f"log\n+1\n{GOOD_ROOT}\n",
        f"log\n 1\n{GOOD_ROOT}\n",
        f"log\n1_0\n{GOOD_ROOT}\n",
        f"log\n\u0661\n{GOOD_ROOT}\n",  # ARABIC-INDIC DIGIT ONE: int() would take it
        f"log\n-1\n{GOOD_ROOT}\n",
        f"log\n{2**64}\n{GOOD_ROOT}\n",
        f"log\n\n{GOOD_ROOT}\n",
        f"\n1\n{GOOD_ROOT}\n",  # empty origin
        f"log\n1\n{base64.b64encode(ROOT[:31]).decode()}\n",  # 31 bytes
        f"log\n1\n{NONCANONICAL_ROOT}\n",
        f"log\n1\n{GOOD_ROOT.rstrip('=')}\n",  # unpadded
        f"log\n1\n{GOOD_ROOT}\nextension\n",
        f"log\n1\n{GOOD_ROOT}\n\n",
        f"log\r\n1\n{GOOD_ROOT}\n",
        f"log\n1\n{GOOD_ROOT}",
        "log\n1\n",
    ],
)
def test_malformed_checkpoint_bodies(body):
    assert base64.b64decode(NONCANONICAL_ROOT) == ROOT  # the non-canonical case really is the same root
    with pytest.raises(VerificationError, match="^malformed checkpoint"):
        parse_checkpoint(body)


def test_origin_mismatch_is_rejected(signed):
    signer, note = signed
    with pytest.raises(VerificationError, match="expected 'other.example/log'"):
        open_checkpoint(note, signer.verifier_key, origin="other.example/log")


@pytest.mark.parametrize(
    "args",
    [
        ("", 1, ROOT),
        ("a\nb", 1, ROOT),
        ("log", -1, ROOT),
        ("log", 2**64, ROOT),
        ("log", 1, ROOT[:31]),
        ("log", True, ROOT),
    ],
)
def test_checkpoint_refuses_values_it_cannot_encode(args):
    with pytest.raises(InputError):
        Checkpoint(*args)


def test_malformed_signature_lines_are_named(signed):
    signer, note = signed
    with pytest.raises(VerificationError, match="does not end with a newline"):
        open_note(note[:-1], signer.verifier_key)
    with pytest.raises(VerificationError, match="em dash"):
        open_note(note.replace("\u2014 ", "- "), signer.verifier_key)
    with pytest.raises(VerificationError, match="not '<key name>"):
        open_note(note.replace(f"\u2014 {signer.name} ", f"\u2014 {signer.name}  "), signer.verifier_key)
