"""The approvals JSON API under /approvals/api, for the same OIDC bearer access tokens as /mcp.

    GET  /approvals/api/holds?status=pending&limit=100     holds you may decide or asked for
    GET  /approvals/api/holds/{hold_id}                    one, in full
    POST /approvals/api/holds/{hold_id}/approve            {"reason": "..."}  (optional)
    POST /approvals/api/holds/{hold_id}/deny               {"reason": "..."}  (required)

``status`` is one status, several separated by commas, or ``all``. A vote answers the hold after it.
Errors are ``{"error": {"code", "message", "hint"}}``: 400 bad input or a denial without a reason;
401 no token or a refused one (with ``WWW-Authenticate``; refusals are recorded as ``auth.refused``,
as on /mcp); 403 a missing required scope, not an approver, or the requester themself; 404 no such
hold; 409 not pending any more, or a second vote; 503 the store cannot be used.

Cookies play no part here (a bearer token is never sent by a browser on its own), so the API needs
no CSRF protection; the page does (server/approvals_page.py).
"""

from __future__ import annotations

import json
import logging
from urllib.parse import quote

from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from mcp.server.auth.routes import build_resource_metadata_url
from pydantic import AnyHttpUrl
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from bastion.policy.errors import BastionError, InvalidInput
from bastion.policy.identity import Identity
from bastion.server.approvals_web import STORE_UNAVAILABLE, base_url, error_body, http_status, record
from bastion.server.auth import OidcVerifier
from bastion.server.config import Config
from bastion.store.errors import StoreError
from bastion.tools import approvals
from bastion.tools.gateway import Gateway

log = logging.getLogger(__name__)

MAX_BODY = 16 * 1024


class Refused(Exception):
    """A request answered before it reaches the store: no or a bad token, a missing scope."""

    def __init__(self, status: int, code: str, message: str, hint: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.hint = status, code, message, hint
        self.headers = headers or {}


def verifier_for(config: Config, gateway: Gateway, server: object) -> OidcVerifier:
    """The MCP server's own verifier (its JWKS cache, its `auth.refused` recording), or a new one.

    The MCP app's bearer middleware wraps every route of the HTTP app, this API included: a request
    it has seen is not verified a second time (nor a refusal recorded twice)."""
    existing = getattr(server, "_token_verifier", None)
    if isinstance(existing, OidcVerifier):
        return existing
    from bastion.server.app import record_refusal

    assert config.auth is not None
    verifier = OidcVerifier(config.auth.token_rules())
    verifier.on_refused = lambda refused: record_refusal(gateway, refused)
    return verifier


def api_app(config: Config, gateway: Gateway, server: object) -> Starlette:
    assert config.auth is not None
    auth = config.auth
    verifier = verifier_for(config, gateway, server)
    store = gateway.approvals
    base = base_url(config)
    metadata = str(build_resource_metadata_url(AnyHttpUrl(auth.resource)))
    get_token = f"Present an access token from {auth.issuer} for {auth.resource}, as for /mcp."

    def link(hold_id: str) -> str:
        return f"{base}/approvals/{quote(hold_id, safe='')}"

    async def authenticate(request: Request) -> Identity:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Refused(401, "unauthenticated", "a bearer token is required", get_token,
                          {"www-authenticate": f'Bearer resource_metadata="{metadata}"'})
        user = request.scope.get("user")
        if isinstance(user, AuthenticatedUser):  # the MCP app's bearer middleware, around us too, verified it
            access: AccessToken | None = user.access_token
        elif "user" in request.scope:  # ... or refused it, and recorded that (auth.refused) once
            access = None
        else:
            access = await verifier.verify_token(token.strip())  # records a refusal as auth.refused
        if access is None:
            raise Refused(401, "invalid_token", "the bearer token was refused (invalid, expired, or not for Bastion)",
                          get_token, {"www-authenticate": 'Bearer error="invalid_token", error_description='
                                                          f'"the token was refused", resource_metadata="{metadata}"'})
        missing = [s for s in auth.required_scopes if s not in access.scopes]
        if missing:
            raise Refused(403, "insufficient_scope", f"the token lacks the scope `{missing[0]}`",
                          f"Ask for a token with the scopes {' '.join(auth.required_scopes)}.",
                          {"www-authenticate": f'Bearer error="insufficient_scope", scope="{" ".join(auth.required_scopes)}", '
                                               f'resource_metadata="{metadata}"'})
        return verifier.identity(access)

    async def holds(request: Request) -> Response:
        identity = await authenticate(request)
        statuses = _statuses(request.query_params.get("status", "pending"))
        limit = _limit(request.query_params.get("limit", str(approvals.LIST_LIMIT)))
        found = await approvals.list_visible(store, identity, statuses, limit)
        now = store.clock()
        return JSONResponse({"holds": [record(h, identity, now, link(h.hold_id)) for h in found]})

    async def hold(request: Request) -> Response:
        identity = await authenticate(request)
        held = await approvals.load_visible(store, identity, request.path_params["hold_id"])
        return JSONResponse(record(held, identity, store.clock(), link(held.hold_id)))

    async def vote(request: Request, approve: bool) -> Response:
        identity = await authenticate(request)
        reason = await _reason(request)
        held = await approvals.decide(store, identity, request.path_params["hold_id"], approve, reason)
        return JSONResponse(record(held, identity, store.clock(), link(held.hold_id)))

    async def approve(request: Request) -> Response:
        return await vote(request, True)

    async def deny(request: Request) -> Response:
        return await vote(request, False)

    return Starlette(
        routes=[
            Route("/holds", holds, methods=["GET"]),
            Route("/holds/{hold_id}", hold, methods=["GET"]),
            Route("/holds/{hold_id}/approve", approve, methods=["POST"]),
            Route("/holds/{hold_id}/deny", deny, methods=["POST"]),
        ],
        exception_handlers={Refused: _refused, BastionError: _bastion_error, StoreError: _store_error,
                            HTTPException: _http_error, Exception: _internal_error},
    )


def _statuses(raw: str) -> set[str] | None:
    """``all`` (None), or statuses separated by commas (the service refuses one that is not a status)."""
    if raw.strip() == "all":
        return None
    return {part.strip() for part in raw.split(",") if part.strip()} or {raw}


def _limit(raw: str) -> int:
    try:
        limit = int(raw)
    except ValueError:
        limit = 0
    if not 1 <= limit <= 1000:
        raise InvalidInput(f"limit `{raw}` is not a number from 1 to 1000")
    return limit


async def _reason(request: Request) -> str | None:
    """The ``reason`` of a vote's JSON body (an empty body is no reason)."""
    raw = await request.body()
    if len(raw) > MAX_BODY:
        raise InvalidInput(f"the body is {len(raw)} bytes", hint=f"Send at most {MAX_BODY} bytes.")
    if not raw.strip():
        return None
    shape = 'Send a JSON object such as {"reason": "checked with the team"}.'
    try:
        body = json.loads(raw)
    except ValueError:
        raise InvalidInput("the body is not JSON", hint=shape) from None
    if not isinstance(body, dict):
        raise InvalidInput("the body is not a JSON object", hint=shape)
    unknown = sorted(set(body) - {"reason"})
    if unknown:
        raise InvalidInput(f"unknown field `{unknown[0]}`", hint=shape)
    reason = body.get("reason")
    if reason is not None and not isinstance(reason, str):
        raise InvalidInput("`reason` must be a string", hint=shape)
    return reason


def _json_error(status: int, code: str, message: str, hint: str | None = None,
                headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(code, message, hint), status_code=status, headers=headers)


async def _refused(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, Refused)
    return _json_error(exc.status, exc.code, exc.message, exc.hint, exc.headers)


async def _bastion_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, BastionError)
    return _json_error(http_status(exc), exc.code, exc.message, exc.hint)


async def _store_error(request: Request, exc: Exception) -> Response:
    log.error("approvals API: %s", exc)
    return _json_error(503, *STORE_UNAVAILABLE)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    hint = "See docs/approvals.md for the endpoints." if exc.status_code in (404, 405) else None
    return _json_error(exc.status_code, code, str(exc.detail), hint, dict(exc.headers or {}))


async def _internal_error(request: Request, exc: Exception) -> Response:
    log.exception("approvals API failed", exc_info=exc)  # the raw text stays in the log
    return _json_error(500, "internal_error", "the approvals API failed",
                       "See the gateway's log; read the hold again to see whether a vote was recorded.")
