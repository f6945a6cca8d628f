"""Named, recorded schema migrations for the SQLite audit store. Append new ones; never edit old ones."""

from __future__ import annotations

MIGRATIONS: tuple[tuple[str, str], ...] = (
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
)
