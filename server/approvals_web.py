"""The approvals API and page under /approvals: what both HTTP channels share, and the app that mounts them.

    /approvals/api/...   server/approvals_api.py    JSON; OIDC bearer access tokens, as on /mcp
    /approvals/...       server/approvals_page.py   HTML; browser login (OIDC code flow), session, CSRF

Both list, read and decide through the approvals service every channel calls (tools/approvals.py:
one visibility rule, one status as shown, one way to decide); this module adds what is HTTP's own:
one map from Bastion's approval errors to HTTP statuses (`HTTP_STATUS`), the security headers, and
a hold as the API returns it (`record`).

Without [auth], Bastion cannot tell one approver from another, so both channels answer 404 with an
explanation: approvers then use `bastion approvals` on the gateway's host.
"""

from __future__ import annotations

import html
import logging
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

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
from bastion.store.approvals import Held, HoldStatus
from bastion.tools.approvals import effective_status
from bastion.tools.gateway import Gateway

log = logging.getLogger(__name__)

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


def record(held: Held, identity: Identity, now: datetime, url: str) -> dict[str, Any]:
    """A hold as the API returns it, with what ``identity`` may do about it."""
    why_not = None
    status = effective_status(held, now)
    if status != HoldStatus.PENDING:
        why_not = f"held call `{held.hold_id}` is {status}"
    elif (refused := refusal(identity, held)) is not None:
        why_not = refused.message
    return {**held.as_record(), "status": str(status), "url": url, "can_decide": why_not is None,
            "cannot_decide": why_not}


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


def approvals_app(config: Config, gateway: Gateway, server: object) -> ASGIApp:
    """The app mounted at /approvals: the JSON API under /api and the page beside it."""
    if config.auth is None:
        return SecurityHeaders(disabled_app())
    from bastion.server.approvals_api import api_app
    from bastion.server.approvals_page import page_app

    return SecurityHeaders(Starlette(routes=[
        Mount("/api", app=api_app(config, gateway, server)),
        Mount("", app=page_app(config, gateway)),
    ]))
