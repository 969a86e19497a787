"""Unbalanced mode at platform scale: a generated audience imported once, then merchant jobs.

    .venv/bin/python -m bench.unbalanced --platform 10000000 --segments 2 --out bench/results/unbalanced-10m.json

Steps, each timed, over a real `matcher serve` (subprocess, --stream-slots 0: no per-job
precomputation) and the real client on loopback:

1. ``matcher audience import`` of a CSV of ``--platform`` members (phonenumbers normalization,
   RFC 9380 hashing, the history the unbalanced protocol reads; its "preprocessing"), disk after;
2. the merchant's first job (10k rows): its copy of every stream is made, once (O(N));
3. a second 10k list and a 100k list: the jobs this mode is for (O(n) plus the changes);
4. ``matcher audience import`` of 1% of the members changed (new segments) and 1% new, then a
   10k job, which sends only those changes.

Each job reports wall time, bytes each way (every gRPC message counted), the server's CPU-seconds
(its process tree, from /proc) and whether every count equals the plaintext truth computed here.
``--apsi-python`` also runs bench/peer_apsi.py (Microsoft APSI) on sets of the same sizes.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.e2e import (
    WireLog,
    _cpu_seconds,
    counted_channel,
    _free_port,
    _matcher_executable,
    _wait_serving,
    generate,
)


def _tree_cpu(pid: int) -> float:
    from bench.e2e import _children

    return sum(_cpu_seconds(p) or 0.0 for p in [pid, *_children(pid)])


def _write_csv(path: Path, ids: list[str], masks: np.ndarray, n_segments: int) -> None:
    with open(path, "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["phone", *[f"seg{i}" for i in range(n_segments)]])
        bits = [((masks >> np.uint64(i)) & np.uint64(1)).astype(np.int8).tolist() for i in range(n_segments)]
        writer.writerows(zip(ids, *bits))


def _import(db: Path, csv_path: Path, n_segments: int) -> dict:
    started = time.perf_counter()
    result = subprocess.run([_matcher_executable(), "audience", "import", "--db", str(db), str(csv_path),
                             "--id-column", "phone", "--id-type", "phone", "--json",
                             "--segments", ",".join(f"seg{i}" for i in range(n_segments))],
                            capture_output=True, text=True, check=True)
    return {"wall_s": round(time.perf_counter() - started, 2), "summary": json.loads(result.stdout)}


def _truth(members: dict[str, int], listed: list[str], n_segments: int) -> dict:
    matched = [members[m] for m in listed if m in members]
    return {"matched": len(matched),
            "segments": {f"seg{i}": sum((bits >> i) & 1 for bits in matched) for i in range(n_segments)}}


def _job(address: str, token: str, listed: list[str], server_pid: int, members: dict[str, int] | None,
         n_segments: int) -> dict:
    import matcher_client.api as api

    merchant_list = api.prepare_rows(((m, None) for m in listed), id_type="phone")
    wire = WireLog(time.perf_counter(), per_stream=True)
    cpu = _tree_cpu(server_pid)
    started = time.perf_counter()
    with counted_channel(address, wire) as channel:
        report = api.run_job(address, token, merchant_list, mode="unbalanced", channel=channel)
    wall = time.perf_counter() - started
    released = report["labels"]["all"]
    return {"list": len(listed), "wall_s": round(wall, 2), "protocol": report["protocol"],
            "bytes_to_server": wire.sent, "bytes_to_client": wire.received,
            "server_cpu_s": round(_tree_cpu(server_pid) - cpu, 2),
            "exact": released == _truth(members, listed, n_segments) if members is not None else None}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.unbalanced", description=__doc__.split("\n\n")[0])
    parser.add_argument("--platform", type=int, default=10_000_000)
    parser.add_argument("--segments", type=int, default=2)
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--large", type=int, default=100_000)
    parser.add_argument("--apsi-python", default=None, help="python of a venv with `apsi` (bench/peer_apsi.py)")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="matcher-unbalanced-"))
    workdir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("MATCHER_CLIENT_HOME", str(workdir / "client-home"))
    lists = 2 * args.small + args.large
    platform_ids, masks, merchant_ids, _ = generate(args.platform, lists, 0.5, args.segments, seed=15)
    members = dict(zip(platform_ids, masks.tolist()))
    result: dict = {"bench": "unbalanced", "platform": args.platform, "segments": args.segments,
                    "machine": {"cpus": os.cpu_count()}}

    db = workdir / "operator.db"
    subprocess.run([_matcher_executable(), "init", "--db", str(db)], check=True, capture_output=True)
    audience_csv = workdir / "audience.csv"
    _write_csv(audience_csv, platform_ids, masks, args.segments)
    result["import"] = _import(db, audience_csv, args.segments)
    result["import"]["db_bytes"] = db.stat().st_size
    result["import"]["preprocessing_ready"] = json.loads(subprocess.run(
        [_matcher_executable(), "status", "--db", str(db)], capture_output=True, text=True, check=True).stdout
    )["preprocessing_ready"]
    audience_csv.unlink()
    print(f"import: {result['import']['wall_s']} s", file=sys.stderr)

    from matcher.server.store import Store

    store = Store(db)
    for key, value in (("noise", "none"), ("k", "0"), ("dummies", "off"), ("min_list_size", "1"),
                       ("epsilon_per_job", "1"), ("epsilon_budget", "1000000"), ("jobs_per_hour", "1000")):
        store.set_policy(key, value)
    token = store.add_principal("merchant", "bench")[1]
    store.close()

    address = f"127.0.0.1:{_free_port()}"
    log = open(workdir / "server.log", "w")
    server = subprocess.Popen([_matcher_executable(), "serve", "--db", str(db), "--listen", address,
                               "--stream-slots", "0", "--randomness-pool", "0"], stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_serving(address, server, timeout=600)
        small, other, large = (merchant_ids[:args.small], merchant_ids[args.small:2 * args.small],
                               merchant_ids[2 * args.small:])
        jobs = result["jobs"] = {}
        for name, listed in (("first_small_makes_copies", small), ("small", other), ("large", large)):
            jobs[name] = _job(address, token, listed, server.pid, members, args.segments)
            print(f"{name}: {jobs[name]}", file=sys.stderr)
        result["db_bytes_with_one_merchant"] = db.stat().st_size

        # 1% of the members change segments, 1% are new.
        rng = np.random.default_rng(16)
        step = max(1, args.platform // 100)
        changed_at = rng.choice(args.platform, size=step, replace=False)
        new_ids, new_masks, _, _ = generate(step, 1, 0.0, args.segments, seed=17)
        new_ids = [m for m in new_ids if m not in members]
        new_masks = new_masks[:len(new_ids)]
        flipped = masks[changed_at] ^ np.uint64(1)
        changes_csv = workdir / "changes.csv"
        _write_csv(changes_csv, [platform_ids[i] for i in changed_at] + new_ids,
                   np.concatenate([flipped, new_masks]), args.segments)
        members.update(zip((platform_ids[i] for i in changed_at), flipped.tolist()))
        members.update(zip(new_ids, new_masks.tolist()))
        result["import_one_percent"] = _import(db, changes_csv, args.segments)
        jobs["small_after_import"] = _job(address, token, small, server.pid, members, args.segments)
        print(f"after import: {jobs['small_after_import']}", file=sys.stderr)
        # The default policy: noise, k, and DP padding of every delta (its cost; counts are noisy).
        store = Store(db)
        for key in ("noise", "k", "dummies"):
            store.set_policy(key, {"noise": "discrete_laplace", "k": "50", "dummies": "on"}[key])
        store.close()
        jobs["small_default_policy"] = _job(address, token, other, server.pid, None, args.segments)
        print(f"default policy: {jobs['small_default_policy']}", file=sys.stderr)
    finally:
        server.terminate()
        server.wait(timeout=60)
    if args.apsi_python:
        peer = subprocess.run([args.apsi_python, str(Path(__file__).with_name("peer_apsi.py")), "--server-size",
                               str(args.platform), "--client-size", str(args.small)],
                              capture_output=True, text=True, timeout=3600)
        result["apsi"] = json.loads(peer.stdout.strip().splitlines()[-1]) if peer.returncode == 0 else \
            {"error": peer.stderr[-500:]}
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
