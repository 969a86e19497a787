"""The operator CLI through click's runner, and `matcher serve` as a real process (health, reflection,
TLS, SIGTERM)."""

from __future__ import annotations

import datetime
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from matcher.server import keys as keys_mod
from matcher.server.cli import main
from matcher.server.store import Store
from matcher_client import api
from tests.conftest import exact_policy, phone, wait_until

BIN = Path(sys.executable).parent


def invoke(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@pytest.fixture
def initialised(tmp_path):
    db = tmp_path / "op.db"
    result = invoke("init", "--db", str(db))
    assert result.exit_code == 0, result.output
    return db


def test_init_creates_schema_and_a_0600_key_file(initialised):
    key_file = keys_mod.key_path_for(initialised)
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert Store(initialised).audience_info()["members"] == 0
    assert invoke("init", "--db", str(initialised)).exit_code != 0  # never overwrites


def test_key_file_readable_by_others_is_refused(initialised):
    os.chmod(keys_mod.key_path_for(initialised), 0o644)
    result = invoke("audit", "key", "--db", str(initialised))
    assert result.exit_code == 1 and "chmod 600" in result.output


def test_audience_import_messy_csv_counts_each_reason(initialised, tmp_path):
    csv_path = tmp_path / "members.csv"
    csv_path.write_text("member_id,member,paid\n"
                        "138 0000 0001,1,0\n+86 138-0000-0002,yes,true\n008613800000003,0,no\n"
                        "13800000001,1,1\n"          # the first member again, other spelling, new segments
                        "not a phone,1,1\n,0,0\n"     # invalid_phone, empty
                        "13800000004,maybe,1\n")     # a segment value that is not yes/no
    result = CliRunner().invoke(main, [
        "audience", "import", "--db", str(initialised), str(csv_path), "--id-column", "member_id",
        "--id-type", "phone", "--segments", "member,paid", "--json", "--skip-invalid"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert (summary["rows"], summary["imported"], summary["duplicates"], summary["members"]) == (7, 3, 1, 3)
    assert summary["invalid"] == {"invalid_phone": 1, "empty": 1, "bad_segment_member": 1}
    assert "invalid 3 (bad_segment_member: 1, empty: 1, invalid_phone: 1)" in result.stderr
    store = Store(initialised)
    rows = dict(store.db.execute("SELECT member_id, segments FROM audience").fetchall())
    # A member seen again updates its segments: the later row (1,1) wins over the first (1,0).
    assert rows == {"+8613800000001": 0b11, "+8613800000002": 0b11, "+8613800000003": 0b00}


def test_audience_import_errors_name_the_problem_and_change_nothing(initialised, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("phone\n13800000001\n")
    result = invoke("audience", "import", "--db", str(initialised), str(bad), "--id-column", "member_id",
                    "--id-type", "phone")
    assert result.exit_code == 1 and "no column 'member_id'" in result.output and "columns are: phone" in result.output
    bad.write_bytes(b"member_id\n\xff\xfe\n")
    result = invoke("audience", "import", "--db", str(initialised), str(bad), "--id-column", "member_id",
                    "--id-type", "phone")
    assert result.exit_code == 1 and "not UTF-8" in result.output
    assert Store(initialised).audience_info()["members"] == 0


def test_merchant_add_prints_the_token_alone_on_the_last_line(initialised):
    result = CliRunner().invoke(main, ["merchant", "add", "--db", str(initialised), "shop"])
    token = result.stdout.strip().splitlines()[-1]
    assert token.startswith("mt_") and " " not in token
    assert Store(initialised).authenticate(token).name == "shop"
    as_json = CliRunner().invoke(main, ["merchant", "add", "--db", str(initialised), "other", "--json"])
    assert Store(initialised).authenticate(json.loads(as_json.stdout.strip().splitlines()[-1])["token"]).name == "other"
    # Only the hash is stored.
    assert token not in Path(initialised).read_bytes().decode("latin-1")
    assert invoke("merchant", "add", "--db", str(initialised), "shop").exit_code == 1  # names are unique


def test_policy_set_validates_and_show_prints_the_effective_policy(initialised):
    assert invoke("merchant", "add", "--db", str(initialised), "shop").exit_code == 0
    bad = invoke("policy", "set", "--db", str(initialised), "noise", "laplace")
    assert bad.exit_code == 1 and "noise" in bad.output and "discrete_laplace" in bad.output
    assert invoke("policy", "set", "--db", str(initialised), "k", "20").exit_code == 0
    assert invoke("policy", "set", "--db", str(initialised), "k", "70", "--merchant", "shop").exit_code == 0
    shown = json.loads(invoke("policy", "show", "--db", str(initialised), "--json").output)
    assert shown["k"] == 20 and shown["noise"] == "discrete_laplace"
    assert json.loads(invoke("policy", "show", "--db", str(initialised), "--merchant", "shop", "--json").output)["k"] == 70
    entries = Store(initialised).log_entries(0, 10)
    assert [json.loads(d)["type"] for _, d in entries] == ["merchant_added", "policy", "policy"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def wait_serving(channel: grpc.Channel, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    stub = health_pb2_grpc.HealthStub(channel)
    while True:
        try:
            if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == health_pb2.HealthCheckResponse.SERVING:
                return
        except grpc.RpcError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.1)


def test_serve_process_tls_health_reflection_and_sigterm(operator, tmp_path):
    operator.add_members({phone(i): 1 for i in range(30)})
    exact_policy(operator.store)
    token = operator.token("merchant", "shop")
    cert, key = self_signed(tmp_path)
    port = free_port()
    server = subprocess.Popen([str(BIN / "matcher"), "serve", "--db", str(operator.db), "--listen", f"127.0.0.1:{port}",
                               "--tls-cert", str(cert), "--tls-key", str(key), "--executor", "inline"],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        creds = grpc.ssl_channel_credentials(root_certificates=cert.read_bytes())
        options = [("grpc.ssl_target_name_override", "localhost")]
        with grpc.secure_channel(f"localhost:{port}", creds, options=options) as chan:
            wait_serving(chan)
            reflection = reflection_pb2_grpc.ServerReflectionStub(chan)
            reply = next(reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")])))
            services = {s.name for s in reply.list_services_response.service}
            assert {"matcher.v1.MatchService", "matcher.v1.AuditService", "grpc.health.v1.Health"} <= services
        report = api.match(f"localhost:{port}", token, rows=[(phone(i), None) for i in range(25)], id_type="phone",
                           tls_ca=str(cert))
        with pytest.raises(grpc.RpcError):  # plaintext against a TLS server fails
            with grpc.insecure_channel(f"127.0.0.1:{port}") as plain:
                health_pb2_grpc.HealthStub(plain).Check(health_pb2.HealthCheckRequest(), timeout=2)
    finally:
        server.send_signal(signal.SIGTERM)
        output, _ = server.communicate(timeout=30)
    assert server.returncode == 0, output
    assert "shutting down" in output
    assert report["labels"]["all"]["matched"] == 25


def test_serve_rejects_half_a_tls_configuration(initialised, tmp_path):
    cert, _ = self_signed(tmp_path)
    result = invoke("serve", "--db", str(initialised), "--tls-cert", str(cert))
    assert result.exit_code != 0 and "both --tls-cert and --tls-key" in result.output


def test_sigterm_during_a_job_fails_it_cleanly_and_keeps_it_charged(operator, tmp_path):
    """Accepted means charged (the acceptance carries noisy stream sizes): a shutdown mid-job fails
    the job cleanly, and its ε stays spent."""
    from matcher.crypto import group
    from matcher.v1 import match_pb2, match_pb2_grpc

    operator.add_members({phone(i): 1 for i in range(30)})
    exact_policy(operator.store, noise="discrete_laplace")
    token = operator.token("merchant", "shop")
    port = free_port()
    server = subprocess.Popen([str(BIN / "matcher"), "serve", "--db", str(operator.db), "--listen", f"127.0.0.1:{port}",
                               "--executor", "inline", "--grace", "1"], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    outbox = __import__("queue").Queue()

    def requests():
        while (item := outbox.get()) is not None:
            yield item

    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as chan:
            wait_serving(chan)
            call = match_pb2_grpc.MatchServiceStub(chan).Count(
                requests(), metadata=[("authorization", f"Bearer {token}")], timeout=60)
            outbox.put(match_pb2.MatchRequest(start=match_pb2.JobStart(
                protocol_version=1, id_kind="phone", labels=["all"], label_sizes=[20],
                merchant_base=group.base_mult(group.random_scalar()))))
            assert next(call).WhichOneof("msg") == "accepted"  # the job is running, its ε spent
            assert operator.store.db.execute("SELECT state FROM budget").fetchall() == [("committed",)]
            server.send_signal(signal.SIGTERM)
            with pytest.raises(grpc.RpcError):
                next(call)
            outbox.put(None)
        output, _ = server.communicate(timeout=30)
    finally:
        if server.poll() is None:
            server.kill()
    assert server.returncode == 0, output
    assert operator.store.db.execute("SELECT state FROM jobs").fetchall() == [("failed",)]
    assert operator.store.db.execute("SELECT state FROM budget").fetchall() == [("committed",)]


def test_status_reports_what_the_operator_has(operator):
    operator.add_members({phone(i): 1 for i in range(12)})
    operator.token("merchant", "shop")
    operator.token("merchant", "gone")
    operator.store.set_disabled("merchant", "gone", True)
    operator.token("auditor", "a")
    shown = json.loads(invoke("status", "--db", str(operator.db)).output)
    assert shown["audience"]["members"] == 12 and shown["audience"]["id_kind"] == "phone"
    assert shown["merchants"] == {"active": 1, "disabled": 1} and shown["auditors"] == 1
    assert shown["jobs"] == {} and shown["randomness_pool_batches"] == 0 and shown["stream_slots_ready"] == 0
    assert shown["segment_stream_slots_ready"] == {}


def test_merchant_disable_and_enable_revoke_and_restore_the_token_and_are_logged(operator):
    token = operator.token("merchant", "shop")
    invoke("merchant", "disable", "--db", str(operator.db), "shop")
    assert operator.store.authenticate(token) is None
    invoke("merchant", "enable", "--db", str(operator.db), "shop")
    assert operator.store.authenticate(token).name == "shop"
    types = [json.loads(data)["type"] for _, data in operator.store.log_entries(0, operator.store.log_size())]
    assert types[-2:] == ["merchant_disabled", "merchant_enabled"]
    unknown = invoke("merchant", "enable", "--db", str(operator.db), "nobody")
    assert unknown.exit_code != 0 and "no merchant named 'nobody'" in unknown.output


def test_the_database_is_created_readable_by_the_operator_only(tmp_path):
    db = tmp_path / "op.db"
    invoke("init", "--db", str(db))
    assert db.stat().st_mode & 0o777 == 0o600
    wal = db.with_name(db.name + "-wal")
    assert not wal.exists() or wal.stat().st_mode & 0o777 == 0o600


def test_a_second_server_on_a_port_in_use_refuses_to_start(operator, serve):
    from matcher.errors import InputError as ListenError
    from matcher.server.app import ServerConfig, build_server

    first = serve()
    port = int(first.address.rsplit(":", 1)[1])
    with pytest.raises(ListenError, match=f"cannot listen on 127.0.0.1:{port}"):
        build_server(ServerConfig(db=operator.db, listen=f"127.0.0.1:{port}", parallel=False))
    # ... and the first one still serves.
    with grpc.insecure_channel(first.address) as chan:
        wait_serving(chan)


def test_pool_workers_exit_when_the_server_is_killed(operator, tmp_path):
    """kill -9 runs no cleanup: the workers notice their parent is gone and exit on their own."""
    operator.add_members({phone(i): 1 for i in range(200)})
    port = free_port()
    server = subprocess.Popen([str(BIN / "matcher"), "serve", "--db", str(operator.db), "--listen", f"127.0.0.1:{port}",
                               "--stream-slots", "1", "--randomness-pool", "0"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as chan:
            wait_serving(chan)
        # Every thread's children: the pool is started by whichever thread first submits to it.
        children = lambda pid: [int(c) for task in Path(f"/proc/{pid}/task").iterdir()  # noqa: E731
                                for c in (task / "children").read_text().split()]
        assert wait_until(lambda: len(children(server.pid)) >= 2)  # the slot maker started the pool
        workers = children(server.pid)
    finally:
        server.kill()
        server.wait(timeout=30)
    alive = lambda: [w for w in workers if Path(f"/proc/{w}").exists()  # noqa: E731
                     and "zombie" not in Path(f"/proc/{w}/status").read_text().lower()]
    assert wait_until(lambda: not alive(), timeout=30), alive()
