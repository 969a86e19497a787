"""Auditor benchmark: a first full verification of a 1000-job log, then an incremental one after 10 more jobs.

The log is built the way the server builds it (one AuditLog append, so one signed checkpoint, per
job) but without running the matching protocol: the entries are realistic job decisions (50
merchants, default policy, 85% released with 1-4 labels and 5 segments, 10% refused, 5% failed,
spread over a year so no budget is overspent). It is served by the real gRPC server on 127.0.0.1
and verified through the real client, so the times include every RPC.

    python -m bench.audit [--jobs 1000] [--more 10]
    {"entries": 1000, "first_full_s": ..., "incremental_s": ..., ...}
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import tempfile
import time
from pathlib import Path

from matcher.server import keys as keys_mod
from matcher.crypto.paillier import PrivateKey
from matcher.server.auditlog import AuditLog
from matcher.log.checkpoint import Signer
from matcher.policy import Policy, job_epsilon
from matcher.server.app import ServerConfig, build_server
from matcher.server.store import Store
from matcher_client.audit import AuditState, GrpcLogSource, verify

ORIGIN = "matcher.bench"
SEGMENTS = ("member", "paid_with_platform", "visited_shop_page", "favourited_mini_program", "holds_coupon")
# The server needs a Paillier key to start; generating a 2048-bit one costs seconds and is not what is
# measured, so the fixed test key is used.
_TEST_KEY = Path(__file__).resolve().parent.parent / "tests" / "vectors" / "paillier_test_key.json"


def job_entry(rng: random.Random, i: int, t0: float) -> dict:
    pol = Policy()
    decision = rng.choices(["released", "refused", "failed"], [85, 10, 5])[0]
    sizes = sorted(rng.randint(pol.min_list_size, 50_000) for _ in range(rng.randint(1, 4)))
    entry = {"type": "job", "decision": decision, "job_id": f"{rng.getrandbits(128):032x}",
             "merchant": f"merchant-{i % 50:02d}", "list_size": sum(sizes), "label_sizes": sizes,
             "policy": pol.to_dict(), "policy_digest": pol.digest(), "epsilon_spent": 0.0,
             # 8 hours apart: each merchant runs a job every ~17 days, 2 per 30-day period, well in budget.
             "time": round(t0 + i * 8 * 3600, 3)}
    if decision == "released":
        cell = lambda: rng.choice([None, rng.randint(pol.k, 20_000)])  # noqa: E731
        entry["epsilon_spent"] = job_epsilon(pol)
        entry["report_digest"] = hashlib.sha256(rng.randbytes(32)).hexdigest()
        entry["released"] = {f"store-{n}": {"matched": rng.randint(pol.k, 30_000),
                                            "segments": {s: cell() for s in SEGMENTS}} for n in range(len(sizes))}
    else:
        entry["reason"] = "list_too_small" if decision == "refused" else "client disconnected"
    return entry


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--more", type=int, default=10)
    args = parser.parse_args()
    rng = random.Random(2024)
    t0 = 1_700_000_000.0

    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "bench.db"
        signer = Signer.generate(ORIGIN)
        keys_mod.write(keys_mod.key_path_for(db), keys_mod.OperatorKeys(
            paillier=PrivateKey.from_bytes(_TEST_KEY.read_bytes()), signer=signer))
        store = Store(db, create=True)
        store.set_meta({"origin": ORIGIN})
        _, token = store.add_principal("auditor", "bench")
        audit_log = AuditLog(store, signer, ORIGIN)
        started = time.perf_counter()
        for i in range(args.jobs):
            audit_log.append([job_entry(rng, i, t0)])
        build_s = time.perf_counter() - started

        server, port = build_server(ServerConfig(db=db, listen="127.0.0.1:0", parallel=False))
        server.start()
        try:
            address = f"127.0.0.1:{port}"
            with GrpcLogSource(address, token) as source:
                started = time.perf_counter()
                first = verify(source, state=None)
                first_full_s = time.perf_counter() - started
                state_file = Path(tmp) / "audit.json"
                first.state.save(state_file)

                for i in range(args.jobs, args.jobs + args.more):
                    audit_log.append([job_entry(rng, i, t0)])
                started = time.perf_counter()
                state = AuditState.load(state_file)
                incremental = verify(source, state=state)
                incremental.state.save(state_file)
                incremental_s = time.perf_counter() - started
        finally:
            server.stop(grace=1)
            store.close()

    print(json.dumps({
        "entries": incremental.size,
        "first_full_s": round(first_full_s, 4),
        "incremental_s": round(incremental_s, 4),
        "incremental_entries_fetched": incremental.entries_checked,
        "checkpoints_first": first.checkpoints_verified,
        "build_log_s": round(build_s, 3),
    }))


if __name__ == "__main__":
    main()
