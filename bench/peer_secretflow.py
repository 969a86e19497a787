"""SecretFlow PSI (ECDH and RR22) on two files of IDs (one per line); prints one JSON line.

    <python with spu> bench/peer_secretflow.py SERVER_FILE CLIENT_FILE [--protocol ecdh|rr22|both]
                                               [--timeout S] [--bucket-size N] [--ecdh-batch-size N]
                                               [--rr22-low-comm]

Needs its own interpreter: ``spu`` pins jax/jaxlib/numpy of its own. Set up with

    python3 -m venv /tmp/sfvenv && /tmp/sfvenv/bin/pip install spu==0.9.5

(CPython 3.11.7, x86_64 Linux; spu 0.9.5 ships a ``cp311-none-manylinux_2_17_x86_64`` wheel.
There is no ``secretflow-psi`` package on PyPI: the Python binding of SecretFlow's PSI library,
github.com/secretflow/psi, is the ``spu.psi`` / ``spu.libpsi`` module inside ``spu``, whose
``psi_execute(PsiExecuteConfig, link.Context)`` drives the PSI v2 launcher.)

Each protocol is run by two party processes started at the same time (re-executions of this file
with ``--party``), one per set, joined by SecretFlow's brpc link (``spu.libspu.link.create_brpc``)
over two localhost ports, as in SecretFlow's own tests and benchmarks. The server (the platform) is
rank 0 and the PSI sender; the client (the merchant) is rank 1 and the receiver. The IDs are written
to one-column CSV files (header ``id``) before the clock starts. ``total_s`` runs from the link
being up (the earlier party returning from ``create_brpc``) to the later party returning from
``psi_execute``; it covers SecretFlow's whole pipeline (CSV read and checks, the protocol, result
join and output CSV). ``link_setup_s`` (brpc connect, mostly waiting for the other process to
start) and ``process_wall_s`` (both processes, incl. interpreter start and ``import spu``) are
reported separately; ``phases_s`` are SecretFlow's own phase marks parsed from its log. Thread
counts are the library's defaults, i.e. every core for each party (RR22: ``omp_get_num_procs()``,
ECDH: yacl's pool); both parties share this machine's cores. ``wire_bytes`` is read from the kernel (``ss -ti``:
``bytes_acked`` + ``bytes_received`` of each party's outgoing brpc connection, so it includes
brpc framing), since the Python binding exposes no link statistics.

Unlike matcher and the OpenMined peer (cardinality only), SecretFlow PSI reveals the intersection
itself to the receiver (it writes the matched IDs to a CSV); only speed is being compared.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time

from peer_common import peak_rss_mib

PROTOCOLS = ("ecdh", "rr22")
SERVER_RANK, CLIENT_RANK = 0, 1
RECEIVER_RANK = CLIENT_RANK


def _free_ports(n: int) -> list[int]:
    sockets, ports = [], []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
            ports.append(s.getsockname()[1])
    finally:
        for s in sockets:
            s.close()
    return ports


def _tcp_bytes_to(port: int) -> dict | None:
    """Kernel byte counters of established TCP connections to 127.0.0.1:port (``ss -ti``)."""
    ss = shutil.which("ss")
    if ss is None:
        return None
    try:
        out = subprocess.run([ss, "-tinH", "state", "established", f"( dport = :{port} )"],
                             capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    sent = received = conns = 0
    for field in ("bytes_acked", "bytes_received"):
        for value in re.findall(rf"\b{field}:(\d+)", out):
            if field == "bytes_acked":
                sent += int(value)
                conns += 1
            else:
                received += int(value)
    return {"sent": sent, "received": received, "connections": conns} if conns else None


# -- one party (child process) ----------------------------------------------------------------------

def _party(spec: dict) -> dict:
    import spu.libspu.link as link
    import spu.psi as psi

    rank, ports = spec["rank"], spec["ports"]
    desc = link.Desc()
    desc.id = spec["link_id"]
    for r, port in enumerate(ports):
        desc.add_party(f"party{r}", f"127.0.0.1:{port}")
    desc.recv_timeout_ms = int(spec["timeout_s"] * 1000)
    desc.http_timeout_ms = int(spec["timeout_s"] * 1000)
    desc.connect_retry_times = 600
    desc.connect_retry_interval_ms = 100

    protocol = {"ecdh": psi.PsiProtocol.PROTOCOL_ECDH, "rr22": psi.PsiProtocol.PROTOCOL_RR22}[spec["protocol"]]
    config = psi.PsiExecuteConfig(
        protocol_conf=psi.PsiProtocolConfig(
            protocol=protocol,
            receiver_rank=RECEIVER_RANK,
            bucket_size=spec["bucket_size"],
            broadcast_result=False,
            ecdh_params=psi.EcdhParams(curve=psi.EllipticCurveType.CURVE_25519,
                                       batch_size=spec["ecdh_batch_size"]),
            rr22_params=psi.Rr22Rarams(low_comm_mode=spec["rr22_low_comm"]),
        ),
        input_params=psi.InputParams(type=psi.SourceType.SOURCE_TYPE_FILE_CSV, path=spec["input"],
                                     selected_keys=["id"], keys_unique=spec["keys_unique"]),
        output_params=psi.OutputParams(type=psi.SourceType.SOURCE_TYPE_FILE_CSV, path=spec["output"],
                                       disable_alignment=True),
    )

    start = time.time()
    lctx = link.create_brpc(desc, rank)
    linked = time.time()
    report = psi.psi_execute(config, lctx)
    done = time.time()
    # Both parties are past psi_execute after this barrier, so every PSI message has been acked;
    # read this party's outgoing connection before the link closes.
    lctx.barrier()
    wire = _tcp_bytes_to(ports[1 - rank])
    lctx.stop_link()
    return {
        "rank": rank,
        "start": start, "linked": linked, "done": done,
        "link_s": round(linked - start, 3), "psi_execute_s": round(done - linked, 3),
        "original_count": int(report.original_count),
        "intersection_count": int(report.intersection_count),
        "wire": wire,
        "peak_rss_mib": peak_rss_mib(),
        "cpu_s": round(sum(resource.getrusage(resource.RUSAGE_SELF)[:2]), 3),
    }


# -- coordinator ------------------------------------------------------------------------------------

def _count_csv_rows(path: str) -> int | None:
    """Data rows of a CSV file with a header line."""
    try:
        with open(path, "rb") as f:
            rows = [line for line in f if line.strip()]
        return max(len(rows) - 1, 0)
    except OSError:
        return None


_LOG_STAMP = r"\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3})\] \[\w+\] \[[^\]]*\] "
_PHASE_RE = re.compile(_LOG_STAMP + r"\[\w+::(Init|PreProcess|Online|PostProcess|Finalize)\] (start|end)\s*$")
_TRACE_RE = re.compile(r"Trace has been written to (/tmp/psi_[\w-]+\.trace)\.")


def _parse_log(path: str) -> tuple[dict, list[str]]:
    """Per-phase seconds from a party's SecretFlow log, and the trace files it wrote."""
    from datetime import datetime

    marks: dict[tuple[str, str], float] = {}
    traces = []
    try:
        with open(path, errors="replace") as f:
            for line in f:
                m = _PHASE_RE.search(line)
                if m:
                    stamp = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S.%f").timestamp()
                    marks.setdefault((m.group(2), m.group(3)), stamp)  # first start/end of each phase
                m = _TRACE_RE.search(line)
                if m:
                    traces.append(m.group(1))
    except OSError:
        pass
    phases = {}
    for phase in ("Init", "PreProcess", "Online", "PostProcess", "Finalize"):
        if (phase, "start") in marks and (phase, "end") in marks:
            phases[f"{phase.lower()}_s"] = round(marks[(phase, "end")] - marks[(phase, "start")], 3)
    return phases, traces


def _tail(path: str, n: int = 800) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read()[-n:]
    except OSError:
        return ""


def _run_protocol(name: str, work: str, inputs: dict, keys_unique: bool, args) -> dict:
    ports = _free_ports(2)
    link_id = f"bench-{name}-{os.getpid()}-{int(time.time() * 1000)}"
    procs, files = [], []
    wall_start = time.perf_counter()
    for rank, role in ((SERVER_RANK, "server"), (CLIENT_RANK, "client")):
        spec = {"rank": rank, "ports": ports, "link_id": link_id, "protocol": name,
                "input": inputs[role], "output": os.path.join(work, f"{name}_{role}_out.csv"),
                "result": os.path.join(work, f"{name}_{role}_result.json"),
                "keys_unique": keys_unique, "bucket_size": args.bucket_size,
                "ecdh_batch_size": args.ecdh_batch_size, "rr22_low_comm": args.rr22_low_comm,
                "timeout_s": args.timeout}
        log = open(os.path.join(work, f"{name}_{role}.log"), "w")
        procs.append(subprocess.Popen([sys.executable, os.path.abspath(__file__), "--party", json.dumps(spec)],
                                      stdout=log, stderr=subprocess.STDOUT, cwd=work,
                                      env=dict(os.environ, TMPDIR=work)))
        files.append((role, spec, log))
    deadline = time.monotonic() + args.timeout
    timed_out = False
    while any(proc.poll() is None for proc in procs):
        failed = any(proc.returncode not in (None, 0) for proc in procs)  # a crashed party: the other would wait
        timed_out = time.monotonic() > deadline
        if failed or timed_out:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            break
        time.sleep(0.02)
    wall = time.perf_counter() - wall_start
    for _, _, log in files:
        log.close()

    results, phases = {}, {}
    for (role, spec, log), proc in zip(files, procs):
        phases[role], traces = _parse_log(log.name)
        for trace in traces:  # SecretFlow writes a perfetto trace to /tmp/psi_<random>.trace
            try:
                os.unlink(trace)
            except OSError:
                pass
        try:
            with open(spec["result"]) as f:
                results[role] = json.load(f)
        except (OSError, ValueError):
            results[role] = None
    if any(r is None for r in results.values()):
        codes = {role: proc.returncode for (role, _, _), proc in zip(files, procs)}
        why = f"timed out after {args.timeout} s" if timed_out else f"party exit codes {codes}"
        return {"finished": False, "reason": why,
                "log_tail": {role: _tail(log.name) for role, _, log in files}}

    s, c = results["server"], results["client"]
    receiver = c
    out_rows = _count_csv_rows(os.path.join(work, f"{name}_client_out.csv"))
    wires = [r["wire"] for r in (s, c)]
    wire_bytes = None
    if all(wires):
        wire_bytes = {"server_to_client": s["wire"]["sent"] + c["wire"]["received"],
                      "client_to_server": c["wire"]["sent"] + s["wire"]["received"]}
        wire_bytes["total"] = wire_bytes["server_to_client"] + wire_bytes["client_to_server"]
        wire_bytes["source"] = "kernel tcp_info (ss -ti) of the brpc connections, incl. brpc framing"
    entry = {
        "finished": True,
        "total_s": round(max(s["done"], c["done"]) - min(s["linked"], c["linked"]), 3),
        "intersection_size": receiver["intersection_count"],
        "receiver_output_rows": out_rows,
        "link_setup_s": round(max(s["linked"], c["linked"]) - min(s["start"], c["start"]), 3),
        "psi_execute_s": {"server": s["psi_execute_s"], "client": c["psi_execute_s"]},
        "phases_s": phases,
        "process_wall_s": round(wall, 3),
        "cpu_s": {"server": s["cpu_s"], "client": c["cpu_s"]},
        "original_count": {"server": s["original_count"], "client": c["original_count"]},
        "wire_bytes": wire_bytes,
        "peak_rss_mib": {"server": s["peak_rss_mib"], "client": c["peak_rss_mib"]},
    }
    if name == "ecdh":
        entry["settings"] = {"protocol": "PROTOCOL_ECDH", "curve": "CURVE_25519",
                             "batch_size": args.ecdh_batch_size, "bucket_size": args.bucket_size}
    else:
        entry["settings"] = {"protocol": "PROTOCOL_RR22", "low_comm_mode": args.rr22_low_comm,
                             "bucket_size": args.bucket_size}
    return entry


def _read_ids(path: str) -> list[str]:
    with open(path) as f:
        return [line for line in f.read().split("\n") if line.strip()]


def main(argv: list[str]) -> None:
    if argv[:1] == ["--party"]:
        spec = json.loads(argv[1])
        result = _party(spec)
        with open(spec["result"] + ".tmp", "w") as f:
            json.dump(result, f)
        os.replace(spec["result"] + ".tmp", spec["result"])
        return

    parser = argparse.ArgumentParser(prog="peer_secretflow.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("server_file")
    parser.add_argument("client_file")
    parser.add_argument("--protocol", choices=["ecdh", "rr22", "both"], default="both")
    parser.add_argument("--timeout", type=float, default=7200, help="seconds per protocol run")
    parser.add_argument("--bucket-size", type=int, default=1 << 20, help="SecretFlow default 2^20")
    parser.add_argument("--ecdh-batch-size", type=int, default=4096, help="SecretFlow default 4096")
    parser.add_argument("--rr22-low-comm", action="store_true",
                        help="RR22 low-communication mode (default: off, SecretFlow's fast mode; in spu 0.9.5 "
                             "it missed ~0.3%% of the matches in our 10k test)")
    parser.add_argument("--keep-workdir", action="store_true", help="keep the temp dir (party logs) for debugging")
    args = parser.parse_args(argv)

    try:
        import spu
        import spu.libspu.link  # noqa: F401
        import spu.psi  # noqa: F401
    except Exception as err:  # ImportError, or a broken native library
        print(json.dumps({"available": False, "reason": f"spu (SecretFlow PSI) not importable: {err!r}"}))
        return

    server_items = _read_ids(args.server_file)
    client_items = _read_ids(args.client_file)
    server_set, client_set = set(server_items), set(client_items)
    keys_unique = len(server_set) == len(server_items) and len(client_set) == len(client_items)
    expected = len(server_set & client_set)  # ground truth, to check each protocol's answer
    del server_set, client_set

    work = tempfile.mkdtemp(prefix="peer_secretflow_")
    try:
        inputs = {}
        for role, items in (("server", server_items), ("client", client_items)):
            inputs[role] = os.path.join(work, f"{role}.csv")
            with open(inputs[role], "w") as f:
                f.write("id\n")
                f.write("\n".join(items))
                f.write("\n")
        n_server, n_client = len(server_items), len(client_items)
        del server_items, client_items

        wanted = PROTOCOLS if args.protocol == "both" else (args.protocol,)
        load_before = os.getloadavg()
        protocols = {}
        for name in wanted:
            try:
                protocols[name] = _run_protocol(name, work, inputs, keys_unique, args)
                if protocols[name].get("finished"):
                    protocols[name]["correct"] = protocols[name]["intersection_size"] == expected
            except Exception as err:  # keep the JSON line coming for the other protocol
                protocols[name] = {"finished": False, "reason": repr(err)}
        load_after = os.getloadavg()
    finally:
        if args.keep_workdir:
            print(f"workdir kept: {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)

    peaks = [v for p in protocols.values() for v in (p.get("peak_rss_mib") or {}).values() if v is not None]
    print(json.dumps({
        "available": True,
        "finished": all(p.get("finished") for p in protocols.values()),
        "package": "spu (SecretFlow PSI: spu.psi.psi_execute)",
        "version": getattr(spu, "__version__", None),
        "server_items": n_server,
        "client_items": n_client,
        "keys_unique": keys_unique,
        "expected_intersection_size": expected,
        "protocols": protocols,
        "peak_rss_mib": max(peaks) if peaks else None,
        "peak_rss_note": "largest single party process; per-party values under protocols.*.peak_rss_mib",
        "parties": "two processes on localhost linked by brpc; server=rank 0 (sender), "
                   "client=rank 1 (receiver)",
        "threads": f"library defaults: each party uses all {os.cpu_count()} cores "
                   "(RR22 omp_get_num_procs(), ECDH yacl thread pool); both parties share them",
        "cpu_count": os.cpu_count(),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in load_after],
        "note": "SecretFlow PSI reveals the intersection itself (the matched IDs) to the receiver, "
                "not only its size as matcher/OpenMined cardinality do; compared for speed only. "
                "total_s: from the link being up (earliest party returning from create_brpc) to the "
                "later party returning from psi_execute; link_setup_s (brpc connect, mostly waiting "
                "for the other process to start) and process_wall_s (whole party processes incl. "
                "interpreter start and import spu) are reported separately.",
        "pid": os.getpid(),
    }))


if __name__ == "__main__":
    main(sys.argv[1:])
