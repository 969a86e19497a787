"""What several identifiers per member cost the operator's import (issue 19): `matcher audience
import`'s library call on a CSV of N members with 1, 2 and 3 identifier columns (phone, email,
OpenID), into a fresh SQLite file each, side by side in one run; then the same file imported again
(an upsert where nothing changed: nothing is hashed or written) and with 2 % of the rows changed.

``python -m bench.multi_id_import [members] [--out FILE]`` prints JSON. Wall seconds, one process
(``--executor inline``): hashing to the group is the import's main cost, so it grows with the
identifiers held, not with their product.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from bench.micro import cpu_model
from matcher import ids
from matcher.crypto.kernels import Kernels
from matcher.server.audience import import_file
from matcher.server.store import Store

SPECS = ["phone:phone", "email:email", "openid:opaque"]


def write_members(path: Path, n: int, changed: float = 0.0) -> None:
    with path.open("w") as f:
        f.write("phone,email,openid,paid\n")
        for i in range(n):
            tag = "x" if i < changed * n else ""
            f.write(f"+86138{i:08d},user{i}{tag}@example.com,oid-{i:07d},{i % 2}\n")


def run(members: int, columns: int, workdir: Path) -> dict:
    path = workdir / "members.csv"
    write_members(path, members)
    store = Store(workdir / f"platform-{columns}.db", create=True)
    spec = ids.parse_id_columns(SPECS[:columns])
    kernels = Kernels()
    started = time.perf_counter()
    first = import_file(store, str(path), id_columns=spec, segments=["paid"], kernels=kernels)
    fresh = time.perf_counter() - started
    started = time.perf_counter()
    again = import_file(store, str(path), id_columns=spec, segments=["paid"], kernels=kernels)
    unchanged = time.perf_counter() - started
    write_members(path, members, changed=0.02)
    started = time.perf_counter()
    import_file(store, str(path), id_columns=spec, segments=["paid"], kernels=kernels)
    two_percent = time.perf_counter() - started
    assert first.members == members and again.unchanged == members
    return {"columns": columns, "members": members, "import_s": round(fresh, 2),
            "reimport_unchanged_s": round(unchanged, 2), "reimport_2pct_changed_s": round(two_percent, 2),
            "identifiers_stored": store.db.execute("SELECT count(*) FROM audience_ids").fetchone()[0] + members}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.multi_id_import", description=__doc__.split("\n\n")[0])
    parser.add_argument("members", type=int, nargs="?", default=100_000)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        results = [run(args.members, columns, Path(tmp)) for columns in (1, 2, 3)]
    base = results[0]["import_s"]
    for r in results:
        r["vs_one_identifier"] = round(r["import_s"] / base, 2)
    out = {"bench": "multi_id_import", "cpu": cpu_model(), "cores": os.cpu_count(), "executor": "inline",
           "load_avg": os.getloadavg()[0], "results": results}
    text = json.dumps(out, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    return out


if __name__ == "__main__":
    main()
