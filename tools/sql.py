"""The SQL tool family's guard steps: vet a text, run what was vetted, record the result."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from bastion.policy import Decision, Verdict, analyse, decide
from bastion.policy.errors import ExecutionError, InvalidInput
from bastion.policy.sql.catalog import FunctionCatalog
from bastion.store import events as ev
from bastion.tools import masking
from bastion.tools.calls import Caller
from bastion.tools.connections import Connection
from bastion.tools.executors.base import QueryResult, RunRequest, reads_functions
from bastion.tools.guard import Vetted, fail_closed, scoped, validate_text
from bastion.tools.offload import parsing


async def prepare(connection: Connection, text: str | None = None) -> None:
    """Bring what the guard reads from the database up to date before ``text`` is vetted: the
    catalog masking follows, and the functions, operators and types every call is judged against.
    A text the guard will refuse unread (oversize, empty, NUL) is not parsed here either: a 1 MB
    text took a minute to parse, on the event loop, before being refused for its size."""
    if text is not None:
        try:
            validate_text(text)
        except InvalidInput:
            text = None
    await masking.refresh(connection, text)
    executor = connection.executor
    if not reads_functions(executor):
        return
    unresolved = False
    if text is not None and executor.functions is not None and not executor.functions_stale():
        functions = executor.functions
        unresolved = await parsing(text, lambda: _names_unresolved(connection, functions, text))
    await executor.refresh_functions(unresolved)


def _names_unresolved(connection: Connection, known: FunctionCatalog, text: str) -> bool:
    """Whether ``text`` names a function or relation the catalog held does not know (created since)."""
    try:
        analysis = analyse(text, connection.dialect, connection.policy.default_schema)
        return any(known.resolve(ref) is None for s in analysis.statements for ref in s.calls) or any(
            known.relation(name, True) not in known.relations for s in analysis.statements for name in s.unqualified)
    except Exception:  # the guard reports it when it vets the text
        return False


def _functions(connection: Connection) -> tuple[FunctionCatalog | None, bool]:
    """The function catalog to judge by, and whether one is required but missing (fail closed)."""
    executor = connection.executor
    if not reads_functions(executor):
        return None, False
    return executor.functions, executor.functions is None


def vet_sql(connection: Connection, caller: Caller, text: str) -> Vetted:
    def vet() -> Vetted:
        analysis = analyse(text, connection.dialect, connection.policy.default_schema)
        facts = analysis.summary()
        functions, missing = _functions(connection)
        if missing:
            return Vetted(facts, Decision.deny("guard:function-catalog",
                                               f"the functions of connection `{connection.name}` could not be read from the database, "
                                               "so no call can be judged",
                                               hint="Try again shortly; if it persists, tell the gateway's operator (the database may be down)."))
        decision = decide(caller.identity, connection.policy, analysis, functions)
        # How masked columns are used (inference channels, write flows) can deny or hold it too.
        decision = masking.vet(connection, analysis.statements, facts, decision)
        # Held calls keep their plan too: once approved, they run what was vetted.
        runnable = decision.verdict is not Verdict.DENY
        return scoped(connection, caller, Vetted(facts, decision, analysis.statements if runnable else None))

    return fail_closed(vet)


def runner(connection: Connection, caller: Caller) -> Callable[[Vetted], Awaitable[QueryResult]]:
    async def execute(vetted: Vetted) -> QueryResult:
        decision = vetted.decision
        assert decision.limits is not None
        role = vetted.run_as["as"] if vetted.run_as else None
        # Masked columns masked where they are scanned: the executor runs the rewritten reads.
        found = masking.plan_for(connection, vetted.plan)
        run = masking.at_source(connection, vetted.plan, found)
        try:
            result = await connection.executor.run(RunRequest(run.statements, decision.read_only, decision.limits,
                                                              caller.identity, role, run.params, run.functions))
        except ExecutionError as error:
            # A database error can quote a masked value: masked before the agent or the log sees it.
            raise masking.mask_error(connection, error) from error
        # ⑥ Masked before anything records or returns it: the agent and the log see the same rows.
        return masking.mask_query(connection, vetted.plan, result, found)

    return execute


def result_record(result: QueryResult) -> ev.Outcome:
    body: dict[str, Any] = {"columns": result.columns, "rows": result.rows}
    if result.masking:  # which columns were masked by which rule, detections per kind; never a value
        body["masking"] = result.masking
    return {"result": body, "row_count": result.row_count, "truncated": result.truncated}


def previewer(connection: Connection, caller: Caller) -> Callable[[Vetted], Awaitable[dict[str, Any]]]:
    """The impact preview of a held SQL call, run as the requester's role: EXPLAIN, and for UPDATE,
    DELETE and MERGE a dry run in a transaction that is always rolled back, counting the rows."""
    async def preview(vetted: Vetted) -> dict[str, Any]:
        decision = vetted.decision
        assert decision.limits is not None
        role = vetted.run_as["as"] if vetted.run_as else None
        try:
            return await connection.executor.preview(RunRequest(vetted.plan, False, decision.limits, caller.identity, role))
        except ExecutionError as error:
            raise masking.mask_error(connection, error) from error

    return preview
