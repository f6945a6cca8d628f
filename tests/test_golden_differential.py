"""A differential check of the guard against the engine: every PostgreSQL text of the golden corpus
that the read-only preset allows (decided with the server's own function catalog, as the gateway
decides) runs as a role with no write grant, in a READ ONLY transaction. PostgreSQL reporting an
attempted write (25006), a denied function or relation (42501; a plain EXPLAIN of a write is planned
with the write's privileges, so a refused table there is the engine holding), or a statement that
cannot run in a read-only transaction is a guard bug: the guard called a write a read."""

from __future__ import annotations

import tomllib
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from bastion.policy import ConnectionPolicy, Identity, analyse, decide
from bastion.policy.presets import PRESETS
from bastion.policy.sql import catalog as function_catalog
from bastion.policy.sql.catalog import FunctionCatalog
from tests.conftest import requirement
from tests.postgres_server import PgServer

pytestmark = pytest.mark.postgres
CASES = [c for c in tomllib.loads((Path(__file__).parent / "golden" / "sql_cases.toml").read_text())["case"]
         if c["dialect"] == "postgres"]
# What the engine says when a "read" was not one.
WRITE_STATES = {"25006", "42501", "0A000", "2F003", "2F004"}

SCHEMA = """
DROP SCHEMA IF EXISTS golden CASCADE;
CREATE SCHEMA golden;
CREATE TABLE golden.customers (id int PRIMARY KEY, name text, email text, phone text, city text, country text,
                               created_at timestamptz DEFAULT now(), active boolean DEFAULT true, notes jsonb,
                               data jsonb DEFAULT '{}', tags text[] DEFAULT '{}', "select" text, "delete" text,
                               region text, amount numeric);
CREATE TABLE golden.orders (id int PRIMARY KEY, customer_id int, total numeric(10,2), status text,
                            created_at timestamptz DEFAULT now(), item text, quantity int, amount numeric);
CREATE SEQUENCE golden.seq;
INSERT INTO golden.customers (id, name, email, phone, city, country) VALUES
  (1, 'Ada', 'ada@example.com', '+1-555-0100', 'London', 'UK'), (2, 'Bob', 'bob@example.com', NULL, 'Paris', 'FR');
INSERT INTO golden.orders VALUES (1, 1, 10.50, 'paid', now(), 'apple', 2, 10.5), (2, 2, 3.00, 'open', now(), 'pear', 1, 3);
"""


@pytest.fixture(scope="module")
def reader(pg_server: PgServer) -> Iterator[tuple[PgServer, str]]:
    """The corpus's tables, and a login that may read them and write nothing."""
    login = f"golden_reader_{uuid.uuid4().hex[:6]}"
    pg_server.execute(SCHEMA)
    pg_server.execute(f'CREATE ROLE "{login}" LOGIN; GRANT USAGE ON SCHEMA golden TO "{login}";'
                      f'GRANT SELECT ON ALL TABLES IN SCHEMA golden TO "{login}";'
                      f'GRANT SELECT ON ALL SEQUENCES IN SCHEMA golden TO "{login}";')  # currval reads one
    try:
        yield pg_server, login
    finally:
        pg_server.execute("DROP SCHEMA IF EXISTS golden CASCADE")
        pg_server.execute(f'DROP OWNED BY "{login}"; DROP ROLE IF EXISTS "{login}"')


@requirement("sql:differential")
def test_every_text_the_read_only_preset_allows_runs_read_only_as_a_role_without_writes(
        reader: tuple[PgServer, str]) -> None:
    pg, login = reader
    with psycopg.connect(pg.dsn(user=login), autocommit=True) as conn:
        read = lambda q: conn.execute(q).fetchall()  # noqa: E731
        catalog = FunctionCatalog.build(read(function_catalog.PROCS_SQL), read(function_catalog.OPERATORS_SQL),
                                        read(function_catalog.TYPES_SQL), ["golden"], read(function_catalog.RELATIONS_SQL),
                                        read(function_catalog.INHERITS_SQL))
        policy = ConnectionPolicy("golden", "postgres", (PRESETS["read-only"],), "golden")
        ran, bugs, other = 0, [], {}
        for case in CASES:
            analysis = analyse(case["text"], "postgres", "golden")
            decision = decide(Identity("golden"), policy, analysis, catalog)
            if not decision.allowed:
                continue
            assert decision.read_only, case["title"]
            for statement in analysis.statements:
                try:
                    conn.execute("BEGIN READ ONLY")
                    conn.execute("SET LOCAL search_path = pg_catalog, golden, pg_temp")
                    conn.execute("SET LOCAL statement_timeout = '5s'")
                    conn.execute(statement.text).fetchall() if statement.kind.value == "select" else conn.execute(statement.text)
                    ran += 1
                except psycopg.Error as error:
                    # A plain EXPLAIN of a write is planned with the write's privileges (nothing runs):
                    # the server's refusal to plan it is the engine holding, not a guard bug.
                    planned = statement.kind.value == "explain" and "permission denied for table" in str(error)
                    if error.sqlstate in WRITE_STATES and not planned:
                        bugs.append((case["title"], error.sqlstate, str(error).splitlines()[0]))
                    else:
                        other[case["title"]] = f"{error.sqlstate}: {str(error).splitlines()[0]}"
                finally:
                    conn.execute("ROLLBACK")
    assert not bugs, bugs
    # The check means something only if the allowed texts really ran.
    print(f"\ndifferential: {ran} statements ran read-only, {len(other)} cases stopped by the schema")
    assert ran >= 40, (ran, sorted(other.items()))
