"""The long crash test (issue 14): kill -9 a real `matcher serve` at random moments while merchants
run jobs, restart it, and after every restart check SQLite's integrity, that the log, the ε ledger
and the job states agree, and that `matcher-audit verify` passes; JSON out.

    python -m bench.crash_soak --kills 100 [--members 3000] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=100)
    parser.add_argument("--members", type=int, default=3_000)
    parser.add_argument("--seed", type=int, default=14)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    from matcher.errors import MatcherError
    from matcher_client import api
    from matcher_client.audit import GrpcLogSource, verify
    from tests.conftest import exact_policy, new_operator, phone
    from tests.test_cli import wait_serving
    from tests.test_crash import agreement

    import grpc

    rng = random.Random(args.seed)
    db = Path(tempfile.mkdtemp(prefix="matcher-soak-")) / "op.db"
    operator = new_operator(db, origin="matcher.soak")
    store = operator.store
    operator.add_members({phone(i): rng.getrandbits(5) for i in range(args.members)})
    exact_policy(store, noise="discrete_laplace", k="0", epsilon_per_job="0.001", epsilon_budget="1000000",
                 jobs_per_hour="1000000", audit_rows="64", semi_honest_match="on")
    tokens = [operator.token("merchant", f"m{i}") for i in range(3)]
    auditor = operator.token("auditor", "soak")
    stats = {"kills": 0, "jobs_released": 0, "jobs_interrupted": 0, "checks_passed": 0}
    started = time.perf_counter()
    for kill in range(args.kills):
        port = _free_port()
        server = subprocess.Popen([sys.executable, "-m", "matcher.server.cli", "serve", "--db", str(db), "--listen",
                                   f"127.0.0.1:{port}", "--executor", "inline", "--stream-slots",
                                   str(rng.choice([0, 1])), "--randomness-pool", "0"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        address = f"127.0.0.1:{port}"
        with grpc.insecure_channel(address) as chan:
            wait_serving(chan, timeout=60)
        # The checks of the previous kill, on the restarted server.
        agreement(store)
        with GrpcLogSource(address, auditor) as source:
            verify(source)
        stats["checks_passed"] += 1

        def merchant(n: int) -> None:
            while server.poll() is None:
                lo = rng.randrange(0, args.members - 500)
                rows = [(phone(i), "all") for i in range(lo, lo + 500)]
                try:
                    api.match(address, tokens[n], rows=rows, id_type="phone", timeout=30, retries=0,
                              protocol=rng.choice(["secure", "semi_honest"]), count_only=False)
                    stats["jobs_released"] += 1
                except MatcherError:
                    stats["jobs_interrupted"] += 1

        threads = [threading.Thread(target=merchant, args=(n,), daemon=True) for n in range(len(tokens))]
        for thread in threads:
            thread.start()
        time.sleep(rng.uniform(0.5, 8.0))  # a random moment of job start, streaming, release or idle work
        server.send_signal(signal.SIGKILL)
        server.wait(timeout=30)
        stats["kills"] += 1
        for thread in threads:
            thread.join(timeout=60)
    # The last kill's checks.
    port = _free_port()
    server = subprocess.Popen([sys.executable, "-m", "matcher.server.cli", "serve", "--db", str(db), "--listen",
                               f"127.0.0.1:{port}", "--executor", "inline"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as chan:
            wait_serving(chan, timeout=60)
        agreement(store)
        with GrpcLogSource(f"127.0.0.1:{port}", auditor) as source:
            verify(source)
        stats["checks_passed"] += 1
    finally:
        server.terminate()
        server.wait(timeout=30)
    stats["log_entries"] = store.log_size()
    stats["jobs_by_state"] = dict(store.db.execute("SELECT state, count(*) FROM jobs GROUP BY state"))
    stats["wall_s"] = round(time.perf_counter() - started, 1)
    text = json.dumps(stats, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    main()
