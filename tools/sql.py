"""The SQL tool family's guard steps: vet a text, run what was vetted, record the result."""

from __future__ import annotations

from typing import Any

from policy import Verdict, analyse, decide
from tools.calls import Caller
from tools.connections import Connection
from tools.executors.base import QueryResult, RunRequest
from tools.guard import Vetted, fail_closed, scoped


def vet_sql(connection: Connection, caller: Caller, text: str) -> Vetted:
    def vet() -> Vetted:
        analysis = analyse(text, connection.dialect, connection.policy.default_schema)
        decision = decide(caller.identity, connection.policy, analysis)
        # Held calls keep their plan too: once approved, they run what was vetted.
        runnable = decision.verdict is not Verdict.DENY
        return scoped(connection, caller, Vetted(analysis.summary(), decision, analysis.statements if runnable else None))

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


def previewer(connection: Connection, caller: Caller):  # type: ignore[no-untyped-def]
    """The impact preview of a held SQL call, run as the requester's role: EXPLAIN, and for UPDATE,
    DELETE and MERGE a dry run in a transaction that is always rolled back, counting the rows."""
    async def preview(vetted: Vetted) -> dict[str, Any]:
        decision = vetted.decision
        assert decision.limits is not None
        role = vetted.run_as["as"] if vetted.run_as else None
        return await connection.executor.preview(RunRequest(vetted.plan, False, decision.limits, caller.identity, role))

    return preview
