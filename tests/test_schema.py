"""One description of the audit store's schema (store/schema.py) renders both backends' migrations;
stores made by the migrations as first written (tests/schema_before_19.py) open with today's code,
from any point in their history, and end with the same schema as a store made today: the same
tables, columns, types, constraints, indexes, triggers and functions, read from the database's own
catalog (sqlite_master and PRAGMAs; PostgreSQL's pg_catalog and information_schema)."""

from __future__ import annotations

import os
import re
import sqlite3
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bastion.store import events as ev
from bastion.store import migrations, open_store, pg_migrations, schema
from bastion.store.migrations import migrate
from bastion.store.postgres_store import connect
from bastion.store.verify import verify
from tests import schema_before_19 as before
from tests.postgres_server import PgServer
from tests.store_backends import postgres_url


def _normal(sql: str) -> str:
    """SQL as SQLite keeps it, whitespace aside: sqlite_master holds each CREATE as it was written (an
    ALTER TABLE ... ADD COLUMN splices its column in before the last parenthesis)."""
    sql = re.sub(r"\s+", " ", sql.strip())
    return re.sub(r"\s*([(),])\s*", r"\1 ", sql).replace("( ", "(").replace(" )", ")").strip()


def sqlite_schema(path: Path) -> dict[str, Any]:
    conn = sqlite3.connect(path)
    try:
        objects = {(kind, name): (table, _normal(sql or ""))
                   for kind, name, table, sql in conn.execute("SELECT type, name, tbl_name, sql FROM sqlite_master")}
        tables = [name for kind, name in objects if kind == "table"]
        return {"objects": objects,
                "columns": {t: conn.execute(f"PRAGMA table_xinfo('{t}')").fetchall() for t in tables},
                "indexes": {t: [row[1:] for row in conn.execute(f"PRAGMA index_list('{t}')")] for t in tables},
                "keys": {t: conn.execute(f"PRAGMA foreign_key_list('{t}')").fetchall() for t in tables}}
    finally:
        conn.close()


_PG_CATALOG = {
    "relations": "SELECT c.relname, c.relkind::text FROM pg_class c WHERE c.relnamespace = %(ns)s::regnamespace",
    "columns": "SELECT table_name, ordinal_position, column_name, data_type, is_nullable, column_default, is_identity, "
               "identity_generation FROM information_schema.columns WHERE table_schema = %(ns)s",
    "constraints": "SELECT conrelid::regclass::text, conname, contype::text, pg_get_constraintdef(oid) FROM pg_constraint "
                   "WHERE connamespace = %(ns)s::regnamespace",
    "indexes": "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = %(ns)s",
    "triggers": "SELECT tgrelid::regclass::text, tgname, pg_get_triggerdef(t.oid), tgenabled::text FROM pg_trigger t "
                "JOIN pg_class c ON c.oid = t.tgrelid WHERE c.relnamespace = %(ns)s::regnamespace AND NOT tgisinternal",
    "functions": "SELECT proname, pg_get_functiondef(p.oid) FROM pg_proc p WHERE pronamespace = %(ns)s::regnamespace",
}


def pg_schema_of(pg: PgServer, name: str) -> dict[str, Any]:
    """The schema's catalog, its own name taken out (two schemas are compared)."""
    import psycopg

    with psycopg.connect(pg.dsn(), autocommit=True) as conn:
        conn.execute(f"SET search_path = {name}")
        return {what: sorted(tuple(str(v).replace(f"{name}.", "") for v in row)
                             for row in conn.execute(query, {"ns": name}).fetchall())  # type: ignore[arg-type]
                for what, query in _PG_CATALOG.items()}


@pytest.fixture
def two_schemas(pg_server: PgServer) -> Iterator[tuple[str, str]]:
    names = tuple(f"bastion_schema_{os.getpid()}_{uuid.uuid4().hex[:6]}_{n}" for n in ("old", "new"))
    for name in names:
        pg_server.execute(f"CREATE SCHEMA {name}")
    try:
        yield names  # type: ignore[misc]
    finally:
        for name in names:
            pg_server.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")


def test_both_backends_render_every_migration_under_the_same_names_as_before() -> None:
    names = [m.name for m in schema.MIGRATIONS]
    assert [n for n, _ in migrations.MIGRATIONS] == [n for n, _ in pg_migrations.MIGRATIONS] == names
    assert [n for n, _ in before.SQLITE] == [n for n, _ in before.POSTGRES] == names, \
        "a migration was renamed or dropped: stores that recorded it would be refused or migrated twice"
    assert names == sorted(names) and len(set(names)) == len(names)


_OLD_EVENT = {"event_id": "e1", "type": ev.REQUESTED, "call_id": "before", "time": "2026-01-01T00:00:00+00:00",
              "identity": '{"subject": "alice"}', "text": "SELECT legacy FROM t"}


def _write_old_event(conn: Any, applied: int) -> None:
    """An event as the old code chained it, in a store migrated up to ``applied``."""
    if applied:
        conn.execute(f"INSERT INTO events (seq, {', '.join(_OLD_EVENT)}, prev_hash, hash) VALUES "
                     f"(1, {', '.join('?' for _ in _OLD_EVENT)}, ?, ?)",
                     (*_OLD_EVENT.values(), ev.GENESIS, ev.chain_hash(ev.GENESIS, _OLD_EVENT)))


def _use_and_check(store: Any, old_event: bool) -> None:
    """Append, read, verify and search, as a gateway does."""
    from bastion.store.search import search

    store.append({"type": ev.REQUESTED, "call_id": "after", "text": "SELECT 1", "identity": {"subject": "a"}})
    assert [e["call_id"] for e in store.iter_all()] == (["before", "after"] if old_event else ["after"])
    report = verify(store.conn)
    assert report.ok and report.events == 1 + old_event, report.problems
    assert [e["call_id"] for e in search(store, "legacy", user="alice")] == (["before"] if old_event else [])


@pytest.mark.parametrize("applied", range(len(before.SQLITE) + 1))
def test_a_sqlite_store_made_before_opens_migrates_and_matches_a_new_one(tmp_path: Path, applied: int) -> None:
    old_path, new_path = tmp_path / "old.db", tmp_path / "new.db"
    conn = sqlite3.connect(old_path, isolation_level=None)
    assert len(migrate(conn, before.SQLITE[:applied], str(old_path))) == applied
    _write_old_event(conn, applied)
    conn.close()
    old = open_store(str(old_path))
    assert [r[0] for r in old.read("SELECT name FROM _migrations ORDER BY name")] == [n for n, _ in before.SQLITE]
    _use_and_check(old, applied > 0)
    old.close()
    new = open_store(str(new_path))
    _use_and_check(new, False)
    new.close()
    assert sqlite_schema(old_path) == sqlite_schema(new_path)


@pytest.mark.parametrize("applied", [0, 1, 4, 5, len(before.POSTGRES)])
def test_a_postgres_store_made_before_opens_migrates_and_matches_a_new_one(
        pg_server: PgServer, two_schemas: tuple[str, str], applied: int) -> None:
    old_schema, new_schema = two_schemas
    conn = connect(postgres_url(pg_server, old_schema))
    assert len(migrate(conn, before.POSTGRES[:applied], old_schema)) == applied
    _write_old_event(conn, applied)
    conn.close()
    old = open_store(postgres_url(pg_server, old_schema))
    _use_and_check(old, applied > 0)
    assert [r[0] for r in old.read("SELECT name FROM _migrations ORDER BY name")] == [n for n, _ in before.POSTGRES]
    old.close()
    new = open_store(postgres_url(pg_server, new_schema))
    _use_and_check(new, False)
    new.close()
    old_catalog, new_catalog = pg_schema_of(pg_server, old_schema), pg_schema_of(pg_server, new_schema)
    assert old_catalog["triggers"] and old_catalog["functions"] and old_catalog["constraints"]
    assert old_catalog == new_catalog
    # The comparison is not blind: a disabled trigger, a function's body, a column's type are seen.
    for change in ("ALTER TABLE {s}.events DISABLE TRIGGER events_append_only",
                   "CREATE OR REPLACE FUNCTION {s}.bastion_hold_changed() RETURNS trigger LANGUAGE plpgsql AS "
                   "$$ BEGIN RETURN NULL; END $$",
                   "ALTER TABLE {s}.call_slots ALTER COLUMN ended TYPE varchar"):
        if applied == len(before.POSTGRES):
            pg_server.execute(change.format(s=new_schema))
            assert pg_schema_of(pg_server, new_schema) != old_catalog, change
            old_catalog = pg_schema_of(pg_server, new_schema)


def test_the_comparison_sees_a_difference(tmp_path: Path) -> None:
    """The comparison is not blind: one column's type changed is a different schema."""
    changed = tuple((n, sql.replace("duration_ms REAL", "duration_ms INTEGER")) for n, sql in before.SQLITE)
    for path, source in ((tmp_path / "a.db", before.SQLITE), (tmp_path / "b.db", changed)):
        conn = sqlite3.connect(path, isolation_level=None)
        migrate(conn, source, str(path))
        conn.close()
    assert sqlite_schema(tmp_path / "a.db") != sqlite_schema(tmp_path / "b.db")
