"""Named, recorded schema migrations for the PostgreSQL audit store: the same names as SQLite's
(store/migrations.py), the same tables and columns, in PostgreSQL's types. Append new ones; never
edit old ones.

Values the chain hashes are stored exactly as on SQLite (JSON as its text, times as ISO strings,
`truncated` as 0/1), so an event hashes the same on either backend and `verify` is one walk.
Append-only tables refuse UPDATE, DELETE and TRUNCATE in triggers; `holds` (which changes state)
NOTIFYs `bastion_holds` with the hold id on every change, delivered when its transaction commits:
a gateway waiting on that hold wakes at once, whichever gateway decided it.
"""

from __future__ import annotations


def _append_only(table: str, what: str) -> str:
    return f"""
        CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table}
            FOR EACH ROW EXECUTE FUNCTION bastion_refuse('{what} are append-only');
        CREATE TRIGGER {table}_append_only_truncate BEFORE TRUNCATE ON {table}
            FOR EACH STATEMENT EXECUTE FUNCTION bastion_refuse('{what} are append-only')"""


MIGRATIONS: tuple[tuple[str, str], ...] = (
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
