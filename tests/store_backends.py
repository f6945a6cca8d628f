"""The audit store's backends for tests: `store_at` runs a test once on SQLite (a file in its
tmp_path) and once on PostgreSQL (a schema of its own in the session's database, named with the
pid and a counter, dropped after the test)."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
import pytest
from psycopg import sql

from bastion.store import AuditStore, open_store
from tests.postgres_server import PgServer

_counter = itertools.count()


@dataclass
class StoreAt:
    """Where a test's audit store lives; `open` opens it (again: the same store)."""

    kind: str  # sqlite | postgres
    target: str  # a file path, or a postgresql:// URL
    opened: list[AuditStore] = field(default_factory=list)

    def config_line(self) -> str:
        """The `[audit]` line that names this store in a config file."""
        return f'url = "{self.target}"' if self.kind == "postgres" else f'path = "{self.target}"'

    def open(self, **options: Any) -> AuditStore:
        store = open_store(self.target, **options)
        self.opened.append(store)
        return store


def postgres_url(pg: PgServer, schema: str | None = None) -> str:
    """A postgresql:// URL for the session's database as its superuser (in ``schema`` if given)."""
    params = psycopg.conninfo.conninfo_to_dict(pg.dsn())
    url = f"postgresql://{params.get('user', 'postgres')}@{params.get('host', '127.0.0.1')}:{params.get('port', 5432)}/{pg.database}"
    return url + (f"?options={quote(f'-csearch_path={schema}')}" if schema else "")


@pytest.fixture
def pg_schema(pg_server: PgServer) -> Iterator[str]:
    """A fresh, empty schema in the session's database, dropped after the test."""
    name = f"bastion_store_{os.getpid()}_{next(_counter)}"
    pg_server.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)).as_string())
    try:
        yield name
    finally:
        pg_server.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(sql.Identifier(name)).as_string())


@pytest.fixture(params=["sqlite", "postgres"])
def store_at(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StoreAt]:
    if request.param == "sqlite":
        at = StoreAt("sqlite", str(tmp_path / "audit.db"))
    else:
        pg = request.getfixturevalue("pg_server")
        at = StoreAt("postgres", postgres_url(pg, request.getfixturevalue("pg_schema")))
    yield at
    for store in at.opened:
        try:
            store.close()
        except Exception:
            pass
