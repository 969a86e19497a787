"""Observability of `matcher serve`: Prometheus metrics (--metrics) and JSON logs (--log-format json).

One real job over real gRPC against a real SQLite file, with metrics on and every matcher log line
captured as JSON; then the metrics endpoint is scraped over HTTP. The data make the unreleased
numbers distinctive (overlap 1237, segment counts 1013, 877, 731, 419, 263) and the noise is a fixed
+7, so the released values differ from them: none of them, no merchant ID and no token may appear
in the logs or the metrics.
"""

from __future__ import annotations

import io
import queue
import json
import logging
import re
import signal
import subprocess
import sys
import urllib.request
from dataclasses import dataclass

import grpc
import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from matcher.server import _logging
from matcher.server.cli import main
from matcher.crypto import group
from matcher.errors import MatcherError
from matcher.server.metrics import PhaseClock
from matcher.server.app import ServerConfig, build_server
from matcher.v1 import match_pb2, match_pb2_grpc
from matcher_client import api
from tests.conftest import SEGMENTS, ground_truth, match_key, new_operator, phone, wait_until

OVERLAP = 1237
# Overlap member t holds segment j when t < SEGMENT_COUNTS[j]: each segment's true count is distinct.
SEGMENT_COUNTS = (1013, 877, 731, 419, 263)
OUTSIDERS = 150        # the merchant's customers who are not platform members
OTHERS = 63            # platform members who are not the merchant's customers
# The job asks for two segments (a stream each, besides the overlap's): enough aggregates, and fast.
ASKED = ("member", "holds_coupon")
NOISE = 7


class _FixedNoise:
    """Noise "on", deterministically: every draw is +7, so each released cell is its truth + 7."""

    def discrete_laplace(self, scale: float) -> int:
        return NOISE

    def gaussian_int(self, sigma: float) -> int:
        return NOISE


@dataclass
class Observed:
    operator: object
    token: str
    customers: list[str]      # as the merchant wrote them
    truth: dict
    report: dict
    activation: dict
    metrics_text: str
    samples: dict             # (name, frozenset(labels)) -> value
    log_text: str


def _scrape(port: int) -> tuple[str, dict]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    samples = {(s.name, frozenset(s.labels.items())): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    return text, samples


def _value(samples: dict, name: str, **labels) -> float:
    return samples[(name, frozenset(labels.items()))]


def _hang_up_after_acceptance(address: str, token: str) -> None:
    """A count-only job whose client goes away once the job is accepted (and charged)."""
    outbox: queue.Queue = queue.Queue()
    with grpc.insecure_channel(address) as chan:
        call = match_pb2_grpc.MatchServiceStub(chan).Count(iter(outbox.get, None),
                                                           metadata=[("authorization", f"Bearer {token}")], timeout=30)
        outbox.put(match_pb2.MatchRequest(start=match_pb2.JobStart(
            protocol_version=1, id_kind="phone", labels=["all"], label_sizes=[20],
            merchant_base=group.base_mult(group.random_scalar()))))
        assert next(call).WhichOneof("msg") == "accepted"
        call.cancel()
        outbox.put(None)


@pytest.fixture(scope="module")
def observed(tmp_path_factory) -> Observed:
    operator = new_operator(tmp_path_factory.mktemp("obs") / "operator.db")
    bits = {}
    for t in range(OVERLAP):
        bits[phone(t)] = sum(1 << j for j, count in enumerate(SEGMENT_COUNTS) if t < count)
    bits.update({phone(OVERLAP + i): 0b10101 for i in range(OTHERS)})
    operator.add_members(bits)
    for key, value in {"noise": "discrete_laplace", "k": "0", "min_list_size": "10", "dummies": "on"}.items():
        operator.store.set_policy(key, value)
    token = operator.token("merchant", "shop")
    # Written the way merchants write them: "138 0000 1234" (normalized: +8613800001234).
    customers = [f"{n[3:6]} {n[6:10]} {n[10:]}" for n in [phone(t) for t in range(OVERLAP)]
                 + [phone(50_000 + i) for i in range(OUTSIDERS)]]

    captured = io.StringIO()
    handler = _logging.handler("json", captured)
    matcher_log = logging.getLogger("matcher")
    old_level = matcher_log.level
    matcher_log.addHandler(handler)
    matcher_log.setLevel(logging.DEBUG)  # the per-phase lines too
    try:
        server, port = build_server(ServerConfig(db=operator.db, listen="127.0.0.1:0", parallel=False,
                                                 noise=_FixedNoise(), metrics="127.0.0.1:0"))
        server.start()
        try:
            report = api.match(f"127.0.0.1:{port}", token, rows=[(c, None) for c in customers], id_type="phone",
                               segments=ASKED)
            with pytest.raises(MatcherError, match="requires at least 10"):
                api.match(f"127.0.0.1:{port}", token, rows=[(phone(i), None) for i in range(5)], id_type="phone")
            with pytest.raises(MatcherError, match="unknown segment"):  # fails after admission: ε refunded
                api.match(f"127.0.0.1:{port}", token, rows=[(c, None) for c in customers[:20]], id_type="phone",
                          segments=("no_such_segment",))
            # The slice (overlap members holding a coupon) is 263 members; its noisy size 270 is released.
            activation = api.activate(f"127.0.0.1:{port}", token, api.prepare_rows([(c, None) for c in customers],
                                                                                    id_type="phone"),
                                      name="coupon", where="holds_coupon")
            _hang_up_after_acceptance(f"127.0.0.1:{port}", token)
            assert wait_until(lambda: not operator.store.running_jobs())  # its end logged, in one transaction
            metrics_text, samples = _scrape(server.metrics.port)
        finally:
            server.stop(grace=1)
    finally:
        matcher_log.removeHandler(handler)
        matcher_log.setLevel(old_level)
    truth = ground_truth(operator.members, [(phone(t), "all") for t in range(OVERLAP)]
                         + [(phone(50_000 + i), "all") for i in range(OUTSIDERS)])
    yield Observed(operator, token, customers, truth, report, activation, metrics_text, samples, captured.getvalue())
    operator.store.close()


def test_the_data_make_the_unreleased_numbers_distinctive(observed):
    cells = observed.truth["all"]
    assert cells["matched"] == OVERLAP
    assert tuple(cells["segments"][name] for name in SEGMENTS) == SEGMENT_COUNTS
    released = observed.report["labels"]["all"]
    assert released["matched"] == OVERLAP + NOISE
    assert released["segments"] == {name: count + NOISE for name, count in zip(SEGMENTS, SEGMENT_COUNTS)
                                    if name in ASKED}
    assert observed.activation["noisy_size"] == SEGMENT_COUNTS[SEGMENTS.index("holds_coupon")] + NOISE


def test_metrics_count_the_released_job_its_phases_and_the_refusal(observed):
    s = observed.samples
    assert _value(s, "matcher_jobs_total", state="released", kind="match", protocol="secure") == 1
    assert _value(s, "matcher_jobs_total", state="refused", kind="match", protocol="secure") == 1
    assert _value(s, "matcher_jobs_total", state="failed", kind="match", protocol="secure") == 1
    assert _value(s, "matcher_jobs_total", state="released", kind="activation", protocol="secure") == 1
    assert _value(s, "matcher_jobs_total", state="cancelled", kind="count_only", protocol="secure") == 1
    assert _value(s, "matcher_job_refusals_total", reason="list_too_small") == 1
    total = _value(s, "matcher_job_phase_seconds_sum", phase="total", protocol="secure")
    assert _value(s, "matcher_job_phase_seconds_count", phase="total", protocol="secure") == 2
    phases = {}
    for phase in ("admit", "list", "stream", "return", "release"):
        assert _value(s, "matcher_job_phase_seconds_count", phase=phase, protocol="secure") == 2  # match, activation
        phases[phase] = _value(s, "matcher_job_phase_seconds_sum", phase=phase, protocol="secure")
    assert all(seconds > 0 for seconds in phases.values())
    assert sum(phases.values()) <= total + 1e-6
    assert _value(s, "matcher_active_jobs") == 0  # scraped after every job ended


def test_metrics_read_the_store_at_scrape_time(observed):
    s, store = observed.samples, observed.operator.store
    shop = store.principal("merchant", "shop")
    ledger = store.budget_spent(shop.id, store.effective_policy("shop").budget_period_seconds)
    # The match, the activation and the accepted-then-cancelled job spent theirs; the refused and the
    # failed job (before acceptance) nothing.
    assert ledger == pytest.approx(3 * observed.report["epsilon_spent"]) and ledger > 0
    assert _value(s, "matcher_merchant_epsilon_spent", merchant="shop") == pytest.approx(ledger)
    budget = store.effective_policy("shop").epsilon_budget
    assert _value(s, "matcher_merchant_epsilon_budget", merchant="shop") == budget
    assert _value(s, "matcher_audience_members") == OVERLAP + OTHERS
    assert _value(s, "matcher_audience_version") == 1          # one import
    assert _value(s, "matcher_audit_log_entries") == store.log_size() == 5   # one entry per job
    assert _value(s, "matcher_stream_slots_configured") == 0
    assert _value(s, "matcher_stream_slots_ready", segment="") == 0
    assert _value(s, "matcher_randomness_pool_values") == 0


def test_a_restarted_server_exports_the_same_store_gauges_and_fresh_counters(observed):
    server, _ = build_server(ServerConfig(db=observed.operator.db, listen="127.0.0.1:0", parallel=False,
                                          metrics="127.0.0.1:0", stream_slots=2))
    server.start()
    try:
        _, s = _scrape(server.metrics.port)
        observed.operator.add_members({phone(90_000 + i): 1 for i in range(10)})  # an import while it runs
        _, after_import = _scrape(server.metrics.port)
    finally:
        server.stop(grace=1)
    assert _value(after_import, "matcher_audience_members") == _value(s, "matcher_audience_members") + 10
    assert _value(after_import, "matcher_audience_version") == 2
    assert _value(s, "matcher_merchant_epsilon_spent", merchant="shop") == pytest.approx(
        3 * observed.report["epsilon_spent"])
    assert _value(s, "matcher_audit_log_entries") == 5
    assert _value(s, "matcher_stream_slots_configured") == 2
    assert not any(name == "matcher_jobs_total" for name, _ in s)  # events count from this start on


def test_json_log_lines_carry_the_structured_fields(observed):
    lines = [json.loads(line) for line in observed.log_text.splitlines()]
    assert lines and all({"timestamp", "level", "logger", "message"} <= set(line) for line in lines)
    job_id = observed.report["job_id"]
    released = [line for line in lines if line.get("outcome") == "released" and line["kind"] == "match"]
    assert len(released) == 1
    assert released[0]["job_id"] == job_id and released[0]["merchant"] == "shop"
    assert released[0]["kind"] == "match" and released[0]["protocol"] == "secure"
    assert released[0]["duration"] > 0 and set(released[0]["phases"]) == {"admit", "list", "stream", "return",
                                                                         "release"}
    phases = [line for line in lines if line.get("phase") and line["job_id"] == job_id]
    assert [line["phase"] for line in phases] == list(released[0]["phases"])
    assert all(line["merchant"] == "shop" and line["duration"] >= 0 for line in phases)
    refused = [line for line in lines if line.get("outcome") == "refused"]
    assert [line["reason"] for line in refused] == ["list_too_small"]
    assert refused[0]["merchant"] == "shop" and refused[0]["job_id"] != job_id
    assert [line["kind"] for line in lines if line.get("outcome") == "failed"] == ["match"]
    assert [line["kind"] for line in lines if line.get("outcome") == "cancelled"] == ["count_only"]
    activated = [line for line in lines if line.get("kind") == "activation"]
    assert [line["outcome"] for line in activated] == ["released"]
    assert "noisy size 270" in activated[0]["message"]


def _numbers(text: str) -> set[float]:
    """Every number written in ``text`` ("1237", "1237.0"; not the digits inside a hex job id)."""
    return {float(token) for token in re.findall(r"(?<![0-9A-Za-z_.])\d+(?:\.\d+)?(?![0-9A-Za-z_])", text)}


def test_no_id_token_or_unreleased_count_in_logs_or_metrics(observed):
    for name, text in (("logs", observed.log_text), ("metrics", observed.metrics_text)):
        assert observed.token not in text, name
        assert observed.token[3:13] not in text, name
        numbers = _numbers(text)
        unreleased = {OVERLAP, *SEGMENT_COUNTS}
        assert not numbers & unreleased, f"{name} hold unreleased counts {numbers & unreleased}"
        for written in observed.customers[::7]:   # raw, normalized, national digits, match key
            normalized = "+86" + written.replace(" ", "")
            for form in (written, normalized, normalized[3:], match_key(normalized)):
                assert form not in text, f"{name} hold a merchant ID ({form})"


def test_serve_cli_serves_metrics_and_writes_only_json_lines(observed, tmp_path):
    server = subprocess.Popen([sys.executable, "-m", "matcher.server.cli", "serve", "--db", str(observed.operator.db),
                               "--listen", "127.0.0.1:0", "--executor", "inline", "--stream-slots", "0",
                               "--metrics", "127.0.0.1:0", "--log-format", "json"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        for raw in server.stderr:
            lines.append(json.loads(raw))
            if found := re.search(r"metrics on http://127\.0\.0\.1:(\d+)/metrics", lines[-1]["message"]):
                break
        assert found, lines
        _, s = _scrape(int(found.group(1)))
        assert _value(s, "matcher_audience_members") == observed.operator.store.audience_info()["members"]
    finally:
        server.send_signal(signal.SIGTERM)
        _, rest = server.communicate(timeout=30)
    lines += [json.loads(raw) for raw in rest.splitlines()]
    assert server.returncode == 0
    assert any("shutting down" in line["message"] for line in lines)
    assert {line["logger"] for line in lines} >= {"matcher.server", "matcher.serve"}


def test_a_bad_metrics_address_is_one_error_line(observed):
    result = CliRunner().invoke(main, ["serve", "--db", str(observed.operator.db), "--listen", "127.0.0.1:0",
                                       "--executor", "inline", "--metrics", "9464"])
    assert result.exit_code == 1
    assert "error: --metrics wants HOST:PORT, not '9464'" in result.output and "Traceback" not in result.output


def test_phase_clock_adds_up_each_phase_over_its_visits():
    ticks = iter([0.0, 1.0, 3.0, 6.0, 10.0, 15.0, 15.0])
    clock = PhaseClock(clock=lambda: next(ticks))   # started at 0
    clock.enter("list")                               # 1
    clock.enter("stream")                             # 3
    clock.enter("list")                               # 6
    clock.enter("release")                            # 10
    assert clock.stop() == {"list": 2.0 + 4.0, "stream": 3.0, "release": 5.0, "total": 15.0}

