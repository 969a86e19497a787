"""Peak memory of server and client when the platform audience is large (issue 7: 5M rows ≤ 1 GB).

    python -m bench.memory --platform 5000000 --merchant 100000 [--job activation|count] [--out FILE.json]

Memory, not speed, is the question here, so the audience points are random curve coordinates
rather than real hashes (import in seconds instead of minutes; blinding does not care), and the
job is an activation (or with ``--job count`` a count-only match), which streams every audience row
exactly like a match but without the Paillier ciphertexts, whose encryption would take minutes
online. The server runs without precomputation (no pool, no stream slots), so the job is alone. Per-row memory of a match is the
same arrays plus at most a few chunks of ciphertexts in flight. Peak RSS is the kernel's
high-water mark (VmHWM) of the server process and of each pool worker, and ru_maxrss of the
client process (this one; the database is built in another, since 2026-12-07: before, the
client's figure included the import's), read after the job.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from bench.e2e import _free_port, _matcher_executable, _wait_serving


def _vm_hwm_mib(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _vm_rss_mib(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class _PhaseSampler(threading.Thread):
    """The server's RSS every ``period`` seconds, and the client's progress phases: the highest RSS
    of each run of one phase (blinding, matching, returning, ...: a run per stream), which says
    where in the job the high-water mark was."""

    def __init__(self, pid: int, period: float = 0.2):
        super().__init__(daemon=True)
        self._pid, self._period = pid, period
        self._halt = threading.Event()
        self._t0 = time.perf_counter()
        self.phases: list[dict] = []

    def progress(self, phase: str, done: int, total: int | None) -> None:
        if not self.phases or self.phases[-1]["phase"] != phase:
            self.phases.append({"phase": phase, "from_s": round(time.perf_counter() - self._t0, 1),
                                "server_rss_max_mib": round(_vm_rss_mib(self._pid) or 0.0, 1)})

    def run(self) -> None:
        while not self._halt.wait(self._period):
            rss = _vm_rss_mib(self._pid)
            if rss is not None and self.phases:
                last = self.phases[-1]
                last["server_rss_max_mib"] = max(last["server_rss_max_mib"], round(rss, 1))

    def stop(self) -> list[dict]:
        self._halt.set()
        self.join()
        return self.phases


def _children(pid: int) -> list[int]:
    """Child processes of every thread of ``pid`` (pool workers are started from helper threads)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            continue
    return found


def build(workdir: Path, platform: int) -> tuple[Path, str, float]:
    from matcher.server import keys as keys_mod
    from matcher.server.store import Store

    db = workdir / "operator.db"
    keys_mod.create(keys_mod.key_path_for(db), origin="matcher.bench")
    store = Store(db, create=True)
    store.set_meta({"origin": "matcher.bench"})
    rng = np.random.default_rng(5)
    started = time.perf_counter()

    def batches():
        for lo in range(0, platform, 100_000):
            n = min(100_000, platform - lo)
            points = rng.integers(0, 256, size=(n, 32), dtype=np.uint8)
            points[:, 31] &= 0x7F   # canonical u-coordinates
            points[:, 0] |= 0x10    # far from the small-order values 0 and 1
            bits = rng.integers(0, 2, size=n)
            yield [(f"m{lo + i}", f"{lo + i:064x}", points[i].tobytes(), int(bits[i])) for i in range(n)]

    store.import_audience(batches(), id_kind="phone", segments=["member"])
    import_s = time.perf_counter() - started
    for key, value in (("noise", "none"), ("k", "0"), ("dummies", "off"), ("min_list_size", "1"),
                       ("epsilon_budget", "1000000"), ("jobs_per_hour", "1000")):
        store.set_policy(key, value)
    _, token = store.add_principal("merchant", "bench")
    store.close()
    return db, token, import_s


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--platform", type=int, default=5_000_000)
    parser.add_argument("--merchant", type=int, default=100_000)
    parser.add_argument("--job", choices=["activation", "count"], default="activation")
    parser.add_argument("--idle-timeout", type=float, default=None,
                        help="the server's --idle-timeout (default: its own, 60 s); a 5M stream leaves the merchant "
                             "silent for about that long (docs/benchmarks.md, issue 16)")
    parser.add_argument("--mode", choices=["auto", "balanced", "unbalanced"], default="auto",
                        help="the secure protocol's mode, as matcher-client --protocol (auto: the server's choice; "
                             "with a large audience and a small list, unbalanced)")
    parser.add_argument("--after-balanced", action="store_true",
                        help="run a balanced count-only job first (the server then holds the audience it read), "
                             "and measure the job after it: the peak of that job is its phases' highest RSS")
    parser.add_argument("--memray", default=None, metavar="FILE.bin",
                        help="run the server under memray, writing its capture here (peaks are then memray's, "
                             "not a benchmark's: it costs memory and time)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)

    from matcher_client import api

    with tempfile.TemporaryDirectory(prefix="matcher-mem-") as tmp:
        # The import runs in a process of its own: this one is the client, and a 5M-row import's
        # freed memory stayed in its RSS (a reset high-water mark still counted it).
        with concurrent.futures.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as builder:
            db, token, import_s = builder.submit(build, Path(tmp), args.platform).result()
        address = f"127.0.0.1:{_free_port()}"
        server_program = [_matcher_executable()]
        if args.memray:
            server_program = [sys.executable, "-m", "memray", "run", "-q", "-o", args.memray, *server_program]
        serve = [*server_program, "serve", "--db", str(db), "--listen", address,
                 "--randomness-pool", "0", "--stream-slots", "0"]
        if args.idle_timeout is not None:
            serve += ["--idle-timeout", str(args.idle_timeout)]
        server = subprocess.Popen(serve, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        try:
            _wait_serving(address, server)
            # The server's high-water mark once it serves, before any job (the audience is read by the first
            # balanced one; before 2026-12-07 at start-up).
            server_ready_mib = _vm_hwm_mib(server.pid)
            rows = [(f"+86139{i:08d}", None) for i in range(args.merchant)]
            merchant_list = api.prepare_rows(rows, id_type="phone")
            first_job_mib = None
            if args.after_balanced:
                api.run_job(address, token, merchant_list, count_only=True, mode="balanced")
                first_job_mib = _vm_hwm_mib(server.pid)
            sampler = _PhaseSampler(server.pid)
            sampler.progress("start", 0, None)
            sampler.start()
            started = time.perf_counter()
            if args.job == "count":
                result = api.run_job(address, token, merchant_list, count_only=True, mode=args.mode,
                                     enrollment_key=str(Path(tmp) / "enrollment.key"), progress=sampler.progress)
            else:
                result = api.activate(address, token, merchant_list, name="memory", where="member",
                                      progress=sampler.progress)
            job_s = time.perf_counter() - started
            phases = sampler.stop()
            server_mib = _vm_hwm_mib(server.pid)
            workers = {pid: _vm_hwm_mib(pid) for pid in _children(server.pid)}
        finally:
            server.terminate()
            server.wait(timeout=60)
    report = {
        "benchmark": "memory", "platform_rows": args.platform, "merchant_rows": args.merchant,
        "import_s": round(import_s, 1), "job_s": round(job_s, 1), "job": args.job,
        "mode": args.mode, "protocol": result.get("protocol", "balanced (activation)"),
        "result": result.get("noisy_size", result.get("labels")),
        "peak_rss_mib": {"server_main_before_job": server_ready_mib, "server_main": server_mib, "server_workers": workers,
                         "client_main": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024},
        "server_rss_by_client_phase": phases,
    }
    if first_job_mib is not None:
        report["peak_rss_mib"]["server_main_after_the_balanced_job_before"] = first_job_mib
    text = json.dumps(report, indent=2)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)
    return report


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(0 if main() else 1)
