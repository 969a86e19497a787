"""Phone normalization rows/s: phonenumbers (the old path) against the CN-mobile fast path.

``python -m bench.micro_phone [rows]`` normalizes ``rows`` (default 200000) distinct generated
numbers, one process, and prints one JSON object. The mix is what Chinese merchant lists look
like: mostly ``+86138...``, ``138...`` and ``138 1234 5678``. Every row is distinct, so the
old path's memo never hits (a cold cache, the worst and the usual case for a fresh list).
"""

from __future__ import annotations

import json
import random
import sys
import time

import phonenumbers

from matcher import _phone_fast
from matcher.ids import InvalidId, _phone_to_e164, normalize

# Real CN mobile ranges, weighted roughly by how common they are.
_PREFIXES = ["13", "13", "13", "15", "15", "18", "18", "17", "19", "166", "145", "147"]


def corpus(rows: int, seed: int = 1) -> list[str]:
    rng = random.Random(seed)
    seen: set[str] = set()
    out: list[str] = []
    while len(out) < rows:
        head = rng.choice(_PREFIXES)
        national = head + "".join(rng.choice("0123456789") for _ in range(11 - len(head)))
        if national in seen:
            continue
        seen.add(national)
        a, b, c = national[:3], national[3:7], national[7:]
        shape = rng.random()
        if shape < 0.4:
            out.append("+86" + national)
        elif shape < 0.75:
            out.append(national)
        elif shape < 0.9:
            out.append(f"{a} {b} {c}")
        else:
            out.append(f"+86 {a}-{b}-{c}")
    return out


def _normalize(text: str) -> None:
    try:
        normalize(text, "phone")
    except InvalidId:  # e.g. 174xx and 179xx: not mobile ranges, counted as invalid rows
        pass


def _rate(fn, texts: list[str]) -> float:
    start = time.perf_counter()
    for text in texts:
        fn(text)
    return len(texts) / (time.perf_counter() - start)


def run(rows: int = 200_000) -> dict:
    texts = corpus(rows)
    slow = _phone_to_e164.__wrapped__  # phonenumbers, no memo: exactly the old per-row work
    _phone_to_e164.cache_clear()
    result = {
        "rows": rows,
        "phonenumbers": phonenumbers.__version__,
        "fast_path_enabled": _phone_fast.ENABLED,
        "old_rows_per_s": round(_rate(lambda t: slow(t, "CN"), texts)),
        "fast_path_only_rows_per_s": round(
            _rate(lambda t: _phone_fast.cn_mobile_e164(t, "CN"), texts)
        ),
        # What callers see: normalize() end to end (quote stripping, checks, fast path).
        "normalize_rows_per_s": round(_rate(_normalize, texts)),
    }
    handled = sum(_phone_fast.cn_mobile_e164(t, "CN") is not _phone_fast.NOT_HANDLED for t in texts)
    result["fast_path_share"] = round(handled / rows, 4)
    speedup = result["normalize_rows_per_s"] / result["old_rows_per_s"]
    result["speedup_normalize_vs_old"] = round(speedup, 1)
    return result


if __name__ == "__main__":
    print(json.dumps(run(int(sys.argv[1]) if len(sys.argv) > 1 else 200_000), indent=2))
