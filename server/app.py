"""The MCP app: the tools over the Gateway (approvers' tools for approvers), the caller's identity per
call (OIDC bearer token, BASTION_TOKEN or the configured one), errors curated for the agent."""

from __future__ import annotations

import functools
import logging
from contextlib import asynccontextmanager
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Annotated, Any, AsyncIterator, Awaitable, Callable, Literal, ParamSpec, TypeAlias, TypeVar, cast

import anyio

from mcp.server import MCPServer, ServerRequestContext
from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.auth.settings import AuthSettings
from mcp.server.context import CallNext, HandlerResult
from mcp.server.mcpserver import AcceptedElicitation, Context, Elicit, ElicitationResult, Resolve
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.request_state import RequestStateSecurity
from mcp.types import CallToolResult, TextContent, ToolAnnotations
from pydantic import BaseModel, Field

from bastion.policy import Identity
from bastion.policy.errors import BastionError
from bastion.server import render
from bastion.server.auth import OidcVerifier, TokenRefused, expired
from bastion.server.build import build_gateway
from bastion.server.config import Config
from bastion.tools.approvals import STATUSES
from bastion.tools.calls import Caller
from bastion.tools.containers import ACTIONS as CONTAINER_ACTIONS, container_call
from bastion.tools.gateway import Gateway

log = logging.getLogger(__name__)
try:
    VERSION = version("agent-bastion")  # the one version: pyproject.toml's, as installed
except PackageNotFoundError:  # a source tree that was never installed
    VERSION = "0+unknown"
SESSION_META_KEY = "io.bastion/session"
# The hold statuses and the container actions, as the tools' schemas list them (Literals built at
# run time; str to a type checker).
if TYPE_CHECKING:
    HoldStatusName: TypeAlias = str
    ContainerActionName: TypeAlias = str
else:
    HoldStatusName = Literal[STATUSES]
    ContainerActionName = Literal[CONTAINER_ACTIONS]

INSTRUCTIONS = (
    "Bastion guards database access. Call list_connections first, describe to see tables, then sql_query. "
    "Every call is checked by policy and recorded; a refusal says which rule refused and what would pass. "
    "Give a one-line `reason` with each query."
)


# The agent's tools declare no output schema: a schema for every field was over half of the whole
# tool listing a model reads on every turn (tests/test_tool_listing.py measures it). They return
# structured content all the same (a CallToolResult carries it), with its fields named in each
# tool's description, and a compact text rendering (server/render.py) for the model to read.
DESCRIBE_PAGE_TABLES = 100  # at most this many tables per describe answer...
DESCRIBE_PAGE_CHARS = 12_000  # ...and about this much text; the rest comes with `offset`


P = ParamSpec("P")
R = TypeVar("R")


def agent_errors(tool: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """The server's edge: a BastionError raised by a tool reaches the agent as a ToolError carrying
    its curated text (code, message, rule, hint: `BastionError.for_agent`), never raw exception text.
    Every tool is registered through it (`create_server`'s ``tool``)."""

    @functools.wraps(tool)
    async def translated(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await tool(*args, **kwargs)
        except BastionError as error:
            raise ToolError(error.for_agent()) from error

    return translated


def _result(text: str, structured: dict[str, Any]) -> CallToolResult:
    return CallToolResult(content=[TextContent(type="text", text=text)], structured_content=structured)


def _page(tables: list[dict[str, Any]], offset: int) -> tuple[list[dict[str, Any]], int | None]:
    """The tables from ``offset`` that fit one answer, and the offset of the next page (None: last)."""
    page: list[dict[str, Any]] = []
    size = 0
    for table in tables[offset:]:
        line = len(render.tables([table], total=1, offset=0, next_offset=None))
        if page and (len(page) >= DESCRIBE_PAGE_TABLES or size + line > DESCRIBE_PAGE_CHARS):
            return page, offset + len(page)
        page.append(table)
        size += line
    return page, None


class Confirmation(BaseModel):
    """What the requester answers when a rule lets them confirm a held call themself."""

    confirm: bool = Field(description="Run it")


def confirmed(answer: Any) -> bool:
    """The requester's answer: accepted with confirm ticked. Declined or cancelled is no."""
    if isinstance(answer, AcceptedElicitation):
        answer = answer.data
    return isinstance(answer, Confirmation) and answer.confirm


async def _ask(ctx: Context, connection: str, text: str, cwd: str | None = None) -> Confirmation | Elicit[Confirmation]:
    """Ask the requester to confirm a call a self_confirm rule would hold; where the client cannot
    be asked (no elicitation capability) the call goes to approvers as usual."""
    capabilities = ctx.client_capabilities
    if capabilities is None or capabilities.elicitation is None:
        return Confirmation(confirm=False)
    server = ctx.mcp_server
    assert isinstance(server, BastionServer)
    gw, caller = server.bastion_context(ctx)
    question = await gw.confirmation_for(caller, connection, text, cwd)
    return Elicit(question, Confirmation) if question else Confirmation(confirm=False)


async def ask_sql(connection: str, sql: str, ctx: Context) -> Confirmation | Elicit[Confirmation]:
    return await _ask(ctx, connection, sql)


async def ask_shell(connection: str, command: str, ctx: Context, cwd: str | None = None) -> Confirmation | Elicit[Confirmation]:
    return await _ask(ctx, connection, command, cwd)


IdentityResolver = Callable[[Context], Identity]
APPROVER_TOOLS = frozenset({"approvals_list", "approval_decide"})


class BastionServer(MCPServer):
    """MCPServer whose tool list depends on the caller: approvers' tools are listed to approvers only.
    The list is filtered by a server middleware (the SDK's public hook for rewriting a result; it
    calls it provisional in 2.x), not by overriding its private list handler."""

    tool_visible: Callable[[Context, str], bool] = staticmethod(lambda ctx, name: True)
    verifier: OidcVerifier | None = None  # with [auth]: the HTTP app records requests that bring no token
    bastion_context: Callable[[Context], tuple[Gateway, Caller]]  # set by create_server

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.middleware.append(self._visible_tools)

    async def _visible_tools(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        result = await call_next(ctx)
        if ctx.method == "tools/list" and isinstance(result, dict):  # the list as it goes on the wire
            context = Context(request_context=ctx, mcp_server=self)
            result["tools"] = [tool for tool in result.get("tools", ()) if self.tool_visible(context, tool["name"])]
        return result


async def record_refusal(gateway: Gateway, refused: TokenRefused) -> None:
    from bastion.server.http import client_address

    await gateway.record_auth_refused(refused.reason, client_address.get(), refused.details)


def client_of(ctx: Context) -> dict[str, str]:
    try:
        params = ctx.session.client_params
        info = params.client_info if params else None
        return {"name": info.name, "version": info.version} if info else {}
    except Exception:  # client info is optional on every era; never fail a call over it
        return {}


def auth_settings(config: Config) -> AuthSettings | None:
    """RFC 9728 protected-resource metadata and the SDK's bearer checks (401/403), from [auth]."""
    if config.auth is None:
        return None
    return AuthSettings(issuer_url=config.auth.issuer, resource_server_url=config.auth.resource,
                        required_scopes=config.auth.required_scopes or None, validate_token_resource=True)


def create_server(config: Config, *, identity_for: IdentityResolver | None = None,
                  gateway: Gateway | None = None, stdio_identity: Identity | None = None) -> MCPServer:
    """The MCP server for ``config``.

    Who calls: on HTTP with [auth], the identity behind the verified bearer token; otherwise
    ``stdio_identity`` (from BASTION_TOKEN) or the configured identity. ``identity_for`` overrides
    all of this (tests).
    """
    configured = stdio_identity or config.identity.to_identity()
    verifier = OidcVerifier(config.auth.token_rules()) if config.auth is not None else None

    def resolve_default(ctx: Context) -> Identity:
        access = get_access_token()
        if access is not None and verifier is not None:
            return verifier.identity(access)
        if expired(configured):
            raise ToolError("[auth_expired] the token in BASTION_TOKEN has expired. "
                            "Restart Bastion with a fresh token in BASTION_TOKEN.")
        return configured

    resolve = identity_for or resolve_default

    @asynccontextmanager
    async def lifespan(server: MCPServer) -> AsyncIterator[Gateway]:
        gw = gateway or build_gateway(config)
        await gw.start()
        if verifier is not None:
            verifier.on_refused = lambda refused: record_refusal(gw, refused)
        try:
            async with anyio.create_task_group() as background:
                background.start_soon(gw.expire_holds)
                yield gw
                background.cancel_scope.cancel()
        finally:
            await gw.shutdown()

    approver_groups = config.approver_groups()
    state_keys = config.request_state_keys()
    mcp = BastionServer("bastion", version=VERSION, instructions=INSTRUCTIONS, lifespan=lifespan,
                        token_verifier=verifier, auth=auth_settings(config),
                        # Replicas behind one load balancer open each other's sealed state ([http] state_key_*).
                        request_state_security=RequestStateSecurity(keys=state_keys) if state_keys else None)
    # The container tool is listed only where a container connection is configured: every other
    # gateway's agents read one tool less on every turn.
    hidden = set() if any(c.kind == "container" for c in config.connections.values()) else {"container"}
    mcp.tool_visible = lambda ctx, name: name not in hidden and (name not in APPROVER_TOOLS
                                                                  or resolve(ctx).in_any(approver_groups))
    mcp.verifier = verifier

    def context(ctx: Context) -> tuple[Gateway, Caller]:
        headers = ctx.headers or {}
        # The lifespan yields the Gateway; tools take the SDK's Context, whose lifespan type defaults to a dict.
        gateway = cast(Gateway, ctx.request_context.lifespan_context)
        # A session id the client chose (request `_meta` key `io.bastion/session`), else the MCP
        # session where there is one (legacy HTTP) or this gateway process (stdio, stateless HTTP),
        # with the person in it: four people calling one gateway are four sessions, not one.
        meta = ctx.request_context.meta or {}
        chosen = meta.get(SESSION_META_KEY) if isinstance(meta, dict) else None
        identity = resolve(ctx)
        base = headers.get("mcp-session-id") or f"process:{gateway.store.instance}"
        session = str(chosen)[:200] if chosen else f"{base}/{identity.subject}"[:300]

        async def progress(elapsed: float, message: str) -> None:
            await ctx.report_progress(elapsed, None, message)  # a no-op unless the client asked for progress

        return gateway, Caller(identity, client_of(ctx), session, progress)

    mcp.bastion_context = context  # for the confirmation resolvers

    def tool(**annotations: Any) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Awaitable[R]]]:
        """Register a tool with its annotations, its errors translated at the edge (`agent_errors`)."""
        def register(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
            mcp.tool(annotations=ToolAnnotations(**annotations))(agent_errors(fn))
            return fn

        return register

    @tool(read_only_hint=True, open_world_hint=False)
    async def list_connections(ctx: Context) -> CallToolResult:
        """Connections you may use, their kind and what their rules allow. Structured: {connections: [{name, kind, description, rules}]}."""
        gw, caller = context(ctx)
        items = await gw.list_connections(caller)
        found = [{k: item[k] for k in ("name", "kind", "description", "rules")} for item in items]
        return _result(render.connections(found), {"connections": found})

    @tool(read_only_hint=True, open_world_hint=False)
    async def describe(connection: str, ctx: Context, table: str | None = None,
                       offset: Annotated[int, Field(ge=0)] = 0) -> CallToolResult:
        """Tables you may read, one line each: columns, types, masked ones marked; `table` for one. Long lists come in pages: the answer names the next `offset`."""
        gw, caller = context(ctx)
        tables = await gw.describe(caller, connection, table)
        every = [{"schema": t.schema, "name": t.name, "kind": t.kind,
                  "columns": [{"name": c.name, "type": c.type, "nullable": c.nullable, **({"masked": c.masked} if c.masked else {})}
                              for c in t.columns]} for t in tables]
        page, next_offset = _page(every, offset)
        text = render.tables(page, total=len(every), offset=offset, next_offset=next_offset)
        return _result(text, {"tables": page, "total": len(every), "next_offset": next_offset})

    @tool(read_only_hint=True, open_world_hint=False, idempotent_hint=True)
    async def check(connection: str, text: str, ctx: Context) -> CallToolResult:
        """Would SQL or a shell command be allowed, held or denied, and why, without running it. Structured: {verdict, rules, reason, hint, facts}."""
        gw, caller = context(ctx)
        outcome = await gw.check(caller, connection, text)
        found = {"verdict": outcome.verdict, "rules": list(outcome.rules), "reason": outcome.reason, "hint": outcome.hint,
                 "facts": outcome.facts}
        return _result(render.check(found), found)

    @tool(read_only_hint=False, destructive_hint=True, idempotent_hint=False, open_world_hint=False)
    async def sql_query(connection: str, sql: str, ctx: Context,
                        reason: Annotated[str | None, Field(description="one line: why you run this")] = None,
                        confirmation: Annotated[ElicitationResult[Confirmation], Resolve(ask_sql)] = None,  # type: ignore[assignment]  # the SDK always fills it; the default only lets it follow `reason`
                        ) -> CallToolResult:
        """Run SQL under the connection's policy. Structured: {columns, rows, row_count, truncated, duration_ms, call_id}."""
        gw, caller = context(ctx)
        done = await gw.sql_query(caller, connection, sql, reason, confirmed=confirmed(confirmation))
        r = done.result
        # A plain dict: the rows are JSON values already (the executor's budget made them so), and
        # validating a thousand rows again would cost more than the query.
        out = {"columns": r.columns, "rows": r.rows, "row_count": r.row_count, "truncated": r.truncated,
               "duration_ms": round(done.duration_ms, 3), "call_id": done.call_id}
        note = f"{r.row_count} row{'s' if r.row_count != 1 else ''}"
        limits = done.decision.limits
        if r.truncated and limits is not None:
            note += f" (truncated at the limit of {limits.max_rows} rows / {limits.max_bytes} bytes)"
        note += render.masking_note(r.masking)
        footer = f"({note}; {out['duration_ms']:g} ms; call_id {done.call_id})"
        return _result(render.table(r.columns, r.rows, footer=footer), out)

    @tool(read_only_hint=False, destructive_hint=True, idempotent_hint=False, open_world_hint=False)
    async def shell_run(connection: str, command: str, ctx: Context,
                        reason: Annotated[str | None, Field(description="one line: why you run this")] = None,
                        cwd: Annotated[str | None, Field(description="directory inside the connection's own")] = None,
                        confirmation: Annotated[ElicitationResult[Confirmation], Resolve(ask_shell)] = None,  # type: ignore[assignment]  # the SDK always fills it; the default only lets it follow `cwd`
                        ) -> CallToolResult:
        """Run a shell command under the connection's policy. Structured: {exit_code, stdout, stderr, truncated, timed_out, duration_ms, call_id}."""
        gw, caller = context(ctx)
        done = await gw.shell_run(caller, connection, command, reason, cwd, confirmed=confirmed(confirmation))
        r = done.result
        out = {"exit_code": r.exit_code, "stdout": r.stdout, "stderr": r.stderr, "truncated": r.truncated,
               "timed_out": r.timed_out, "duration_ms": round(done.duration_ms, 3), "call_id": done.call_id}
        status = "killed at the time limit" if r.timed_out else f"exit {r.exit_code}"
        text = r.stdout + (f"\n[stderr]\n{r.stderr}" if r.stderr else "")
        text += f"\n({status}{'; output truncated' if r.truncated else ''}; {out['duration_ms']:g} ms; call_id {done.call_id})"
        return _result(text, out)

    @tool(read_only_hint=False, destructive_hint=True, idempotent_hint=False, open_world_hint=False)
    async def container(connection: str, action: ContainerActionName, ctx: Context, tail: int = 100,
                        since: str = "", grep: str = "",
                        reason: Annotated[str | None, Field(description="one line: why you run this")] = None,
                        ) -> CallToolResult:
        """Logs, inspect (env values redacted), start/stop/restart (held for approval) of a container connection's container; commands inside it: shell_run. logs takes tail (default 100), since (15m, or a date/time), grep (a text). Structured: {action, output, details, truncated, call_id}."""
        gw, caller = context(ctx)
        done = await container_call(gw, caller, connection, action, tail=tail if action == "logs" else None,
                                    since=since or None, grep=grep or None, reason=reason)
        r = done.result
        out = {"action": r.action, "output": r.output, "details": r.details, "truncated": r.truncated,
               "duration_ms": round(done.duration_ms, 3), "call_id": done.call_id}
        note = f"{'output truncated; ' if r.truncated else ''}{out['duration_ms']:g} ms; call_id {done.call_id}"
        return _result(f"{r.output}\n({note}{render.masking_note(r.masking)})", out)

    @tool(read_only_hint=True, open_world_hint=False)
    async def approvals_list(ctx: Context, status: Annotated[HoldStatusName | None,
                                                             Field(description="null for all")] = "pending",
                             ) -> CallToolResult:
        """Held calls you may decide or asked for: text, requester, reason, rule, impact preview. Structured: {holds: [...]}."""
        gw, caller = context(ctx)
        found = await gw.approvals_list(caller, status)
        return _result(render.holds(found), {"holds": found})

    @tool(read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=False)
    async def approval_decide(hold_id: str, approve: bool, ctx: Context,
                              reason: Annotated[str | None, Field(description="why; required to deny")] = None) -> CallToolResult:
        """Approve or deny a held call (as one of its approvers, not its requester). Structured: the hold, with its new status."""
        gw, caller = context(ctx)
        hold = await gw.approval_decide(caller, hold_id, approve, reason)
        return _result(render.decided(hold), hold)

    return mcp
