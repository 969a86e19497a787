"""``python -m matcher.server.healthcheck [HOST:PORT]``: is a matcher server up? For container HEALTHCHECKs,
systemd and load balancers.

Asks the server's standard gRPC health service (grpc.health.v1, which needs no token) and exits 0
when it answers SERVING, 1 otherwise (unreachable, no answer in time, shutting down), with one
``error:`` line saying which. It never opens the database, so it runs anywhere the port is reachable,
and it reveals nothing a stranger on the network could not already ask the server itself.
Exit code 2 is a usage error (Docker reserves 2, so a HEALTHCHECK must never hit it).

The address and TLS settings also come from the environment (``MATCHER_HEALTH_ADDRESS``,
``MATCHER_HEALTH_TLS_CA``, ``MATCHER_HEALTH_SERVER_NAME``), so one image-wide HEALTHCHECK line fits
every deployment.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

if __name__ == "__main__":
    # gRPC's C core logs TLS handshake failures on its own; the one error line below says it all.
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")

import click
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

DEFAULT_ADDRESS = "127.0.0.1:50051"
UNHEALTHY, USAGE = 1, 2


def check(address: str, *, tls_ca: Path | None = None, tls: bool = False, server_name: str | None = None,
          service: str = "", timeout: float = 5.0) -> str:
    """The server's health status name for ``service`` ('' = the whole server), e.g. ``SERVING``.

    Raises ``grpc.RpcError`` when the server cannot be asked (unreachable, TLS failure, timeout).
    """
    options = [("grpc.ssl_target_name_override", server_name)] if server_name else []
    if tls_ca or tls:
        # Without --tls-ca, the system's trust roots (a publicly issued certificate).
        creds = grpc.ssl_channel_credentials(root_certificates=tls_ca.read_bytes() if tls_ca else None)
        channel = grpc.secure_channel(address, creds, options=options)
    else:
        channel = grpc.insecure_channel(address, options=options)
    with channel:
        response = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=timeout, wait_for_ready=False)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


def _why(err: grpc.RpcError, address: str, timeout: float, service: str) -> str:
    code = err.code()
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"{address} did not answer within {timeout:g} s"
    if code == grpc.StatusCode.NOT_FOUND:
        return f"{address} has no health status for service '{service}'"
    # UNAVAILABLE: refused, no route, or a TLS handshake that failed; gRPC's detail says which.
    detail = " ".join((err.details() or code.name).split())
    return f"cannot reach a gRPC server at {address}: {detail}"


def _hint(err: grpc.RpcError, tls: bool) -> str | None:
    detail = err.details() or ""
    if "Connection refused" in detail:
        return "nothing listens on that port: is `matcher serve` running with --listen on it?"
    if "Socket closed" in detail and not tls:
        return "a TLS server closes plaintext connections: add --tls-ca (the CA of its --tls-cert)"
    if "Hostname Verification" in detail:
        return "the certificate names another host: add --server-name with the name it holds"
    if "CERTIFICATE_VERIFY_FAILED" in detail:
        return "the certificate is not signed by a CA this check trusts: give that CA with --tls-ca"
    return None


def _fail(message: str, hint: str | None, code: int) -> None:
    click.echo(f"error: {message}", err=True)
    if hint:
        click.echo(f"hint: {hint}", err=True)
    sys.exit(code)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("address", default=DEFAULT_ADDRESS, envvar="MATCHER_HEALTH_ADDRESS", metavar="[HOST:PORT]")
@click.option("--tls-ca", type=click.Path(dir_okay=False, path_type=Path), envvar="MATCHER_HEALTH_TLS_CA",
              help="Speak TLS, trusting this CA certificate (PEM): for a server run with --tls-cert.")
@click.option("--tls", is_flag=True, help="Speak TLS, trusting the system's CA certificates.")
@click.option("--server-name", envvar="MATCHER_HEALTH_SERVER_NAME",
              help="The name in the server's certificate, when it differs from HOST (e.g. checking 127.0.0.1).")
@click.option("--service", default="", help="One service's status, e.g. matcher.v1.MatchService (default: the server).")
@click.option("--timeout", default=5.0, show_default=True, type=float, help="Seconds to wait for the answer.")
def main(address: str, tls_ca: Path | None, tls: bool, server_name: str | None, service: str, timeout: float) -> None:
    """Exit 0 when the matcher server at HOST:PORT (default 127.0.0.1:50051) answers SERVING."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        _fail(f"'{address}' is not HOST:PORT", "e.g. 127.0.0.1:50051", USAGE)
    if tls_ca is not None and not tls_ca.is_file():
        _fail(f"--tls-ca {tls_ca}: no such file", "give the CA certificate (PEM) that signed the server's certificate",
              USAGE)
    try:
        status = check(address, tls_ca=tls_ca, tls=tls, server_name=server_name, service=service, timeout=timeout)
    except grpc.RpcError as err:
        _fail(_why(err, address, timeout, service), _hint(err, tls or tls_ca is not None), UNHEALTHY)
    if status != "SERVING":
        # NOT_SERVING: the server is in its graceful shutdown (finishing running jobs after SIGTERM).
        _fail(f"{address} answers {status}", "the server is shutting down" if status == "NOT_SERVING" else None,
              UNHEALTHY)
    click.echo(f"{address}: {status}")


if __name__ == "__main__":
    main()
