"""Named, recorded schema migrations: `migrate` (any backend), and the SQLite store's dialect of the
schema (store/schema.py describes it once; store/pg_migrations.py is PostgreSQL's dialect).

A store opened by code older than its schema (a migration recorded that the code does not know)
is refused: the older code could write rows the newer schema reads otherwise.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import TYPE_CHECKING

from bastion.store import schema
from bastion.store.errors import StoreError

if TYPE_CHECKING:
    from bastion.store.audit_store import Connection


class SchemaTooNew(StoreError):
    """The store was migrated by a newer Bastion than this one."""


def migrate(conn: Connection, migrations: tuple[tuple[str, str], ...], where: str) -> list[str]:
    """Apply the migrations ``conn``'s database has not recorded, in order, in one transaction under
    the write lock (two gateways starting together migrate once); the names applied. Raises
    `SchemaTooNew` when the database records one this code does not know."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)")
        done = [row[0] for row in conn.execute("SELECT name FROM _migrations ORDER BY name").fetchall()]
        known = [name for name, _ in migrations]
        unknown = [name for name in done if name not in known]
        if unknown:
            raise SchemaTooNew(
                f"the audit store at {where} has schema migration `{unknown[-1]}`, newer than this Bastion "
                f"(it knows up to `{known[-1]}`): upgrade Bastion on this host, as the gateway that migrated it was")
        applied = []
        for name, sql in migrations:
            if name in done:
                continue
            for statement in sql.split(";\n"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute("INSERT INTO _migrations VALUES (?, ?)",
                         (name, datetime.now(timezone.utc).isoformat(timespec="microseconds")))
            applied.append(name)
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return applied


def _append_only(table: str, what: str) -> list[str]:
    return [f"CREATE TRIGGER {table}_append_only_{verb.lower()} BEFORE {verb} ON {table} "
            f"BEGIN SELECT RAISE(ABORT, '{what} are append-only'); END" for verb in ("UPDATE", "DELETE")]


SQLITE = schema.Dialect(
    types={"text": "TEXT", "int": "INTEGER", "bigint": "INTEGER", "real": "REAL",
           "seq": "INTEGER PRIMARY KEY AUTOINCREMENT"},
    append_only=_append_only,
    rowid="",
    without_rowid="WITHOUT ROWID",
    before={
        # Full-text search over calls (store/search.py): the text, who, where and the verdict, one
        # row per call.requested (rowid = seq). Contentless: the events table holds the truth.
        "0004_search": """
        CREATE VIRTUAL TABLE events_fts USING fts5(text, subject, connection, tool, verdict, content='', detail=column);
        CREATE TRIGGER events_fts_insert AFTER INSERT ON events WHEN new.type = 'call.requested'
            BEGIN INSERT INTO events_fts (rowid, text, subject, connection, tool, verdict) VALUES (new.seq, new.text, json_extract(new.identity, '$.subject'), new.connection, new.tool, json_extract(new.decision, '$.verdict')); END;
        INSERT INTO events_fts (rowid, text, subject, connection, tool, verdict)
            SELECT seq, text, json_extract(identity, '$.subject'), connection, tool, json_extract(decision, '$.verdict')
            FROM events WHERE type = 'call.requested'
        """,
    },
    after={},
)

MIGRATIONS: tuple[tuple[str, str], ...] = schema.render(SQLITE, schema.MIGRATIONS)
