"""The one package that speaks SQL: a single SQLite file (WAL) holding everything the operator keeps.

Tables: the audience (platform member ids, their group points H(y) cached at import, segment
bits), merchants and auditors (token hashes only), policy settings, jobs, the privacy-budget
ledger, activations, idle-time precomputation, and the audit log (entries, Merkle nodes, every
signed checkpoint). Keys are not here: they live in the operator's key file (see
:mod:`matcher.server.keys`).

One module per concern, each a class of methods over the same connection:

    db.py           the file: connection per thread, pragmas, migrations, read-only mode, meta
    schema.py       the numbered migrations (a database written by a newer matcher is refused)
    audience.py     members, segments, their history (the unbalanced protocol's input)
    principals.py   merchants and auditors, their token hashes
    policy.py       policy settings per scope
    ledger.py       jobs and the ε ledger
    activations.py  stored slices
    precomputed.py  the randomness pool and the precomputed stream slots
    log.py          audit-log entries, Merkle nodes, checkpoints

:class:`Store` composes them as mixins over one :class:`~matcher.server.store.db.Database`
rather than as separate objects: several writes must share one transaction across concerns (a
job's end lands with its audit-log entry, an activation's slice with its), every table module needs
the same connection and lock, and every call site keeps reading ``store.x(...)``. Only
:meth:`Store.status`, which reads every concern, lives here.
"""

from __future__ import annotations

from matcher.server.store.activations import ActivationTables
from matcher.server.store.audience import MAX_SEGMENTS, AudienceTables, MemberRow
from matcher.server.store.db import Clock, Database
from matcher.server.store.ledger import LedgerTables
from matcher.server.store.log import LogTables
from matcher.server.store.policy import PolicyTable
from matcher.server.store.precomputed import PrecomputedTables, SlotState, StoredSlot
from matcher.server.store.principals import Principal, PrincipalTables, hash_token
from matcher.server.store.schema import SCHEMA_VERSION

__all__ = ["MAX_SEGMENTS", "SCHEMA_VERSION", "Clock", "Database", "MemberRow", "Principal", "SlotState", "Store",
           "StoredSlot", "hash_token"]


class Store(AudienceTables, PrincipalTables, PolicyTable, LedgerTables, ActivationTables, PrecomputedTables,
            LogTables):
    """The operator's database: ``Store(path)`` opens (and migrates) it, ``create=True`` makes it,
    ``read_only=True`` reads it without writing anything (the console)."""

    def status(self) -> dict:
        """What an operator checks first: audience, principals, jobs, log, precomputation, activations."""
        q = lambda sql, *args: self.db.execute(sql, args).fetchall()  # noqa: E731
        audience = self.audience_info()
        version = self.get_meta("audience_version", "")
        merchants = dict(q("SELECT disabled, count(*) FROM principals WHERE role = 'merchant' GROUP BY disabled"))
        return {
            "audience": audience,
            "merchants": {"active": merchants.get(0, 0), "disabled": merchants.get(1, 0)},
            "auditors": q("SELECT count(*) FROM principals WHERE role = 'auditor'")[0][0],
            "jobs": dict(q("SELECT state, count(*) FROM jobs GROUP BY state")),
            "audit_log_entries": self.log_size(),
            "randomness_pool_batches": q("SELECT count(*) FROM randomness_pool")[0][0],
            "stream_slots_ready": self.stream_slots(version),
            # The secure protocol's segment streams: ready slots per segment.
            "segment_stream_slots_ready": self.segment_stream_slots(version),
            # Being written while the server is idle (minutes for a large audience: its ciphertexts).
            "stream_slot_rows_in_progress": self.stream_slot_rows_in_progress(),
            "activations": dict(q("SELECT state, count(*) FROM activations GROUP BY state")),
            # The unbalanced protocol's input: every member's stream history, as of the last whole import.
            "preprocessing_ready": self.preprocessing_ready(),
            "unbalanced_copies": q("SELECT count(*) FROM enrollments")[0][0],
        }
