"""The operator's read-only web console: one page of what ``matcher status`` knows, with charts.

    app = ConsoleApp(db_path, token_hash=auth.load_token_hash(auth.token_path_for(db_path)))
    serve(app, "127.0.0.1", 8080)          # wsgiref, a thread per request, optional TLS

Modules, each owning one thing: :mod:`.auth` (the console token file, sessions),
:mod:`.snapshot` (everything the page shows, read through a read-only Store), :mod:`.charts`
(inline SVG, no JavaScript), :mod:`.pages` (HTML), :mod:`.app` (the WSGI app and its server).
The console never writes the database: every request opens it with SQLite's ``mode=ro``.
"""

from matcher.server.console.app import ConsoleApp, make_server

__all__ = ["ConsoleApp", "make_server"]
