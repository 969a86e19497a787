"""The operator console: page data from a real store (jobs run through the real server), the page
builders, auth, and HTTP against the running console."""

from __future__ import annotations

import dataclasses
import http.client
import logging
import os
import sqlite3
from urllib.parse import urlencode, urlparse

import pytest

from matcher.server.console import auth, pages, snapshot
from matcher.errors import StoreError
from matcher.server.store import Store
from tests import console_fixtures
from tests.console_fixtures import db_files

console_env = console_fixtures.console_env  # the session-scoped fixture


def _request(env, method: str, path: str, *, cookie: str | None = None, form: dict | None = None):
    parsed = urlparse(env.url)
    conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=10)
    headers = {"Cookie": cookie} if cookie else {}
    body = None
    if form is not None:
        body = urlencode(form)
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    conn.request(method, path, body=body, headers=headers)
    reply = conn.getresponse()
    text = reply.read().decode()
    conn.close()
    return reply, text


def _login(env) -> str:
    reply, _ = _request(env, "POST", "/login", form={"token": env.console_token})
    assert reply.status == 303 and reply.getheader("Location") == "/"
    return reply.getheader("Set-Cookie").split(";", 1)[0]


def test_snapshot_holds_the_real_jobs_budgets_and_log(console_env):
    store = Store(console_env.operator.db, read_only=True)
    try:
        snap = snapshot.take(store)
    finally:
        store.close()
    states = sorted(j.state for j in snap.jobs)
    assert states == ["refused", "released", "released", "released"]
    assert {j.job_id for j in snap.jobs if j.state == "released"} == set(console_env.job_ids)
    released = [j for j in snap.jobs if j.state == "released"]
    assert all(j.kind == "match" and j.protocol and j.list_size == 40 and j.duration is not None for j in released)
    assert all(j.epsilon == pytest.approx(0.25) and j.budget_state == "committed" for j in released)
    refused = next(j for j in snap.jobs if j.state == "refused")
    assert refused.reason == "list_too_small" and refused.epsilon is None
    budgets = {m.name: (m.epsilon_used, m.epsilon_left, m.epsilon_budget) for m in snap.merchants}
    assert budgets == {"cafe": (0.25, 0.25, 0.5), "shop": (0.5, 1.5, 2.0)}
    assert snap.overrides == {"cafe": {"epsilon_budget": "0.5"}}
    assert snap.policy["noise"] == "discrete_laplace" and snap.policy_set["epsilon_per_job"] == "0.25"
    assert snap.audience["members"] == 80 and len(snap.audience["segments"]) == 5 and snap.audience_version
    assert snap.log_size == 4 and snap.checkpoint.startswith("matcher.test\n4\n")
    assert sum(sum(b.values()) for b in snap.job_buckets.counts) == 4
    assert snap.job_buckets.bucket_seconds == 60  # all four jobs ran within the last minutes


def test_dashboard_page_shows_the_rows_and_charts_and_escapes_names(console_env):
    store = Store(console_env.operator.db, read_only=True)
    snap = snapshot.take(store)
    store.close()
    page = pages.dashboard_page(snap)
    assert page.count('<span class="state released">released</span>') == 3
    assert page.count("<svg") == 2 and page.count('class="bar"') >= 3
    assert "list_too_small" in page and "0.25 of 0.5 ε" in page and "4 entries" in page
    evil = dataclasses.replace(snap, merchants=[snapshot.MerchantBudget("<i>evil</i>", False, 0.1, 1.0, "30d")],
                               overrides={"<i>evil</i>": {"k": "<b>"}})
    page = pages.dashboard_page(evil)
    assert "<i>evil" not in page and "<b>" not in page and "&lt;i&gt;evil&lt;/i&gt;" in page


def test_sessions_expire_and_close():
    now = [1000.0]
    sessions = auth.Sessions(clock=lambda: now[0], ttl=60)
    session = sessions.open()
    assert sessions.valid(session) and not sessions.valid(session + "x") and not sessions.valid(None)
    now[0] += 61
    assert not sessions.valid(session)
    again = sessions.open()
    sessions.close(again)
    assert not sessions.valid(again)


def test_token_file_holds_only_a_hash_and_must_be_private(tmp_path):
    path = tmp_path / "op.db.console-token"
    token = auth.new_token(path)
    assert os.stat(path).st_mode & 0o777 == 0o600 and token not in path.read_text()
    stored = auth.load_token_hash(path)
    assert auth.token_matches(token, stored) and not auth.token_matches(token[:-1], stored)
    os.chmod(path, 0o644)
    with pytest.raises(StoreError, match="readable by group or others"):
        auth.load_token_hash(path)
    with pytest.raises(StoreError, match="--new-token"):
        auth.load_token_hash(tmp_path / "missing")


def test_read_only_store_cannot_write(console_env):
    store = Store(console_env.operator.db, read_only=True)
    try:
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            store.set_meta({"origin": "changed"})
    finally:
        store.close()


def test_http_needs_the_token_and_pages_reveal_no_secret(console_env, caplog):
    caplog.set_level(logging.INFO, logger="matcher.console")
    before = db_files(console_env.operator.db)
    reply, page = _request(console_env, "GET", "/")
    assert reply.status == 401 and 'name="token"' in page and "shop" not in page
    reply, page = _request(console_env, "POST", "/login", form={"token": "mc_wrong"})
    assert reply.status == 401 and "not the console token" in page and reply.getheader("Set-Cookie") is None
    reply, _ = _request(console_env, "GET", "/", cookie="matcher_console=forged")
    assert reply.status == 401

    reply, _ = _request(console_env, "POST", "/login", form={"token": console_env.console_token})
    set_cookie = reply.getheader("Set-Cookie")
    assert "HttpOnly" in set_cookie and "SameSite=Strict" in set_cookie and "Secure" not in set_cookie
    cookie = set_cookie.split(";", 1)[0]
    reply, page = _request(console_env, "GET", "/", cookie=cookie)
    assert reply.status == 200 and "default-src 'none'" in reply.getheader("Content-Security-Policy")
    assert 'id=jobs' in page and "cafe" in page and "<svg" in page
    seen = [page, _request(console_env, "GET", "/login")[1], _request(console_env, "GET", "/nope")[1]]
    for text in seen + [caplog.text]:
        leaked = [s for s in console_env.secrets if s in text]
        assert not leaked, leaked[:3]

    reply, _ = _request(console_env, "POST", "/logout", cookie=cookie)
    assert reply.status == 303 and "Max-Age=0" in reply.getheader("Set-Cookie")
    assert _request(console_env, "GET", "/", cookie=cookie)[0].status == 401
    assert _request(console_env, "GET", "/nope", cookie=cookie)[0].status == 404
    assert db_files(console_env.operator.db) == before  # browsing wrote nothing, not even the WAL


def test_cli_new_token_prints_it_once_and_console_refuses_a_bad_listen(tmp_path):
    from click.testing import CliRunner

    from matcher.server.cli import main
    from tests.conftest import new_operator

    op = new_operator(tmp_path / "op.db")
    op.store.close()
    runner = CliRunner()
    missing = runner.invoke(main, ["console", "--db", str(op.db), "--listen", "127.0.0.1:0"])
    assert missing.exit_code == 1 and "error: no console token" in missing.output and "Traceback" not in missing.output
    made = runner.invoke(main, ["console", "--db", str(op.db), "--new-token"])
    assert made.exit_code == 0, made.output
    token = made.stdout.strip().splitlines()[-1]
    assert auth.token_matches(token, auth.load_token_hash(auth.token_path_for(op.db)))
    bad = runner.invoke(main, ["console", "--db", str(op.db), "--listen", "nowhere"])
    assert bad.exit_code == 2 and "is not HOST:PORT" in bad.output


def test_cli_serves_the_console_over_tls_with_a_secure_cookie(console_env, tmp_path):
    import signal
    import ssl
    import subprocess
    import sys
    import time

    from tests.test_cli import free_port, self_signed

    cert, key = self_signed(tmp_path)
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "matcher.server.cli", "console", "--db", str(console_env.operator.db),
                             "--listen", f"127.0.0.1:{port}", "--tls-cert", str(cert), "--tls-key", str(key)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        context = ssl.create_default_context(cafile=str(cert))
        deadline = time.monotonic() + 20
        while True:
            conn = http.client.HTTPSConnection("localhost", port, context=context, timeout=5)
            try:
                conn.request("POST", "/login", body=urlencode({"token": console_env.console_token}),
                             headers={"Content-Type": "application/x-www-form-urlencoded"})
                break
            except ConnectionRefusedError:
                assert time.monotonic() < deadline and proc.poll() is None, proc.stdout.read()
                time.sleep(0.1)
        reply = conn.getresponse()
        assert reply.status == 303 and reply.getheader("Set-Cookie").endswith("; Secure")
        conn.request("GET", "/", headers={"Cookie": reply.getheader("Set-Cookie").split(";", 1)[0]})
        reply.read()
        page = conn.getresponse()
        assert page.status == 200 and "table id=jobs" in page.read().decode()
    finally:
        proc.send_signal(signal.SIGTERM)
        output = proc.communicate(timeout=10)[0]
    assert proc.returncode == 0, output
    assert f"https://127.0.0.1:{port}/" in output and console_env.console_token not in output


def test_dashboard_of_a_fresh_database(operator):
    """No audience, jobs, merchants or checkpoint yet: the page says so instead of failing."""
    store = Store(operator.db, read_only=True)
    try:
        page = pages.dashboard_page(snapshot.take(store))
    finally:
        store.close()
    assert "no jobs yet" in page and "no merchants yet" in page and "no checkpoint signed yet" in page
    assert page.count("<svg") == 2 and 'class="bar"' not in page
