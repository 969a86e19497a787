"""End-to-end benchmark: one full match job over real gRPC on localhost, JSON out.

    python -m bench.e2e --platform 100000 --merchant 100000 --overlap 0.5 --segments 60 \
        [--protocol {secure,semi_honest,both}] [--segments-asked N] \
        [--peer openmined] [--peer secretflow] [--out FILE.json] [--workdir DIR] [--pyspy PREFIX] [--cprofile FILE]

``--protocol both`` (the default) runs the semi-honest job, then the secure one, against the same
server and the same sets; the JSON has one section per protocol under ``protocols`` (the secure
one with per-stream phases) and ``secure_over_semi_honest`` ratios. ``--segments-asked N``: the
secure job asks for the first N segments (default all: one stream each); the semi-honest job
always counts all of them. The policy enables ``semi_honest_match`` for the comparison.

What it does, in order (each step timed separately):

1. generates synthetic data: ``--platform`` distinct CN mobile numbers (E.164) with ``--segments``
   random segment bits each, and a merchant list of ``--merchant`` numbers of which a fraction
   ``--overlap`` are platform members (the rest are not);
2. creates an operator database with the library (``matcher.server.keys.create``, ``Store(create=True)``),
   imports the audience through ``Store.import_audience`` with the pool's ``hash_to_curve``
   (timed as ``import``), sets the policy to noise none / k 0 / dummies off / min_list_size 1 /
   a large ε budget, and adds a merchant;
3. starts the real server as a subprocess (``<venv>/bin/matcher serve``) and waits for gRPC
   health SERVING;
4. runs the merchant job(s) in this process with ``matcher_client.api.run_job`` (list preparation,
   i.e. normalization with ``phonenumbers``, is timed separately as ``prepare``), recording a
   timestamp for every gRPC message and every progress callback;
5. checks every count of the report against the plaintext ground truth;
6. with ``--peer openmined``, runs OpenMined PSI cardinality (GCS, fpr 1e-9) on the very same two
   sets, in a subprocess of the interpreter given by ``--peer-python`` (default
   ``/tmp/benchvenv/bin/python`` when it exists: ``openmined-psi`` pins an older protobuf than
   matcher's generated code needs, so it lives in its own venv), and prints the ratio; with
   ``--peer secretflow`` (repeatable beside openmined), SecretFlow's ECDH-PSI (curve25519) and RR22
   the same way (``bench/peer_secretflow.py``, interpreter ``--secretflow-python``, default
   ``/tmp/sfvenv/bin/python`` with ``spu==0.9.5``).

Memory: the server's peak RSS is the kernel's high-water mark (``VmHWM``) of the server process
and of each of its pool workers, read from /proc just before the server is stopped; the sum of
the tree's ``VmRSS`` is also sampled every 0.2 s. The client's peak is this process's
``ru_maxrss`` (after resetting the high-water mark right before the job, where the kernel
allows it, so data generation does not count) and the high-water marks of its pool workers.

Bytes on the wire: measured, not estimated — the job runs over a channel with a counting
interceptor (``run_job(..., channel=...)``), so every request and response message is counted
as its protobuf size plus gRPC's 5-byte message prefix (HTTP/2 frame headers, ~0.06 %, are not
counted). The analytic estimate (32 B per point each way,
one ciphertext per platform row) is recorded beside it.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import hashlib
import json
import os
import pstats
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from bench.micro import machine_info

_MOBILE_PREFIXES = np.array([138, 139, 150, 151, 152, 158, 186, 187, 188], dtype=np.int64)
_SUFFIX_SPACE = 10**8
_HERE = Path(__file__).resolve().parent
_DEFAULT_PEER_PYTHON = "/tmp/benchvenv/bin/python"
_PYSPY_CANDIDATES = ("/tmp/benchvenv/bin/py-spy",)


# -- synthetic data ---------------------------------------------------------------------------------

def _unique_numbers(rng: np.random.Generator, count: int) -> np.ndarray:
    """``count`` distinct integers encoding (prefix index, 8-digit suffix)."""
    space = len(_MOBILE_PREFIXES) * _SUFFIX_SPACE
    if count > space // 4:
        raise SystemExit(f"at most {space // 4} synthetic numbers")
    values = np.unique(rng.integers(0, space, size=int(count * 1.05) + 16, dtype=np.int64))
    while len(values) < count:
        values = np.unique(np.concatenate([values, rng.integers(0, space, size=count, dtype=np.int64)]))
    return rng.permutation(values)[:count]


def _to_e164(values: np.ndarray) -> list[str]:
    prefixes = _MOBILE_PREFIXES[values // _SUFFIX_SPACE].tolist()
    suffixes = (values % _SUFFIX_SPACE).tolist()
    return ["+86%d%08d" % pair for pair in zip(prefixes, suffixes)]


def generate(platform_n: int, merchant_n: int, overlap: float, n_segments: int, seed: int):
    """Platform numbers with segment masks, and a merchant list whose first part is platform members."""
    rng = np.random.default_rng(seed)
    shared = min(platform_n, int(round(merchant_n * overlap)))
    values = _unique_numbers(rng, platform_n + merchant_n - shared)
    platform_values = values[:platform_n]
    outsiders = values[platform_n:]
    members = rng.choice(platform_n, size=shared, replace=False)
    merchant_values = rng.permutation(np.concatenate([platform_values[members], outsiders]))
    if n_segments:
        masks = rng.integers(0, 2**n_segments, size=platform_n, dtype=np.uint64, endpoint=False) \
            if n_segments < 64 else rng.integers(0, 2**63, size=platform_n, dtype=np.uint64)
    else:
        masks = np.zeros(platform_n, dtype=np.uint64)
    # Ground truth, from plaintext: which platform rows the merchant holds, and their segment counts.
    matched_masks = masks[members]
    segment_counts = [int(((matched_masks >> np.uint64(i)) & np.uint64(1)).sum()) for i in range(n_segments)]
    truth = {"matched": int(shared), "segments": segment_counts}
    return _to_e164(platform_values), masks, _to_e164(merchant_values), truth


# -- /proc helpers ----------------------------------------------------------------------------------

def _status_kib(pid: int, field: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _cpu_seconds(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def _machine_busy_s() -> float | None:
    """CPU-seconds the whole machine has been busy (all cores, /proc/stat), to tell a job's own CPU
    from other people's on a shared machine."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(v) for v in stat.readline().split()[1:]]
        return (sum(fields[:8]) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def _children(pid: int, skip: set[int] = frozenset()) -> list[int]:
    """All descendants of ``pid`` except the subtrees rooted at ``skip`` (scan of /proc)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as stat:
                ppid = int(stat.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        parents.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in parents.get(todo.pop(), []):
            if child in skip:
                continue
            found.append(child)
            todo.append(child)
    return found


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as cmd:
            return cmd.read().replace(b"\0", b" ").decode(errors="replace").strip()[:160]
    except OSError:
        return "?"


class TreeSampler:
    """Samples the summed VmRSS of a process tree; remembers each member's VmHWM and CPU time."""

    def __init__(self, root: int, interval: float = 0.2, exclude: set[int] | None = None):
        self.root = root
        self.interval = interval
        self.exclude = exclude or set()
        self.peak_tree_rss_kib = 0
        self.hwm: dict[int, int] = {}
        self.cpu: dict[int, float] = {}
        self.cpu_start: dict[int, float] = {}  # first reading: CPU spent before the sampled window
        self.names: dict[int, str] = {}
        self._pids: list[int] = [root]
        self._scanned_at = float("-inf")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "TreeSampler":
        # Every process alive at the first sample (the root, and a server's pool workers that
        # outlive one job) counts its CPU from here; one that appears later, from its start.
        self._first = True
        self.sample()
        self._first = False
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.sample()
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def sample(self) -> None:
        # Rescanning /proc for descendants costs more than reading a few status files (it showed
        # up at ~6 % of the client's samples at 0.2 s): rescan at most once a second.
        now = time.monotonic()
        if now - self._scanned_at >= 1.0:
            self._pids = [self.root, *_children(self.root, self.exclude)]
            self._scanned_at = now
        total = 0
        for pid in self._pids:
            rss = _status_kib(pid, "VmRSS")
            if rss is None:
                continue
            total += rss
            self.hwm[pid] = max(self.hwm.get(pid, 0), _status_kib(pid, "VmHWM") or 0)
            cpu = _cpu_seconds(pid)
            if cpu is not None:
                self.cpu[pid] = cpu
                self.cpu_start.setdefault(pid, cpu if pid == self.root or getattr(self, "_first", False) else 0.0)
            if pid not in self.names:
                self.names[pid] = _cmdline(pid)
        self.peak_tree_rss_kib = max(self.peak_tree_rss_kib, total)

    def report(self) -> dict:
        return {
            "peak_tree_rss_mib_sampled": round(self.peak_tree_rss_kib / 1024, 1),
            "processes": [{"pid": pid, "cmd": self.names.get(pid, "?"), "peak_rss_mib": round(kib / 1024, 1),
                           "cpu_s": round(self.cpu.get(pid, 0.0) - self.cpu_start.get(pid, 0.0), 2)}
                          for pid, kib in sorted(self.hwm.items())],
            "peak_rss_mib_main": round(self.hwm.get(self.root, 0) / 1024, 1),
            "peak_rss_mib_max_process": round(max(self.hwm.values(), default=0) / 1024, 1),
        }


def _reset_own_hwm() -> bool:
    """Linux: writing 5 to clear_refs resets VmHWM, so the job's own peak can be read afterwards."""
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")
        return True
    except OSError:
        return False


# -- the job, instrumented --------------------------------------------------------------------------

class WireLog:
    """Counts MatchService messages (protobuf size + 5-byte gRPC prefix) and timestamps each kind."""

    def __init__(self, t0: float, per_stream: bool = False):
        self.t0 = t0
        # Secure protocol: each message names its stream; mark "direction:kind:stream" too and
        # count bytes per (direction, stream).
        self.per_stream = per_stream
        self.bytes_by_stream: dict[str, int] = {}
        self.sent = 0
        self.received = 0
        self.sent_by_kind: dict[str, int] = {}
        self.received_by_kind: dict[str, int] = {}
        self.first: dict[str, float] = {}
        self.last: dict[str, float] = {}
        self._lock = threading.Lock()

    def mark(self, name: str) -> None:
        now = time.perf_counter() - self.t0
        with self._lock:
            self.first.setdefault(name, now)
            self.last[name] = now

    def count(self, message, direction: str) -> None:
        kind = message.WhichOneof("msg") or "?"
        size = message.ByteSize() + 5
        with self._lock:
            if direction == "sent":
                self.sent += size
                self.sent_by_kind[kind] = self.sent_by_kind.get(kind, 0) + size
            else:
                self.received += size
                self.received_by_kind[kind] = self.received_by_kind.get(kind, 0) + size
        self.mark(f"{direction}:{kind}")
        if self.per_stream and kind != "?":
            inner = getattr(message, kind)
            stream = getattr(inner, "stream", None)
            if stream is not None:
                key = f"{direction}:{kind}:{stream}"
                points = len(getattr(inner, "points", b"")) // 32
                with self._lock:
                    self.bytes_by_stream[key] = self.bytes_by_stream.get(key, 0) + size
                    self.bytes_by_stream["values:" + key] = self.bytes_by_stream.get("values:" + key, 0) + points
                self.mark(key)


@contextlib.contextmanager
def counted_channel(address: str, wire: WireLog):
    """A channel to ``address`` that counts every message of its streaming calls (the jobs) into ``wire``;
    give it to the client as ``channel=``."""
    import grpc

    from matcher_client._rpc import open_channel

    raw = open_channel(address)
    try:
        yield grpc.intercept_channel(raw, _counting_interceptor(wire))
    finally:
        raw.close()


def _counting_interceptor(wire: WireLog):
    import grpc

    class Counting(grpc.StreamStreamClientInterceptor):
        def intercept_stream_stream(self, continuation, client_call_details, request_iterator):
            def requests():
                for request in request_iterator:
                    wire.count(request, "sent")
                    yield request

            return _CountedCall(continuation(client_call_details, requests()), wire)

    return Counting()


class _CountedCall:
    """The call's responses, counted as they are read; everything else (``is_active``, ``cancel``,
    ``code``: what the client uses to notice an ended call) is the call's own. A plain generator
    here once made the client's send poll fail with an AttributeError instead of the call's status."""

    def __init__(self, call, wire: WireLog):
        self._call, self._wire = call, wire

    def __iter__(self):
        return self

    def __next__(self):
        response = next(self._call)
        self._wire.count(response, "received")
        return response

    def __getattr__(self, name: str):
        return getattr(self._call, name)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_serving(address: str, process: subprocess.Popen, timeout: float = 120.0) -> float:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    started = time.perf_counter()
    with grpc.insecure_channel(address) as chan:
        stub = health_pb2_grpc.HealthStub(chan)
        while time.perf_counter() - started < timeout:
            if process.poll() is not None:
                raise SystemExit(f"the server exited with {process.returncode} before serving")
            try:
                if stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=1).status == \
                        health_pb2.HealthCheckResponse.SERVING:
                    return time.perf_counter() - started
            except grpc.RpcError:
                time.sleep(0.1)
    raise SystemExit("the server did not become SERVING in time")


def _find_pyspy(explicit: str | None) -> str | None:
    for candidate in ([explicit] if explicit else []) + [shutil.which("py-spy"), *_PYSPY_CANDIDATES]:
        if candidate and os.path.exists(candidate):
            return candidate
    return None


def _matcher_executable() -> str:
    local = Path(sys.executable).parent / "matcher"
    return str(local) if local.exists() else (shutil.which("matcher") or "matcher")


def build_operator_db(workdir: Path, platform_ids: list[str], masks: np.ndarray, n_segments: int) -> tuple[Path, str, dict]:
    from matcher import ids
    from matcher.server import keys as keys_mod
    from matcher.crypto import group
    from matcher.crypto.kernels import local_kernels
    from matcher.server.store import Store

    timings: dict = {}
    db = workdir / "operator.db"
    started = time.perf_counter()
    keys_mod.create(keys_mod.key_path_for(db), origin="matcher.bench")
    timings["keygen_s"] = round(time.perf_counter() - started, 3)
    store = Store(db, create=True)
    store.set_meta({"origin": "matcher.bench"})
    segments = [f"seg{i:02d}" for i in range(n_segments)]
    dst = group.dst_for("phone")
    batch = 65_536
    started = time.perf_counter()
    with local_kernels() as kernels:
        def batches():
            for lo in range(0, len(platform_ids), batch):
                members = platform_ids[lo:lo + batch]
                keys = [hashlib.sha256(m.encode()).hexdigest() for m in members]
                points = kernels.hash_to_curve([k.encode() for k in keys], dst)
                bits = masks[lo:lo + batch].tolist()
                yield [(m, k, points[32 * i:32 * i + 32], b) for i, (m, k, b) in enumerate(zip(members, keys, bits))]

        imported = store.import_audience(batches(), id_kind="phone", segments=segments)
    timings["import_s"] = round(time.perf_counter() - started, 3)
    timings["import_rows_per_s"] = round(imported / max(timings["import_s"], 1e-9), 1)
    # The bench's platform keys must be the library's keys for the same numbers.
    assert ids.match_key(platform_ids[0], "phone") == hashlib.sha256(platform_ids[0].encode()).hexdigest()
    for key, value in (("noise", "none"), ("k", "0"), ("dummies", "off"), ("min_list_size", "1"),
                       ("epsilon_per_job", "1"), ("epsilon_budget", "1000000"), ("jobs_per_hour", "1000"),
                       # The semi-honest protocol runs beside the secure one (issue 13); off by default.
                       ("semi_honest_match", "on")):
        store.set_policy(key, value)
    _, token = store.add_principal("merchant", "bench")
    policy = store.effective_policy("bench")
    timings["policy"] = {key: getattr(policy, key) for key in (
        "noise", "k", "dummies", "dummy_epsilon_share", "epsilon_per_job", "epsilon_budget", "budget_period",
        "jobs_per_hour", "audit_rows", "semi_honest_match") if hasattr(policy, key)}
    store.close()
    timings["db_bytes"] = db.stat().st_size
    return db, token, timings


def run_job(address: str, token: str, merchant_ids: list[str], cprofile: str | None, pyspy: str | None,
            pyspy_prefix: str | None, rate: int, server_pid: int, cache: str | None = None,
            count_only: bool = False, protocol: str = "secure", segments: list[str] | None = None) -> dict:
    """The client's job; ``cache`` is a warm merchant hash cache (the repeat-customer scenario)."""
    import matcher_client.api as api

    started = time.perf_counter()
    merchant_list = api.prepare_rows(((m, None) for m in merchant_ids), id_type="phone")
    prepare_s = time.perf_counter() - started

    profiler_proc = None
    if pyspy and pyspy_prefix:
        profiler_proc = subprocess.Popen(
            [pyspy, "record", "--pid", str(os.getpid()), "--subprocesses", "--format", "raw", "--rate", str(rate),
             "--nonblocking", "-o", f"{pyspy_prefix}-client.txt"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(1.0)
    hwm_reset = _reset_own_hwm()
    rss_before = _status_kib(os.getpid(), "VmRSS") or 0

    t0 = time.perf_counter()
    wire = WireLog(t0, per_stream=protocol == "secure")
    marks: dict[str, list[float]] = {}

    def progress(phase: str, done: int, total) -> None:
        now = time.perf_counter() - t0
        marks.setdefault(phase, [now, now])[1] = now

    profiler = cProfile.Profile() if cprofile else None
    usage_before = resource.getrusage(resource.RUSAGE_SELF)
    own_pid = os.getpid()
    # This process's children include the server (and py-spy): those subtrees are not the client.
    sampler = TreeSampler(own_pid, exclude={server_pid} | ({profiler_proc.pid} if profiler_proc else set()))
    with counted_channel(address, wire) as channel, sampler:
        if profiler:
            profiler.enable()
        if protocol == "secure":
            report = api.run_job(address, token, merchant_list, progress=progress, cache=cache,
                                 count_only=count_only, segments=segments, protocol=protocol, channel=channel)
        else:  # every segment; the client has no count-only semi-honest job any more
            report = api.run_job(address, token, merchant_list, progress=progress, cache=cache,
                                 protocol=protocol, channel=channel)
        if profiler:
            profiler.disable()
    total_s = time.perf_counter() - t0
    if profiler_proc:
        profiler_proc.send_signal(signal.SIGINT)
        try:
            profiler_proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            profiler_proc.kill()
    if profiler:
        profiler.dump_stats(cprofile)
        with open(cprofile + ".txt", "w") as out:
            pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(40)
            pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(40)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    tree = sampler.report()
    return {
        "protocol": protocol,
        "report": report,
        "prepare_s": prepare_s,
        "total_s": total_s,
        "marks": marks,
        "wire": wire,
        "client_memory": {
            "rss_before_job_mib": round(rss_before / 1024, 1),
            "peak_rss_mib_main": tree["peak_rss_mib_main"],
            "ru_maxrss_mib": round(usage.ru_maxrss / 1024, 1),
            "peak_rss_is_job_only": hwm_reset,
            "peak_tree_rss_mib_sampled": tree["peak_tree_rss_mib_sampled"],
            "processes": tree["processes"],
        },
        "client_cpu_s": round(usage.ru_utime + usage.ru_stime - usage_before.ru_utime - usage_before.ru_stime, 2),
    }


def _phases(job: dict) -> dict:
    """Wall-clock phases of the job from the client's point of view (seconds since run_job began)."""
    w: WireLog = job["wire"]
    first, last = w.first, w.last
    t_end = job["total_s"]
    points = {
        "accepted": first.get("received:accepted"),
        "list_sent": last.get("sent:list_end"),
        "first_double_blinded": first.get("received:double_blinded"),
        "last_double_blinded": last.get("received:double_blinded"),
        "first_audience": first.get("received:audience"),
        "last_audience": last.get("received:audience"),
        "audience_end": first.get("received:audience_end"),
        "sums_sent": first.get("sent:sums"),
        "first_returned": first.get("sent:returned"),
        "returned_end": first.get("sent:returned_end"),
        "report": first.get("received:report"),
        "done": t_end,
    }
    def span(a, b):
        return round(points[b] - points[a], 3) if points.get(a) is not None and points.get(b) is not None else None

    phases = {
        "start_to_accepted_s": round(points["accepted"], 3) if points["accepted"] is not None else None,
        # Client hashes + blinds its list and streams it; the server blinds each chunk as it arrives.
        "blinding_s": span("accepted", "list_sent"),
        # Server finishes b·a·H(x), shuffles, streams them back.
        "double_blinded_s": span("list_sent", "last_double_blinded"),
        # Server blinds + encrypts its audience and streams it; the client blinds, matches, sums.
        # (Count only: nothing comes back between the list and the audience.)
        "matching_s": span("last_double_blinded", "audience_end") or span("list_sent", "audience_end"),
        # Count only: the client sends a·b·H(y) for the whole stream back, shuffled; the server counts.
        "returning_s": span("audience_end", "returned_end"),
        # Client re-randomizes the sums (or the server counts); server decrypts, applies the policy,
        # appends to the audit log.
        "finish_s": span("returned_end", "report") if points["returned_end"] is not None else span("audience_end", "report"),
        "total_s": round(t_end, 3),
    }
    return {"phases": phases, "timeline_s": {k: (round(v, 3) if v is not None else None) for k, v in points.items()},
            "progress_marks_s": {k: [round(a, 3), round(b, 3)] for k, (a, b) in job["marks"].items()}}


def _secure_phases(job: dict) -> dict:
    """The secure job's timeline, stream by stream (client's clock, seconds since run_job began).

    Per stream s the phases tile the job: *list* (from the end of stream s-1, or from accepted:
    the merchant hashes (s = 0 only) and blinds its copy s, the server computes T_s as chunks
    arrive), *server_prep* (list end -> first stream chunk: the server collects T_s, de-duplicates
    it, builds the filler grid, blinds its first chunk), *stream* (the server blinds b_s·H(y) and
    streams it with the fillers; the merchant blinds every value as it comes), *return* (the
    merchant collects the last a·v, shuffles, sends back). The server's audit and count of stream
    s (finish_stream) overlaps the list of stream s+1; the last one is in *finish*.
    """
    w: WireLog = job["wire"]
    first = w.first
    n_streams = 1 + len(job["report"].get("segments", []))
    accepted = first.get("received:accepted")
    streams, previous = [], accepted
    for index in range(n_streams):
        at = lambda where, kind: where.get(f"{kind}:{index}")
        list_end, first_chunk = at(first, "sent:list_end"), at(first, "received:audience")
        stream_end, returned_end = at(first, "received:audience_end"), at(first, "sent:returned_end")

        def span(a, b):
            return round(b - a, 3) if a is not None and b is not None else None

        down = w.bytes_by_stream.get(f"received:audience:{index}", 0)
        streams.append({"list_s": span(previous, list_end), "server_prep_s": span(list_end, first_chunk),
                        "stream_s": span(first_chunk, stream_end), "return_s": span(stream_end, returned_end),
                        # 32 B per value + a few bytes of framing per 65,536-value message
                        "values": w.bytes_by_stream.get(f"values:received:audience:{index}", 0), "bytes_down": down,
                        "bytes_up": w.bytes_by_stream.get(f"sent:blinded:{index}", 0)
                        + w.bytes_by_stream.get(f"sent:returned:{index}", 0)})
        previous = returned_end
    report_at = first.get("received:report")
    sums = {key: round(sum(s[key] or 0 for s in streams), 3) for key in ("list_s", "server_prep_s", "stream_s", "return_s")}
    phases = {
        "start_to_accepted_s": round(accepted, 3) if accepted is not None else None,
        # summed over every stream
        **{f"streams_{key}": value for key, value in sums.items()},
        # the last stream's audit and count, the policy, the audit-log entry
        "finish_s": round(report_at - previous, 3) if report_at is not None and previous is not None else None,
        "total_s": round(job["total_s"], 3),
    }
    segment_streams = streams[1:]
    return {"phases": phases, "n_streams": n_streams,
            "stream_0": streams[0],
            "segment_stream_mean": {key: round(sum(s[key] or 0 for s in segment_streams) / len(segment_streams), 3)
                                    for key in ("list_s", "server_prep_s", "stream_s", "return_s", "values")}
            if segment_streams else None,
            "streams": streams,
            "progress_marks_s": {k: [round(a, 3), round(b, 3)] for k, (a, b) in job["marks"].items()}}


def check(report: dict, truth: dict, segment_names: list[str]) -> dict:
    """Exact comparison with the plaintext ground truth: the matched count and every segment asked."""
    label = report["labels"].get("all", {})
    got = label.get("segments", {}) or {}
    wrong = [name for name in segment_names if got.get(name) != truth["segments"][int(name[3:])]]
    unexpected = sorted(set(got) - set(segment_names))
    ok = label.get("matched") == truth["matched"] and not wrong and not unexpected
    return {"ok": ok, "matched": label.get("matched"), "expected_matched": truth["matched"],
            "segments_wrong": wrong[:10], "segments_unexpected": unexpected[:10],
            "segments_checked": len(segment_names)}


# -- peers (each in its own interpreter: they pin their own protobuf, jax, numpy) ---------------------

_PEERS = {
    # name: (script, default interpreter, what to set up)
    "openmined": ("peer_openmined.py", _DEFAULT_PEER_PYTHON, "/tmp/benchvenv with openmined-psi"),
    "secretflow": ("peer_secretflow.py", "/tmp/sfvenv/bin/python", "/tmp/sfvenv with spu==0.9.5"),
}


@contextlib.contextmanager
def peer_inputs(workdir: Path, platform_ids: list[str], merchant_ids: list[str]):
    """The two sets as files of one ID per line (server: the platform's, client: the merchant's),
    written once for every peer of the run and removed after."""
    server_file, client_file = workdir / "peer_server.txt", workdir / "peer_client.txt"
    server_file.write_text("\n".join(platform_ids))
    client_file.write_text("\n".join(merchant_ids))
    try:
        yield server_file, client_file
    finally:
        server_file.unlink(missing_ok=True)
        client_file.unlink(missing_ok=True)


def run_peer(name: str, python: str, inputs: tuple[Path, Path], timeout: float) -> dict:
    """Run one peer on the very same sets."""
    command = [python, str(_HERE / _PEERS[name][0]), *map(str, inputs)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError as err:
        return {"available": False, "reason": f"no interpreter {python} ({_PEERS[name][2]}): {err}"}
    except subprocess.TimeoutExpired:
        return {"available": True, "finished": False, "reason": f"timed out after {timeout} s"}
    if done.returncode != 0:
        return {"available": False, "reason": (done.stderr or done.stdout).strip()[-800:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _peer_times(name: str, peer: dict) -> dict[str, tuple[float, int]]:
    """(seconds, intersection size) per protocol a peer ran."""
    if name == "openmined":
        return {"openmined_psi_ca": (peer["total_s"], peer["intersection_size"])}
    return {f"secretflow_{protocol}": (run["total_s"], run["intersection_size"])
            for protocol, run in peer.get("protocols", {}).items() if run.get("finished", True) and "total_s" in run}


def _protocol_result(job: dict, args) -> dict:
    """One job's numbers: correctness, phases, rates, memory, CPU, bytes."""
    protocol = job["protocol"]
    phases = _phases(job) if protocol == "semi_honest" else _secure_phases(job)
    wire: WireLog = job["wire"]
    list_size = job["report"]["list_size"]
    n_cipher = 512  # 2048-bit n: ciphertexts mod n^2 are 4096 bits
    if protocol == "semi_honest":
        estimate_name = "estimate_32B_per_point_512B_per_ciphertext"
        estimate = {"client_to_server": 32 * list_size + n_cipher,
                    "server_to_client": 32 * list_size + args.platform * (32 + n_cipher)}
    else:
        # per stream: the list copy up (33 B an element), the stream down and back (32 B a value)
        values = sum(s["values"] for s in phases["streams"])
        estimate_name = "estimate_33B_per_list_element_per_stream_32B_per_stream_value_each_way"
        estimate = {"client_to_server": 33 * list_size * phases["n_streams"] + 32 * values,
                    "server_to_client": 32 * values}
    matching = phases["phases"].get("matching_s") or phases["phases"].get("streams_stream_s")
    server_cpu = job["server_cpu"]
    machine = dict(job["machine_during_job"])
    ours = sum(server_cpu.values()) + sum(p["cpu_s"] for p in job["client_memory"]["processes"])
    if machine["busy_cpu_s_all_processes"] is not None:
        # What other processes (another engineer's tests) took from the 2 cores during the job
        machine["others_cpu_s"] = round(max(0.0, machine["busy_cpu_s_all_processes"] - ours), 2)
    return {
        "machine_during_job": machine,
        "protocol": protocol,
        "segments_counted": len(job["report"].get("segments", [])),
        "correct": check(job["report"], job["truth"], job["segments_checked"]),
        "prepare_s": round(job["prepare_s"], 3),
        **phases,
        "rates": {
            "job_platform_rows_per_s": round(args.platform / job["total_s"], 1),
            "job_merchant_rows_per_s": round(args.merchant / job["total_s"], 1),
            "matching_platform_rows_per_s": round(args.platform / matching, 1) if matching else None,
        },
        "wall_incl_prepare_s": round(job["prepare_s"] + job["total_s"], 3),
        "memory": {"server": job["server_memory"], "client": job["client_memory"]},
        "cpu_s_during_job": {"server_tree": round(sum(server_cpu.values()), 2), "client_main_process": job["client_cpu_s"],
                             "client_tree": round(sum(p["cpu_s"] for p in job["client_memory"]["processes"]), 2)},
        "wire_bytes": {
            "method": "measured: protobuf ByteSize + 5-byte gRPC prefix per message, counted in the client stub",
            "client_to_server": wire.sent, "server_to_client": wire.received,
            "sent_by_kind": wire.sent_by_kind, "received_by_kind": wire.received_by_kind,
            estimate_name: estimate,
        },
    }


# -- main -------------------------------------------------------------------------------------------

def _wait_pool(db: Path, values: int, streams: int = 1, timeout: float = 3600) -> float:
    """Seconds until the server's randomness pool holds ``values`` and a slot is ready for each of
    ``streams`` streams (every member, then one per segment: the secure protocol's)."""
    from matcher.crypto import pool
    from matcher.server.store import Store

    wanted = -(-values // pool.BATCH)
    started = time.perf_counter()
    while time.perf_counter() - started < timeout:
        # What `matcher status` shows: the pool's sealed batches, and ready slots for the current
        # audience (one stream of every member, then one per segment).
        with contextlib.closing(Store(db, read_only=True)) as store:
            status = store.status()
        ready_streams = (status["stream_slots_ready"] > 0) + sum(
            1 for count in status["segment_stream_slots_ready"].values() if count > 0)
        if status["randomness_pool_batches"] >= wanted and ready_streams >= streams:
            return time.perf_counter() - started
        time.sleep(0.5)
    raise TimeoutError("the randomness pool did not fill")


def _warm_cache(workdir: Path, merchant_ids: list[str]) -> tuple[str, float]:
    import matcher_client.api as api
    from matcher.crypto import group
    from matcher.crypto.kernels import local_kernels
    from matcher_client.hash_cache import CachingKernels, HashCache

    path = str(workdir / "merchant-hashes.cache")
    started = time.perf_counter()
    keys = api.prepare_rows(((m, None) for m in merchant_ids), id_type="phone").prepared.keys
    with CachingKernels(local_kernels(), HashCache(path)) as kernels:
        for lo in range(0, len(keys), 65_536):
            kernels.hash_to_curve([k.encode() for k in keys[lo:lo + 65_536]], group.dst_for("phone"))
    return path, round(time.perf_counter() - started, 3)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.e2e", description=__doc__.split("\n\n")[0])
    parser.add_argument("--platform", type=int, required=True, help="platform audience size")
    parser.add_argument("--merchant", type=int, required=True, help="merchant list size")
    parser.add_argument("--overlap", type=float, default=0.5, help="fraction of the merchant list on the platform")
    parser.add_argument("--segments", type=int, default=60, help="boolean segments per platform member (0..64)")
    parser.add_argument("--count-only", action="store_true",
                        help="cardinality only (matcher-client match --count-only): the secure job asks for no segment; "
                             "the semi-honest job has no count-only form in the client any more and runs in full")
    parser.add_argument("--protocol", choices=["secure", "semi_honest", "both"], default="both",
                        help="which protocol's job to run; both: semi-honest, then secure, on the same server and sets")
    parser.add_argument("--segments-asked", type=int, default=None, metavar="N",
                        help="segments the secure job asks for (the first N; default: all, one stream each); "
                             "the semi-honest job always counts all")
    parser.add_argument("--peer", choices=["none", *_PEERS], action="append", default=[],
                        help="run a peer on the same sets in the same run (repeat for several)")
    parser.add_argument("--peer-python", default=None,
                        help=f"interpreter with openmined-psi (default {_DEFAULT_PEER_PYTHON} if present)")
    parser.add_argument("--secretflow-python", default=None,
                        help=f"interpreter with spu (default {_PEERS['secretflow'][1]})")
    parser.add_argument("--peer-timeout", type=float, default=1800)
    parser.add_argument("--out", default=None, help="write the JSON result here")
    parser.add_argument("--workdir", default=None, help="where the operator DB goes (default: a temp dir, removed)")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--pyspy", default=None, metavar="PREFIX",
                        help="profile with py-spy: PREFIX-server.txt and PREFIX-client.txt (collapsed stacks)")
    parser.add_argument("--pyspy-bin", default=None)
    parser.add_argument("--pyspy-rate", type=int, default=50)
    parser.add_argument("--cprofile", default=None, metavar="FILE", help="cProfile the client's main thread")
    parser.add_argument("--pool", choices=["off", "prefill"], default="off",
                        help="prefill: let the server precompute, before the job, its Paillier randomness pool "
                             "and one job stream (b·H(y)) (timed separately as pool_fill_s); off: all online")
    parser.add_argument("--warm-cache", action="store_true",
                        help="hash the merchant list into a local hash cache before the job (timed separately)")
    args = parser.parse_args(argv)
    if not 0 <= args.segments <= 64:
        parser.error("--segments must be in 0..64")
    if not 0 <= args.overlap <= 1:
        parser.error("--overlap must be in 0..1")
    if args.segments_asked is not None and not 0 <= args.segments_asked <= args.segments:
        parser.error("--segments-asked must be in 0..--segments")
    if args.count_only and args.segments_asked:
        parser.error("--count-only asks for no segments")
    protocols = ["semi_honest", "secure"] if args.protocol == "both" else [args.protocol]

    result: dict = {"benchmark": "e2e", "params": {k: v for k, v in vars(args).items()
                                                   if k in ("platform", "merchant", "overlap", "segments", "count_only", "peer", "seed",
                                                            "protocol", "segments_asked")},
                    "machine": machine_info(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    temp = None
    if args.workdir:
        workdir = Path(args.workdir)
        workdir.mkdir(parents=True, exist_ok=True)
    else:
        temp = tempfile.TemporaryDirectory(prefix="matcher-bench-")
        workdir = Path(temp.name)

    try:
        started = time.perf_counter()
        platform_ids, masks, merchant_ids, truth = generate(args.platform, args.merchant, args.overlap,
                                                            args.segments, args.seed)
        result["generate_s"] = round(time.perf_counter() - started, 3)
        print(f"generated {len(platform_ids)} platform / {len(merchant_ids)} merchant ids, "
              f"{truth['matched']} shared ({result['generate_s']} s)", file=sys.stderr)

        db, token, setup = build_operator_db(workdir, platform_ids, masks, args.segments)
        result["setup"] = setup
        print(f"operator db ready: import {setup['import_s']} s", file=sys.stderr)
        del masks

        pyspy = _find_pyspy(args.pyspy_bin) if args.pyspy else None
        if args.pyspy and not pyspy:
            print("py-spy not found; profiling skipped", file=sys.stderr)
        port = _free_port()
        address = f"127.0.0.1:{port}"
        pool_values = args.platform if args.pool == "prefill" else 0
        serve = [_matcher_executable(), "serve", "--db", str(db), "--listen", address,
                 "--randomness-pool", str(pool_values), "--stream-slots", "1" if pool_values else "0"]
        if pyspy:
            serve = [pyspy, "record", "--subprocesses", "--format", "raw", "--rate", str(args.pyspy_rate),
                     "--nonblocking", "-o", f"{args.pyspy}-server.txt", "--", *serve]
        server_log = open(workdir / "server.log", "w")
        server = subprocess.Popen(serve, stdout=server_log, stderr=subprocess.STDOUT)
        server_root = server.pid
        try:
            result["server_start_s"] = round(_wait_serving(address, server), 3)
            if pool_values:
                result["pool_fill_s"] = round(_wait_pool(db, pool_values, 1 + args.segments), 3)
                print(f"randomness pool filled in {result['pool_fill_s']} s", file=sys.stderr)
            cache = None
            if args.warm_cache:
                cache, result["cache_fill_s"] = _warm_cache(workdir, merchant_ids)
                print(f"hash cache warmed in {result['cache_fill_s']} s", file=sys.stderr)
            server_root = server.pid
            if pyspy:  # the server is py-spy's child; measure the server, not the profiler
                kids = [p for p in _children(server.pid) if "serve" in _cmdline(p)]
                server_root = kids[0] if kids else server.pid
            all_names = [f"seg{i:02d}" for i in range(args.segments)]
            asked = None if args.segments_asked is None else all_names[:args.segments_asked]
            jobs = {}
            for protocol in protocols:
                tag = (lambda path: path) if len(protocols) == 1 else \
                    (lambda path, protocol=protocol: f"{Path(path).with_suffix('')}-{protocol}{Path(path).suffix}")
                if pool_values and jobs:  # the previous job took the stream slot: let the server refill first
                    result.setdefault("pool_refill_s", {})[protocol] = round(_wait_pool(db, pool_values,
                                                                                       1 + args.segments), 3)
                    print(f"pool and stream slot refilled in {result['pool_refill_s'][protocol]} s", file=sys.stderr)
                print(f"running the {protocol} job", file=sys.stderr)
                load_before, busy_before = os.getloadavg(), _machine_busy_s()
                with TreeSampler(server_root) as server_sampler:
                    job = run_job(address, token, merchant_ids, tag(args.cprofile) if args.cprofile else None,
                                  pyspy, f"{args.pyspy}-{protocol}" if args.pyspy and len(protocols) > 1 else args.pyspy,
                                  args.pyspy_rate, server.pid, cache=cache,
                                  count_only=args.count_only and protocol == "secure", protocol=protocol,
                                  segments=asked if protocol == "secure" else None)
                busy_after = _machine_busy_s()
                job["machine_during_job"] = {"load_average_before": [round(v, 2) for v in load_before],
                                             "load_average_after": [round(v, 2) for v in os.getloadavg()],
                                             "busy_cpu_s_all_processes": round(busy_after - busy_before, 2)
                                             if busy_after is not None and busy_before is not None else None}
                job["server_memory"] = server_sampler.report()
                job["server_cpu"] = {pid: server_sampler.cpu[pid] - server_sampler.cpu_start.get(pid, 0.0)
                                     for pid in server_sampler.cpu}
                if protocol == "secure":
                    job["segments_checked"] = [] if args.count_only else (all_names if asked is None else asked)
                else:
                    job["segments_checked"] = all_names
                job["truth"] = truth
                jobs[protocol] = job
                print(f"{protocol} job: {round(job['total_s'], 3)} s", file=sys.stderr)
        finally:
            if server.poll() is None:
                # Stop the server itself (graceful SIGTERM, which also shuts its pool down); under
                # py-spy, the profiler then exits with its child and writes the profile. A SIGINT
                # to py-spy instead left the server's pool workers orphaned.
                with contextlib.suppress(ProcessLookupError, NameError):
                    os.kill(server_root, signal.SIGTERM)
                try:
                    server.wait(timeout=120)
                except subprocess.TimeoutExpired:
                    server.kill()
            server_log.close()

        result["protocols"] = {protocol: _protocol_result(job, args) for protocol, job in jobs.items()}
        result["correct"] = {"ok": all(r["correct"]["ok"] for r in result["protocols"].values()),
                             **{protocol: r["correct"]["ok"] for protocol, r in result["protocols"].items()}}
        if len(jobs) == 2:
            secure, semi = result["protocols"]["secure"], result["protocols"]["semi_honest"]

            def ratio(a, b):
                return round(a / b, 3) if a and b else None

            result["secure_over_semi_honest"] = {
                "job_s": ratio(secure["phases"]["total_s"], semi["phases"]["total_s"]),
                "wall_incl_prepare_s": ratio(secure["wall_incl_prepare_s"], semi["wall_incl_prepare_s"]),
                "bytes_total": ratio(secure["wire_bytes"]["client_to_server"] + secure["wire_bytes"]["server_to_client"],
                                     semi["wire_bytes"]["client_to_server"] + semi["wire_bytes"]["server_to_client"]),
                "cpu_s_server_tree": ratio(secure["cpu_s_during_job"]["server_tree"], semi["cpu_s_during_job"]["server_tree"]),
                "cpu_s_client_tree": ratio(secure["cpu_s_during_job"]["client_tree"], semi["cpu_s_during_job"]["client_tree"]),
                "note": "the semi-honest job counts every segment; the secure job counts the segments asked",
            }
        # Earlier results had one job at the top level; keep its headline fields there.
        headline = result["protocols"][protocols[-1]]
        result["phases"] = headline["phases"]
        for protocol, r in result["protocols"].items():
            print(f"{protocol} job: {r['phases']['total_s']} s (+ prepare {r['prepare_s']} s), "
                  f"correct={r['correct']['ok']}", file=sys.stderr)
        if "secure_over_semi_honest" in result:
            print(f"secure / semi_honest: {result['secure_over_semi_honest']['job_s']}x", file=sys.stderr)

        peers = list(dict.fromkeys(p for p in args.peer if p != "none"))
        with peer_inputs(workdir, platform_ids, merchant_ids) if peers else contextlib.nullcontext() as inputs:
            for name in peers:
                python = {"openmined": args.peer_python, "secretflow": args.secretflow_python}[name] or _PEERS[name][1]
                peer = run_peer(name, python, inputs, args.peer_timeout)
                result[f"peer_{name}"] = peer
                if not (peer.get("available") and peer.get("finished", True)):
                    print(f"{name} peer unavailable: {peer.get('reason')}", file=sys.stderr)
                    continue
                for protocol, (seconds, size) in _peer_times(name, peer).items():
                    ratios = {ours: round(seconds / r["phases"]["total_s"], 2) for ours, r in result["protocols"].items()}
                    correct = abs(size - truth["matched"]) <= max(2, truth["matched"] * 1e-6)
                    # ratio over the last protocol run (as before: one number), and over each
                    peer.setdefault("ratios_over_matcher", {})[protocol] = ratios[protocols[-1]]
                    peer.setdefault("ratios_over_matcher_by_protocol", {})[protocol] = ratios
                    peer.setdefault("correct", {})[protocol] = correct
                    print(f"{protocol}: {seconds} s (intersection {size}, correct={correct}); "
                          f"ratio {protocol}/matcher = {ratios}", file=sys.stderr)
    finally:
        if temp:
            temp.cleanup()

    text = json.dumps(result, indent=2, default=str)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)
    return result


if __name__ == "__main__":
    main()
