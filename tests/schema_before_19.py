"""The audit store's migrations as the code wrote them before one description of the schema
(store/schema.py, issue 19), copied verbatim from store/migrations.py and store/pg_migrations.py at
commit af3b1c0: tests/test_schema.py makes stores with them and opens those with today's code.
Never edit: this is what existing databases were made by."""

from __future__ import annotations

SQLITE: tuple[tuple[str, str], ...] = (
    (
        "0001_events",
        """
        CREATE TABLE events (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            event_id TEXT NOT NULL UNIQUE,
            type TEXT NOT NULL,
            call_id TEXT,
            time TEXT NOT NULL,
            identity TEXT,
            client TEXT,
            session TEXT,
            connection TEXT,
            tool TEXT,
            text TEXT,
            reason TEXT,
            facts TEXT,
            decision TEXT,
            result TEXT,
            row_count INTEGER,
            truncated INTEGER,
            duration_ms REAL,
            error TEXT,
            prev_hash TEXT NOT NULL,
            hash TEXT NOT NULL
        );
        CREATE INDEX events_call ON events (call_id);
        CREATE INDEX events_type ON events (type);
        CREATE TRIGGER events_append_only_update BEFORE UPDATE ON events
            BEGIN SELECT RAISE(ABORT, 'audit events are append-only'); END;
        CREATE TRIGGER events_append_only_delete BEFORE DELETE ON events
            BEGIN SELECT RAISE(ABORT, 'audit events are append-only'); END;
        """,
    ),
    (
        # Several gateway processes may share one SQLite log (an IDE's stdio server beside an HTTP
        # one): each records which process wrote an event, so start-up closes only dead processes' calls.
        "0002_instances",
        """
        ALTER TABLE events ADD COLUMN instance TEXT;
        CREATE TABLE instances (id TEXT PRIMARY KEY, host TEXT NOT NULL, pid INTEGER NOT NULL, started TEXT NOT NULL)
        """,
    ),
    (
        # Keyed checkpoints: an HMAC over (seq, hash) with a key kept outside the database, so that
        # whoever can write the file cannot forge a consistent chain, or cut its tail unseen.
        "0003_checkpoints",
        """
        CREATE TABLE checkpoints (seq INTEGER PRIMARY KEY, hash TEXT NOT NULL, time TEXT NOT NULL, mac TEXT NOT NULL);
        CREATE TRIGGER checkpoints_append_only_update BEFORE UPDATE ON checkpoints
            BEGIN SELECT RAISE(ABORT, 'audit checkpoints are append-only'); END;
        CREATE TRIGGER checkpoints_append_only_delete BEFORE DELETE ON checkpoints
            BEGIN SELECT RAISE(ABORT, 'audit checkpoints are append-only'); END
        """,
    ),
    (
        # Full-text search over calls: the text, who, where and the verdict, one row per
        # call.requested (rowid = seq). Contentless: the events table holds the truth.
        "0004_search",
        """
        CREATE VIRTUAL TABLE events_fts USING fts5(text, subject, connection, tool, verdict, content='', detail=column);
        CREATE TRIGGER events_fts_insert AFTER INSERT ON events WHEN new.type = 'call.requested'
            BEGIN INSERT INTO events_fts (rowid, text, subject, connection, tool, verdict) VALUES (new.seq, new.text, json_extract(new.identity, '$.subject'), new.connection, new.tool, json_extract(new.decision, '$.verdict')); END;
        INSERT INTO events_fts (rowid, text, subject, connection, tool, verdict)
            SELECT seq, text, json_extract(identity, '$.subject'), connection, tool, json_extract(decision, '$.verdict')
            FROM events WHERE type = 'call.requested';
        CREATE INDEX events_time ON events (time)
        """,
    ),
    (
        # Held calls and approvals (store/approvals.py). Unlike `events`, `holds` changes state
        # (pending → approved/denied/expired, approved → consumed/expired); every change is also an
        # event in the chain, written in the same transaction. At most one live (pending or approved)
        # hold per binding, enforced by a partial unique index. Votes are append-only, one per approver.
        "0005_approvals",
        """
        CREATE TABLE holds (
            hold_id TEXT PRIMARY KEY,
            binding TEXT NOT NULL,
            call_id TEXT NOT NULL,
            created TEXT NOT NULL,
            expires_at TEXT NOT NULL,
            status TEXT NOT NULL CHECK (status IN ('pending', 'approved', 'denied', 'expired', 'consumed')),
            requester TEXT NOT NULL,
            requester_subject TEXT NOT NULL,
            connection TEXT,
            tool TEXT NOT NULL,
            text TEXT NOT NULL,
            text_hash TEXT NOT NULL,
            facts TEXT,
            reason TEXT,
            rule TEXT,
            approver_groups TEXT NOT NULL,
            min_approvals INTEGER NOT NULL DEFAULT 1 CHECK (min_approvals >= 1),
            preview TEXT,
            decided_at TEXT,
            consumed_by_call TEXT
        );
        CREATE INDEX holds_binding ON holds (binding, status);
        CREATE INDEX holds_due ON holds (status, expires_at);
        CREATE UNIQUE INDEX holds_one_live ON holds (binding) WHERE status IN ('pending', 'approved');
        CREATE TABLE votes (
            hold_id TEXT NOT NULL REFERENCES holds (hold_id),
            approver TEXT NOT NULL,
            approve INTEGER NOT NULL,
            reason TEXT,
            at TEXT NOT NULL,
            identity TEXT,
            UNIQUE (hold_id, approver)
        );
        CREATE TRIGGER votes_append_only_update BEFORE UPDATE ON votes
            BEGIN SELECT RAISE(ABORT, 'approval votes are append-only'); END;
        CREATE TRIGGER votes_append_only_delete BEFORE DELETE ON votes
            BEGIN SELECT RAISE(ABORT, 'approval votes are append-only'); END
        """,
    ),
    (
        # Signed checkpoints (store/checkpoints.py): a C2SP checkpoint note (origin, tree size, Merkle
        # root) signed with Ed25519, so that verifying needs only the public key. `chain_hash` (the
        # hash of event `size`) and `frontier` (the tree's O(log n) state) are unsigned caches that
        # let a gateway resume the tree without re-reading the log; verify ignores them.
        "0006_tree_checkpoints",
        """
        CREATE TABLE tree_checkpoints (size INTEGER PRIMARY KEY, root TEXT NOT NULL, chain_hash TEXT NOT NULL,
                                       frontier TEXT NOT NULL, time TEXT NOT NULL, note TEXT NOT NULL);
        CREATE TRIGGER tree_checkpoints_append_only_update BEFORE UPDATE ON tree_checkpoints
            BEGIN SELECT RAISE(ABORT, 'audit checkpoints are append-only'); END;
        CREATE TRIGGER tree_checkpoints_append_only_delete BEFORE DELETE ON tree_checkpoints
            BEGIN SELECT RAISE(ABORT, 'audit checkpoints are append-only'); END
        """,
    ),
    (
        # Perfect subtrees of 1024 leaves and more (store/merkle.py SINK_LEVEL), written as the tree
        # grows (about one row per 512 events): a proof reads them instead of hashing the whole log.
        # An unsigned cache: a proof built from a damaged row fails its own check and is rebuilt
        # from the events.
        "0007_tree_nodes",
        """
        CREATE TABLE tree_nodes (level INTEGER NOT NULL, idx INTEGER NOT NULL, hash TEXT NOT NULL,
                                 PRIMARY KEY (level, idx)) WITHOUT ROWID;
        CREATE TRIGGER tree_nodes_append_only_update BEFORE UPDATE ON tree_nodes
            BEGIN SELECT RAISE(ABORT, 'audit tree nodes are append-only'); END;
        CREATE TRIGGER tree_nodes_append_only_delete BEFORE DELETE ON tree_nodes
            BEGIN SELECT RAISE(ABORT, 'audit tree nodes are append-only'); END
        """,
    ),
    (
        # Per-identity limits ([limits], store/limits.py): one row per admitted call, so that
        # concurrent calls and calls per minute are counted across every gateway sharing the store.
        # Not the record (that is `events`): rows end, and are pruned once out of every window.
        "0008_call_slots",
        """
        CREATE TABLE call_slots (call_id TEXT PRIMARY KEY, subject TEXT NOT NULL, started TEXT NOT NULL,
                                 ended TEXT, instance TEXT NOT NULL);
        CREATE INDEX call_slots_subject ON call_slots (subject, started)
        """,
    ),
    (
        # Replicas on several hosts sharing a PostgreSQL store cannot see each other's pids: a
        # heartbeat (AuditStore.heartbeat) tells a starting gateway which other-host processes live.
        "0009_instance_seen",
        "ALTER TABLE instances ADD COLUMN seen TEXT",
    ),
)


def _append_only(table: str, what: str) -> str:
    return f"""
        CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table}
            FOR EACH ROW EXECUTE FUNCTION bastion_refuse('{what} are append-only');
        CREATE TRIGGER {table}_append_only_truncate BEFORE TRUNCATE ON {table}
            FOR EACH STATEMENT EXECUTE FUNCTION bastion_refuse('{what} are append-only')"""


POSTGRES: tuple[tuple[str, str], ...] = (
    (
        "0001_events",
        """
        CREATE FUNCTION bastion_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN RAISE EXCEPTION '%', TG_ARGV[0] USING ERRCODE = 'restrict_violation'; END $$;
        CREATE TABLE events (
            seq BIGINT PRIMARY KEY,
            event_id TEXT NOT NULL UNIQUE,
            type TEXT NOT NULL,
            call_id TEXT,
            time TEXT NOT NULL,
            identity TEXT,
            client TEXT,
            session TEXT,
            connection TEXT,
            tool TEXT,
            text TEXT,
            reason TEXT,
            facts TEXT,
            decision TEXT,
            result TEXT,
            row_count BIGINT,
            truncated INTEGER,
            duration_ms DOUBLE PRECISION,
            error TEXT,
            prev_hash TEXT NOT NULL,
            hash TEXT NOT NULL
        );
        CREATE INDEX events_call ON events (call_id);
        CREATE INDEX events_type ON events (type);""" + _append_only("events", "audit events"),
    ),
    (
        "0002_instances",
        """
        ALTER TABLE events ADD COLUMN instance TEXT;
        CREATE TABLE instances (id TEXT PRIMARY KEY, host TEXT NOT NULL, pid INTEGER NOT NULL, started TEXT NOT NULL)
        """,
    ),
    (
        "0003_checkpoints",
        "CREATE TABLE checkpoints (seq BIGINT PRIMARY KEY, hash TEXT NOT NULL, time TEXT NOT NULL, mac TEXT NOT NULL);"
        + _append_only("checkpoints", "audit checkpoints"),
    ),
    (
        # SQLite's full-text table has no counterpart: store/search.py matches words with ILIKE here.
        "0004_search",
        "CREATE INDEX events_time ON events (time)",
    ),
    (
        "0005_approvals",
        """
        CREATE TABLE holds (
            rowid BIGINT GENERATED ALWAYS AS IDENTITY,
            hold_id TEXT PRIMARY KEY,
            binding TEXT NOT NULL,
            call_id TEXT NOT NULL,
            created TEXT NOT NULL,
            expires_at TEXT NOT NULL,
            status TEXT NOT NULL CHECK (status IN ('pending', 'approved', 'denied', 'expired', 'consumed')),
            requester TEXT NOT NULL,
            requester_subject TEXT NOT NULL,
            connection TEXT,
            tool TEXT NOT NULL,
            text TEXT NOT NULL,
            text_hash TEXT NOT NULL,
            facts TEXT,
            reason TEXT,
            rule TEXT,
            approver_groups TEXT NOT NULL,
            min_approvals INTEGER NOT NULL DEFAULT 1 CHECK (min_approvals >= 1),
            preview TEXT,
            decided_at TEXT,
            consumed_by_call TEXT
        );
        CREATE INDEX holds_binding ON holds (binding, status);
        CREATE INDEX holds_due ON holds (status, expires_at);
        CREATE UNIQUE INDEX holds_one_live ON holds (binding) WHERE status IN ('pending', 'approved');
        CREATE FUNCTION bastion_hold_changed() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN PERFORM pg_notify('bastion_holds', NEW.hold_id); RETURN NULL; END $$;
        CREATE TRIGGER holds_notify AFTER INSERT OR UPDATE ON holds
            FOR EACH ROW EXECUTE FUNCTION bastion_hold_changed();
        CREATE TABLE votes (
            rowid BIGINT GENERATED ALWAYS AS IDENTITY,
            hold_id TEXT NOT NULL REFERENCES holds (hold_id),
            approver TEXT NOT NULL,
            approve INTEGER NOT NULL,
            reason TEXT,
            at TEXT NOT NULL,
            identity TEXT,
            UNIQUE (hold_id, approver)
        );""" + _append_only("votes", "approval votes"),
    ),
    (
        "0006_tree_checkpoints",
        """
        CREATE TABLE tree_checkpoints (size BIGINT PRIMARY KEY, root TEXT NOT NULL, chain_hash TEXT NOT NULL,
                                       frontier TEXT NOT NULL, time TEXT NOT NULL, note TEXT NOT NULL);"""
        + _append_only("tree_checkpoints", "audit checkpoints"),
    ),
    (
        "0007_tree_nodes",
        """
        CREATE TABLE tree_nodes (level INTEGER NOT NULL, idx BIGINT NOT NULL, hash TEXT NOT NULL,
                                 PRIMARY KEY (level, idx));""" + _append_only("tree_nodes", "audit tree nodes"),
    ),
    (
        "0008_call_slots",
        """
        CREATE TABLE call_slots (call_id TEXT PRIMARY KEY, subject TEXT NOT NULL, started TEXT NOT NULL,
                                 ended TEXT, instance TEXT NOT NULL);
        CREATE INDEX call_slots_subject ON call_slots (subject, started)
        """,
    ),
    (
        "0009_instance_seen",
        "ALTER TABLE instances ADD COLUMN seen TEXT",
    ),
)
