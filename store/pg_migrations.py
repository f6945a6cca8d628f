"""PostgreSQL's dialect of the audit store's schema (store/schema.py describes it once), and what
only PostgreSQL has. Append new migrations in store/schema.py; never edit old ones.

Append-only tables refuse UPDATE, DELETE and TRUNCATE in triggers that call one function,
`bastion_refuse`. `holds` (which changes state) NOTIFYs `bastion_holds` with the hold id on every
change, delivered when its transaction commits: a gateway waiting on that hold wakes at once,
whichever gateway decided it. SQLite's full-text table has no counterpart: store/search.py matches
words with ILIKE here.
"""

from __future__ import annotations

from bastion.store import schema


def _append_only(table: str, what: str) -> list[str]:
    return [f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
            f"FOR EACH ROW EXECUTE FUNCTION bastion_refuse('{what} are append-only')",
            f"CREATE TRIGGER {table}_append_only_truncate BEFORE TRUNCATE ON {table} "
            f"FOR EACH STATEMENT EXECUTE FUNCTION bastion_refuse('{what} are append-only')"]


POSTGRES = schema.Dialect(
    types={"text": "TEXT", "int": "INTEGER", "bigint": "BIGINT", "real": "DOUBLE PRECISION", "seq": "BIGINT PRIMARY KEY"},
    append_only=_append_only,
    # The shared code orders holds and votes by SQLite's implicit rowid; here it is a column.
    rowid="rowid BIGINT GENERATED ALWAYS AS IDENTITY",
    without_rowid="",
    before={
        "0001_events": """
        CREATE FUNCTION bastion_refuse() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN RAISE EXCEPTION '%', TG_ARGV[0] USING ERRCODE = 'restrict_violation'; END $$
        """,
    },
    after={
        "0005_approvals": """
        CREATE FUNCTION bastion_hold_changed() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN PERFORM pg_notify('bastion_holds', NEW.hold_id); RETURN NULL; END $$;
        CREATE TRIGGER holds_notify AFTER INSERT OR UPDATE ON holds
            FOR EACH ROW EXECUTE FUNCTION bastion_hold_changed()
        """,
    },
)

MIGRATIONS: tuple[tuple[str, str], ...] = schema.render(POSTGRES, schema.MIGRATIONS)
