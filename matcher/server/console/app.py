"""The console's WSGI app and the small threaded wsgiref server that runs it.

Routes: ``GET /`` the dashboard (401 with the sign-in form without a session), ``GET /login``,
``POST /login`` (form field ``token``), ``POST /logout``. Nothing else; every other path is 404.

The token travels only in a POST body, never in a URL; the request log records method, path
(without the query) and status, nothing else. Each dashboard request opens the database
read-only (SQLite ``mode=ro``), reads a snapshot and closes it, so no request can write and no
connection outlives its request.
"""

from __future__ import annotations

import logging
import ssl
from http import cookies
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Callable, Iterable
from urllib.parse import parse_qs
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from matcher.server.console import auth, pages, snapshot
from matcher.errors import MatcherError
from matcher.server.store import Store

log = logging.getLogger("matcher.console")
COOKIE = "matcher_console"
# A login form is a few dozen bytes: anything much larger is not one.
_MAX_FORM = 4096
_HEADERS = [
    ("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
                                "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"),
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "no-referrer"),
    ("Cache-Control", "no-store"),
    ("X-Frame-Options", "DENY"),
]
_STATUS = {200: "200 OK", 303: "303 See Other", 400: "400 Bad Request", 401: "401 Unauthorized",
           404: "404 Not Found", 405: "405 Method Not Allowed", 413: "413 Payload Too Large",
           500: "500 Internal Server Error"}


class ConsoleApp:
    """``ConsoleApp(db, token_hash)`` is a WSGI callable. ``secure_cookie`` marks the session cookie
    Secure (set it when serving over TLS)."""

    def __init__(self, db: str | Path, token_hash: str, *, secure_cookie: bool = False,
                 sessions: auth.Sessions | None = None):
        self.db = Path(db)
        self.token_hash = token_hash
        self.secure_cookie = secure_cookie
        self.sessions = sessions or auth.Sessions()
        Store(self.db, read_only=True).close()  # a missing or unreadable database fails now, not per request

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        method, path = environ.get("REQUEST_METHOD", "GET"), environ.get("PATH_INFO", "/")
        session = self._session(environ)
        if path == "/":
            if method not in ("GET", "HEAD"):
                return self._reply(start_response, 405, pages.not_found_page())
            if not self.sessions.valid(session):
                return self._reply(start_response, 401, pages.login_page())
            return self._reply(start_response, 200, self._dashboard())
        if path == "/login":
            if method == "POST":
                return self._login(environ, start_response)
            return self._reply(start_response, 200, pages.login_page())
        if path == "/logout" and method == "POST":
            self.sessions.close(session)
            return self._reply(start_response, 303, "", [("Location", "/login"), ("Set-Cookie", self._cookie("", 0))])
        return self._reply(start_response, 404, pages.not_found_page())

    def _dashboard(self) -> str:
        store = Store(self.db, read_only=True)
        try:
            return pages.dashboard_page(snapshot.take(store))
        finally:
            store.close()

    def _login(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= _MAX_FORM:
            return self._reply(start_response, 413 if length > _MAX_FORM else 400, pages.login_page("bad request"))
        form = parse_qs(environ["wsgi.input"].read(length).decode("utf-8", "replace"), max_num_fields=4)
        offered = (form.get("token") or [""])[0].strip()
        if not offered or not auth.token_matches(offered, self.token_hash):
            log.warning("console sign-in refused from %s", environ.get("REMOTE_ADDR", "?"))
            return self._reply(start_response, 401, pages.login_page("That token is not the console token."))
        session = self.sessions.open()
        return self._reply(start_response, 303, "", [("Location", "/"),
                                                     ("Set-Cookie", self._cookie(session, auth.SESSION_SECONDS))])

    def _session(self, environ: dict) -> str | None:
        jar = cookies.SimpleCookie()
        try:
            jar.load(environ.get("HTTP_COOKIE", ""))
        except cookies.CookieError:
            return None
        morsel = jar.get(COOKIE)
        return morsel.value if morsel else None

    def _cookie(self, value: str, max_age: int) -> str:
        return (f"{COOKIE}={value}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Strict"
                + ("; Secure" if self.secure_cookie else ""))

    def _reply(self, start_response: Callable, code: int, html: str,
               extra: list[tuple[str, str]] | None = None) -> list[bytes]:
        body = html.encode()
        start_response(_STATUS[code], [("Content-Type", "text/html; charset=utf-8"),
                                       ("Content-Length", str(len(body))), *_HEADERS, *(extra or [])])
        return [body]


def _guarded(app: ConsoleApp) -> Callable:
    """A failed request is one 500 page and one log line, never a traceback sent to the browser."""

    def wrapped(environ: dict, start_response: Callable) -> Iterable[bytes]:
        try:
            return app(environ, start_response)
        except MatcherError as err:
            log.error("console request failed: %s", err)
            return app._reply(start_response, 500, pages.error_page(str(err)))
        except Exception:
            log.exception("console request failed")
            return app._reply(start_response, 500, pages.error_page("internal error; see the console's log"))

    return wrapped


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True  # a stuck client never keeps the process from exiting


class _Handler(WSGIRequestHandler):
    timeout = 30  # seconds a client may take to send its request (a half-open socket frees its thread)

    def log_request(self, code="-", size="-") -> None:
        # Method and path only: a query string (where nobody should put a token, but someone might) is dropped.
        path = self.path.split("?", 1)[0]
        log.info("%s %s %s %s", self.client_address[0], self.command, path, code)

    def log_message(self, format: str, *args) -> None:
        log.info("%s %s", self.client_address[0], format % args)


def make_server(app: ConsoleApp, host: str, port: int, *, tls_cert: Path | None = None,
                tls_key: Path | None = None) -> WSGIServer:
    """A threaded server for ``app`` (not started: call ``serve_forever``); TLS when given a cert and key."""
    server = _ThreadingServer((host, port), _Handler)
    server.set_app(_guarded(app))
    if tls_cert and tls_key:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(tls_cert, tls_key)
        # The handshake happens in the request's thread, on its first read: a slow client cannot stall accept().
        server.socket = context.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
    return server
