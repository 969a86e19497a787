"""`make demo`: a synthetic platform and merchant, a real server, a match job and its report, a
count-only job, an activation, and the auditor's verification.

Everything goes through the installed command lines, exactly as an operator and a merchant would
type them; the numbers are synthetic but the formats are the messy ones merchants really have.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

OUT = Path("demo-out")
BIN = Path(sys.executable).parent
PLATFORM_MEMBERS = 100_000
MERCHANT_CUSTOMERS = 20_000
SEGMENTS = {  # name: share of platform members holding it
    "member": 0.62, "paid_with_platform": 0.41, "visited_shop_page": 0.18,
    "favourited_mini_program": 0.07, "holds_coupon": 0.12,
}
STORES = ["shanghai-xuhui", "beijing-chaoyang", "shenzhen-nanshan", "online"]


def messy(number: str, rng: random.Random) -> str:
    """One CN mobile number as a merchant's CRM might hold it."""
    local = number[3:]
    return rng.choice([
        local, f"+86{local}", f"+86 {local[:3]}-{local[3:7]}-{local[7:]}", f"{local[:3]} {local[3:7]} {local[7:]}",
        f"0086{local}", f"(+86) {local}", f"86-{local}",
    ])


def write_data(rng: random.Random) -> tuple[Path, Path]:
    platform = OUT / "platform_members.csv"
    with platform.open("w") as f:
        f.write("member_id," + ",".join(SEGMENTS) + "\n")
        for i in range(PLATFORM_MEMBERS):
            flags = ",".join("1" if rng.random() < share else "0" for share in SEGMENTS.values())
            f.write(f"+86139{i:08d},{flags}\n")
    merchant = OUT / "merchant_customers.csv"
    with merchant.open("w") as f:
        f.write("phone,store\n")
        for i in range(MERCHANT_CUSTOMERS):
            # 60% of the merchant's customers are platform members.
            n = rng.randrange(PLATFORM_MEMBERS) if rng.random() < 0.6 else PLATFORM_MEMBERS + rng.randrange(10**7)
            f.write(f"\"{messy(f'+86139{n:08d}', rng)}\",{rng.choice(STORES)}\n")
        f.write("not-a-phone,online\n,online\n")
    return platform, merchant


def run(*args: str, capture: bool = False) -> str:
    print(f"\n$ {' '.join(args)}", flush=True)
    done = subprocess.run([str(BIN / args[0]), *args[1:]], check=True, text=True,
                          stdout=subprocess.PIPE if capture else None)
    return done.stdout or ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(address: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(address) as chan:
        stub = health_pb2_grpc.HealthStub(chan)
        while True:
            try:
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=2).status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.2)


def wait_precomputed(db: str, timeout: float = 120) -> None:
    """What an operator would check before opening to merchants: the idle precomputation (a job
    stream with every member's ciphertext) is ready, so the first job takes the fast path."""
    print("\nwaiting for the server's idle precomputation (matcher status: stream_slots_ready) ...", flush=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = subprocess.run([str(BIN / "matcher"), "status", "--db", db], check=True, text=True,
                                capture_output=True).stdout
        if json.loads(status).get("stream_slots_ready", 0) >= 1:
            return
        time.sleep(1.0)
    print("not ready yet; the job will do that work itself", flush=True)


def main() -> None:
    started = time.monotonic()
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir()
    db = str(OUT / "platform.db")
    platform, merchant = write_data(random.Random(2026))
    print(f"wrote {PLATFORM_MEMBERS:,} platform members and {MERCHANT_CUSTOMERS:,} merchant customers to {OUT}/")

    run("matcher", "init", "--db", db)
    run("matcher", "audience", "import", "--db", db, str(platform), "--id-column", "member_id",
        "--id-type", "phone", "--segments", ",".join(SEGMENTS))
    token = run("matcher", "merchant", "add", "--db", db, "demo-coffee", capture=True).strip().splitlines()[-1]
    auditor = run("matcher", "auditor", "add", "--db", db, "demo-auditor", capture=True).strip().splitlines()[-1]
    # The demo's three jobs (match, count-only, activation) fit the default yearly budget of 1.0.
    run("matcher", "policy", "set", "--db", db, "epsilon_per_job", "0.3")
    run("matcher", "policy", "show", "--db", db)

    address = f"127.0.0.1:{free_port()}"
    print(f"\n$ matcher serve --db {db} --listen {address} &", flush=True)
    server = subprocess.Popen([str(BIN / "matcher"), "serve", "--db", db, "--listen", address])
    try:
        wait_healthy(address)
        wait_precomputed(db)
        match_started = time.monotonic()
        run("matcher-client", "match", "--server", address, "--token", token, str(merchant),
            "--id-column", "phone", "--id-type", "phone", "--label-column", "store", "--json", str(OUT / "report.json"))
        match_seconds = time.monotonic() - match_started
        run("matcher-client", "match", "--server", address, "--token", token, str(merchant),
            "--id-column", "phone", "--id-type", "phone", "--label-column", "store", "--count-only", "--quiet")
        handle = run("matcher-client", "activate", "--server", address, "--token", token, str(merchant),
                     "--id-column", "phone", "--id-type", "phone", "--label-column", "store", "--label", "online",
                     "--where", "member & paid_with_platform & !favourited_mini_program", "--name", "spring-coupon",
                     "--quiet", capture=True).strip().splitlines()[-1]
        run("matcher", "activation", "list", "--db", db)
        run("matcher", "activation", "export", "--db", db, handle, "--out", str(OUT / "spring-coupon.csv"))
        run("matcher-audit", "verify", "--server", address, "--token", auditor, "--state", str(OUT / "audit-state.json"))
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
    report = json.loads((OUT / "report.json").read_text())
    print(f"\nreport keys: {', '.join(report)}")
    print(f"match job: {match_seconds:.1f} s; whole demo: {time.monotonic() - started:.1f} s")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    os.environ.setdefault("COLUMNS", "150")  # rich tables are cut to 80 columns when output is piped
    main()
