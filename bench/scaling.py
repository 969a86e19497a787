"""How a cold secure job scales with cores, and what that predicts for a bigger machine.

    python -m bench.scaling --platform 200000 --merchant 200000 [--count-only] [--segments-asked N] \
        [--cpus 0 --cpus 0,1] [--runs 2] [--peer secretflow] --out scaling.json

Runs the same ``bench.e2e`` job (secure protocol, cold: fresh server, no slot, no hash cache) with
the whole process tree -- server, its pool, client, its pool, and the peers when asked -- pinned by
``taskset`` to each CPU set in turn, alternating, ``--runs`` times. matcher sizes its pools by the
cores it may use (``kernels.usable_cores``), so a run on one core starts one worker a side.

From the fastest job time on 1 and on 2 cores it fits Amdahl's law, T(n) = T(1)·(s + (1 − s)/n),
with s = 2·T(2)/T(1) − 1 the share of the job that did not get faster with the second core, and
states T(n) for 4, 8 and 16 cores -- for matcher and, in the same runs, for each peer. Both parties
share the cores, as in every ``bench.e2e`` run. The fit is an extrapolation from two points, not a
measurement of a 16-core machine: it is an upper bound on the speed-up if the serial share stays
what it was at 2 cores, and ignores the network, memory bandwidth, and the pools' per-chunk
scheduling (a 16,384-value list chunk is 1,024 values a worker at 16 workers).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.ab_summary import _run as summarise_run

_PROJECT_CORES = (4, 8, 16)


def _e2e_command(args, out: Path) -> list[str]:
    command = [sys.executable, "-m", "bench.e2e", "--platform", str(args.platform), "--merchant", str(args.merchant),
               "--overlap", str(args.overlap), "--segments", str(args.segments), "--protocol", "secure",
               "--seed", str(args.seed), "--out", str(out)]
    if args.count_only:
        command.append("--count-only")
    if args.segments_asked is not None:
        command += ["--segments-asked", str(args.segments_asked)]
    for peer in args.peer:
        command += ["--peer", peer]
    return command


def amdahl(one: float, two: float) -> dict:
    """The serial share s fitted to T(1) and T(2), and T(n) it predicts (never below T(1)·s)."""
    serial = min(1.0, max(0.0, 2 * two / one - 1))
    projected = {str(n): round(one * (serial + (1 - serial) / n), 2) for n in _PROJECT_CORES}
    return {"t1_s": round(one, 3), "t2_s": round(two, 3), "speedup_1_to_2": round(one / two, 3),
            "serial_share": round(serial, 3), "projected_s": projected,
            "projected_speedup_2_to_16": round(two / (one * (serial + (1 - serial) / 16)), 2)}


def _times(runs: list[dict], statistic) -> dict[str, float]:
    """``statistic`` of the seconds per system: matcher's job, and each peer that finished in every run."""
    out = {"matcher": statistic([r["job_s"] for r in runs])}
    peers = set.intersection(*(set(r.get("peers", {})) for r in runs)) if runs else set()
    for name in sorted(peers):
        out[name] = statistic([r["peers"][name] for r in runs])
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--platform", type=int, required=True)
    parser.add_argument("--merchant", type=int, required=True)
    parser.add_argument("--overlap", type=float, default=0.5)
    parser.add_argument("--segments", type=int, default=5)
    parser.add_argument("--segments-asked", type=int, default=None)
    parser.add_argument("--count-only", action="store_true")
    parser.add_argument("--cpus", action="append", default=[], metavar="LIST",
                        help="a taskset CPU list; give it twice, one core then two (default: 0 and 0,1)")
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--peer", action="append", default=[], choices=["openmined", "secretflow"])
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--keep", default=None, metavar="DIR", help="keep each run's bench.e2e JSON here")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    cpu_sets = args.cpus or ["0", "0,1"]
    if len(cpu_sets) != 2:
        parser.error("--cpus: give exactly two CPU lists, one core and then two")
    if shutil.which("taskset") is None:
        parser.error("taskset (util-linux) is needed to pin the runs")

    keep = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="matcher-scaling-"))
    keep.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[dict]] = {cpus: [] for cpus in cpu_sets}
    for index in range(args.runs):
        for cpus in cpu_sets:  # alternating, so that a change in the machine's load hits both
            out = keep / f"scaling-cpus{cpus.replace(',', '+')}-{index + 1}.json"
            subprocess.run(["taskset", "-c", cpus, *_e2e_command(args, out)], check=True, stdout=subprocess.DEVNULL)
            run = summarise_run(str(out))
            if not run["exact"]:
                raise SystemExit(f"{out}: matcher's counts were not exact")
            runs[cpus].append(run)
            print(f"cpus {cpus} run {index + 1}: matcher {run['job_s']} s, peers {run.get('peers', {})}",
                  file=sys.stderr)

    # The fit takes each system's fastest run: on a shared machine a slower one is another
    # process's work, and the two CPU sets must be compared at the same (least) disturbance.
    one, two = (_times(runs[cpus], min) for cpus in cpu_sets)
    result = {
        "benchmark": "scaling",
        "params": {k: v for k, v in vars(args).items() if k not in ("out", "keep")},
        "cpu_sets": cpu_sets,
        "runs": runs,
        "min_s": {cpus: times for cpus, times in zip(cpu_sets, (one, two))},
        "median_s": {cpus: _times(runs[cpus], statistics.median) for cpus in cpu_sets},
        "amdahl": {name: amdahl(one[name], two[name]) for name in one if name in two},
        "note": __doc__.split("\n\n")[3].replace("\n", " "),
    }
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)
    return result


if __name__ == "__main__":
    main()
