"""Precomputed Paillier randomness: sealed at rest, used once, same results as online encryption."""

from __future__ import annotations

import random

import pytest

from matcher.crypto import pool
from matcher.crypto.kernels import EncryptionContext, Kernels
from matcher.errors import CryptoError
from matcher_client import api
from tests.conftest import ground_truth, phone, test_private_key, wait_until


def test_seal_round_trip_and_tamper():
    key = bytes(range(32))
    values = [random.getrandbits(4096) for _ in range(10)]
    blob = pool.seal(key, 512, values)
    assert pool.unseal(key, 512, blob) == values
    assert values[0].to_bytes(512, "big") not in blob  # sealed, not stored in the clear
    tampered = blob[:40] + bytes([blob[40] ^ 1]) + blob[41:]
    with pytest.raises(CryptoError):
        pool.unseal(key, 512, tampered)
    with pytest.raises(CryptoError):
        pool.unseal(bytes(32), 512, blob)


def test_encryption_with_pooled_randomness_decrypts(operator):
    key = test_private_key()
    size = key.public_key.ciphertext_size
    data = Kernels().submit_encrypt(EncryptionContext(key), [0] * 50).result()
    randomness = [int.from_bytes(data[i:i + size], "big") for i in range(0, len(data), size)]
    operator.store.pool_add("k", [pool.seal(operator.keys.pool_key, size, randomness)])
    drawn = pool.PooledRandomness(operator.store, "k", operator.keys.pool_key, size)
    assert drawn.take(60) is None and drawn.dry          # not enough: dry, the job encrypts online
    assert operator.store.pool_batches("k") == 0          # and what was taken is never handed out again
    from matcher.crypto.paillier import encrypt_with_randomness

    plaintexts = list(range(50))
    data = encrypt_with_randomness(key.public_key, plaintexts, randomness)
    assert [key.decrypt(int.from_bytes(data[i:i + size], "big")) for i in range(0, len(data), size)] == plaintexts


def test_server_fills_the_pool_when_idle_and_jobs_use_it(operator, serve):
    """The pool serves the semi-honest protocol's Paillier encryption (the secure one has none)."""
    members, token = operator.seed(1_500, random.Random(23), semi_honest_match="on")
    served = serve(randomness_pool=3 * pool.BATCH)
    key_id = served.server.runner.pool_key_id
    assert wait_until(lambda: operator.store.pool_batches(key_id) >= 3)
    assert operator.store.pool_batches(key_id) == 3
    served.server.filler.stop()  # hold the pool still while we count what the job takes
    customers = [(phone(i), "all") for i in range(1_000, 2_000)]
    report = api.match(served.address, token, rows=customers, id_type="phone", protocol="semi_honest")
    assert report["labels"] == ground_truth(members, customers)
    assert operator.store.pool_batches(key_id) == 1  # 1,500 rows took two batches of 1,024


@pytest.mark.parametrize("protocol", ["secure", "semi_honest"])
def test_precomputed_stream_slot_is_used_once_and_matches_ground_truth(operator, serve, protocol):
    semi_honest = protocol == "semi_honest"
    members, token = operator.seed(3_000, random.Random(29), dummies="on",
                                   semi_honest_match="on" if semi_honest else "off")
    served = serve(stream_slots=1)
    store = operator.store
    version = store.load_audience().version

    assert wait_until(lambda: store.stream_slots(version) == 1)
    first_scalar = store.db.execute("SELECT sealed_scalar FROM stream_slots WHERE segment = ''").fetchone()[0]
    # With the semi-honest protocol enabled the slot carries every member's ciphertext, so that
    # job encrypts only its dummies; the secure protocol needs (and stores) b·H(y) only.
    stored = store.db.execute("SELECT count(*), sum(length(ciphertexts)) FROM stream_slot_pieces").fetchone()
    assert stored[1] == (3_000 * operator.keys.paillier.public_key.ciphertext_size if semi_honest else None)
    customers = [(phone(i), "all") for i in range(2_000, 4_000)]
    report = api.match(served.address, token, rows=customers, id_type="phone", protocol=protocol)
    assert report["labels"] == ground_truth(members, customers)
    # The slot was spent by that job (gone), and a fresh one, with a fresh b, is made for the next.
    scalars = lambda: [r[0] for r in store.db.execute(  # noqa: E731
        "SELECT sealed_scalar FROM stream_slots WHERE segment = ''")]
    assert wait_until(lambda: len(scalars()) == 1 and scalars()[0] != first_scalar)
    if semi_honest:  # a secure job on a slot that carries ciphertexts uses its points alone, exactly
        assert wait_until(lambda: store.stream_slots(version) == 1)
        secure = api.match(served.address, token, rows=customers, id_type="phone", segments=[])
        assert secure["labels"]["all"]["matched"] == ground_truth(members, customers)["all"]["matched"]
        assert wait_until(lambda: len(scalars()) == 1 and scalars()[0] != first_scalar)
    # A new import makes the old snapshot's slot useless: it is dropped and replaced.
    operator.add_members({phone(10_000): 1})
    new_version = store.get_meta("audience_version")
    assert wait_until(lambda: store.stream_slots(new_version) == 1
                and store.db.execute("SELECT count(*) FROM stream_slots WHERE audience_version != ?",
                                     [new_version]).fetchone()[0] == 0)


def test_segment_streams_come_from_idle_time_slots_once(operator, serve):
    """The secure protocol's segment streams (the members holding a segment) are precomputed too:
    a job asking for two segments takes the slot of every member and those two, each once."""
    members, token = operator.seed(2_000, random.Random(31))
    served = serve(stream_slots=1)
    store = operator.store
    version = store.load_audience().version
    segments = store.load_audience().segments
    assert wait_until(lambda: all(store.stream_slots(version, s) == 1 for s in ("", *segments)))
    assert store.status()["segment_stream_slots_ready"] == {s: 1 for s in segments}
    rows = store.db.execute("SELECT segment, length(stream_order) / 8 FROM stream_slots").fetchall()
    audience = store.load_audience()
    assert dict(rows) == {"": 2_000, **{s: len(audience.segment_rows(s)) for s in segments}}
    scalars = lambda: dict(store.db.execute("SELECT segment, sealed_scalar FROM stream_slots "  # noqa: E731
                                            "WHERE taken = 0 AND ready = 1"))
    before = scalars()
    customers = [(phone(i), "all") for i in range(1_000, 3_000)]
    asked = [segments[1], segments[3]]
    report = api.match(served.address, token, rows=customers, id_type="phone", segments=asked)
    truth = ground_truth(members, customers)["all"]
    assert report["labels"]["all"] == {"matched": truth["matched"], "segments": {s: truth["segments"][s] for s in asked}}
    # The three slots the job used were spent and made afresh; the others are untouched.
    assert wait_until(lambda: len(scalars()) == 1 + len(segments))
    after = scalars()
    assert {s for s in before if before[s] != after[s]} == {"", *asked}



def test_a_half_written_slot_is_never_taken_and_is_cleaned_up(operator):
    store = operator.store

    def failing_pieces():
        yield bytes(32), None
        raise RuntimeError("the server stopped")

    def pieces_seen_by_status():
        for i in range(9):
            if i == 8:  # the first 8 pieces are written (one transaction), the slot is not ready
                assert store.status()["stream_slot_rows_in_progress"] == 16
                assert store.stream_slots("v1") == 0
            yield bytes(64), None
        raise RuntimeError("the server stopped")

    with pytest.raises(RuntimeError):
        store.add_stream_slot("v1", b"sealed", bytes(8), failing_pieces())
    with pytest.raises(RuntimeError):
        store.add_stream_slot("v1", b"sealed", bytes(8), pieces_seen_by_status())
    assert store.status()["stream_slot_rows_in_progress"] == 0
    assert store.db.execute("SELECT count(*) FROM stream_slots").fetchone()[0] == 0
    assert store.db.execute("SELECT count(*) FROM stream_slot_pieces").fetchone()[0] == 0

    # A crash mid-write leaves a slot that is not ready: no job takes it, and a restart drops it.
    with store.transaction() as conn:
        conn.execute("INSERT INTO stream_slots (audience_version, sealed_scalar, stream_order, ready) "
                     "VALUES ('v1', x'00', x'00', 0)")
    assert store.stream_slots("v1") == 0 and store.take_stream_slot("v1") is None
    store.add_stream_slot("v1", b"sealed", bytes(8), iter([(bytes(32), None)]))
    assert store.stream_slots("v1") == 1
    store.drop_stream_slots(keep_version="v1", at_startup=True)  # what the server does when it starts
    assert [r[0] for r in store.db.execute("SELECT ready FROM stream_slots")] == [1]
    slot_id, _, _, layout_json = store.take_stream_slot("v1")
    assert layout_json is None and list(store.stream_slot_pieces(slot_id)) == [(bytes(32), None)]


def test_a_slot_a_job_holds_survives_the_idle_cleanup_even_after_an_import(operator):
    store = operator.store
    store.add_stream_slot("old", b"sealed", bytes(8), iter([(bytes(32), None)]))
    slot_id, *_ = store.take_stream_slot("old")          # a job that loaded the old snapshot
    store.add_stream_slot("old", b"sealed", bytes(8), iter([(bytes(32), None)]))
    store.drop_stream_slots(keep_version="new")           # the idle loop, after an import
    assert [r[0] for r in store.db.execute("SELECT id FROM stream_slots")] == [slot_id]
    assert list(store.stream_slot_pieces(slot_id)) == [(bytes(32), None)]
    store.spend_stream_slot(slot_id)                      # the job ended
    store.drop_stream_slots(keep_version="new")
    assert store.db.execute("SELECT count(*) FROM stream_slot_pieces").fetchone()[0] == 0


def test_slot_making_pauses_while_a_job_runs_and_stops_with_the_server():
    import threading

    from matcher.server.app import _paced, _Stopping

    jobs, halt = [1], threading.Event()
    pieces = _paced(iter(["p1", "p2"]), lambda: jobs[0] > 0, halt)
    got: list[str] = []
    taker = threading.Thread(target=lambda: got.append(next(pieces)))
    taker.start()
    taker.join(0.5)
    assert taker.is_alive() and got == []          # a job runs: the next piece waits
    jobs[0] = 0
    taker.join(5)
    assert got == ["p1"]                            # the job ended: the slot goes on
    jobs[0] = 1
    halt.set()                                      # the server stops meanwhile
    with pytest.raises(_Stopping):
        next(pieces)
