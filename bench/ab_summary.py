"""Summarise repeated bench.e2e runs of two (or more) code versions, side by side: min / median of
the job's wall time, CPU-seconds of each side, per-stream phases, the machine's load and the CPU
other processes took during each job, and the peers' times when a run had them.

    python -m bench.ab_summary NAME=FILE.json[,FILE.json...] ... [--out summary.json]

Each NAME is a version (for example ``base`` and ``final``); its files are bench.e2e outputs of
the same job (same sizes, same flags). Runs where other processes took more than a quarter of the
job's busy CPU are listed but flagged ``loaded``; min / median are given over all runs and over the
unloaded ones.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def _run(path: str) -> dict:
    data = json.loads(Path(path).read_text())
    secure = data["protocols"]["secure"]
    machine = secure["machine_during_job"]
    cpu = secure["cpu_s_during_job"]
    busy = machine.get("busy_cpu_s_all_processes") or 0.0
    others = machine.get("others_cpu_s") or 0.0
    run = {
        "file": Path(path).name,
        "job_s": secure["phases"]["total_s"],
        "exact": bool(secure["correct"]["ok"]),
        "cpu_s": {"server_tree": cpu["server_tree"], "client_tree": cpu["client_tree"],
                  "both": round(cpu["server_tree"] + cpu["client_tree"], 2)},
        "load_average_before_after": [machine["load_average_before"][0], machine["load_average_after"][0]],
        "others_cpu_s": others,
        "loaded": bool(busy and others > 0.25 * busy),
        "stream_0": {k: secure["stream_0"][k] for k in ("list_s", "server_prep_s", "stream_s", "return_s")},
        "segment_stream_mean": secure.get("segment_stream_mean"),
        "n_streams": secure["n_streams"],
    }
    peers = {}
    if "peer_openmined" in data and data["peer_openmined"].get("finished"):
        peers["openmined_psi_ca_s"] = data["peer_openmined"]["total_s"]
    if "peer_secretflow" in data:
        for name, result in data["peer_secretflow"].get("protocols", {}).items():
            if result.get("finished"):
                peers[f"secretflow_{name}_s"] = result["total_s"]
    if peers:
        run["peers"] = peers
    return run


def _stats(values: list[float]) -> dict:
    return {"n": len(values), "min": min(values), "median": round(statistics.median(values), 3),
            "max": max(values)} if values else {"n": 0}


def summarise(groups: dict[str, list[str]]) -> dict:
    out: dict = {}
    for name, files in groups.items():
        runs = [_run(f) for f in files]
        calm = [r for r in runs if not r["loaded"]]
        out[name] = {
            "runs": runs,
            "job_s": _stats([r["job_s"] for r in runs]),
            "job_s_unloaded": _stats([r["job_s"] for r in calm]),
            "cpu_s_both": _stats([r["cpu_s"]["both"] for r in runs]),
            "all_exact": all(r["exact"] for r in runs),
        }
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("groups", nargs="+", metavar="NAME=FILE[,FILE...]")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    groups = {}
    for spec in args.groups:
        name, _, files = spec.partition("=")
        groups[name] = [f for f in files.split(",") if f]
    result = summarise(groups)
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    for name, s in result.items():
        print(f"{name}: job {s['job_s']} unloaded {s['job_s_unloaded']} cpu {s['cpu_s_both']} exact {s['all_exact']}")


if __name__ == "__main__":
    main()
