"""The SQL tool family's guard steps: vet a text, run what was vetted, record the result."""

from __future__ import annotations

from typing import Any

from policy import analyse, decide
from tools.calls import Caller
from tools.connections import Connection
from tools.executors.base import QueryResult, RunRequest
from tools.guard import Vetted, fail_closed, scoped


def vet_sql(connection: Connection, caller: Caller, text: str) -> Vetted:
    def vet() -> Vetted:
        analysis = analyse(text, connection.dialect, connection.policy.default_schema)
        decision = decide(caller.identity, connection.policy, analysis)
        return scoped(connection, caller, Vetted(analysis.summary(), decision, analysis.statements if decision.allowed else None))

    return fail_closed(vet)


def runner(connection: Connection, caller: Caller):  # type: ignore[no-untyped-def]
    async def execute(vetted: Vetted) -> QueryResult:
        decision = vetted.decision
        assert decision.limits is not None
        role = vetted.run_as["as"] if vetted.run_as else None
        return await connection.executor.run(RunRequest(vetted.plan, decision.read_only, decision.limits, caller.identity, role))

    return execute


def result_record(result: QueryResult) -> dict[str, Any]:
    return {"result": {"columns": result.columns, "rows": result.rows}, "row_count": result.row_count,
            "truncated": result.truncated}
