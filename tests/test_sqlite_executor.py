"""The SQLite executor on the real demo database: the database itself enforces the decision."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from bastion.policy import Identity, Limits, analyse
from bastion.policy.errors import QueryRejected, QueryTimeout, TargetUnavailable
from tests.conftest import requirement
from bastion.tools.executors.base import RunRequest
from bastion.tools.executors.sqlite import SqliteExecutor

pytestmark = pytest.mark.anyio
WHO = Identity("alice")


@pytest.fixture
def db(tmp_path: Path, demo_db: Path) -> Path:
    return Path(shutil.copy(demo_db, tmp_path / "demo.db"))


def request(text: str, *, read_only: bool = True, limits: Limits = Limits()) -> RunRequest:
    return RunRequest(analyse(text, "sqlite").statements, read_only, limits, WHO)


@requirement("inv:sqlite-authorizer")
async def test_a_write_in_a_read_only_call_is_refused_by_sqlite(db: Path) -> None:
    # The parser is bypassed on purpose: the facts say "read", the text writes.
    statements = analyse("DELETE FROM orders WHERE id = 1", "sqlite").statements
    with pytest.raises(QueryRejected, match="not authorized|readonly"):
        await SqliteExecutor("demo", db).run(RunRequest(statements, True, Limits(), WHO))


@requirement("inv:sqlite-authorizer")
async def test_a_table_the_facts_did_not_name_is_refused(db: Path) -> None:
    facts = analyse("SELECT * FROM products", "sqlite").statements
    sneaky = [type(facts[0])(**{**facts[0].__dict__, "text": "SELECT * FROM customers"})]
    with pytest.raises(QueryRejected, match="prohibited"):
        await SqliteExecutor("demo", db).run(RunRequest(sneaky, True, Limits(), WHO))


@requirement("inv:sqlite-authorizer", "sql:sqlite-attach-pragma")
async def test_attach_and_dangerous_functions_are_refused_inside_sqlite(db: Path, tmp_path: Path) -> None:
    for text in (f"ATTACH DATABASE '{tmp_path / 'x.db'}' AS x", "SELECT load_extension('x')", "PRAGMA writable_schema = 1"):
        facts = analyse("SELECT 1", "sqlite").statements
        forged = [type(facts[0])(**{**facts[0].__dict__, "text": text})]
        with pytest.raises(QueryRejected):
            await SqliteExecutor("demo", db).run(RunRequest(forged, False, Limits(), WHO))
    assert not (tmp_path / "x.db").exists()


async def test_views_read_their_tables(db: Path) -> None:
    result = await SqliteExecutor("demo", db).run(request("SELECT count(*) FROM order_totals"))
    assert result.rows == [[1000]]


@requirement("inv:one-statement-per-execute")
async def test_two_statements_in_one_execute_are_refused(db: Path) -> None:
    facts = analyse("SELECT 1", "sqlite").statements
    forged = [type(facts[0])(**{**facts[0].__dict__, "text": "SELECT 1; SELECT 2"})]
    with pytest.raises(QueryRejected, match="one statement"):
        await SqliteExecutor("demo", db).run(RunRequest(forged, True, Limits(), WHO))


@requirement("inv:bounded-fetch")
async def test_rows_and_bytes_are_capped(db: Path) -> None:
    result = await SqliteExecutor("demo", db).run(request("SELECT * FROM customers", limits=Limits(max_rows=7)))
    assert result.row_count == 7 and result.truncated
    result = await SqliteExecutor("demo", db).run(request("SELECT * FROM customers", limits=Limits(max_bytes=500)))
    assert 0 < result.row_count < 10 and result.truncated


async def test_a_write_commits_and_reports_rows_changed(db: Path) -> None:
    executor = SqliteExecutor("demo", db)
    result = await executor.run(request("UPDATE orders SET status = 'paid' WHERE id <= 3", read_only=False))
    assert result.row_count == 3
    check = await executor.run(request("SELECT count(*) FROM orders WHERE id <= 3 AND status = 'paid'"))
    assert check.rows == [[3]]


@requirement("inv:statement-timeout")
async def test_a_long_query_stops_at_the_timeout(db: Path) -> None:
    slow = ("WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT count(*) FROM n")
    with pytest.raises(QueryTimeout):
        await SqliteExecutor("demo", db).run(request(slow, limits=Limits(timeout_s=0.3)))


async def test_a_missing_database_file_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(TargetUnavailable, match="does not exist"):
        await SqliteExecutor("gone", tmp_path / "gone.db").run(request("SELECT 1"))


@requirement("inv:sqlite-authorizer")
async def test_a_table_the_facts_only_read_cannot_be_written(db: Path) -> None:
    facts = analyse("UPDATE orders SET status = 'x' WHERE customer_id IN (SELECT id FROM customers)", "sqlite").statements
    forged = [type(facts[0])(**{**facts[0].__dict__, "text": "UPDATE customers SET name = 'pwned'"})]
    with pytest.raises(QueryRejected, match="not authorized"):
        await SqliteExecutor("demo", db).run(RunRequest(forged, False, Limits(), WHO))
