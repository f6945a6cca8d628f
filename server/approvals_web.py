"""The approvals API and page under /approvals: what both channels share, and the app that mounts them.

    /approvals/api/...   server/approvals_api.py    JSON; OIDC bearer access tokens, as on /mcp
    /approvals/...       server/approvals_page.py   HTML; browser login (OIDC code flow), session, CSRF

Both read and decide through the gateway's ApprovalStore (store/approvals.py) with one visibility
rule (`visible`), one way to decide (`decide_as`: policy's `refusal` first for a clear message, then
the store, which checks everything again inside its transaction) and one map from Bastion's
approval errors to HTTP statuses (`HTTP_STATUS`).

Without [auth], Bastion cannot tell one approver from another, so both channels answer 404 with an
explanation: approvers then use `bastion approvals` on the gateway's host.
"""

from __future__ import annotations

import functools
import html
import logging
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from bastion.policy.approvals import refusal
from bastion.policy.errors import (AlreadyVoted, BastionError, HoldClosed, HoldNotFound, InvalidInput, NotAllowedToDecide,
                           ReasonRequired, SelfApproval)
from bastion.policy.identity import Identity
from bastion.server.config import Config
from bastion.store.approvals import ApprovalStore, Held, HoldStatus
from bastion.tools.approvals import concerns

log = logging.getLogger(__name__)

MAX_REASON = 2000  # characters of an approver's reason
LIST_SCAN = 1000  # holds read per listing, before the visibility filter

# Every ApprovalError class has its own entry (a test fails when one is missing): a new subclass
# must be placed on purpose, not inherit its parent's status by accident.
HTTP_STATUS: dict[type[BastionError], int] = {
    InvalidInput: 400,
    ReasonRequired: 400,         # a denial must say why
    NotAllowedToDecide: 403,     # in none of the hold's approver groups
    SelfApproval: 403,           # the requester themself
    HoldNotFound: 404,
    HoldClosed: 409,             # approved, denied, expired or used already
    AlreadyVoted: 409,           # one vote per approver; the hold waits for someone else
}

# Headers on every response under /approvals. No script runs on the page at all; forms post only
# to this origin; no other site may frame it (the buttons could be clickjacked otherwise).
SECURITY_HEADERS = {
    "content-security-policy": "default-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "same-origin",
}


def base_url(config: Config) -> str:
    """Where approvers' browsers reach Bastion, without a trailing slash: [approvals] base_url, else
    the origin of [auth] resource. The same as the notices' links (server/build.py)."""
    from bastion.server.build import approvals_base_url

    return approvals_base_url(config)


def origin(url: str) -> str:
    """``scheme://host[:port]`` of a URL, lower-cased, as browsers send it in Origin."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def http_status(error: BaseException) -> int:
    for cls in type(error).__mro__:
        if cls in HTTP_STATUS:
            return HTTP_STATUS[cls]
    return 500


def error_body(code: str, message: str, hint: str | None = None) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "hint": hint}}


# A StoreError (the database could not be read or written) is answered 503 by each channel.
STORE_UNAVAILABLE = ("store_unavailable", "the approvals store could not be read or written",
                     "Nothing was decided. Try again; if it persists, see the gateway's log.")


# -- one rule for all channels --------------------------------------------------------------------

def visible(identity: Identity, held: Held) -> bool:
    """Who may see a hold: its requester, and the members of its approver groups (the rule every
    channel shares, tools/approvals.py)."""
    return concerns(held, identity)


def effective_status(held: Held, now: datetime) -> str:
    """The status to show: a live hold past its expiry is expired, whether or not the store has
    marked it yet (reading never writes; the store expires it the next time anything touches it)."""
    if held.status in (HoldStatus.PENDING, HoldStatus.APPROVED) and _moment(held.expires_at) <= now:
        return str(HoldStatus.EXPIRED)
    return str(held.status)


def _moment(iso: str) -> datetime:
    moment = datetime.fromisoformat(iso)
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def record(held: Held, identity: Identity, now: datetime, url: str) -> dict[str, Any]:
    """A hold as the API returns it, with what ``identity`` may do about it."""
    why_not = None
    status = effective_status(held, now)
    if status != HoldStatus.PENDING:
        why_not = f"held call `{held.hold_id}` is {status}"
    elif (refused := refusal(identity, held)) is not None:
        why_not = refused.message
    return {**held.as_record(), "status": status, "url": url, "can_decide": why_not is None,
            "cannot_decide": why_not}


async def list_visible(store: ApprovalStore, identity: Identity, statuses: set[str]) -> list[Held]:
    """The holds ``identity`` may see whose effective status is in ``statuses``, newest first.
    StoreError when the store cannot be read (as `load_visible` and `decide_as`)."""
    wanted = set(statuses)
    if HoldStatus.EXPIRED in wanted:  # overdue holds the store has not marked yet are still stored live
        wanted |= {HoldStatus.PENDING, HoldStatus.APPROVED}
    holds = await anyio.to_thread.run_sync(functools.partial(store.list, sorted(wanted), limit=LIST_SCAN))
    now = store.clock()
    return [h for h in holds if visible(identity, h) and effective_status(h, now) in statuses]


async def load_visible(store: ApprovalStore, identity: Identity, hold_id: str) -> Held:
    """The hold, if ``identity`` may see it; else HoldNotFound or NotAllowedToDecide."""
    held = await anyio.to_thread.run_sync(store.get, hold_id)
    if held is None:
        raise HoldNotFound(f"there is no held call `{hold_id}`",
                           hint="The list of held calls shows the ids you may see.")
    if not visible(identity, held):
        groups = ", ".join(f"`{g}`" for g in held.approver_groups)
        raise NotAllowedToDecide(f"`{identity.subject}` is not in an approver group of held call `{hold_id}`",
                                 hint=f"Only its requester and members of {groups} may see it.")
    return held


async def decide_as(store: ApprovalStore, identity: Identity, hold_id: str, approve: bool,
                    reason: str | None) -> Held:
    """Vote on a hold as ``identity``; returns the hold after the vote, or raises the ApprovalError
    that explains the refusal (nothing is recorded then)."""
    reason = (reason or "").strip() or None
    if reason is not None and len(reason) > MAX_REASON:
        raise InvalidInput(f"the reason is {len(reason)} characters long", hint=f"Keep it under {MAX_REASON}.")
    held = await load_visible(store, identity, hold_id)
    refused = refusal(identity, held)  # the clear message first; the store checks again in its transaction
    if refused is not None:
        raise refused
    if not approve and reason is None:
        raise ReasonRequired(f"a denial of held call `{hold_id}` needs a reason",
                             hint="Say why, so the requester knows what would pass instead.")
    return await anyio.to_thread.run_sync(functools.partial(store.decide, hold_id, identity, approve, reason))


# -- the app --------------------------------------------------------------------------------------

class SecurityHeaders:
    """ASGI middleware: `SECURITY_HEADERS` on every response, and ``cache-control: no-store`` on
    every response that sets no cache-control of its own (held calls are not for caches)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                extra = {**SECURITY_HEADERS, "cache-control": "no-store"}
                headers += [(k.encode(), v.encode()) for k, v in extra.items() if k.encode() not in present]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


DISABLED = ("The approvals page and API need OIDC authentication ([auth] in the config): without it "
            "Bastion cannot tell one approver from another.")
DISABLED_HINT = "Configure [auth], or decide held calls on the gateway's host with `bastion approvals`."


def disabled_app() -> Starlette:
    """Without [auth]: 404 everywhere under /approvals, saying why and what to use instead."""

    async def explain(request: Request) -> Response:
        if request.url.path.rstrip("/").endswith("/api") or "/api/" in request.url.path:
            return JSONResponse(error_body("approvals_disabled", DISABLED, DISABLED_HINT), status_code=404)
        return HTMLResponse(
            "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Approvals are not enabled</title>"
            f"</head><body><main id=\"disabled\"><h1>Approvals are not enabled here</h1><p>{html.escape(DISABLED)}</p>"
            f"<p>{html.escape(DISABLED_HINT)}</p></main></body></html>", status_code=404)

    methods = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
    return Starlette(routes=[Route("/", explain, methods=methods), Route("/{rest:path}", explain, methods=methods)])


def approvals_app(config: Config, gateway: Any, server: Any) -> ASGIApp:
    """The app mounted at /approvals: the JSON API under /api and the page beside it."""
    if config.auth is None:
        return SecurityHeaders(disabled_app())
    from bastion.server.approvals_api import api_app
    from bastion.server.approvals_page import page_app

    return SecurityHeaders(Starlette(routes=[
        Mount("/api", app=api_app(config, gateway, server)),
        Mount("", app=page_app(config, gateway)),
    ]))
