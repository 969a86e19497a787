"""`make demo`: a synthetic platform and merchant, a real server, a match job and its report, a
count-only job, an activation, and the auditor's verification.

Everything goes through the installed command lines, exactly as an operator and a merchant would
type them; the numbers are synthetic but the formats are the messy ones merchants really have.
"""

from __future__ import annotations

import json
import os
import random
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

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


@dataclass
class Written:
    """The demo's files, and what it knows about them to explain the numbers the tools print."""

    platform: Path
    merchant: Path
    unique_customers: int  # distinct valid phone numbers in the merchant's file
    segment_members: dict[str, int]  # platform members holding each segment


def write_data(rng: random.Random) -> Written:
    platform = OUT / "platform_members.csv"
    holders = dict.fromkeys(SEGMENTS, 0)
    with platform.open("w") as f:
        f.write("member_id," + ",".join(SEGMENTS) + "\n")
        for i in range(PLATFORM_MEMBERS):
            flags = [rng.random() < share for share in SEGMENTS.values()]
            for name, held in zip(SEGMENTS, flags):
                holders[name] += held
            f.write(f"+86139{i:08d}," + ",".join("1" if held else "0" for held in flags) + "\n")
    merchant = OUT / "merchant_customers.csv"
    customers = set()
    with merchant.open("w") as f:
        f.write("phone,store\n")
        for i in range(MERCHANT_CUSTOMERS):
            # 60% of the merchant's customers are platform members.
            n = rng.randrange(PLATFORM_MEMBERS) if rng.random() < 0.6 else PLATFORM_MEMBERS + rng.randrange(10**7)
            customers.add(n)
            f.write(f"\"{messy(f'+86139{n:08d}', rng)}\",{rng.choice(STORES)}\n")
        f.write("not-a-phone,online\n,online\n")
    return Written(platform, merchant, len(customers), holders)


def note(text: str) -> None:
    """An explanation, printed as a shell comment so the transcript still pastes into a shell."""
    print("\n".join(textwrap.wrap(text, width=100, initial_indent="# ", subsequent_indent="# ")), flush=True)


def echo(args: list[str], suffix: str = "") -> None:
    """The command as a user would type it, quoted so that pasting it into a shell runs the same thing."""
    print(f"\n$ {shlex.join(args)}{suffix}", flush=True)


def run(*args: str, capture: bool = False) -> str:
    echo(list(args))
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


def matcher_json(*args: str) -> dict:
    """An operator command's --json answer, run quietly (the demo's own bookkeeping, not a step)."""
    return json.loads(subprocess.run([str(BIN / "matcher"), *args, *(["--json"] if args[0] == "policy" else [])],
                                     check=True, text=True, capture_output=True).stdout)


def wait_precomputed(db: str, timeout: float = 180) -> None:
    """What an operator would check before opening to merchants: the idle precomputation (a job
    stream with every member's blinded value) is ready, so the first job takes the fast path."""
    note("While idle, the server precomputes the stream a job sends first: a fresh secret b, b·H(y) for "
         "every member and a random order (`matcher status`: stream_slots_ready). A job that finds one "
         "ready skips that work, so the demo waits for it, as an operator would before opening to merchants.")
    deadline = time.monotonic() + timeout
    with Progress(TextColumn("  precomputing"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()) as bar:
        task = bar.add_task("", total=PLATFORM_MEMBERS)
        while time.monotonic() < deadline:
            status = matcher_json("status", "--db", db)
            if status.get("stream_slots_ready", 0) >= 1:
                bar.update(task, completed=PLATFORM_MEMBERS)
                return
            bar.update(task, completed=min(PLATFORM_MEMBERS, status.get("stream_slot_rows_in_progress", 0)))
            time.sleep(1.0)
    print("not ready yet; the job will do that work itself", flush=True)


def main() -> None:
    started = time.monotonic()
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir()
    db = str(OUT / "platform.db")
    data = write_data(random.Random(2026))
    platform, merchant = data.platform, data.merchant
    print(f"wrote {PLATFORM_MEMBERS:,} platform members and {MERCHANT_CUSTOMERS:,} merchant customers to {OUT}/")

    run("matcher", "init", "--db", db)
    note("The verifier key is the public half of the key that signs the audit log: auditors pin it, so a "
         "log re-signed with another key is caught.")
    run("matcher", "audience", "import", "--db", db, str(platform), "--id-column", "member_id",
        "--id-type", "phone", "--segments", ",".join(SEGMENTS))
    token = run("matcher", "merchant", "add", "--db", db, "demo-coffee", capture=True).strip().splitlines()[-1]
    auditor = run("matcher", "auditor", "add", "--db", db, "demo-auditor", capture=True).strip().splitlines()[-1]
    # The demo's three jobs (match, count-only, activation) fit the default yearly budget of 1.0.
    run("matcher", "policy", "set", "--db", db, "epsilon_per_job", "0.3")
    note("ε (epsilon) is what one job costs in privacy: its released counts carry random noise sized so that "
         "any one person's presence changes the odds of what the merchant sees by at most a factor e^ε. "
         "Each merchant has a budget (epsilon_budget, 1.0 a year by default); the demo's 3 jobs spend 0.9.")
    run("matcher", "policy", "show", "--db", db)
    audit_rows = matcher_json("policy", "show", "--db", db)["audit_rows"]

    address = f"127.0.0.1:{free_port()}"
    echo(["matcher", "serve", "--db", db, "--listen", address], " &")
    server = subprocess.Popen([str(BIN / "matcher"), "serve", "--db", db, "--listen", address])
    try:
        wait_healthy(address)
        wait_precomputed(db)
        streams, ids = 1 + len(SEGMENTS), data.unique_customers
        note(f"The bars count values, not people. blinding: {ids:,} ids × {streams} streams (every member, then "
             f"one per segment) = {streams * ids:,}. matching: the streams' "
             f"{PLATFORM_MEMBERS + sum(data.segment_members.values()):,} member values plus, per stream, "
             f"{audit_rows:,} audit rows (they catch a client that does not blind honestly) and random DP "
             f"padding (it hides the stream's true size).")
        match_started = time.monotonic()
        run("matcher-client", "match", "--server", address, "--token", token, str(merchant),
            "--id-column", "phone", "--id-type", "phone", "--label-column", "store", "--json", str(OUT / "report.json"))
        match_seconds = time.monotonic() - match_started
        note("'leaf N' is the job's entry in the audit log, an append-only Merkle tree (RFC 9162) with signed "
             "checkpoints; report.json carries the checkpoint and leaf_index that prove the release was logged.")
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
