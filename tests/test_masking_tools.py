"""tools/masking.py: the catalog cache around the executor, and failing closed without a catalog."""

from __future__ import annotations

import pytest

from bastion.policy import ConnectionPolicy, Limits, analyse
from bastion.policy.errors import TargetUnavailable
from bastion.policy.masking import MaskRules
from bastion.policy.presets import READ_ONLY
from tests.conftest import requirement
from bastion.tools import masking
from bastion.tools.connections import Connection
from bastion.tools.executors.base import ColumnInfo, QueryResult, RunRequest, TableInfo

pytestmark = pytest.mark.anyio
CUSTOMERS = TableInfo("main", "customers", "table", tuple(ColumnInfo(c, "TEXT", True) for c in ("id", "email")))


class FakeExecutor:
    dialect = "sqlite"

    def __init__(self) -> None:
        self.tables = [CUSTOMERS]
        self.reads = 0
        self.down = False

    async def catalog(self) -> list[TableInfo]:
        self.reads += 1
        if self.down:
            raise TargetUnavailable("down")
        return list(self.tables)

    async def run(self, request: RunRequest) -> QueryResult:
        return QueryResult(["id", "email"], [[1, "ada@example.com"]], 1)

    async def close(self) -> None:
        return None


def connection(executor: FakeExecutor) -> Connection:
    rules = MaskRules.build({"main.customers.email": "redact"})
    return Connection("demo", "sqlite", ConnectionPolicy("demo", "sqlite", (READ_ONLY,), "main"), executor,  # type: ignore[arg-type]
                      masking=masking.Masking(rules, b"k"))


def masked(target: Connection, sql: str) -> list[list[object]]:
    statements = analyse(sql, "sqlite").statements
    result = masking.mask_query(target, statements, QueryResult(["id", "email"], [[1, "ada@example.com"]], 1))
    return result.rows


def masked_at_source(target: Connection, sql: str) -> dict[str, str]:
    """Column → masker of the columns the plan masks where the relation is scanned (the fake
    executor does not run the rewritten text, so those come back as it returns them)."""
    statements = analyse(sql, "sqlite").statements
    found = masking.plan_for(target, statements)
    assert found is not None and found.rewrites and found.rewrites[-1] is not None
    result = masking.mask_query(target, statements, QueryResult(["id", "email"], [[1, "ada@example.com"]], 1), found)
    return {name: m["masker"] for name, m in result.masking["columns"].items() if m.get("at") == "source"}


async def test_the_catalog_is_read_once_and_kept() -> None:
    executor = FakeExecutor()
    target = connection(executor)
    await masking.refresh(target, "SELECT id, email FROM customers")
    await masking.refresh(target, "SELECT id, email FROM customers")
    assert executor.reads == 1
    assert masked_at_source(target, "SELECT id, email FROM customers") == {"email": "redact"}


async def test_a_text_naming_an_unknown_relation_reads_the_catalog_again() -> None:
    executor = FakeExecutor()
    target = connection(executor)
    await masking.refresh(target, "SELECT 1")
    executor.tables.append(TableInfo("main", "v", "view", (ColumnInfo("e", "", True),), "CREATE VIEW v AS SELECT email AS e FROM customers"))
    await masking.refresh(target, "SELECT e FROM v")
    assert executor.reads == 2
    assert masked_at_source(target, "SELECT 1 AS id, e FROM v") == {"email": "redact"}
    await masking.refresh(target, "SELECT * FROM sqlite_master")  # system relations never trigger a read
    assert executor.reads == 2


@requirement("mask:fail-closed")
async def test_without_a_catalog_every_output_of_a_sensitive_table_is_masked() -> None:
    executor = FakeExecutor()
    executor.down = True
    target = connection(executor)
    await masking.refresh(target, "SELECT id, email FROM customers")
    assert masked(target, "SELECT id, email FROM customers") == [["[redacted]", "[redacted]"]]
    await masking.refresh(target, "SELECT id, email FROM customers")
    assert executor.reads == 1  # not tried again on every call while the database is down


async def test_a_schema_change_makes_the_next_call_read_the_catalog() -> None:
    executor = FakeExecutor()
    target = connection(executor)
    await masking.refresh(target)
    masked(target, "DROP VIEW IF EXISTS v")
    await masking.refresh(target)
    assert executor.reads == 2


async def test_no_masking_configured_costs_nothing() -> None:
    executor = FakeExecutor()
    target = Connection("demo", "sqlite", ConnectionPolicy("demo", "sqlite", (READ_ONLY,), "main"), executor)  # type: ignore[arg-type]
    await masking.refresh(target, "SELECT email FROM customers")
    assert executor.reads == 0
    assert masking.vet(target, analyse("SELECT email FROM customers WHERE email = 'x'", "sqlite").statements, {},
                       _allow()).allowed


def _allow():  # type: ignore[no-untyped-def]
    from bastion.policy import Decision, Verdict

    return Decision(Verdict.ALLOW, ("r",), "ok", limits=Limits())
