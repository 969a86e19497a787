"""The container's entrypoint (deploy/entrypoint.sh), run as the image runs it: first `matcher serve`
on an empty volume initialises, later starts and other commands never do."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ENTRYPOINT = Path(__file__).resolve().parent.parent / "deploy" / "entrypoint.sh"
BIN = Path(sys.executable).parent  # where `matcher` is installed, as /opt/matcher/bin in the image


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_until_healthy(db: Path, env: dict) -> tuple[str, str, int]:
    """The image's default command through the entrypoint; SIGTERM once healthy: (stdout, stderr, exit code)."""
    address = f"127.0.0.1:{free_port()}"
    server = subprocess.Popen([str(ENTRYPOINT), "matcher", "serve", "--db", str(db), "--listen", address,
                               "--executor", "inline", "--stream-slots", "0"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while subprocess.run([sys.executable, "-m", "matcher.server.healthcheck", address, "--timeout", "2"],
                             check=False, capture_output=True).returncode != 0:
            assert server.poll() is None, server.communicate()
            assert time.monotonic() < deadline, "the server never answered SERVING"
            time.sleep(0.2)
    finally:
        server.send_signal(signal.SIGTERM)
        out, err = server.communicate(timeout=30)
    return out, err, server.returncode


def test_entrypoint_initialises_on_the_first_serve_only(tmp_path):
    db = tmp_path / "data" / "matcher.db"
    db.parent.mkdir()
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "MATCHER_ORIGIN": "matcher.deploy-test"}

    # An admin command against the empty volume fails as it would anywhere, and creates nothing.
    status = subprocess.run([str(ENTRYPOINT), "matcher", "status", "--db", str(db)], env=env, check=False,
                            capture_output=True, text=True)
    assert status.returncode == 1 and "no database at" in status.stderr
    assert list(db.parent.iterdir()) == []

    out, err, code = serve_until_healthy(db, env)
    assert code == 0, err
    assert f"first start: no database at {db}, running matcher init" in err
    assert "verifier key: matcher.deploy-test+" in out  # the key auditors pin, in the container log
    keys = db.parent / "matcher.db.keys"
    assert db.is_file() and keys.stat().st_mode & 0o777 == 0o600
    key_bytes = keys.read_bytes()

    out, err, code = serve_until_healthy(db, env)
    assert code == 0, err
    assert "first start" not in err and "verifier key" not in out
    assert keys.read_bytes() == key_bytes  # the operator's keys survive a restart


def test_deploy_files_use_only_flags_that_serve_knows():
    """compose.yaml and matcher.service spell `matcher serve` commands by hand: a renamed flag
    would only show when the container or the unit fails to start."""
    from matcher.server.cli import serve

    known = {opt for param in serve.params for opt in param.opts}
    deploy = ENTRYPOINT.parent
    compose = (deploy / "compose.yaml").read_text()
    matcher_service = compose[compose.index("  matcher:"):compose.index("  prometheus:")]
    compose_flags = re.findall(r"^\s*#?\s*- (--[a-z-]+)\s*$", matcher_service, re.M)
    unit = (deploy / "matcher.service").read_text()
    unit_flags = [flag for line in re.findall(r"^#?ExecStart=.*serve.*(?:\n#?\s+.*)*", unit, re.M)
                  for flag in re.findall(r"(--[a-z-]+)", line)]
    assert "--metrics" in compose_flags and "--log-format" in unit_flags   # the parse found the commands
    assert set(compose_flags) - known == set()
    assert set(unit_flags) - known == set()
