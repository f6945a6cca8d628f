"""The approvals page under /approvals/: held calls in a browser, for approvers who sign in with OIDC.

    GET  /approvals/                      held calls waiting for you (and your own, waiting for others)
    GET  /approvals/{hold_id}             one held call in full, with its votes
    POST /approvals/{hold_id}/approve     form fields: csrf, reason (optional)
    POST /approvals/{hold_id}/deny        form fields: csrf, reason (required)
    GET  /approvals/login?next=...        starts the sign-in
    GET  /approvals/callback              the redirect URI registered at the identity provider
    GET  /approvals/logout                a page with the sign-out button; POST signs out
    GET  /approvals/static/approvals.css  the one style sheet

Sign-in is the OIDC authorization-code flow with PKCE (S256) through authlib's Starlette client,
as the confidential client [approvals] web_client_id (its secret by reference). The approver is
the identity in the id_token's claims (`identity_from_claims`: [auth] groups_claim applies),
checked by authlib against the issuer's keys, this client id and the nonce.

The session is a cookie signed with itsdangerous (Starlette's SessionMiddleware): HttpOnly,
SameSite=Lax, Secure when the base URL is https, path /approvals, ending `SESSION_LIFETIME_S`
after sign-in. It holds the approver's subject, groups, e-mail and name, the CSRF token, and during
sign-in authlib's state, nonce and PKCE verifier; never a token.

Every POST must carry the session's CSRF token in the hidden field ``csrf`` (compared with
`hmac.compare_digest`) and come from this origin (Origin, else Referer, equal to the base URL's);
otherwise it is answered 403 and nothing is decided. The page runs no script at all: the CSP
(server/approvals_web.py) forbids every script, inline style and foreign form target. The markup is
in Jinja2 templates (server/templates/approvals/) with autoescaping: every value shown is escaped.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import secrets
import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any
from pathlib import Path
from urllib.parse import quote, urlsplit

import httpx
from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup
from authlib.integrations.starlette_client import OAuth, OAuthError
from joserfc.errors import JoseError
from starlette.applications import Starlette
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from bastion.policy.approvals import refusal
from bastion.policy.errors import BastionError, ConfigError, SelfApproval
from bastion.policy.identity import Identity
from bastion.server.approvals_web import STORE_UNAVAILABLE, base_url, http_status, origin
from bastion.server.auth import identity_from_claims
from bastion.server.config import Config
from bastion.store.approvals import HoldStatus
from bastion.store.errors import StoreError
from bastion.tools.approvals import LIST_SCAN, MAX_REASON, decide, effective_status, list_visible, load_visible
from bastion.tools.gateway import Gateway

log = logging.getLogger(__name__)

SESSION_COOKIE = "bastion_approvals"
SESSION_LIFETIME_S = 3600  # then sign in again (group changes at the identity provider apply then)
SCOPE = "openid profile email"


# -- configuration (secrets by reference) ---------------------------------------------------------

def client_secret(config: Config) -> str | None:
    """The page's OIDC client secret from [approvals] web_client_secret_env or _file; None: a public client."""
    approvals = config.approvals
    return config.secret("approvals", "web_client_secret_env", approvals.web_client_secret_env,
                         "web_client_secret_file", approvals.web_client_secret_file)


def session_key(config: Config) -> str:
    """The key signing session cookies, from [approvals] session_secret_env; unset: a random key of
    this process (sign-ins end at a restart and are not shared between replicas), with a warning."""
    name = config.approvals.session_secret_env
    if name is None:
        log.warning("approvals.session_secret_env is not set: the approvals page signs its session cookies with a "
                    "random key of this process, so sign-ins end when it restarts and do not carry over to other "
                    "gateway processes")
        return secrets.token_urlsafe(32)
    value = os.environ.get(name, "")
    if len(value) < 32:
        raise ConfigError(f"{config.source}: approvals.session_secret_env: the environment variable `{name}` is "
                          + ("not set" if not value else "shorter than 32 characters"),
                          hint="Generate one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'")
    return value


def oauth_client(config: Config) -> Any:
    """authlib's Starlette client for the page's sign-in, or None when web_client_id is not set."""
    approvals, auth = config.approvals, config.auth
    if approvals.web_client_id is None or auth is None:
        return None
    secret = client_secret(config)
    oauth = OAuth()
    return oauth.register(
        name="bastion", client_id=approvals.web_client_id, client_secret=secret,
        server_metadata_url=auth.issuer.rstrip("/") + "/.well-known/openid-configuration",
        client_kwargs={"scope": SCOPE, "code_challenge_method": "S256",
                       "token_endpoint_auth_method": "client_secret_basic" if secret else "none"})


# -- the page --------------------------------------------------------------------------------------

class Page:
    def __init__(self, config: Config, gateway: Gateway) -> None:
        assert config.auth is not None
        self.config = config
        self.gateway = gateway
        self.store = gateway.approvals
        self.base = base_url(config)
        self.origin = origin(self.base)
        self.root = urlsplit(self.base).path.rstrip("/") + "/approvals"  # our paths as the browser sees them
        self.rules = config.auth.token_rules()
        self.issuer = config.auth.issuer
        self.client = oauth_client(config)
        self.redirect_uri = f"{self.base}/approvals/callback"

    # -- who is signed in ---------------------------------------------------------------------------

    def user(self, request: Request) -> Identity | None:
        user = request.session.get("user")
        if not isinstance(user, dict) or not isinstance(user.get("at"), (int, float)):
            return None
        if time.time() - user["at"] > SESSION_LIFETIME_S:
            return None
        return Identity(str(user["subject"]), frozenset(user.get("groups") or ()), user.get("email"), user.get("name"),
                        source="oidc")

    def csrf(self, request: Request) -> str:
        return str(request.session.get("csrf", ""))

    def forged(self, request: Request, form: FormData) -> str | None:
        """Why a POST cannot be trusted to come from this page, or None when it can."""
        sent_origin = request.headers.get("origin")
        if sent_origin is not None:
            if sent_origin.lower() != self.origin:
                return f"it came from another origin (`{sent_origin}`)"
        else:
            referer = request.headers.get("referer")
            if not referer or origin(referer) != self.origin:
                return "it names no origin (neither Origin nor Referer is this site)"
        expected, sent = request.session.get("csrf"), form.get("csrf")
        if not isinstance(expected, str) or not expected or not isinstance(sent, str) \
                or not hmac.compare_digest(sent.encode(), expected.encode()):
            return "its form token is missing or wrong"
        return None

    def safe_next(self, value: Any) -> str:
        """Where to go after sign-in: a path of this page only (never another site)."""
        if isinstance(value, str) and value.startswith(self.root + "/") and "//" not in value and "\\" not in value:
            return value
        return self.root + "/"

    def hold_url(self, hold_id: str) -> str:
        return f"{self.root}/{quote(hold_id, safe='')}"

    # -- pages --------------------------------------------------------------------------------------

    async def index(self, request: Request) -> Response:
        identity = self.user(request)
        if identity is None:
            return self.sign_in_first(self.root + "/")
        holds = await list_visible(self.store, identity, [HoldStatus.PENDING], limit=LIST_SCAN)
        now = self.store.clock()
        mine = [h for h in holds if isinstance(refusal(identity, h), SelfApproval)]
        theirs = [h for h in holds if h not in mine]
        return self.render(request, "index.html", "Held calls", identity, theirs=theirs, mine=mine, now=now,
                           flash=request.session.pop("flash", None))

    async def detail(self, request: Request) -> Response:
        hold_id = request.path_params["hold_id"]
        identity = self.user(request)
        if identity is None:
            return self.sign_in_first(self.hold_url(hold_id))
        try:
            held = await load_visible(self.store, identity, hold_id)
        except BastionError as error:
            return self.failed(request, error, identity)
        return self.render(request, "detail.html", f"Held call {hold_id}", identity, held=held, now=self.store.clock(),
                           flash=request.session.pop("flash", None))

    async def vote(self, request: Request, approve: bool) -> Response:
        hold_id = request.path_params["hold_id"]
        form = await request.form(max_files=0, max_fields=10)
        identity = self.user(request)
        why = self.forged(request, form)
        if why is not None:
            log.warning("approvals page: refused a POST to %s: %s", request.url.path, why)
            return self.message(request, 403, "Refused: this form did not come from this page",
                                f"Bastion refused the request: {why}. Nothing was decided.",
                                "Open the page again and use its buttons.", identity, code="csrf")
        if identity is None:
            return self.message(request, 403, "Your sign-in has ended", "Nothing was decided.",
                                "Sign in again, then decide.", None, code="signed_out")
        reason = form.get("reason")
        try:
            held = await decide(self.store, identity, hold_id, approve, reason if isinstance(reason, str) else None)
        except BastionError as error:
            return self.failed(request, error, identity)
        verb = "approved" if approve else "denied"
        request.session["flash"] = f"You {verb} held call {hold_id}: it is now {held.status}."
        return RedirectResponse(self.hold_url(hold_id), status_code=303)

    async def approve(self, request: Request) -> Response:
        return await self.vote(request, True)

    async def deny(self, request: Request) -> Response:
        return await self.vote(request, False)

    # -- sign-in ------------------------------------------------------------------------------------

    def sign_in_first(self, next_path: str) -> Response:
        if self.client is None:
            return self.not_configured()
        return RedirectResponse(f"{self.root}/login?next={quote(next_path, safe='')}", status_code=303)

    async def login(self, request: Request) -> Response:
        if self.client is None:
            return self.not_configured()
        request.session["next"] = self.safe_next(request.query_params.get("next"))
        try:
            response: Response = await self.client.authorize_redirect(request, self.redirect_uri)
        except (httpx.HTTPError, ValueError, KeyError, RuntimeError) as error:
            log.warning("approvals page: the identity provider's discovery failed: %s", error)
            return self.message(request, 502, "The identity provider could not be reached",
                                f"Bastion could not read {self.issuer}'s OIDC discovery document.",
                                "Try again in a moment.", None, code="provider_unreachable")
        return response

    async def callback(self, request: Request) -> Response:
        if self.client is None:
            return self.not_configured()
        try:
            token = await self.client.authorize_access_token(request)
        except (OAuthError, JoseError) as error:
            what = getattr(error, "error", None) or type(error).__name__
            return await self.sign_in_failed(request, f"browser sign-in failed ({what})")
        except (httpx.HTTPError, ValueError) as error:
            log.warning("approvals page: exchanging the code failed: %s", error)
            return await self.sign_in_failed(request, "browser sign-in failed (the identity provider did not answer)")
        claims = dict(token.get("userinfo") or {})
        if claims.get("iss") != self.issuer or not claims.get("sub"):
            return await self.sign_in_failed(request, "browser sign-in failed (no id_token from the configured issuer)")
        identity = identity_from_claims(claims, self.rules)
        next_path = self.safe_next(request.session.get("next"))
        request.session.clear()  # nothing from before the sign-in survives it
        request.session.update({
            "user": {"subject": identity.subject, "groups": sorted(identity.groups), "email": identity.email,
                     "name": identity.name, "at": time.time()},
            "csrf": secrets.token_urlsafe(32),
        })
        log.info("approvals page: %s signed in", identity.subject)
        return RedirectResponse(next_path, status_code=303)

    async def sign_in_failed(self, request: Request, reason: str) -> Response:
        from bastion.server.http import client_address

        await self.gateway.record_auth_refused(reason, client_address.get(), {"channel": "approvals page"})
        return self.message(request, 400, "Sign-in did not complete", reason[0].upper() + reason[1:] + ".",
                            "Try again.", None, code="sign_in_failed", link=(f"{self.root}/login", "Sign in again"))

    async def logout_form(self, request: Request) -> Response:
        identity = self.user(request)
        if identity is None:
            return self.signed_out()
        return self.render(request, "logout.html", "Sign out", identity)

    async def logout(self, request: Request) -> Response:
        form = await request.form(max_files=0, max_fields=10)
        if request.session.get("user") is not None:
            why = self.forged(request, form)
            if why is not None:
                return self.message(request, 403, "Refused: this form did not come from this page",
                                    f"Bastion refused the request: {why}.", "Use the page's Sign out button.",
                                    self.user(request), code="csrf")
        request.session.clear()
        return self.signed_out()

    def signed_out(self) -> Response:
        return self.render(None, "signed_out.html", "Signed out", None)

    # -- responses ----------------------------------------------------------------------------------

    def not_configured(self) -> Response:
        return self.render(None, "not_configured.html", "Sign-in not configured", None, status=404)

    def failed(self, request: Request, error: BastionError, identity: Identity | None) -> Response:
        return self.message(request, http_status(error), TITLES.get(error.code, "That did not work"),
                            error.message[0].upper() + error.message[1:] + ".", error.hint, identity, code=error.code)

    def message(self, request: Request, status: int, title: str, text: str, hint: str | None,
                identity: Identity | None, *, code: str, link: tuple[str, str] | None = None) -> Response:
        target, label = link or (self.root + "/", "Back to the held calls")
        return self.render(request, "message.html", title, identity, status=status, text=text, hint=hint, code=code,
                           link_target=target, link_label=label)

    def render(self, request: Request | None, template: str, title: str, identity: Identity | None, *,
               status: int = 200, **values: Any) -> HTMLResponse:
        csrf = self.csrf(request) if request is not None and identity is not None else ""
        html = TEMPLATES.get_template(f"approvals/{template}").render(
            title=title, identity=identity, csrf=csrf, root=self.root, **values)
        return HTMLResponse(html, status_code=status)

    async def stylesheet(self, request: Request) -> Response:
        return Response(CSS, media_type="text/css", headers={"cache-control": "public, max-age=3600"})

    async def store_error(self, request: Request, exc: Exception) -> Response:
        log.error("approvals page: %s", exc)
        code, text, hint = STORE_UNAVAILABLE
        return self.message(request, 503, "The approvals store is unavailable", text[0].upper() + text[1:] + ".",
                            hint, self.user(request), code=code)

    async def http_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        title = {404: "Not found", 405: "Not allowed"}.get(exc.status_code, "That did not work")
        return self.message(request, exc.status_code, title, f"{exc.detail}.", None, self.user(request),
                            code="not_found" if exc.status_code == 404 else "http_error")


def page_app(config: Config, gateway: Gateway) -> Starlette:
    page = Page(config, gateway)
    return Starlette(
        routes=[
            Route("/", page.index, methods=["GET"]),
            Route("/login", page.login, methods=["GET"]),
            Route("/callback", page.callback, methods=["GET"]),
            Route("/logout", page.logout_form, methods=["GET"]),
            Route("/logout", page.logout, methods=["POST"]),
            Route("/static/approvals.css", page.stylesheet, methods=["GET"]),
            Route("/{hold_id}", page.detail, methods=["GET"]),
            Route("/{hold_id}/approve", page.approve, methods=["POST"]),
            Route("/{hold_id}/deny", page.deny, methods=["POST"]),
        ],
        middleware=[Middleware(SessionMiddleware, secret_key=session_key(config), session_cookie=SESSION_COOKIE,
                               max_age=SESSION_LIFETIME_S, path=page.root, same_site="lax",
                               https_only=page.base.startswith("https://"))],
        exception_handlers={StoreError: page.store_error, HTTPException: page.http_error},
    )


# -- rendering: Jinja2 templates in server/templates/approvals/, every value autoescaped ------------

TITLES = {
    "hold_not_found": "No such held call",
    "hold_closed": "This held call can no longer be decided",
    "self_approval": "You cannot decide your own held call",
    "not_an_approver": "You are not an approver of this held call",
    "already_voted": "You have already voted on this held call",
    "reason_required": "A denial needs a reason",
    "invalid_input": "That did not work",
}


def person(record: Mapping[str, object]) -> str:
    """``Name <email> (subject)``, with whatever parts there are."""
    subject, name, email = record.get("subject"), record.get("name"), record.get("email")
    text = str(name or email or subject)
    if email and name:
        text += f" <{email}>"
    return text if text == subject else f"{text} ({subject})"


def relative(iso: str, now: datetime) -> str:
    seconds = int((datetime.fromisoformat(iso) - now).total_seconds())
    span = abs(seconds)
    amount = f"{span} s" if span < 120 else f"{span // 60} min" if span < 7200 else f"{span // 3600} h"
    return f"in {amount}" if seconds >= 0 else f"{amount} ago"


def _environment() -> Environment:
    env = Environment(loader=PackageLoader("bastion.server", "templates"), autoescape=True,
                      undefined=StrictUndefined, trim_blocks=True)
    env.filters.update({
        "person": lambda who: person(who.as_record() if isinstance(who, Identity) else who),
        "status": lambda held, now: str(effective_status(held, now)),
        "relative": relative,
        "urlquote": lambda value: quote(value, safe=""),
        "pretty": lambda value: json.dumps(value, indent=2, ensure_ascii=False, default=str),
        "refusal": lambda held, identity: refusal(identity, held),
    })
    env.globals.update(max_reason=MAX_REASON,
                       csrf_field=lambda csrf: Markup('<input type="hidden" name="csrf" value="{}">').format(csrf))
    return env


TEMPLATES = _environment()
CSS = (Path(__file__).parent / "templates" / "approvals" / "approvals.css").read_text()
