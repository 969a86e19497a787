"""The operator CLI's config file, MATCHER_DB, principal commands and the no-DP confirmation:
click's runner against a real operator database (conftest), and one real `matcher serve` process."""

from __future__ import annotations

import datetime
import hashlib
import json
import signal
import subprocess

import grpc
import pytest
from click.testing import CliRunner

from matcher.server import cli
from matcher.server.cli import main
from matcher.errors import AuthenticationError
from matcher.policy import Policy
from matcher_client.audit import GrpcLogSource, verify
from tests.conftest import exact_policy, phone
from tests.test_cli import BIN, free_port, self_signed, wait_serving


def invoke(*args: str, env: dict | None = None, input: str | None = None):
    # An empty MATCHER_DB/MATCHER_CONFIG unless a test sets them: the caller's shell must not leak in.
    env = {"MATCHER_DB": None, "MATCHER_CONFIG": None, **(env or {})}
    return CliRunner().invoke(main, list(args), env=env, input=input, catch_exceptions=False)


def _log_types(store) -> list[str]:
    return [json.loads(data)["type"] for _, data in store.log_entries(0, store.log_size())]


# -- the config file ----------------------------------------------------------------------------

def test_serve_takes_every_setting_from_the_config_file_and_a_flag_wins(operator, tmp_path):
    operator.add_members({phone(i): 1 for i in range(12)})
    file_port, flag_port = free_port(), free_port()
    config = tmp_path / "matcher.toml"
    config.write_text(f'db = "{operator.db.name}"\nlisten = "127.0.0.1:{file_port}"\nexecutor = "inline"\n'
                      'stream_slots = 0\nrandomness-pool = "0"\nworkers = 6\n')
    server = subprocess.Popen([str(BIN / "matcher"), "serve", "--config", str(config), "--listen",
                               f"127.0.0.1:{flag_port}"], cwd="/", stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{flag_port}") as chan:
            wait_serving(chan)  # db came from the file, relative to the file (the server runs in /)
    finally:
        server.send_signal(signal.SIGTERM)
        output, _ = server.communicate(timeout=30)
    assert server.returncode == 0, output
    assert f"serving on 127.0.0.1:{flag_port}" in output and str(file_port) not in output


def test_config_show_names_where_each_value_comes_from(operator, tmp_path):
    config = tmp_path / "matcher.toml"
    config.write_text('db = "from-file.db"\nlisten = "0.0.0.0:50051"\nstream-slots = 2\nworkers = 8\n')
    result = invoke("config", "show", "--config", str(config), "--json", "--workers", "3",
                    env={"MATCHER_DB": str(operator.db)})
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert shown["db"] == {"value": str(operator.db), "source": "environment (MATCHER_DB)"}  # env beats file
    assert shown["listen"] == {"value": "0.0.0.0:50051", "source": "config file"}
    assert shown["stream-slots"] == {"value": 2, "source": "config file"}
    assert shown["workers"] == {"value": 3, "source": "flag"}                                # flag beats file
    assert shown["grace"] == {"value": 10.0, "source": "default"}
    named = json.loads(invoke("config", "show", "--json", env={"MATCHER_CONFIG": str(config)}).stdout)
    assert named["db"] == {"value": str(tmp_path / "from-file.db"), "source": "config file"}  # relative to the file
    table = invoke("config", "show", "--config", str(config)).stdout
    assert "0.0.0.0:50051" in table and "config file" in table and "default" in table


def test_an_unknown_or_malformed_config_is_named_with_the_fix(operator, tmp_path):
    typo = tmp_path / "typo.toml"
    typo.write_text('lisen = "0.0.0.0:1"\n')
    for command in (["serve"], ["merchant", "list"], ["config", "show"]):
        result = invoke(*command, "--config", str(typo))
        assert result.exit_code == 1, command
        assert "error: " in result.output and "unknown key 'lisen'" in result.output
        assert "listen" in result.output and "stream-slots" in result.output  # the valid keys
        assert "Traceback" not in result.output
    broken = tmp_path / "broken.toml"
    broken.write_text("listen = \n")
    assert "is not valid TOML" in invoke("config", "show", "--config", str(broken)).output
    table = tmp_path / "table.toml"
    table.write_text('[serve]\nlisten = "0.0.0.0:1"\n')
    assert "unknown key 'serve'" in invoke("config", "show", "--config", str(table)).output
    assert "no config file at" in invoke("config", "show", "--config", str(tmp_path / "missing.toml")).output


def test_config_values_pass_the_same_checks_as_flags(operator, tmp_path):
    cert, _ = self_signed(tmp_path)
    half_tls = tmp_path / "tls.toml"
    half_tls.write_text(f'db = "{operator.db}"\ntls-cert = "{cert.name}"\n')
    result = invoke("serve", "--config", str(half_tls))
    assert result.exit_code != 0 and "both --tls-cert and --tls-key" in result.output
    too_many = tmp_path / "slots.toml"
    too_many.write_text(f'db = "{operator.db}"\nstream-slots = 99\n')
    result = invoke("serve", "--config", str(too_many))
    assert result.exit_code == 2 and "--stream-slots" in result.output


def test_db_comes_from_the_flag_the_environment_or_the_config_file(operator, tmp_path):
    operator.token("merchant", "shop")
    config = tmp_path / "matcher.toml"
    config.write_text(f'db = "{operator.db.name}"\n')
    by_env = invoke("merchant", "list", "--json", env={"MATCHER_DB": str(operator.db)})
    by_file = invoke("merchant", "list", "--json", "--config", str(config))
    by_flag = invoke("merchant", "list", "--json", "--db", str(operator.db), env={"MATCHER_DB": "/nonexistent.db"})
    for result in (by_env, by_file, by_flag):
        assert result.exit_code == 0, result.output
        assert [m["name"] for m in json.loads(result.stdout)] == ["shop"]
    missing = invoke("policy", "show")
    assert missing.exit_code == 1 and "error: no database given" in missing.output
    assert "--db" in missing.output and "MATCHER_DB" in missing.output and "config file" in missing.output


# -- merchants and auditors ---------------------------------------------------------------------

def test_merchant_list_shows_enabled_created_and_budget(operator):
    exact_policy(operator.store, epsilon_budget="2", noise="discrete_laplace")
    operator.token("merchant", "shop")
    operator.token("merchant", "gone")
    operator.store.set_disabled("merchant", "gone", True)
    shop = operator.store.principal("merchant", "shop")
    operator.store.open_job("j1", shop, pol=Policy(), epsilon=0.5, list_size=10, labels=1)
    rows = json.loads(invoke("merchant", "list", "--db", str(operator.db), "--json").stdout)
    assert [(r["name"], r["enabled"]) for r in rows] == [("gone", False), ("shop", True)]
    stored = {p["name"]: p["created"] for p in operator.store.list_principals("merchant")}
    for row in rows:
        created = datetime.datetime.fromisoformat(row["created"])
        assert created.tzinfo is not None and abs(created.timestamp() - stored[row["name"]]) < 1
    assert (rows[1]["epsilon_used"], rows[1]["epsilon_left"]) == (0.5, 1.5)
    assert (rows[0]["epsilon_used"], rows[0]["epsilon_left"]) == (0.0, 2.0)
    table = invoke("merchant", "list", "--db", str(operator.db)).stdout
    assert "shop" in table and "yes" in table and "no" in table and "1.5" in table


@pytest.mark.parametrize("role", ["merchant", "auditor"])
def test_rotate_token_prints_a_new_token_once_and_the_old_one_stops_working(operator, serve, role):
    old = operator.token(role, "who")
    result = invoke(role, "rotate-token", "--db", str(operator.db), "who")
    assert result.exit_code == 0, result.output
    new = result.stdout.strip().splitlines()[-1]
    assert new.startswith("mt_") and new != old
    assert operator.store.authenticate(old) is None
    assert operator.store.authenticate(new).name == "who"
    # Stored hashed, like the first token: neither token is in the database, the new one's hash is.
    raw = b"".join(p.read_bytes() for p in operator.db.parent.glob(operator.db.name + "*") if p.suffix != ".keys")
    assert new.encode() not in raw and old.encode() not in raw
    assert operator.store.db.execute("SELECT token_hash FROM principals WHERE name = 'who'").fetchone()[0] == \
        hashlib.sha256(new.encode()).hexdigest()
    assert _log_types(operator.store)[-1] == f"{role}_token_rotated"
    as_json = invoke(role, "rotate-token", "--db", str(operator.db), "who", "--json")
    assert operator.store.authenticate(json.loads(as_json.stdout.strip().splitlines()[-1])["token"]).name == "who"
    unknown = invoke(role, "rotate-token", "--db", str(operator.db), "nobody")
    assert unknown.exit_code == 1 and f"no {role} named 'nobody'" in unknown.output
    assert f"matcher {role} list" in unknown.output

    # matcher-audit reads the log with an auditor's token and knows the new entry type.
    auditor = operator.token("auditor", "watch") if role == "merchant" else \
        json.loads(as_json.stdout.strip().splitlines()[-1])["token"]
    served = serve()
    with GrpcLogSource(served.address, auditor) as source:
        assert verify(source).warnings == []
    if role == "auditor":
        with pytest.raises(AuthenticationError), GrpcLogSource(served.address, old) as source:
            verify(source)


def test_auditor_list_disable_and_enable_are_logged(operator):
    token = operator.token("auditor", "watch")
    assert invoke("auditor", "disable", "--db", str(operator.db), "watch").exit_code == 0
    assert operator.store.authenticate(token) is None
    rows = json.loads(invoke("auditor", "list", "--db", str(operator.db), "--json").stdout)
    assert [(r["name"], r["enabled"]) for r in rows] == [("watch", False)] and "epsilon_used" not in rows[0]
    assert invoke("auditor", "enable", "--db", str(operator.db), "watch").exit_code == 0
    assert operator.store.authenticate(token).name == "watch"
    assert _log_types(operator.store)[-2:] == ["auditor_disabled", "auditor_enabled"]
    assert "no auditor named 'x'" in invoke("auditor", "enable", "--db", str(operator.db), "x").output


def test_merchant_enable_works_and_is_logged(operator):
    token = operator.token("merchant", "shop")
    invoke("merchant", "disable", "--db", str(operator.db), "shop")
    assert invoke("merchant", "enable", "--db", str(operator.db), "shop").exit_code == 0
    assert operator.store.authenticate(token).name == "shop"
    assert _log_types(operator.store)[-1] == "merchant_enabled"


def test_policy_show_refuses_an_unknown_merchant_like_set(operator):
    for command in (["show"], ["set", "k", "5"]):
        result = invoke("policy", *command, "--db", str(operator.db), "--merchant", "nobody")
        assert result.exit_code == 1, command
        assert "error: no merchant named 'nobody'" in result.output and "matcher merchant list" in result.output


# -- turning differential privacy off -----------------------------------------------------------

def test_noise_none_warns_and_needs_confirmation(operator, monkeypatch):
    db = str(operator.db)
    refused = invoke("policy", "set", "--db", db, "noise", "none")  # no terminal, no --yes
    assert refused.exit_code == 1 and "pass --yes" in refused.output
    assert "released counts are exact" in refused.output and "differencing" in refused.output
    assert operator.store.effective_policy().noise == "discrete_laplace" and "policy" not in _log_types(operator.store)

    monkeypatch.setattr(cli, "_interactive", lambda: True)
    declined = invoke("policy", "set", "--db", db, "noise", "none", input="n\n")
    assert declined.exit_code == 1 and operator.store.effective_policy().noise == "discrete_laplace"
    accepted = invoke("policy", "set", "--db", db, "noise", "NONE", input="y\n")
    assert accepted.exit_code == 0 and operator.store.effective_policy().noise == "none"
    monkeypatch.setattr(cli, "_interactive", lambda: False)

    operator.token("merchant", "shop")
    operator.store.set_policy("noise", "gaussian")
    confirmed = invoke("policy", "set", "--db", db, "noise", "none", "--merchant", "shop", "--yes")
    assert confirmed.exit_code == 0 and "for merchant 'shop'" in confirmed.output
    assert operator.store.effective_policy("shop").noise == "none"
    assert operator.store.effective_policy().noise == "gaussian"
    # Other settings, and noise none where it already is, ask nothing.
    assert invoke("policy", "set", "--db", db, "k", "7").exit_code == 0
    assert invoke("policy", "set", "--db", db, "noise", "none", "--merchant", "shop").exit_code == 0
