"""The real PostgreSQL for tests: $BASTION_TEST_PG_DSN, else 127.0.0.1:5432 as `postgres`, else a
throwaway cluster from PostgreSQL's binaries on PATH; else the test fails saying how to provide one.

Each test session creates its own database and roles and drops them at the end.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from contextlib import contextmanager
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

HOW_TO = ("No PostgreSQL found. Set BASTION_TEST_PG_DSN to a superuser DSN (e.g. "
          "'host=127.0.0.1 port=5432 user=postgres dbname=postgres'), start one on 127.0.0.1:5432, "
          "or put PostgreSQL's binaries (initdb, pg_ctl) on PATH so the tests can start a throwaway cluster.")


@dataclass
class PgServer:
    admin_dsn: str  # superuser, maintenance database
    database: str  # this run's database
    gateway_role: str  # the role Bastion logs in as (not a superuser)

    def dsn(self, *, user: str | None = None, dbname: str | None = None) -> str:
        params = psycopg.conninfo.conninfo_to_dict(self.admin_dsn)
        params["dbname"] = dbname or self.database
        if user:
            params["user"] = user
        return psycopg.conninfo.make_conninfo(**params)

    def execute(self, statement: str, params: tuple[object, ...] | None = None) -> list[tuple[object, ...]]:
        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            cur = conn.execute(statement, params)  # type: ignore[arg-type]
            return cur.fetchall() if cur.description else []

    def advisory_locks(self, key: int) -> int:
        """Advisory locks on ``key`` held in this run's database: pg_locks is the whole cluster's, where
        another run (or xdist worker) may hold the same key in its own database."""
        rows = self.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = %s"
                            " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())", (key,))
        return int(rows[0][0])  # type: ignore[call-overload]

    @contextmanager
    def scratch_schema(self, prefix: str, setup: str) -> Iterator[str]:
        """A schema of this process's own (``prefix_<pid>_<hex>``) built by ``setup`` (``{schema}`` in it
        is the name), readable by the gateway role, dropped afterwards."""
        schema = f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:4]}"
        self.execute(f"CREATE SCHEMA {schema};" + setup.replace("{schema}", schema))
        self.execute(f'GRANT USAGE ON SCHEMA {schema} TO "{self.gateway_role}"; '
                     f'GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO "{self.gateway_role}"')
        try:
            yield schema
        finally:
            self.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def _answers(dsn: str) -> bool:
    try:
        with psycopg.connect(dsn, connect_timeout=3):
            return True
    except psycopg.Error:
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _throwaway_cluster() -> tuple[str, callable] | None:  # type: ignore[valid-type]
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if not (initdb and pg_ctl):
        return None
    root = Path(tempfile.mkdtemp(prefix="bastion-pg-"))
    port = _free_port()
    subprocess.run([initdb, "-D", str(root / "data"), "-U", "postgres", "-A", "trust"], check=True, capture_output=True)
    subprocess.run([pg_ctl, "-D", str(root / "data"), "-o", f"-p {port} -k {root} -h 127.0.0.1", "-w", "start",
                    "-l", str(root / "log")], check=True, capture_output=True)

    def stop() -> None:
        subprocess.run([pg_ctl, "-D", str(root / "data"), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)

    return f"host=127.0.0.1 port={port} user=postgres dbname=postgres", stop


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    stop = None
    admin = os.environ.get("BASTION_TEST_PG_DSN")
    if admin:
        if not _answers(admin):
            pytest.fail(f"BASTION_TEST_PG_DSN is set but PostgreSQL does not answer there. {HOW_TO}")
    else:
        admin = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
        if not _answers(admin):
            started = _throwaway_cluster()
            if started is None:
                pytest.fail(HOW_TO)
            admin, stop = started
    suffix = uuid.uuid4().hex[:8]
    database, gateway = f"bastion_test_{suffix}", f"bastion_gw_{suffix}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(gateway)))
    server = PgServer(admin, database, gateway)
    try:
        yield server
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(gateway)))
        if stop:
            stop()


def wait_until(predicate, timeout: float = 5.0, interval: float = 0.05) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
