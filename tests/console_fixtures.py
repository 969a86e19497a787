"""A populated operator database behind a real gRPC server, and the console serving it: shared by
the console's unit, HTTP and browser tests (session-scoped: the jobs run once; nothing writes the database after them)."""

from __future__ import annotations

import hashlib
import random
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest
from matcher_client import api

from matcher.server.console import ConsoleApp, auth, make_server
from matcher.errors import MatcherError
from matcher.server.app import ServerConfig, build_server
from tests.conftest import Operator, exact_policy, match_key, new_operator, phone

MEMBERS = 80


@dataclass
class ConsoleEnv:
    operator: Operator
    url: str
    console_token: str
    secrets: list[str]  # strings that must never appear in a page: tokens, their hashes, IDs, match keys
    job_ids: list[str]


@pytest.fixture(scope="session")
def console_env(tmp_path_factory) -> ConsoleEnv:
    op = new_operator(tmp_path_factory.mktemp("console") / "operator.db")
    rng = random.Random(17)
    op.add_members({phone(i): rng.getrandbits(len(op.segments)) for i in range(MEMBERS)})
    # Noise on, so released jobs spend ε and the budget chart has something to show.
    exact_policy(op.store, noise="discrete_laplace", epsilon_per_job="0.25", epsilon_budget="2")
    shop, cafe = op.token("merchant", "shop"), op.token("merchant", "cafe")
    auditor = op.token("auditor", "alice")
    op.store.set_policy("epsilon_budget", "0.5", merchant="cafe")
    server, port = build_server(ServerConfig(db=op.db, listen="127.0.0.1:0", parallel=False))
    server.start()
    address = f"127.0.0.1:{port}"
    lists = {"shop": [[(phone(i), None) for i in range(lo, lo + 40)] for lo in (0, 30)],
             "cafe": [[(phone(i), None) for i in range(60, 100)]]}
    reports = [api.match(address, token, id_type="phone", rows=rows)
               for token, name in ((shop, "shop"), (cafe, "cafe")) for rows in lists[name]]
    with pytest.raises(MatcherError, match="at least 10"):
        api.match(address, shop, id_type="phone", rows=[(phone(i), None) for i in range(5)])
    server.stop(grace=1)  # the console reads the file alone from here on

    token = auth.new_token(auth.token_path_for(op.db))
    console = make_server(ConsoleApp(op.db, auth.load_token_hash(auth.token_path_for(op.db))), "127.0.0.1", 0)
    thread = threading.Thread(target=console.serve_forever, daemon=True)
    thread.start()
    ids = [phone(i) for i in range(100)]
    secrets = [shop, cafe, auditor, token, *(hashlib.sha256(t.encode()).hexdigest() for t in (shop, cafe, auditor, token)),
               *ids, *(i.lstrip("+") for i in ids), *(match_key(i) for i in ids)]
    yield ConsoleEnv(op, f"http://127.0.0.1:{console.server_address[1]}", token, secrets,
                     [r["job_id"] for r in reports])
    console.shutdown()
    console.server_close()
    op.store.close()


def db_files(db: Path) -> dict[str, bytes]:
    """The database and its WAL, as bytes (for a did-anything-write check). Not the -shm file: it is
    SQLite's shared-memory lock table, where every reader, read-only or not, takes its read lock."""
    return {p.name: p.read_bytes() for p in (db, Path(f"{db}-wal")) if p.is_file()}
