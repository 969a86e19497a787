"""The ``--where`` language: which members a blind activation targets, as a boolean expression over
the audience's segment names, e.g. ``member & paid_with_platform & !favourited_mini_program``.

Grammar (whitespace is free between tokens)::

    expr    := and ( '|' and )*
    and     := unary ( '&' unary )*
    unary   := '!' unary | primary
    primary := NAME | '(' expr ')'
    NAME    := [A-Za-z_] [A-Za-z0-9_-]*

so ``!`` binds tightest, then ``&``, then ``|``, and both binary operators are left-associative:
``!a & b | c & d`` means ``((!a) & b) | (c & d)``. Every NAME must be one of the segments given to
:func:`parse`; segment ``i`` is bit ``i`` of a member's segment bits.

``&`` and ``|`` are associative, so the tree keeps a run of either as one n-ary node: ``a & (b & c)``
and ``(a & b) & c`` are the same tree. ``str()`` prints that tree with only the parentheses that
precedence needs (``a & b | !(c | d)``), and parsing the text gives back an equal tree.

Limits: at most :data:`MAX_LENGTH` characters and :data:`MAX_DEPTH` levels of nesting (each ``(``
and each ``!`` opens a level). The parser and the tree are recursive; the depth limit is what keeps
hostile input to an :class:`~matcher.errors.InputError` instead of a ``RecursionError``.
"""

from __future__ import annotations

import difflib
import string
from dataclasses import dataclass
from typing import NamedTuple, Sequence

import numpy as np

from matcher.errors import InputError

__all__ = ["MAX_DEPTH", "MAX_LENGTH", "Expr", "parse"]

MAX_LENGTH = 4096
MAX_DEPTH = 64
# Segment bits are one 64-bit word per member.
_MAX_SEGMENTS = 64

_NAME_START = frozenset(string.ascii_letters + "_")
_NAME_REST = _NAME_START | frozenset(string.digits + "-")
_PUNCTUATION = frozenset("&|!()")


class Expr:
    """An immutable parsed ``--where`` expression; build one with :func:`parse`."""

    __slots__ = ()
    _PREC = 0

    def evaluate(self, bits: int) -> bool:
        """Whether a member whose segment bits are ``bits`` (bit i = segment i) is selected."""
        raise NotImplementedError

    def mask_filter(self, bits: np.ndarray) -> np.ndarray:
        """:meth:`evaluate` over an integer array of segment bits; returns a bool array of its shape."""
        arr = np.asarray(bits)
        if arr.dtype.kind not in "ui":
            raise InputError(f"segment bits must be an integer array, not {arr.dtype}")
        # int64 is how SQLite hands the bits back; the cast keeps bit 63 as bit 63.
        return self._mask(arr.astype(np.uint64, copy=False))

    def segments_used(self) -> frozenset[str]:
        raise NotImplementedError

    def __str__(self) -> str:
        text = self._text(" ")
        # Spaces can triple the length of a long chain; without them the text is never longer than
        # what was parsed, so it always parses back.
        return text if len(text) <= MAX_LENGTH else self._text("")

    def _mask(self, bits: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _text(self, sp: str) -> str:
        raise NotImplementedError

    def _inside(self, prec: int, sp: str) -> str:
        """Text of this node as an operand of an operator of precedence ``prec``."""
        text = self._text(sp)
        return f"({text})" if self._PREC < prec else text


@dataclass(frozen=True, slots=True)
class _Segment(Expr):
    name: str
    bit: int
    _PREC = 4

    def evaluate(self, bits: int) -> bool:
        return bool((bits >> self.bit) & 1)

    def _mask(self, bits: np.ndarray) -> np.ndarray:
        return ((bits >> np.uint64(self.bit)) & np.uint64(1)).astype(bool)

    def segments_used(self) -> frozenset[str]:
        return frozenset((self.name,))

    def _text(self, sp: str) -> str:
        return self.name


@dataclass(frozen=True, slots=True)
class _Not(Expr):
    operand: Expr
    _PREC = 3

    def evaluate(self, bits: int) -> bool:
        return not self.operand.evaluate(bits)

    def _mask(self, bits: np.ndarray) -> np.ndarray:
        return ~self.operand._mask(bits)

    def segments_used(self) -> frozenset[str]:
        return self.operand.segments_used()

    def _text(self, sp: str) -> str:
        return "!" + self.operand._inside(self._PREC, sp)


@dataclass(frozen=True, slots=True)
class _And(Expr):
    operands: tuple[Expr, ...]
    _PREC = 2

    def evaluate(self, bits: int) -> bool:
        return all(op.evaluate(bits) for op in self.operands)

    def _mask(self, bits: np.ndarray) -> np.ndarray:
        out = self.operands[0]._mask(bits)
        for op in self.operands[1:]:
            out &= op._mask(bits)  # in place is safe: every _mask returns a fresh array
        return out

    def segments_used(self) -> frozenset[str]:
        return frozenset().union(*(op.segments_used() for op in self.operands))

    def _text(self, sp: str) -> str:
        return f"{sp}&{sp}".join(op._inside(self._PREC, sp) for op in self.operands)


@dataclass(frozen=True, slots=True)
class _Or(Expr):
    operands: tuple[Expr, ...]
    _PREC = 1

    def evaluate(self, bits: int) -> bool:
        return any(op.evaluate(bits) for op in self.operands)

    def _mask(self, bits: np.ndarray) -> np.ndarray:
        out = self.operands[0]._mask(bits)
        for op in self.operands[1:]:
            out |= op._mask(bits)
        return out

    def segments_used(self) -> frozenset[str]:
        return frozenset().union(*(op.segments_used() for op in self.operands))

    def _text(self, sp: str) -> str:
        return f"{sp}|{sp}".join(op._inside(self._PREC, sp) for op in self.operands)


def parse(text: str, segments: Sequence[str]) -> Expr:
    """Parse a ``--where`` expression over ``segments`` (segment i is bit i).

    Raises :class:`InputError` naming the problem and its 0-based character position.
    """
    # Checked before tokenizing, so a huge input costs nothing.
    if len(text) > MAX_LENGTH:
        raise InputError(f"expression is longer than {MAX_LENGTH} characters")
    index = _segment_index(segments)
    tokens = _tokenize(text)
    if tokens[0].kind == "end":
        raise InputError("empty expression")
    return _Parser(tokens, index, list(segments)).parse()


def _segment_index(segments: Sequence[str]) -> dict[str, int]:
    if len(segments) > _MAX_SEGMENTS:
        raise InputError(f"{len(segments)} segments; at most {_MAX_SEGMENTS} fit in the segment bits")
    index = {name: i for i, name in enumerate(segments)}
    if len(index) != len(segments):
        raise InputError("segment names must be distinct")
    return index


class _Token(NamedTuple):
    kind: str  # "name", "end", or the punctuation character itself
    text: str
    pos: int


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch.isspace():
            i += 1
        elif ch in _PUNCTUATION:
            tokens.append(_Token(ch, ch, i))
            i += 1
        elif ch in _NAME_START:
            start = i
            i += 1
            while i < n and text[i] in _NAME_REST:
                i += 1
            tokens.append(_Token("name", text[start:i], start))
        else:
            raise InputError(f"unexpected character {ch!r} at position {i}")
    # The end token sits one past the last character, so "a &" reports position 3.
    tokens.append(_Token("end", "", n))
    return tokens


def _join(cls: type[_And] | type[_Or], parts: list[Expr]) -> Expr:
    if len(parts) == 1:
        return parts[0]
    # Splice same-operator children in, so the tree (and its str) doesn't depend on grouping.
    flat: list[Expr] = []
    for part in parts:
        flat.extend(part.operands if isinstance(part, cls) else (part,))
    return cls(tuple(flat))


class _Parser:
    """Recursive descent over the grammar in the module docstring; ``depth`` counts open levels."""

    def __init__(self, tokens: list[_Token], index: dict[str, int], segments: list[str]):
        self._tokens = tokens
        self._at = 0
        self._index = index
        self._segments = segments

    def parse(self) -> Expr:
        expr = self._or(0)
        tok = self._peek()
        if tok.kind == ")":
            raise InputError(f"unbalanced ')' at position {tok.pos}")
        if tok.kind != "end":
            raise InputError(f"expected '&', '|' or end of expression at position {tok.pos}")
        return expr

    def _peek(self) -> _Token:
        return self._tokens[self._at]

    def _or(self, depth: int) -> Expr:
        parts = [self._and(depth)]
        while self._peek().kind == "|":
            self._at += 1
            parts.append(self._and(depth))
        return _join(_Or, parts)

    def _and(self, depth: int) -> Expr:
        parts = [self._unary(depth)]
        while self._peek().kind == "&":
            self._at += 1
            parts.append(self._unary(depth))
        return _join(_And, parts)

    def _unary(self, depth: int) -> Expr:
        tok = self._peek()
        if tok.kind != "!":
            return self._primary(depth)
        self._enter(depth, tok)
        self._at += 1
        return _Not(self._unary(depth + 1))

    def _primary(self, depth: int) -> Expr:
        tok = self._peek()
        if tok.kind == "name":
            self._at += 1
            return self._segment(tok)
        if tok.kind != "(":
            raise InputError(f"expected a segment name or '(' at position {tok.pos}")
        self._enter(depth, tok)
        self._at += 1
        inner = self._or(depth + 1)
        close = self._peek()
        if close.kind == "end":
            # Point at the '(' left open: the end of the text says nothing about which one.
            raise InputError(f"unbalanced '(' at position {tok.pos}")
        if close.kind != ")":
            raise InputError(f"expected '&', '|' or ')' at position {close.pos}")
        self._at += 1
        return inner

    def _enter(self, depth: int, tok: _Token) -> None:
        if depth >= MAX_DEPTH:
            raise InputError(f"nesting deeper than {MAX_DEPTH} at position {tok.pos}")

    def _segment(self, tok: _Token) -> _Segment:
        bit = self._index.get(tok.text)
        if bit is not None:
            return _Segment(tok.text, bit)
        known = ", ".join(self._segments) or "none"
        close = difflib.get_close_matches(tok.text, self._segments, n=1)
        raise InputError(f"unknown segment {tok.text!r} at position {tok.pos} (segments: {known})",
                         hint=f"did you mean {close[0]!r}?" if close else None)
