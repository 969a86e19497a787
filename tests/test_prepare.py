"""Preparing a list in pieces (on several cores) gives exactly what one pass gives."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from matcher import ids, tabular
from matcher_client import api

FORMATS = [lambda n: f"+86138{n:08d}", lambda n: f"138 {n:04d} {n % 10000:04d}"[:13], lambda n: f"0086138{n:08d}",
           lambda n: "", lambda n: "not a phone"]


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 40), st.integers(0, len(FORMATS) - 1), st.sampled_from(["a", "b", None])),
                max_size=120),
       st.lists(st.integers(1, 40), max_size=6))
def test_merge_of_pieces_equals_one_pass(rows, cuts):
    raw = [(FORMATS[f](n), label) for n, f, label in rows]
    whole = ids.prepare(raw, "phone")
    bounds = sorted({0, len(raw), *[min(c, len(raw)) for c in cuts]})
    pieces = [ids.prepare(raw[a:b], "phone") for a, b in zip(bounds, bounds[1:])]
    merged = ids.merge(pieces)
    assert (merged.keys, merged.labels, merged.invalid, merged.duplicates, merged.rows) == \
        (whole.keys, whole.labels, whole.invalid, whole.duplicates, whole.rows)


def test_read_list_on_several_cores_equals_one_core(tmp_path):
    rng = random.Random(3)
    n = tabular.BATCH_ROWS + 5_000  # more than one batch: the parallel path
    path = tmp_path / "big.csv"
    with path.open("w") as f:
        f.write("phone,store\n")
        for _ in range(n):
            i = rng.randrange(60_000)
            f.write(f"{rng.choice(FORMATS)(i)},{rng.choice('xyz')}\n")
    seen = []
    parallel = api.read_list(str(path), id_column="phone", id_type="phone", label_column="store",
                             progress=lambda phase, done, total: seen.append((done, total)))
    serial = api.read_list(str(path), id_column="phone", id_type="phone", label_column="store", parallel=False)
    assert parallel.prepared.keys == serial.prepared.keys and parallel.prepared.labels == serial.prepared.labels
    assert (parallel.prepared.invalid, parallel.prepared.duplicates, parallel.prepared.rows) == \
        (serial.prepared.invalid, serial.prepared.duplicates, serial.prepared.rows) and serial.prepared.rows == n
    assert seen[-1] == (n, n)
