"""Fast path for the common spellings of Chinese mobile numbers, ahead of ``phonenumbers``.

``phonenumbers.parse`` + ``is_valid_number`` costs ~30 µs a row. Almost every row of a Chinese
merchant's list is one of a few shapes of an 11-digit mobile number, so :func:`cn_mobile_e164`
answers those from a table and returns :data:`NOT_HANDLED` for anything else, which the caller
sends to the slow path. It must never give a different answer from the slow path.

Accepted: after deleting ``' '``, ``'-'``, ``'.'``, ``'('`` and ``')'``, the text is ``N``,
``86N`` or ``0086N`` with region CN, or ``+86N`` with any region (after a ``+`` phonenumbers
ignores the region), where ``N`` is 11 ASCII digits starting with ``1`` whose leading digits are
in :data:`_CN_PREFIXES`; the text is also at most 40 characters long.

:data:`_CN_PREFIXES` says, for a digit prefix, that *every* 11-digit ``N`` starting with it is
valid (True) or that none is (False). Prefixes where validity or parsing depends on later digits
are absent, so those numbers fall back. :func:`derive_cn_prefixes` computes the table from the
installed phonenumbers' CN metadata (``python -m matcher._phone_fast`` prints it); a test checks
that the result equals the table below. The table is used only with the phonenumbers version it
was derived from: any other version turns the fast path off (correct, just slow) until someone
regenerates it and the differential tests pass again.
"""

from __future__ import annotations

import itertools
import random
import re

import phonenumbers

NOT_HANDLED = object()

_TABLE_PHONENUMBERS_VERSION = "9.0.43"
# fmt: off
_CN_PREFIXES: dict[str, bool] = {
    "10": False, "13": True, "140": False, "141": False, "142": False, "143": False,
    "144": False, "145": True, "146": False, "147": True, "148": False, "149": False,
    "150": True, "151": True, "152": True, "153": True, "154": False, "155": True,
    "156": True, "157": True, "158": True, "159": True, "160": False, "1610": True,
    "1611": False, "1612": False, "1613": False, "1614": False, "1615": False, "1616": False,
    "1617": False, "1618": False, "1619": False, "162": True, "163": False, "164": False,
    "165": True, "166": True, "167": True, "168": False, "169": False, "170": True,
    "171": True, "172": True, "173": True, "17400": True, "17401": True, "17402": True,
    "17403": True, "17404": True, "17405": True, "17406": False, "17407": False,
    "17408": False, "17409": False, "1741": False, "1742": False, "1743": False,
    "1744": False, "1745": False, "1746": False, "1747": False, "1748": False, "1749": False,
    "175": True, "176": True, "177": True, "178": True, "18": True, "190": True, "191": True,
    "192": True, "193": True, "194": False, "195": True, "196": True, "197": True,
    "198": True, "199": True,
}
# fmt: on

# The checked-in table belongs to one phonenumbers release; under another the table is derived
# from the installed metadata on first use (0.1 s), and the differential tests hold it to account.
TABLE_IS_CHECKED_IN = phonenumbers.__version__ == _TABLE_PHONENUMBERS_VERSION

_NATIONAL_LENGTH = 11
_MAX_PREFIX = 5  # the longest prefix derive_cn_prefixes looks at
# phonenumbers rejects inputs over 250 characters whatever they contain; real well-formed
# spellings are under 25, so longer text simply takes the slow path.
_MAX_TEXT = 40
# re.ASCII: \d must not match other scripts' digits (those take the slow path).
_SHAPE = re.compile(r"(\+86|0086|86)?(1\d{10})", re.ASCII)


def _expand(prefixes: dict[str, bool], length: int) -> dict[str, bool]:
    # One dict lookup per row: re-key every entry by all its extensions to ``length`` digits.
    out: dict[str, bool] = {}
    for prefix, valid in prefixes.items():
        for tail in itertools.product("0123456789", repeat=length - len(prefix)):
            out[prefix + "".join(tail)] = valid
    return out


_verdicts: tuple[dict[str, bool], int] | None = None


def _table() -> tuple[dict[str, bool], int]:
    """Verdicts keyed by a fixed number of leading digits, and that number."""
    global _verdicts
    if _verdicts is None:
        try:
            prefixes = _CN_PREFIXES if TABLE_IS_CHECKED_IN else derive_cn_prefixes()
        except AssertionError:  # CN's rules changed shape: no fast path until someone looks
            prefixes = {}
        length = max(map(len, prefixes), default=1)
        _verdicts = (_expand(prefixes, length), length)
    return _verdicts


def cn_mobile_e164(text: str, region: str):
    """E.164 string, None (invalid) or :data:`NOT_HANDLED`; exactly what the slow path says."""
    if len(text) > _MAX_TEXT:
        return NOT_HANDLED
    # Chained replace: several times faster than str.translate for these short strings.
    compact = text.replace(" ", "").replace("-", "").replace(".", "")
    compact = compact.replace("(", "").replace(")", "")
    match = _SHAPE.fullmatch(compact)
    if match is None:
        return NOT_HANDLED
    lead, national = match.groups()
    # Without a '+' the meaning of the digits depends on the region; only CN's is verified.
    if region != "CN" and lead != "+86":
        return NOT_HANDLED
    verdicts, length = _table()
    valid = verdicts.get(national[:length])
    if valid is None:
        return NOT_HANDLED
    return "+86" + national if valid else None


# --- deriving the table from phonenumbers' metadata (tests and regeneration only) ----------

_DIGITS = frozenset("0123456789")
# How each accepted shape reaches phonenumbers: (digits before N, whether the IDD is tried).
_SHAPES = (("", True), ("86", True), ("0086", True), ("+86", False))


def derive_cn_prefixes() -> dict[str, bool]:
    """The table for the installed phonenumbers, or AssertionError if its CN rules changed shape.

    Validity of an 11-digit ``N`` is phonenumbers' own rule (``_number_type_helper``): it matches
    the general description and at least one number type's pattern. Each pattern is expanded
    into the exact set of digit-set sequences it matches, so "every/no completion of this
    prefix matches" is decided exactly, not sampled. A prefix is left out (falls back) if it is
    undecided at :data:`_MAX_PREFIX` digits, or if the IDD, national-prefix or carrier-code
    patterns could match digits of ``N`` -- then parsing could change ``N``.
    """
    meta = phonenumbers.PhoneMetadata.metadata_for_region("CN")
    cc = str(meta.country_code)
    assert cc == "86", cc
    # 86N must read as country code + N: phonenumbers strips a leading 86 when 86N is TOO_LONG.
    assert len(cc) + _NATIONAL_LENGTH > max(meta.general_desc.possible_length)
    general = _desc_sequences(meta.general_desc)
    kinds = [
        _desc_sequences(getattr(meta, name))
        for name in (
            "premium_rate", "toll_free", "shared_cost", "voip", "personal_number",
            "pager", "uan", "voicemail", "fixed_line", "mobile",
        )
    ]
    kinds = [seqs for seqs in kinds if seqs]
    idd_pattern = meta.international_prefix
    idd = _sequences(idd_pattern, 2 * _NATIONAL_LENGTH) if idd_pattern else set()
    npfp = meta.national_prefix_for_parsing
    national_prefix = _sequences(npfp, _NATIONAL_LENGTH) if npfp else set()

    def parse_may_alter(prefix: str) -> bool:
        if _touches(national_prefix, prefix, 0) or _touches({tuple(map(frozenset, cc))}, prefix, 0):
            return True
        return any(
            try_idd and _touches(idd, lead + prefix, len(lead)) for lead, try_idd in _SHAPES
        )

    def verdict(prefix: str) -> bool | None:
        if parse_may_alter(prefix):
            return None
        if not _any_completion(general, prefix):
            return False
        if not any(_any_completion(seqs, prefix) for seqs in kinds):
            return False
        if _all_completions(general, prefix) and any(_all_completions(s, prefix) for s in kinds):
            return True
        return None

    table: dict[str, bool] = {}

    def walk(prefix: str) -> None:
        decided = verdict(prefix)
        if decided is not None:
            table[prefix] = decided
        elif len(prefix) < _MAX_PREFIX:
            for digit in "0123456789":
                walk(prefix + digit)

    walk("1")
    _spot_check(table)
    return dict(sorted(table.items()))


def _spot_check(table: dict[str, bool]) -> None:
    # The analysis above covers what depends on N; this checks the shape handling end to end
    # against the real slow path, for a few numbers under every entry.
    from matcher.ids import _phone_to_e164

    rng = random.Random(0)
    for prefix, valid in table.items():
        free = _NATIONAL_LENGTH - len(prefix)
        for tail in ("0" * free, "9" * free, str(rng.randrange(10**free)).zfill(free)):
            national = prefix + tail
            want = "+86" + national if valid else None
            for lead, _ in _SHAPES:
                got = _phone_to_e164.__wrapped__(lead + national, "CN")
                assert got == want, (lead + national, got, want)


def _desc_sequences(desc) -> set[tuple[frozenset, ...]]:
    if desc is None or desc.national_number_pattern is None:
        return set()
    if desc.possible_length and _NATIONAL_LENGTH not in desc.possible_length:
        return set()
    seqs = _sequences(desc.national_number_pattern, _NATIONAL_LENGTH)
    return {s for s in seqs if len(s) == _NATIONAL_LENGTH}


def _any_completion(seqs, prefix: str) -> bool:
    return any(all(ch in s[i] for i, ch in enumerate(prefix)) for s in seqs)


def _all_completions(seqs, prefix: str) -> bool:
    k = len(prefix)
    return any(
        all(ch in s[i] for i, ch in enumerate(prefix)) and all(d == _DIGITS for d in s[k:])
        for s in seqs
    )


def _touches(seqs, digits: str, start: int) -> bool:
    """Could a prefix match (``re.match``) of one of ``seqs`` end after position ``start``?"""
    return any(
        len(s) > start and all(ch in s[i] for i, ch in enumerate(digits[: len(s)])) for s in seqs
    )


def _sequences(pattern: str, max_length: int) -> set[tuple[frozenset, ...]]:
    """Every string of digits ``pattern`` matches in full, up to ``max_length`` long, as sequences
    of per-position digit sets. Raises ValueError on a construct it does not model (then the
    derivation stops rather than guess)."""
    try:
        from re import _constants as c, _parser as parser
    except ImportError:  # Python 3.10
        import sre_constants as c  # type: ignore[no-redef]
        import sre_parse as parser  # type: ignore[no-redef]

    def seq(items) -> set[tuple[frozenset, ...]]:
        out = {()}
        for op, arg in items:
            alts = item(op, arg)
            out = {a + b for a in out for b in alts if len(a) + len(b) <= max_length}
        return out

    def item(op, arg) -> set[tuple[frozenset, ...]]:
        if op is c.LITERAL:
            chars = frozenset(chr(arg)) & _DIGITS
            return {(chars,)} if chars else set()
        if op is c.IN:
            chars: set[str] = set()
            for in_op, in_arg in arg:
                if in_op is c.LITERAL:
                    chars.add(chr(in_arg))
                elif in_op is c.RANGE:
                    chars.update(map(chr, range(in_arg[0], in_arg[1] + 1)))
                elif in_op is c.CATEGORY and in_arg is c.CATEGORY_DIGIT:
                    chars |= _DIGITS
                else:
                    raise ValueError(f"unsupported class item {in_op} in {pattern!r}")
            chars &= _DIGITS
            return {(frozenset(chars),)} if chars else set()
        if op is c.BRANCH:
            return set().union(*(seq(branch) for branch in arg[1]))
        if op is c.SUBPATTERN:
            return seq(arg[-1])
        if op is c.MAX_REPEAT:
            low, high, body = arg[0], min(arg[1], max_length), seq(arg[2])
            out, current = set(), {()}
            for count in range(high + 1):
                if count >= low:
                    out |= current
                current = {a + b for a in current for b in body if len(a) + len(b) <= max_length}
                if not current:
                    break
            return out
        raise ValueError(f"unsupported regex construct {op} in {pattern!r}")

    return seq(parser.parse(pattern))


if __name__ == "__main__":
    print(f"_TABLE_PHONENUMBERS_VERSION = {phonenumbers.__version__!r}")
    print(f"_CN_PREFIXES = {derive_cn_prefixes()!r}")
