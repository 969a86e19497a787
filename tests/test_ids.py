"""Identifier normalization: every spelling of one person gives one match key."""

from __future__ import annotations

import hashlib
import random

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from matcher.errors import InputError, MatcherError
from matcher.ids import (
    ID_TYPES,
    InvalidId,
    PreparedList,
    hash_kind,
    match_key,
    normalize,
    prepare,
)

CN_MOBILE = "+8613800138000"
CN_MOBILE_KEY = hashlib.sha256(CN_MOBILE.encode()).hexdigest()


def _reason(value, id_type, **kwargs) -> str:
    with pytest.raises(InvalidId) as caught:
        normalize(value, id_type, **kwargs)
    return caught.value.reason


# --- phone -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        "13800138000",
        "138 0013 8000",
        "+86 138-0013-8000",
        "008613800138000",
        "86 13800138000",
        "(+86)13800138000",
        "１３８００１３８０００",
        "  138 0013 8000\t",
        '"+86 138-0013-8000"',
        "'13800138000'",
        " \u201c(+86)13800138000\u201d ",
        "\u3000１３８ ００１３ ８０００\u3000",
    ],
)
def test_every_cn_spelling_normalizes_to_e164(raw):
    assert normalize(raw, "phone") == CN_MOBILE


@pytest.mark.parametrize("raw", ["", "   ", '""', "' '", None])
def test_blank_phone_is_empty(raw):
    assert _reason(raw, "phone") == "empty"


@pytest.mark.parametrize(
    "raw",
    [
        "12345",
        "hello",
        "1380013800",  # one digit short
        "138001380001",  # one digit long
        "+86 10 1234",  # too short for Beijing
        "650-253-0000",  # a US number is not valid under the CN default region
        "+999 1234567",  # no such country code
        "9" * 300,
    ],
)
def test_non_numbers_are_invalid_phone(raw):
    assert _reason(raw, "phone") == "invalid_phone"


def test_region_option_parses_national_numbers_of_that_country():
    assert normalize("(650) 253-0000", "phone", region="US") == "+16502530000"
    assert normalize("650.253.0000", "phone", region="us") == "+16502530000"
    # An international spelling does not depend on the region.
    assert normalize("+86 138 0013 8000", "phone", region="US") == CN_MOBILE
    assert _reason("(650) 253-0000", "phone", region="CN") == "invalid_phone"


def test_unknown_region_is_a_flag_error_not_a_row_reason():
    with pytest.raises(InputError) as caught:
        normalize("13800138000", "phone", region="XX")
    assert not isinstance(caught.value, InvalidId)
    assert "XX" in str(caught.value)


def test_invalid_result_is_not_cached_as_valid():
    # The same string asked twice, around a valid one, keeps its own answer.
    assert _reason("650-253-0000", "phone") == "invalid_phone"
    assert normalize("650-253-0000", "phone", region="US") == "+16502530000"
    assert _reason("650-253-0000", "phone") == "invalid_phone"


# --- email -----------------------------------------------------------------------------


def test_email_is_trimmed_and_lower_cased():
    assert normalize("  Alice.Smith+promo@Example.COM \n", "email") == "alice.smith+promo@example.com"


@pytest.mark.parametrize(
    "raw",
    [
        "no-at-sign",
        "@example.com",
        "alice@",
        "alice@localhost",
        "alice@@example.com",
        "alice@bob@example.com",
        "alice smith@example.com",
        "alice@exa mple.com",
        "alice@example..com",
        "alice@.example.com",
        "alice@example.com.",
        "alice@example.com'",
        "ali\x00ce@example.com",
    ],
)
def test_malformed_email_is_invalid_email(raw):
    assert _reason(raw, "email") == "invalid_email"


def test_blank_email_is_empty():
    assert _reason("  ", "email") == "empty"


# --- sha256 ----------------------------------------------------------------------------


def test_sha256_accepts_upper_case_and_returns_lower_case():
    assert normalize(f"  {CN_MOBILE_KEY.upper()} ", "sha256") == CN_MOBILE_KEY


@pytest.mark.parametrize(
    "raw", [CN_MOBILE_KEY[:-1], CN_MOBILE_KEY + "0", "g" + CN_MOBILE_KEY[1:], CN_MOBILE]
)
def test_malformed_digest_is_bad_sha256(raw):
    assert _reason(raw, "sha256") == "bad_sha256"


# --- opaque ----------------------------------------------------------------------------


def test_opaque_is_trimmed_but_otherwise_exact():
    assert normalize("  oXyZ-123 Ab  ", "opaque") == "oXyZ-123 Ab"
    assert normalize("'quoted'", "opaque") == "'quoted'"


def test_opaque_reasons():
    assert _reason(" \t ", "opaque") == "empty"
    assert normalize("x" * 256, "opaque") == "x" * 256
    assert _reason("x" * 257, "opaque") == "too_long"
    assert _reason("open\x00id", "opaque") == "invalid_opaque"
    assert _reason("open\tid", "opaque") == "invalid_opaque"
    assert _reason("open\udcffid", "opaque") == "invalid_opaque"


# --- errors, keys and DST kinds --------------------------------------------------------


def test_invalid_id_belongs_to_the_error_tree():
    with pytest.raises(InvalidId) as caught:
        normalize("nope", "email")
    assert isinstance(caught.value, InputError)
    assert isinstance(caught.value, MatcherError)
    assert caught.value.grpc_code == "INVALID_ARGUMENT"


def test_unknown_id_type_is_refused_with_the_known_types():
    with pytest.raises(InputError) as caught:
        normalize("13800138000", "mobile")
    assert not isinstance(caught.value, InvalidId)
    assert all(kind in str(caught.value) for kind in ID_TYPES)


def test_match_key_is_sha256_of_the_normalized_value():
    assert match_key("138 0013 8000", "phone") == CN_MOBILE_KEY
    assert match_key(" Bob@Example.com", "email") == hashlib.sha256(b"bob@example.com").hexdigest()
    assert match_key(" member-7 ", "opaque") == hashlib.sha256(b"member-7").hexdigest()


def test_pre_hashed_list_meets_raw_list():
    pre_hashed = hashlib.sha256(b"+8613800138000").hexdigest().upper()
    assert match_key(pre_hashed, "sha256") == match_key("+86 138-0013-8000", "phone")
    assert hash_kind("sha256") == hash_kind("phone") == "phone"
    assert hash_kind("sha256", "email") == hash_kind("email") == "email"


def test_hash_kind_names_each_raw_type_and_refuses_unknown_hashed_kinds():
    assert [hash_kind(t) for t in ("phone", "email", "opaque")] == ["phone", "email", "opaque"]
    with pytest.raises(InputError, match="opaque"):
        hash_kind("sha256", "opaque")
    with pytest.raises(InputError):
        hash_kind("md5")


# --- prepare ---------------------------------------------------------------------------


def test_prepare_counts_duplicates_across_spellings_and_keeps_the_first_label():
    rows = [
        ("+86 138-0013-8000", "store-1"),
        ("13800138000", "store-2"),  # same person, other label: duplicate, keeps store-1
        ("not a phone", "store-1"),
        ("", None),
        ("139 0013 9000", None),
        ("008613800138000", None),
        ("12345", " "),
    ]
    prepared = prepare(iter(rows), "phone")
    assert prepared.keys == [CN_MOBILE_KEY, hashlib.sha256(b"+8613900139000").hexdigest()]
    assert prepared.labels == ["store-1", "all"]
    assert prepared.duplicates == 2
    assert prepared.invalid == {"invalid_phone": 2, "empty": 1}
    assert prepared.rows == 7
    assert prepared.label_sizes == {"store-1": 1, "all": 1}


def test_prepare_of_nothing_is_empty():
    assert prepare([], "email") == PreparedList(keys=[], labels=[], invalid={}, duplicates=0, rows=0)


def test_prepare_refuses_bad_flags_before_reading_rows():
    def rows():
        raise AssertionError("rows were read")
        yield  # pragma: no cover

    with pytest.raises(InputError):
        prepare(rows(), "mobile")
    with pytest.raises(InputError):
        prepare(rows(), "phone", region="ZZ")


def _spell(digits: str, style: int) -> str:
    spellings = [
        digits,
        f"{digits[:3]} {digits[3:7]} {digits[7:]}",
        f"+86 {digits[:3]}-{digits[3:7]}-{digits[7:]}",
        "0086" + digits,
        f"(+86){digits}",
        digits.translate(str.maketrans("0123456789", "０１２３４５６７８９")),
    ]
    return spellings[style % len(spellings)]


@settings(max_examples=60, deadline=None)
@given(
    people=st.lists(st.integers(0, 10**8 - 1), min_size=1, max_size=30, unique=True),
    seed=st.integers(0, 2**32 - 1),
)
def test_prepare_finds_one_key_per_person_whatever_the_spelling(people, seed):
    rng = random.Random(seed)
    digits = [f"138{n:08d}" for n in people]  # 138 is a CN mobile prefix
    rows = [
        (d, _spell(d, rng.randrange(6)), rng.choice(["north", "south", None]))
        for d in digits
        for _ in range(rng.randint(1, 4))
    ]
    rng.shuffle(rows)
    expected: dict[str, str] = {}  # key -> label of the person's first row, in first-row order
    for d, _, label in rows:
        expected.setdefault(hashlib.sha256(f"+86{d}".encode()).hexdigest(), label or "all")

    prepared = prepare([(spelling, label) for _, spelling, label in rows], "phone")

    assert prepared.keys == list(expected)
    assert prepared.labels == list(expected.values())
    assert prepared.duplicates == len(rows) - len(digits)
    assert prepared.invalid == {}
    assert prepared.rows == len(rows)


# --- idempotence -----------------------------------------------------------------------


@settings(max_examples=300)
@given(
    address=st.emails() | st.builds(lambda a, b: f"{a}@{b}.com", st.text(min_size=1), st.text(min_size=1)),
    padding=st.sampled_from(["", " ", "\t", " \n "]),
)
def test_normalize_is_idempotent_for_valid_emails(address, padding):
    try:
        once = normalize(padding + address + padding, "email")
    except InvalidId:
        assume(False)
    assert normalize(once, "email") == once
    assert match_key(once, "email") == match_key(address, "email")


@settings(max_examples=300)
@given(value=st.text(max_size=300))
def test_normalize_is_idempotent_for_valid_opaque_ids(value):
    try:
        once = normalize(value, "opaque")
    except InvalidId:
        assume(False)
    assert normalize(once, "opaque") == once
    assert once == value.strip()
