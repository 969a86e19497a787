"""`python -m matcher.server.healthcheck`, as a container HEALTHCHECK runs it: a real process against a real server."""

from __future__ import annotations

import socket
import subprocess
import sys

from grpc_health.v1 import health_pb2

from tests.test_cli import self_signed


def healthcheck(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "matcher.server.healthcheck", *args], check=False, capture_output=True,
                          text=True, timeout=60)


def closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def test_serving_server_exits_zero_and_one_once_it_stops_serving(serve):
    served = serve()
    done = healthcheck(served.address)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{served.address}: SERVING"
    # What SIGTERM's graceful shutdown sets while running jobs finish.
    served.server.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    stopping = healthcheck(served.address)
    assert stopping.returncode == 1
    assert stopping.stderr.splitlines() == [f"error: {served.address} answers NOT_SERVING",
                                            "hint: the server is shutting down"]


def test_closed_port_exits_one_with_one_error_line():
    address = closed_port()
    done = healthcheck(address, "--timeout", "3")
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert lines[0].startswith(f"error: cannot reach a gRPC server at {address}")
    assert lines[1:] == ["hint: nothing listens on that port: is `matcher serve` running with --listen on it?"]


def test_tls_server_checked_with_its_ca_and_name(serve, tmp_path):
    cert, key = self_signed(tmp_path)  # issued to "localhost"; the check dials 127.0.0.1
    served = serve(tls_cert=cert, tls_key=key)
    done = healthcheck(served.address, "--tls-ca", str(cert), "--server-name", "localhost")
    assert done.returncode == 0, done.stderr
    plaintext = healthcheck(served.address, "--timeout", "3")
    assert plaintext.returncode == 1 and plaintext.stderr.startswith("error: cannot reach")
    assert "add --tls-ca" in plaintext.stderr.splitlines()[-1]


def test_address_from_environment_and_bad_input(serve, monkeypatch):
    served = serve()
    monkeypatch.setenv("MATCHER_HEALTH_ADDRESS", served.address)
    assert healthcheck().returncode == 0
    bad = healthcheck("no-port-here")
    assert bad.returncode == 2 and bad.stderr.splitlines()[0] == "error: 'no-port-here' is not HOST:PORT"
