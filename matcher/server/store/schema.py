"""The database's schema, as numbered migrations: :class:`~matcher.server.store.db.Database` applies
the ones a file lacks, in order, when it opens it (``PRAGMA user_version`` counts those applied).

A migration is never edited once released: a change is a new one at the end.
"""

from __future__ import annotations

MIGRATIONS: list[str | tuple[str, ...]] = [
    # 1: the initial schema
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE audience (
        row_id INTEGER PRIMARY KEY,
        member_id TEXT NOT NULL UNIQUE,
        match_key TEXT NOT NULL UNIQUE,
        point BLOB NOT NULL,
        segments INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE principals (
        id INTEGER PRIMARY KEY,
        role TEXT NOT NULL CHECK (role IN ('merchant', 'auditor')),
        name TEXT NOT NULL,
        token_hash TEXT NOT NULL UNIQUE,
        created REAL NOT NULL,
        disabled INTEGER NOT NULL DEFAULT 0,
        UNIQUE (role, name)
    );
    CREATE TABLE policy (
        scope TEXT NOT NULL,            -- '' for the operator default, else a merchant name
        key TEXT NOT NULL,
        value TEXT NOT NULL,
        PRIMARY KEY (scope, key)
    );
    CREATE TABLE jobs (
        id TEXT PRIMARY KEY,
        merchant_id INTEGER NOT NULL REFERENCES principals(id),
        state TEXT NOT NULL,
        reason TEXT,
        created REAL NOT NULL,
        finished REAL,
        list_size INTEGER,
        labels INTEGER,
        report_json TEXT,
        leaf_index INTEGER
    );
    CREATE INDEX jobs_by_merchant ON jobs (merchant_id, created);
    CREATE TABLE budget (
        job_id TEXT PRIMARY KEY,
        merchant_id INTEGER NOT NULL REFERENCES principals(id),
        epsilon REAL NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('reserved', 'committed', 'refunded')),
        at REAL NOT NULL
    );
    CREATE INDEX budget_by_merchant ON budget (merchant_id, at);
    CREATE TABLE log_entries (idx INTEGER PRIMARY KEY, data BLOB NOT NULL);
    CREATE TABLE log_nodes (level INTEGER NOT NULL, idx INTEGER NOT NULL, hash BLOB NOT NULL,
                            PRIMARY KEY (level, idx)) WITHOUT ROWID;
    CREATE TABLE checkpoints (size INTEGER PRIMARY KEY, note TEXT NOT NULL, at REAL NOT NULL);
    """,
    # 2: blind activation
    """
    CREATE TABLE activations (
        handle TEXT PRIMARY KEY,
        merchant_id INTEGER NOT NULL REFERENCES principals(id),
        job_id TEXT NOT NULL,
        name TEXT NOT NULL,
        where_expr TEXT NOT NULL,
        label TEXT,
        size INTEGER NOT NULL,
        noisy_size INTEGER NOT NULL,
        created REAL NOT NULL,
        expires REAL NOT NULL,
        state TEXT NOT NULL CHECK (state IN ('active', 'deleted', 'expired'))
    );
    CREATE TABLE activation_members (
        handle TEXT NOT NULL REFERENCES activations(handle),
        row_id INTEGER NOT NULL,
        PRIMARY KEY (handle, row_id)
    ) WITHOUT ROWID;
    """,
    # 3: sealed, precomputed Paillier randomness (matcher.crypto.pool)
    """
    CREATE TABLE randomness_pool (
        id INTEGER PRIMARY KEY,
        key_id TEXT NOT NULL,           -- which Paillier modulus the values belong to
        sealed BLOB NOT NULL
    );
    CREATE INDEX randomness_by_key ON randomness_pool (key_id, id);
    """,
    # 4: precomputed member halves of job streams (matcher.protocol.platform.PrecomputedStream)
    """
    CREATE TABLE stream_slots (
        id INTEGER PRIMARY KEY,
        audience_version TEXT NOT NULL,  -- row positions refer to this audience snapshot
        sealed_scalar BLOB NOT NULL,     -- the job's b, AES-GCM sealed like the randomness pool
        stream_order BLOB NOT NULL,      -- int64 audience positions, in stream order
        taken INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE stream_slot_pieces (
        slot_id INTEGER NOT NULL REFERENCES stream_slots(id),
        idx INTEGER NOT NULL,
        points BLOB NOT NULL,            -- b·H(y), consecutive 32-byte points
        PRIMARY KEY (slot_id, idx)
    ) WITHOUT ROWID;
    """,
    # 5: precomputed streams carry their members' ciphertexts, and are written in many transactions
    """
    ALTER TABLE stream_slots ADD COLUMN layout_json TEXT;       -- packing of the ciphertexts (NULL: none stored)
    ALTER TABLE stream_slots ADD COLUMN ready INTEGER NOT NULL DEFAULT 1;  -- 0 while still being written
    ALTER TABLE stream_slot_pieces ADD COLUMN ciphertexts BLOB; -- Enc(payload(y)), same rows as points
    """,
    # 6: slots for the secure protocol's segment streams (the members holding one segment)
    """
    ALTER TABLE stream_slots ADD COLUMN segment TEXT NOT NULL DEFAULT '';  -- '' = every member
    """,
    # 7: what a restarted server needs to log a job a crash interrupted
    """
    ALTER TABLE jobs ADD COLUMN policy_json TEXT;   -- the policy the job was admitted under
    ALTER TABLE jobs ADD COLUMN label_sizes TEXT;   -- JSON list, as the log records them
    ALTER TABLE jobs ADD COLUMN protocol TEXT;
    """,
    # 8: the unbalanced protocol (matcher.server.unbalanced): each member's stream memberships over time,
    # and each merchant's blinded copy of them. Updates and deletes are recorded by triggers,
    # whatever writes the audience; inserts by import_audience, in bulk (a trigger per row made an
    # import of 10^7 members three times slower).
    # An import writes its rows under audience_seq + 1 and makes them visible by bumping audience_seq
    # when it ends, so a job never syncs a merchant to half an import.
    (
        """CREATE TABLE audience_history (
            row_id INTEGER NOT NULL,
            point BLOB NOT NULL,             -- H(y): a member who has left can still be taken out
            bits INTEGER NOT NULL,           -- its segments while the record is open
            since INTEGER NOT NULL,          -- the import (audience_seq) that opened it
            until INTEGER                    -- the import that closed it; NULL while current
        )""",
        "CREATE UNIQUE INDEX audience_history_current ON audience_history (row_id) WHERE until IS NULL",
        "CREATE INDEX audience_history_since ON audience_history (since)",
        "CREATE INDEX audience_history_until ON audience_history (until) WHERE until IS NOT NULL",
        "INSERT INTO audience_history (row_id, point, bits, since) SELECT row_id, point, segments, 0 FROM audience",
        "INSERT INTO meta (key, value) VALUES ('audience_seq', '0') ON CONFLICT(key) DO NOTHING",
        """CREATE TRIGGER audience_history_update AFTER UPDATE OF segments, point ON audience
        WHEN OLD.segments != NEW.segments OR OLD.point != NEW.point BEGIN
            UPDATE audience_history SET until = (SELECT CAST(value AS INTEGER) + 1 FROM meta WHERE key = 'audience_seq')
            WHERE row_id = OLD.row_id AND until IS NULL;
            INSERT INTO audience_history (row_id, point, bits, since)
            VALUES (NEW.row_id, NEW.point, NEW.segments,
                    (SELECT CAST(value AS INTEGER) + 1 FROM meta WHERE key = 'audience_seq'));
        END""",
        """CREATE TRIGGER audience_history_delete AFTER DELETE ON audience BEGIN
            UPDATE audience_history SET until = (SELECT CAST(value AS INTEGER) + 1 FROM meta WHERE key = 'audience_seq')
            WHERE row_id = OLD.row_id AND until IS NULL;
        END""",
        """CREATE TABLE unbalanced_keys (
            stream TEXT PRIMARY KEY,         -- '' = every member, else a segment
            sealed_scalar BLOB NOT NULL      -- b_s, AES-GCM sealed like the randomness pool
        )""",
        """CREATE TABLE enrollments (
            id INTEGER PRIMARY KEY,
            merchant_id INTEGER NOT NULL REFERENCES principals(id),
            stream TEXT NOT NULL,
            key_id BLOB NOT NULL,            -- names the merchant's long-lived key (its choice)
            merchant_base BLOB NOT NULL,     -- a_s·G
            synced INTEGER NOT NULL,         -- the audience_seq its copy reflects
            bucket_bits INTEGER NOT NULL,    -- its tags are stored by their leading bits
            UNIQUE (merchant_id, stream)
        )""",
        """CREATE TABLE enrollment_pieces (
            enrollment_id INTEGER NOT NULL REFERENCES enrollments(id),
            bucket INTEGER NOT NULL,
            idx INTEGER NOT NULL,
            tags BLOB NOT NULL,              -- sorted 16-byte prefixes of a_s·b_s·H(y) in this bucket
            PRIMARY KEY (enrollment_id, bucket, idx)
        ) WITHOUT ROWID""",
    ),
    # 9: the import each running unbalanced job reads the history as of. A closed history record
    # (a member who left, or an old set of segments) is deleted once no stored copy and no running
    # job can need it any more, so a removed member's H(y) does not outlive every copy's sync.
    """CREATE TABLE history_readers (
        job_id TEXT PRIMARY KEY REFERENCES jobs(id),
        upto INTEGER NOT NULL
    )""",
    # 10: a member's further identifiers (issue 19): an email beside the phone, an OpenID, ... Each
    # (kind, match key) names one member only, across first and further identifiers alike, so no two
    # points of the audience are equal. A member's identifiers go with it (the trigger), whatever
    # deletes it. ``meta.audience_id_kinds``: the kinds of the further identifier columns, in order.
    (
        """CREATE TABLE audience_ids (
            kind TEXT NOT NULL,              -- the hash-to-curve DST's kind (phone, email, opaque)
            match_key TEXT NOT NULL,         -- SHA-256 hex of the normalized identifier
            row_id INTEGER NOT NULL,         -- the member (audience.row_id)
            slot INTEGER NOT NULL,           -- its identifier column (1, 2, ...; 0 is audience.match_key)
            point BLOB NOT NULL,             -- H(identifier) under the kind's DST
            PRIMARY KEY (kind, match_key)
        ) WITHOUT ROWID""",
        "CREATE INDEX audience_ids_by_member ON audience_ids (row_id, slot)",
        """CREATE TRIGGER audience_ids_delete AFTER DELETE ON audience BEGIN
            DELETE FROM audience_ids WHERE row_id = OLD.row_id;
        END""",
    ),
]
SCHEMA_VERSION = len(MIGRATIONS)
