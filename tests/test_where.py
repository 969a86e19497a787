"""The --where language: precedence, errors with positions, limits, and evaluation against a truth table."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from matcher.errors import InputError
from matcher.where import MAX_DEPTH, MAX_LENGTH, parse

S = ("a", "b", "c", "d")
SEGMENTS = ("member", "paid_with_platform", "favourited_mini_program", "holds-coupon")
ALL_BITS = range(1 << len(S))


def table(text: str) -> list[bool]:
    expr = parse(text, S)
    return [expr.evaluate(bits) for bits in ALL_BITS]


def error(text: str, segments=S) -> InputError:
    with pytest.raises(InputError) as caught:
        parse(text, segments)
    return caught.value


# --- precedence, associativity, parentheses -------------------------------------------------

def test_and_binds_tighter_than_or():
    assert parse("a | b & c", S) == parse("a | (b & c)", S)
    assert parse("a | b & c", S) != parse("(a | b) & c", S)
    # a alone: a | (b & c) holds, (a | b) & c does not.
    assert parse("a | b & c", S).evaluate(0b001) is True
    assert parse("(a | b) & c", S).evaluate(0b001) is False


def test_not_binds_tighter_than_and():
    assert parse("!a & b", S) == parse("(!a) & b", S)
    assert parse("!a & b", S) != parse("!(a & b)", S)
    assert parse("!a & b", S).evaluate(0b00) is False
    assert parse("!(a & b)", S).evaluate(0b00) is True


def test_left_associativity():
    assert parse("a & b & c", S) == parse("(a & b) & c", S)
    assert parse("a | b | c", S) == parse("(a | b) | c", S)
    assert parse("a | b & c | d", S) == parse("(a | (b & c)) | d", S)
    assert parse("a & b | c & d", S) == parse("(a & b) | (c & d)", S)


def test_double_and_triple_negation():
    a = table("a")
    assert table("!!a") == a
    assert table("!!!a") == [not x for x in a]
    assert str(parse("!!a", S)) == "!!a"


def test_parentheses_change_meaning():
    expected = [((bits & 1 or bits & 2) and not bits & 4) for bits in ALL_BITS]
    assert table("(a | b) & !c") == [bool(x) for x in expected]
    assert table("((a | b)) & (!(c))") == table("(a | b) & !c")


def test_whitespace_is_free():
    assert parse("  !a&(b|c)\n\t", S) == parse("!a & (b | c)", S)


def test_hyphenated_and_real_segment_names():
    expr = parse("member & paid_with_platform & !favourited_mini_program | holds-coupon", SEGMENTS)
    assert expr.evaluate(0b0011) is True
    assert expr.evaluate(0b0111) is False
    assert expr.evaluate(0b1000) is True
    assert expr.segments_used() == frozenset(SEGMENTS)


def test_segments_used_only_names_referenced():
    assert parse("a & !(b | a)", S).segments_used() == frozenset({"a", "b"})


def test_expr_is_immutable_and_hashable():
    expr = parse("a & b", S)
    with pytest.raises(AttributeError):
        expr.operands = ()
    assert len({expr, parse("(a) & (b)", S), parse("b & a", S)}) == 2


def test_str_is_canonical():
    assert str(parse("((a)&(b&c))|(!(d))", S)) == "a & b & c | !d"
    assert str(parse("!(a | b) & (c | d)", S)) == "!(a | b) & (c | d)"


# --- errors and their positions --------------------------------------------------------------

@pytest.mark.parametrize("text, message", [
    ("", "empty expression"),
    ("  \t\n ", "empty expression"),
    ("a b", "expected '&', '|' or end of expression at position 2"),
    ("a &", "expected a segment name or '(' at position 3"),
    ("a & & b", "expected a segment name or '(' at position 4"),
    ("a & (b) |", "expected a segment name or '(' at position 9"),
    ("()", "expected a segment name or '(' at position 1"),
    ("| a", "expected a segment name or '(' at position 0"),
    ("a & b) | c", "unbalanced ')' at position 5"),
    ("a | (b & c))", "unbalanced ')' at position 11"),
    ("(a & b", "unbalanced '(' at position 0"),
    ("a & ((b) | c", "unbalanced '(' at position 4"),
    ("(a b)", "expected '&', '|' or ')' at position 3"),
    ("a # b", "unexpected character '#' at position 2"),
    ("a && b", "expected a segment name or '(' at position 3"),
    ("1a", "unexpected character '1' at position 0"),
    ("-a", "unexpected character '-' at position 0"),
])
def test_syntax_errors_name_problem_and_position(text, message):
    assert error(text).message == message


def test_unknown_segment_lists_the_known_ones():
    err = error("member & favorited", SEGMENTS)
    assert err.message == ("unknown segment 'favorited' at position 9 (segments: member, "
                           "paid_with_platform, favourited_mini_program, holds-coupon)")


def test_unknown_segment_suggests_a_close_name():
    err = error("member & !paid_with_platfrom", SEGMENTS)
    assert "at position 10" in err.message
    assert err.hint == "did you mean 'paid_with_platform'?"
    assert error("e", S).hint is None


def test_trailing_hyphen_is_part_of_the_name():
    assert error("holds- & member", SEGMENTS).message.startswith("unknown segment 'holds-' at position 0")


def test_bad_segment_lists():
    assert "distinct" in error("a", ("a", "b", "a")).message
    assert "65 segments" in error("s0", [f"s{i}" for i in range(65)]).message


# --- limits ------------------------------------------------------------------------------------

def test_long_input_is_refused_before_parsing():
    text = "a & " * 2500 + "a"  # 10,001 characters
    assert error(text).message == f"expression is longer than {MAX_LENGTH} characters"
    assert error("a" + " " * MAX_LENGTH).message == f"expression is longer than {MAX_LENGTH} characters"
    assert parse("a" + " " * (MAX_LENGTH - 1), S) == parse("a", S)


def test_longest_flat_chain_parses_and_evaluates():
    # 2048 operands: flat, so nothing about it recurses.
    text = "&".join(["a"] * 2048)
    assert len(text) <= MAX_LENGTH
    expr = parse(text, S)
    assert expr.evaluate(0b1) is True and expr.evaluate(0b10) is False
    # The spaced form would be over the limit, so str() drops the spaces to stay parseable.
    assert str(expr) == text
    assert parse(str(expr), S) == expr
    assert str(parse("a&b", S)) == "a & b"


@pytest.mark.parametrize("text", [
    "(" * 1000 + "a" + ")" * 1000,
    "!" * 1000 + "a",
    "(!" * 500 + "a" + ")" * 500,
])
def test_deep_nesting_is_an_input_error_not_a_recursion_error(text):
    assert error(text).message == f"nesting deeper than {MAX_DEPTH} at position {MAX_DEPTH}"


def test_nesting_up_to_the_limit_works_everywhere():
    assert parse("(" * MAX_DEPTH + "a" + ")" * MAX_DEPTH, S) == parse("a", S)
    assert "nesting deeper" in error("(" * (MAX_DEPTH + 1) + "a" + ")" * (MAX_DEPTH + 1)).message
    # The deepest tree the limit allows: alternating operators, so nothing flattens.
    text = "a"
    for level in range(MAX_DEPTH):
        text = f"{'ab'[level % 2]} {'&|'[level % 2]} ({text})"
    expr = parse(text, S)
    assert parse(str(expr), S) == expr
    assert hash(expr) == hash(parse(str(expr), S))
    assert list(expr.mask_filter(np.arange(16, dtype=np.uint64))) == [expr.evaluate(b) for b in ALL_BITS]


# --- bits ------------------------------------------------------------------------------------

def test_bit_63_in_evaluate_and_mask_filter():
    names = [f"s{i}" for i in range(64)]
    expr = parse("s63 & !s0", names)
    assert expr.evaluate(1 << 63) is True
    assert expr.evaluate((1 << 63) | 1) is False
    assert list(expr.mask_filter(np.array([1 << 63, (1 << 63) | 1, 0], dtype=np.uint64))) == [True, False, False]
    # SQLite hands the bits back as signed int64: bit 63 is the sign bit.
    assert list(expr.mask_filter(np.array([-(1 << 63), -1], dtype=np.int64))) == [True, False]


def test_mask_filter_keeps_shape_and_rejects_non_integers():
    out = parse("a | b", S).mask_filter(np.arange(8, dtype=np.uint64).reshape(2, 4))
    assert out.dtype == np.bool_ and out.tolist() == [[False, True, True, True], [False, True, True, True]]
    with pytest.raises(InputError):
        parse("a", S).mask_filter(np.array([1.0]))


# --- random trees against a brute-force truth table ------------------------------------------

_PREC = {"or": 1, "and": 2, "not": 3, "seg": 4}

trees = st.recursive(
    st.integers(0, len(S) - 1).map(lambda i: ("seg", i)),
    lambda kids: st.one_of(kids.map(lambda t: ("not", t)),
                           st.tuples(st.sampled_from(["and", "or"]), kids, kids)),
    max_leaves=16,
)
spaces = st.sampled_from(["", " ", " \t\n "])


def truth(tree, bits: int) -> bool:
    kind = tree[0]
    if kind == "seg":
        return bool(bits >> tree[1] & 1)
    if kind == "not":
        return not truth(tree[1], bits)
    left, right = truth(tree[1], bits), truth(tree[2], bits)
    return (left and right) if kind == "and" else (left or right)


def leaves(tree) -> set[str]:
    return {S[tree[1]]} if tree[0] == "seg" else set().union(*map(leaves, tree[1:]))


def full(tree, sp: str) -> str:
    """Every binary node in parentheses: relies on nothing but the parentheses."""
    kind = tree[0]
    if kind == "seg":
        return S[tree[1]]
    if kind == "not":
        return f"!{sp}{full(tree[1], sp)}"
    op = "&" if kind == "and" else "|"
    return f"({sp}{full(tree[1], sp)}{sp}{op}{sp}{full(tree[2], sp)}{sp})"


def minimal(tree, sp: str) -> str:
    """Only the parentheses precedence and left-associativity need: relies on the parser's rules."""
    kind = tree[0]
    if kind == "seg":
        return S[tree[1]]
    p = _PREC[kind]
    if kind == "not":
        sub = minimal(tree[1], sp)
        return f"!{sp}({sub})" if _PREC[tree[1][0]] < p else f"!{sp}{sub}"
    left, right = minimal(tree[1], sp), minimal(tree[2], sp)
    if _PREC[tree[1][0]] < p:
        left = f"({left})"
    if _PREC[tree[2][0]] <= p:  # a same-operator right child needs them under left-associativity
        right = f"({right})"
    op = "&" if kind == "and" else "|"
    return f"{left}{sp}{op}{sp}{right}"


@settings(max_examples=300, deadline=None)
@given(tree=trees, sp=spaces)
def test_evaluate_matches_truth_table(tree, sp):
    expected = [truth(tree, bits) for bits in ALL_BITS]
    for text in (full(tree, sp), minimal(tree, sp)):
        assert [parse(text, S).evaluate(bits) for bits in ALL_BITS] == expected, text


@settings(max_examples=200, deadline=None)
@given(tree=trees, sp=spaces, high=st.integers(0, (1 << 64) - 1))
def test_mask_filter_equals_evaluate(tree, sp, high):
    expr = parse(minimal(tree, sp), S)
    # Bits above the 4 segments must not matter.
    bits = [b | (high & ~0xF) for b in ALL_BITS]
    out = expr.mask_filter(np.array(bits, dtype=np.uint64))
    assert out.dtype == np.bool_
    assert out.tolist() == [expr.evaluate(b) for b in bits] == [truth(tree, b) for b in ALL_BITS]


@settings(max_examples=200, deadline=None)
@given(tree=trees, sp=spaces)
def test_str_round_trips_and_precedence_agrees_with_parentheses(tree, sp):
    expr = parse(full(tree, sp), S)
    # Same tree whether written with every parenthesis or only the needed ones.
    assert parse(minimal(tree, sp), S) == expr
    assert parse(str(expr), S) == expr
    assert str(parse(str(expr), S)) == str(expr)
    assert expr.segments_used() == leaves(tree)
