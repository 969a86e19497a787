"""What several identifiers per person cost (issue 19): one count-only secure job through both
engines, in this process, for audiences of 1, 2 and 3 identifier columns, side by side.

``python -m bench.multi_id [members] [list]`` prints JSON (and writes it with ``--out FILE``). Each
person of the audience has every identifier (the worst case: no padding saved), and each list row
holds as many identifiers as the audience has columns, so the list grows with them too. Times are
CPU seconds of this process (``time.process_time``): the engines run on local kernels, one thread,
so other work on the machine lowers them little. The job is ~4 X25519 a value: expect the cost to
grow linearly with the columns, not with their product.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from bench.micro import cpu_model
from matcher.crypto import group
from matcher.crypto.kernels import Kernels
from matcher.protocol.platform import Audience
from matcher.protocol.secure_merchant import SecureMerchantSession
from matcher.protocol.secure_platform import SecurePlatformSession

KINDS = ("phone", "email", "opaque")


def _points(kind: str, keys: list[str]) -> np.ndarray:
    return np.frombuffer(group.hash_to_curve_batch([k.encode() for k in keys], group.dst_for(kind)),
                         np.uint8).reshape(-1, 32)


def audience(members: int, columns: int) -> Audience:
    extra = [(_points(kind, [f"{kind}{i}" for i in range(members)])) for kind in KINDS[1:columns]]
    return Audience(id_kind="phone", points=_points("phone", [f"phone{i}" for i in range(members)]),
                    segment_bits=np.zeros(members, np.uint64), segments=(),
                    extra_points=np.concatenate(extra) if extra else None,
                    extra_owner=np.concatenate([np.arange(members)] * (columns - 1)) if extra else None,
                    id_kinds=KINDS[:columns], identifier_columns=columns)


def job(aud: Audience, rows: int, columns: int, kernels: Kernels) -> dict:
    """Half the list's people are members; each row gives every identifier the audience has."""
    people = range(aud.points.shape[0] // 2, aud.points.shape[0] // 2 + rows)
    keys = [f"{kind}{i}" for i in people for kind in KINDS[:columns]]
    kinds = [kind for _ in people for kind in KINDS[:columns]]
    started = time.process_time()
    platform = SecurePlatformSession(aud, job_id="bench", kernels=kernels, audit_rows=4096)
    merchant = SecureMerchantSession(keys, ["all"] * len(keys), id_kind="phone", kinds=kinds, kernels=kernels)
    merchant.accept(platform.start(merchant.start()))
    sent = 0
    for chunk in merchant.blinded_chunks(0):
        platform.receive_blinded(0, chunk)
    platform.finish_list(0, merchant.merchant_base(0))
    for points in platform.stream(0):
        sent += len(points)
        merchant.receive_stream(0, points)
    for points in merchant.returned_chunks(0):
        platform.receive_returned(0, points)
    platform.finish_stream(0)
    matched = platform.aggregates()["all"].matched
    assert matched == aud.points.shape[0] - aud.points.shape[0] // 2, matched  # exact: every member of the list
    return {"columns": columns, "list_values": len(keys), "stream_values": sent // 32,
            "cpu_s": round(time.process_time() - started, 2), "matched": matched}


def run(members: int, rows: int) -> dict:
    kernels = Kernels()
    results = [job(audience(members, columns), rows, columns, kernels) for columns in (1, 2, 3)]
    base = results[0]["cpu_s"]
    for r in results:
        r["vs_one_identifier"] = round(r["cpu_s"] / base, 2)
    return {"bench": "multi_id", "cpu": cpu_model(), "cores": os.cpu_count(), "timer": "process_time",
            "members": members, "list_rows": rows, "protocol": "secure, count-only, local kernels (one thread)",
            "results": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("members", nargs="?", type=int, default=50_000)
    parser.add_argument("rows", nargs="?", type=int, default=50_000)
    parser.add_argument("--out")
    args = parser.parse_args()
    result = run(args.members, args.rows)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
