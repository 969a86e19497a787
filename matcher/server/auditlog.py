"""Appending to the audit log: entries (built by matcher.log.entries), Merkle nodes and a signed checkpoint per append.

Every append signs a new checkpoint and keeps it, so the operator cannot later re-sign a
different history without contradicting a checkpoint it already published.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

from matcher.log.checkpoint import Checkpoint, Signer
from matcher.log.entries import canonical_json
from matcher.log.merkle import MerkleTree, NodeID


class _PendingNodes:
    """Reads through to the store, keeps writes in memory until the append commits them all at once."""

    def __init__(self, store):
        self._store = store
        self.written: dict[NodeID, bytes] = {}

    def get_nodes(self, keys: Sequence[NodeID]) -> dict[NodeID, bytes]:
        found = {k: self.written[k] for k in keys if k in self.written}
        found.update(self._store.get_nodes([k for k in keys if k not in found]))
        return found

    def put_nodes(self, nodes: Mapping[NodeID, bytes]) -> None:
        self.written.update(nodes)


class AuditLog:
    def __init__(self, store, signer: Signer, origin: str):
        self._store = store
        self._signer = signer
        self.origin = origin

    @classmethod
    def for_store(cls, store, signer: Signer) -> "AuditLog":
        """The log of this store, under the origin ``matcher init`` recorded (else the key's name)."""
        return cls(store, signer, store.get_meta("origin") or signer.name)

    def record(self, entry: Mapping[str, Any]) -> tuple[int, str]:
        """Append one operator event, stamped with the store's clock."""
        return self.append([{**entry, "time": round(self._store.now(), 3)}])

    def append(self, entries: Sequence[Mapping[str, Any]],
               then: Callable[[Any, int], None] | None = None) -> tuple[int, str]:
        """Log entries; returns the index of the first and the signed checkpoint that covers them.
        ``then(conn, first_index)`` writes, in the same transaction, what must never disagree with
        the log (a job's state, its ε ledger row, a stored activation)."""
        data = [canonical_json(e) for e in entries]
        with self._store.lock:
            first = self._store.log_size()
            pending = _PendingNodes(self._store)
            tree = MerkleTree(pending, first)
            size = tree.append(data)
            note = self._signer.sign(Checkpoint(self.origin, size, tree.root(size)).body())
            self._store.append_log(data, pending.written, first, (size, note), then=then)
        return first, note
