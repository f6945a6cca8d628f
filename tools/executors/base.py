"""The interface every SQL executor implements, and the result it returns."""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import uuid
from dataclasses import dataclass, field
from collections.abc import Callable, Mapping
from typing import Any, Protocol, Sequence, TypeGuard

from bastion.policy import Identity, Kind, Limits, Statement
from bastion.policy.sql.catalog import FunctionCatalog


@dataclass
class QueryResult:
    columns: list[str]
    rows: list[list[Any]]
    # Rows returned, or rows affected when the last statement returns none.
    row_count: int
    truncated: bool = False
    statements: int = 1
    # What masking did (columns masked by which rule, detections per kind), never a value.
    masking: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ColumnInfo:
    name: str
    type: str
    nullable: bool
    masked: str | None = None  # the masker that applies to it (describe), where masking is configured


@dataclass(frozen=True)
class TableInfo:
    schema: str
    name: str
    kind: str  # table | view | materialized view | foreign table
    columns: tuple[ColumnInfo, ...] = field(default_factory=tuple)
    definition: str | None = None  # a view's SQL, which masking follows to the columns it reads
    # Its inheritance parents and partitioned tables, at any depth (schema.name): a mask on one
    # of them masks the same column here, or reading the child would bypass it.
    ancestors: tuple[str, ...] = ()

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"


@dataclass(frozen=True)
class RunRequest:
    """What the guard decided may run: the parsed statements and how to bound them."""

    statements: Sequence[Statement]
    read_only: bool
    limits: Limits
    identity: Identity
    # The database role to run as (PostgreSQL `SET LOCAL ROLE`); None runs as the gateway's login.
    role: str | None = None
    # Masking at the source: per statement, the bind parameters its rewritten text takes (PostgreSQL,
    # psycopg `%(name)s`; None: none, run as plain text); SQLite functions the rewritten texts call.
    params: Sequence[Mapping[str, Any] | None] = ()
    functions: Mapping[str, Callable[[Any], Any]] | None = None


# Impact previews of held statements (approvers see them). A dry run happens inside a transaction
# that is always rolled back, so only statements whose effects stay inside it get one: not INSERT
# (sequence values it draws are gone for good), not DDL (locks, and some DDL cannot roll back).
EXPLAINED = frozenset({Kind.SELECT, Kind.INSERT, Kind.UPDATE, Kind.DELETE, Kind.MERGE})
DRY_RUN = frozenset({Kind.UPDATE, Kind.DELETE, Kind.MERGE})
NO_DRY_RUN = {
    Kind.INSERT: "not dry-run: sequence values an INSERT draws are not given back by a rollback",
}
PREVIEW_TIMEOUT_S = 10.0


def no_dry_run_reason(kind: Kind) -> str:
    return NO_DRY_RUN.get(kind, f"not dry-run: the effects of {kind.value.upper()} may escape a rolled-back transaction")


class SqlExecutor(Protocol):
    dialect: str

    async def run(self, request: RunRequest) -> QueryResult: ...

    async def preview(self, request: RunRequest) -> dict[str, Any]:
        """EXPLAIN each statement, and dry-run those in DRY_RUN inside a rolled-back transaction:
        ``{"statements": [{"kind", "plan", "rows"} | {"kind", "plan", "dry_run"}]}``."""
        ...

    async def catalog(self) -> list[TableInfo]: ...

    async def close(self) -> None: ...


class FunctionReadingExecutor(SqlExecutor, Protocol):
    """An executor that reads the database's functions, operators and types (PostgreSQL's): calls
    are judged against them (tools/sql.py)."""

    functions: FunctionCatalog | None

    def functions_stale(self, unresolved: bool = False) -> bool: ...

    async def refresh_functions(self, unresolved: bool = False) -> FunctionCatalog | None: ...


def reads_functions(executor: SqlExecutor) -> TypeGuard[FunctionReadingExecutor]:
    return hasattr(executor, "refresh_functions")


_JSON_ALREADY = frozenset({str, int, bool, type(None)})


class RowBudget:
    """Counts rows and an estimate of their JSON size against the limits."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.rows: list[list[Any]] = []
        self.bytes = 0
        self.truncated = False

    def take(self, batch: Sequence[Sequence[Any]]) -> bool:
        """Add a fetched batch; False when there is nothing more to fetch (empty or budget spent)."""
        for row in batch:
            if not self.add(row):
                return False
        return bool(batch)

    def add(self, row: Sequence[Any]) -> bool:
        """Add one row; False (and truncated) once the next row would exceed a limit."""
        if len(self.rows) >= self.limits.max_rows:
            self.truncated = True
            return False
        # Text, integers and NULL are JSON already: only the rest goes through json_value (1,000 rows a call).
        values = [v if type(v) in _JSON_ALREADY else json_value(v) for v in row]
        size = sum(map(len, map(str, values))) + 3 * len(values) + 2
        if self.bytes + size > self.limits.max_bytes:
            self.truncated = True
            return False
        self.rows.append(values)
        self.bytes += size
        return True

    def result(self, columns: list[str]) -> QueryResult:
        return QueryResult(columns, self.rows, len(self.rows), self.truncated)


def json_value(value: Any) -> Any:
    """A database value as JSON: exact decimals and times as strings, bytes as base64."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if value == value and value not in (float("inf"), float("-inf")) else str(value)
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return "base64:" + base64.b64encode(bytes(value)).decode()
    if isinstance(value, (list, tuple)):
        return [json_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): json_value(v) for k, v in value.items()}
    if isinstance(value, (uuid.UUID, dt.timedelta)):
        return str(value)
    return str(value)
