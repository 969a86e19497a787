"""Load with a hostile neighbour (issue 14): concurrent jobs from several merchants against a real
`matcher serve`, while one merchant holds stalled job streams open. Every honest job must complete
(the client retries busy refusals), health must answer throughout; JSON out.

    python -m bench.load --members 20000 --merchants 10 --jobs 100 --stalled 16 [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import queue
import random
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from matcher.crypto import group
from matcher.v1 import match_pb2, match_pb2_grpc


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", type=int, default=20_000)
    parser.add_argument("--merchants", type=int, default=10)
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--list", type=int, default=2_000, help="IDs per merchant list")
    parser.add_argument("--stalled", type=int, default=16, help="stalled job streams from one extra merchant")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()

    from matcher_client import api
    from tests.conftest import exact_policy, ground_truth, new_operator, phone

    db = Path(tempfile.mkdtemp(prefix="matcher-load-")) / "op.db"
    operator = new_operator(db, origin="matcher.load")
    store = operator.store
    rng = random.Random(14)
    members = {phone(i): rng.getrandbits(5) for i in range(args.members)}
    operator.add_members(members)
    exact_policy(store, jobs_per_hour="100000", audit_rows="256")
    tokens = [operator.token("merchant", f"m{i}") for i in range(args.merchants)]
    hostile = operator.token("merchant", "hostile")
    with socket_port() as port:
        pass
    server = subprocess.Popen([sys.executable, "-m", "matcher.server.cli", "serve", "--db", str(db), "--listen",
                               f"127.0.0.1:{port}", "--stream-slots", "1", "--randomness-pool", "0"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    address = f"127.0.0.1:{port}"
    result: dict = {"members": args.members, "merchants": args.merchants, "jobs": args.jobs, "list": args.list,
                    "stalled": args.stalled}
    try:
        _wait_health(address)
        stalls = [_stall(address, hostile) for _ in range(args.stalled)]
        health_ms: list[float] = []
        stop = threading.Event()

        def probe() -> None:
            with grpc.insecure_channel(address) as chan:
                stub = health_pb2_grpc.HealthStub(chan)
                while not stop.is_set():
                    t = time.perf_counter()
                    stub.Check(health_pb2.HealthCheckRequest(), timeout=10)
                    health_ms.append((time.perf_counter() - t) * 1000)
                    time.sleep(0.2)

        prober = threading.Thread(target=probe, daemon=True)
        prober.start()

        def one(n: int) -> tuple[bool, float]:
            lo = (n * 997) % max(1, args.members - args.list)
            customers = [(phone(i), "all") for i in range(lo, lo + args.list)]
            t = time.perf_counter()
            report = api.match(address, tokens[n % args.merchants], rows=customers, id_type="phone", count_only=True)
            return report["labels"]["all"]["matched"] == ground_truth(members, customers)["all"]["matched"], \
                time.perf_counter() - t

        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            outcomes = list(pool.map(one, range(args.jobs)))
        result["wall_s"] = round(time.perf_counter() - started, 2)
        stop.set()
        prober.join(timeout=15)
        result["jobs_exact"] = sum(ok for ok, _ in outcomes)
        result["job_s_max"] = round(max(t for _, t in outcomes), 2)
        result["job_s_median"] = round(sorted(t for _, t in outcomes)[len(outcomes) // 2], 2)
        result["health_checks"] = len(health_ms)
        result["health_ms_max"] = round(max(health_ms), 1) if health_ms else None
        result["stalled_refused_at_once"] = sum(1 for s in stalls if s["refused"])
        result["server_peak_rss_mib"] = round(_peak_rss_mib(server.pid), 1)
        states = dict(store.db.execute("SELECT state, count(*) FROM jobs GROUP BY state"))
        result["job_states"] = states
        for s in stalls:
            s["outbox"].put(None)
    finally:
        server.terminate()
        server.wait(timeout=60)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


class socket_port:
    def __enter__(self) -> int:
        import socket

        self._s = socket.socket()
        self._s.bind(("127.0.0.1", 0))
        return self._s.getsockname()[1]

    def __exit__(self, *exc) -> None:
        self._s.close()


def _wait_health(address: str) -> None:
    deadline = time.monotonic() + 60
    with grpc.insecure_channel(address) as chan:
        stub = health_pb2_grpc.HealthStub(chan)
        while True:
            try:
                stub.Check(health_pb2.HealthCheckRequest(), timeout=1)
                return
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)


def _stall(address: str, token: str) -> dict:
    """A job stream that opens a job and then sends nothing."""
    outbox: queue.Queue = queue.Queue()
    outbox.put(match_pb2.MatchRequest(start=match_pb2.JobStart(
        protocol_version=1, id_kind="phone", labels=["all"], label_sizes=[20],
        merchant_base=group.base_mult(group.random_scalar()))))

    def requests():
        while (item := outbox.get()) is not None:
            yield item

    chan = grpc.insecure_channel(address)
    call = match_pb2_grpc.MatchServiceStub(chan).Count(requests(), metadata=[("authorization", f"Bearer {token}")])
    state = {"outbox": outbox, "chan": chan, "call": call, "refused": False}  # a dropped call is cancelled
    try:
        first = next(call)
        state["first"] = first.WhichOneof("msg")
    except grpc.RpcError as err:
        state["refused"] = err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    return state


if __name__ == "__main__":
    main()
