"""Shared fixtures: a real operator database on disk, a real server on a loopback socket.

Keys: the Paillier key is the fixed test key in tests/vectors (2048-bit keygen costs seconds per
test); the Ed25519 signer is fresh. Everything else is the production path.
"""

from __future__ import annotations

import hashlib
import os
import random
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from matcher.server import keys as keys_mod
from matcher.crypto import group
from matcher.crypto.paillier import PrivateKey
from matcher.log.checkpoint import Signer
from matcher.server.app import ServerConfig, build_server
from matcher.server.store import Store

# Merchant key files (the unbalanced protocol) of every test, and of the clients tests start, go here.
os.environ.setdefault("MATCHER_CLIENT_HOME", tempfile.mkdtemp(prefix="matcher-client-home-"))
VECTORS = Path(__file__).parent / "vectors"
SEGMENTS = ("member", "paid_with_platform", "visited_shop_page", "favourited_mini_program", "holds_coupon")


def test_private_key() -> PrivateKey:
    return PrivateKey.from_bytes((VECTORS / "paillier_test_key.json").read_bytes())


test_private_key.__test__ = False  # a helper, not a test


def wait_until(predicate, timeout: float = 60.0) -> bool:
    """Poll ``predicate`` until it holds (background work: refunds after a hang-up, precomputation)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def exchange_streams(platform, merchant) -> None:
    """Every stream of a secure job between the two engines, in process: the list copy up, the
    stream down, the merchant's blinded values back, then the platform's audit and count."""
    for s in range(len(merchant.stream_names)):
        for chunk in merchant.blinded_chunks(s):
            platform.receive_blinded(s, chunk)
        platform.finish_list(s, merchant.merchant_base(s))
        for points in platform.stream(s):
            merchant.receive_stream(s, points)
        for points in merchant.returned_chunks(s):
            platform.receive_returned(s, points)
        platform.finish_stream(s)


def phone(i: int) -> str:
    """A valid, distinct CN mobile number for each i."""
    return f"+86138{i:08d}"


def match_key(normalized: str) -> str:
    return hashlib.sha256(normalized.encode()).hexdigest()


def exact_policy(store, **extra):
    """Noise off and no threshold, so released values must equal the ground truth exactly."""
    settings = {"noise": "none", "k": "0", "min_list_size": "10", "dummies": "off", "audit_rows": "256", **extra}
    for key, value in settings.items():
        store.set_policy(key, value)


def ground_truth(members: dict[str, int], merchant: list[tuple[str, str]], segments=SEGMENTS) -> dict:
    truth: dict[str, dict] = {}
    for number, label in merchant:
        cell = truth.setdefault(label, {"matched": 0, "segments": {s: 0 for s in segments}})
        if number in members:
            cell["matched"] += 1
            for i, name in enumerate(segments):
                cell["segments"][name] += (members[number] >> i) & 1
    return truth


@dataclass
class Operator:
    db: Path
    store: Store
    keys: keys_mod.OperatorKeys
    segments: tuple[str, ...] = SEGMENTS
    members: dict[str, int] = field(default_factory=dict)  # normalized phone -> segment bits

    def add_members(self, members: dict[str, int]) -> None:
        """Import members directly (the CSV importer has its own tests)."""
        items = list(members.items())
        points = group.hash_to_curve_batch([match_key(m).encode() for m, _ in items], group.dst_for("phone"))
        rows = [(m, match_key(m), points[32 * i:32 * i + 32], bits) for i, (m, bits) in enumerate(items)]
        self.store.import_audience([rows], id_kind="phone", segments=self.segments)
        self.members.update(members)

    def token(self, role: str, name: str) -> str:
        return self.store.add_principal(role, name)[1]

    def seed(self, count: int, rng: random.Random, **policy) -> tuple[dict[str, int], str]:
        """``count`` members with random segments, the exact policy (plus overrides), one merchant:
        the members (ground truth) and that merchant's token."""
        members = {phone(i): rng.getrandbits(len(self.segments)) for i in range(count)}
        self.add_members(members)
        exact_policy(self.store, **policy)
        return members, self.token("merchant", "shop")


def new_operator(db: Path, origin: str = "matcher.test") -> Operator:
    """A fresh operator database at ``db``: the fixed test Paillier key, a new signer, the schema."""
    keys = keys_mod.OperatorKeys(paillier=test_private_key(), signer=Signer.generate(origin))
    keys_mod.write(keys_mod.key_path_for(db), keys)
    store = Store(db, create=True)
    store.set_meta({"origin": origin})
    return Operator(db=db, store=store, keys=keys)


@pytest.fixture
def operator(tmp_path: Path) -> Operator:
    op = new_operator(tmp_path / "operator.db")
    yield op
    op.store.close()


def random_audience(rng: random.Random, size: int, n_segments: int = len(SEGMENTS)) -> dict[str, int]:
    return {phone(i): rng.getrandbits(n_segments) for i in range(size)}


@dataclass
class Served:
    address: str
    server: object


@pytest.fixture
def serve(operator):
    """Start a real gRPC server on 127.0.0.1 (ephemeral port); returns a factory taking ServerConfig overrides."""
    started = []

    def start(**overrides) -> Served:
        config = ServerConfig(**{"db": operator.db, "listen": "127.0.0.1:0", "parallel": False, **overrides})
        server, port = build_server(config)
        server.start()
        started.append(server)
        return Served(f"127.0.0.1:{port}", server)

    yield start
    for server in started:
        server.stop(grace=1)
