"""The phone fast path gives exactly phonenumbers' answer wherever it answers at all."""

from __future__ import annotations

import random

import phonenumbers
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from matcher import _phone_fast as fast
from matcher.ids import _phone_to_e164, normalize

SLOW = _phone_to_e164.__wrapped__  # phonenumbers itself, no memo
REGIONS = ("CN", "US", "HK", "MO", "GB", "TW")
SEPARATORS = " -.()"


def _mismatches(cases):
    """(text, region, fast answer, slow answer) for every case the fast path answers wrongly."""
    bad, handled = [], 0
    for text, region in cases:
        got = fast.cn_mobile_e164(text, region)
        if got is fast.NOT_HANDLED:
            continue
        handled += 1
        want = SLOW(text, region)
        if got != want:
            bad.append((text, region, got, want))
    return bad, handled


def _spell(rng: random.Random, national: str) -> str:
    """One of the spellings people and exports use for an 11-digit national number."""
    a, b, c = national[:3], national[3:7], national[7:]
    lead = rng.choice(["", "", "+86", "+86 ", "86", "86 ", "0086", "0086 ", "(+86)", "(+86) ",
                       "+86-", "+ 86 ", "+(86)", "(86)", "(0086) "])
    body = rng.choice([
        national, f"{a} {b} {c}", f"{a}-{b}-{c}", f"{a}.{b}.{c}", f"({a}) {b} {c}",
        f"{a} {b}-{c}", f"{a}  {b}  {c}", f"{a}--{b}-{c}", f"{a}{b} {c}",
    ])
    text = lead + body
    if rng.random() < 0.1:  # separators in odd places
        chars = list(text)
        for _ in range(rng.randint(1, 3)):
            chars.insert(rng.randrange(len(chars) + 1), rng.choice(SEPARATORS))
        text = "".join(chars)
    return text


def _near_miss(rng: random.Random, national: str) -> str:
    """Something close to a well-formed spelling that means something else (or nothing)."""
    digits = "".join(rng.choice("0123456789") for _ in range(rng.randint(1, 16)))
    return rng.choice([
        national[:-1], national + rng.choice("0123456789"), "0" + national, "+86 0" + national,
        "086" + national, "+860086" + national, "8686" + national, "+8686" + national,
        "+852 " + national[3:], "+853 6" + national[4:], "+1 650 253 " + national[-4:],
        "010-" + national[3:], "+86 10 " + national[3:], "021 " + national[3:], "+86 " + digits,
        digits, "+" + digits, "00" + digits, "++86" + national, national[:5] + "+" + national[5:],
        national + " x12", national + "#", national + ",1", national[:3] + "/" + national[3:],
        national[:3] + "\t" + national[3:], "\uff0b86" + national, national[:-1] + "\uff11",
        "+86" + national[:6] + " " + national[6:] + "0", "2" + national[1:], "+44 " + national,
        "tel:+86" + national, national + ";ext=1",
    ])


def test_generated_corpus_matches_phonenumbers():
    rng = random.Random(20240601)
    cases = []
    for _ in range(200_000):
        # Every 5-digit prefix 1xxxx gets ~14 numbers: all table entries and their boundaries.
        national = "1" + "".join(rng.choice("0123456789") for _ in range(10))
        roll = rng.random()
        if roll < 0.70:
            text, region = _spell(rng, national), "CN"
        elif roll < 0.80:
            text, region = _spell(rng, national), rng.choice(REGIONS[1:])
        else:
            text, region = _near_miss(rng, national), rng.choice(REGIONS)
        cases.append((text, region))
    bad, handled = _mismatches(cases)
    assert not bad, bad[:20]
    assert handled > 100_000  # the fast path really answers the common shapes


_ALPHABET = "0123456789" + SEPARATORS + "+" + "#x,/;\t\uff11\uff0b\u00a0"
_NATIONAL = st.text("0123456789", min_size=11, max_size=11).map(lambda d: "1" + d[1:])


_GAP = st.sampled_from(
    [" ", "-", ".", "(", ")", " - "] * 3 + ["+", "x", "\t", "/", "#", ",", "\uff11"]
)


@st.composite
def _shaped(draw):
    # A lead and a national number with a few insertions, mostly separators the fast path
    # accepts: the fuzzer then spends its time where the fast path answers.
    national = draw(_NATIONAL)
    leads = ["", "+86", "86", "0086"] * 2 + ["+", "0", "8", "+8", "00", "+852"]
    lead = draw(st.sampled_from(leads))
    chars = list(lead + national)
    for position, gap in draw(st.lists(st.tuples(st.integers(0, 20), _GAP), max_size=4)):
        chars.insert(min(position, len(chars)), gap)
    return "".join(chars)


@settings(max_examples=2000, deadline=None)
@given(
    st.one_of(st.text(_ALPHABET, max_size=24), _shaped(), _shaped()),
    st.sampled_from(("CN", "CN", "CN") + REGIONS),
)
def test_fuzzed_strings_match_phonenumbers(text, region):
    got = fast.cn_mobile_e164(text, region)
    if got is not fast.NOT_HANDLED:
        assert got == SLOW(text, region)


def test_prefix_table_is_what_phonenumbers_says_now():
    if not fast.TABLE_IS_CHECKED_IN:
        pytest.skip(f"phonenumbers {phonenumbers.__version__} is not the table's release: the table is derived "
                    "at run time (run `python -m matcher._phone_fast` to check a new one in)")
    assert fast.derive_cn_prefixes() == fast._CN_PREFIXES


def test_common_spellings_take_the_fast_path():
    for text in ("13800138000", "+8613800138000", "8613800138000", "008613800138000",
                 "138 0013 8000", "138-0013-8000", "+86 138 0013 8000", "(+86) 138-0013-8000"):
        assert fast.cn_mobile_e164(text, "CN") == "+8613800138000", text
    assert fast.cn_mobile_e164("+86 138 0013 8000", "US") == "+8613800138000"
    assert fast.cn_mobile_e164("12000138000", "CN") is fast.NOT_HANDLED  # carrier-code range
    assert fast.cn_mobile_e164("13800138000", "US") is fast.NOT_HANDLED  # region decides


def test_overlong_spelling_falls_back():
    # phonenumbers rejects anything over 250 characters, however harmless the padding.
    text = "138" + " " * 300 + "00138000"
    assert fast.cn_mobile_e164(text, "CN") is fast.NOT_HANDLED
    assert SLOW(text, "CN") is None
    with pytest.raises(Exception):
        normalize(text, "phone")


def test_pattern_expansion():
    d = frozenset("0123456789")
    assert fast._sequences(r"1(?:[35]|4[57])\d{2}", 5) == {
        (frozenset("1"), frozenset("35"), d, d),
        (frozenset("1"), frozenset("4"), frozenset("57"), d, d),
    }
    assert fast._sequences(r"\d(?:\d{2})?", 3) == {(d,), (d, d, d)}
    with pytest.raises(ValueError):
        fast._sequences(r"1(?=2)", 3)
