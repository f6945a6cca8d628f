"""A real OpenID Connect provider for tests: real HTTP on 127.0.0.1, real RSA and EC keys, real JWTs.

    python tests/oidc_provider.py --port 0 [--issuer-path /realms/test]

prints one JSON line, ``{"issuer": "http://127.0.0.1:PORT[/path]"}``, then serves until SIGTERM. Every
path below is relative to the issuer. Loopback test provider only: ``/admin/*`` lets any caller define
users and clients, mint tokens and rotate keys.

Standard endpoints
    GET  /.well-known/openid-configuration   discovery
    GET  /jwks                                public keys: the RS256 signing key (plus older ones kept by
                                              a rotation) and one ES256 key, each with a ``kid``
    GET  /authorize                           login form: ``<select id="sub" name="sub">`` of the users,
                                              buttons ``#sign-in`` and ``#deny``; PKCE S256 is required
    POST /authorize                           one-time code (60 s), 303 to redirect_uri?code=&state=&iss=
    POST /token                               authorization_code (PKCE, client_secret_basic or _post),
                                              client_credentials (clients with ``service_claims``) and the
                                              device code grant (RFC 8628; public clients, no secret)
    POST /device/code                         device authorization: device_code, user_code, verification_uri
    GET  /device                              sign-in page for a user code: ``#sub``, ``#sign-in``, ``#deny``
    POST /device                              approve or deny that user code as the chosen user
    GET  /userinfo                            the user's claims, for a bearer access token

Test control (JSON)
    POST /admin/users    {"sub", ...claims}                    define or replace a user
    POST /admin/clients  {"client_id", "client_secret", "redirect_uris", "resource", "service_claims", "public"}
    POST /admin/token    {"sub", "aud", "scope", "expires_in", "nbf_offset", "alg", "client_id",
                          "extra": {claim: value or null to remove}, "header": {...},
                          "unpublished_key": bool}  ->  {"access_token"}
    POST /admin/rotate   {"keep_old": bool}  ->  {"kid"}      a new RS256 signing key
    GET  /admin/jwks     the same as /jwks, without counting as a /jwks fetch
    GET  /admin/stats    {path: requests so far}
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import html
import json
import secrets
import socket
import sys
import time
import uuid
from collections import Counter
from typing import Any
from urllib.parse import unquote, urlencode

import uvicorn
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, KeySet, RSAKey
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

Key = RSAKey | ECKey
CODE_TTL = 60
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
DEVICE_TTL = 120


def _rsa() -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"kid": f"rsa-{uuid.uuid4().hex[:12]}", "use": "sig", "alg": "RS256"})


def _ec() -> ECKey:
    return ECKey.generate_key("P-256", parameters={"kid": f"ec-{uuid.uuid4().hex[:12]}", "use": "sig", "alg": "ES256"})


def _error(status: int, error: str, description: str) -> JSONResponse:
    return JSONResponse({"error": error, "error_description": description}, status_code=status)


class Provider:
    """The provider's state (keys, users, clients, codes, request counts) and its Starlette app."""

    def __init__(self, issuer: str, prefix: str = "") -> None:
        self.issuer, self.prefix = issuer, prefix
        self.signing: RSAKey = _rsa()
        self.ec: ECKey = _ec()
        self.published: list[Key] = [self.signing, self.ec]
        self.users: dict[str, dict[str, Any]] = {}
        self.clients: dict[str, dict[str, Any]] = {}
        self.codes: dict[str, dict[str, Any]] = {}
        self.devices: dict[str, dict[str, Any]] = {}  # device_code → the pending device sign-in
        self.stats: Counter[str] = Counter()

    # -- tokens -------------------------------------------------------------------------------------

    def jwks(self) -> dict[str, Any]:
        return dict(KeySet(self.published).as_dict(private=False))

    def sign(self, claims: dict[str, Any], *, alg: str = "RS256", typ: str = "JWT", unpublished: bool = False,
             header: dict[str, Any] | None = None) -> str:
        """Sign ``claims``; claims or header fields set to None are removed (to forge incomplete tokens)."""
        if alg == "ES256":
            key: Key = _ec() if unpublished else self.ec
        elif alg == "RS256":
            key = _rsa() if unpublished else self.signing
        else:
            raise ValueError(f"alg must be RS256 or ES256, not {alg!r}")
        head = {"alg": alg, "typ": typ, "kid": key.kid} | (header or {})
        head = {k: v for k, v in head.items() if v is not None}
        return jwt.encode(head, {k: v for k, v in claims.items() if v is not None}, key, algorithms=[alg])

    def access_token(self, sub: str | None, aud: str | list[str] | None, scope: str, client_id: str, *,
                     expires_in: int = 300, nbf_offset: int = 0, extra: dict[str, Any] | None = None,
                     alg: str = "RS256", unpublished: bool = False, header: dict[str, Any] | None = None) -> str:
        now = int(time.time())
        claims = {"iss": self.issuer, "sub": sub, "aud": aud, "iat": now, "nbf": now + nbf_offset,
                  "exp": now + expires_in, "jti": uuid.uuid4().hex, "scope": scope, "client_id": client_id}
        claims |= {k: v for k, v in self.users.get(sub or "", {}).items() if k != "sub"}
        claims |= extra or {}
        return self.sign(claims, alg=alg, typ="at+jwt", unpublished=unpublished, header=header)

    def id_token(self, sub: str, client_id: str, nonce: str | None) -> str:
        now = int(time.time())
        claims = {"iss": self.issuer, "sub": sub, "aud": client_id, "azp": client_id, "iat": now,
                  "exp": now + 300, "auth_time": now, "nonce": nonce} | self.users[sub]
        return self.sign(claims)

    # -- standard endpoints -------------------------------------------------------------------------

    async def discovery(self, request: Request) -> JSONResponse:
        base = self.issuer
        return JSONResponse({
            "issuer": base, "authorization_endpoint": f"{base}/authorize", "token_endpoint": f"{base}/token",
            "jwks_uri": f"{base}/jwks", "userinfo_endpoint": f"{base}/userinfo",
            "id_token_signing_alg_values_supported": ["RS256", "ES256"], "code_challenge_methods_supported": ["S256"],
            "grant_types_supported": ["authorization_code", "client_credentials", DEVICE_GRANT], "response_types_supported": ["code"],
            "device_authorization_endpoint": f"{base}/device/code",
            "subject_types_supported": ["public"], "scopes_supported": ["openid", "profile", "email", "groups"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
        })

    async def jwks_endpoint(self, request: Request) -> JSONResponse:
        return JSONResponse(self.jwks())

    def _client_and_redirect(self, params: Any) -> tuple[dict[str, Any] | None, str]:
        """The registered client and redirect_uri of an authorization request, or None and why not."""
        client = self.clients.get(params.get("client_id", ""))
        if client is None:
            return None, "unknown client_id"
        if params.get("redirect_uri") not in client["redirect_uris"]:
            return None, "redirect_uri is not registered for this client"
        return client, ""

    async def authorize_form(self, request: Request) -> Response:
        params = request.query_params
        client, why = self._client_and_redirect(params)
        if client is None:  # never redirect to an unverified URI: show the error instead
            return HTMLResponse(f"<p id='error'>{html.escape(why)}</p>", status_code=400)
        if params.get("response_type") != "code":
            return HTMLResponse("<p id='error'>response_type must be code</p>", status_code=400)
        if params.get("code_challenge_method") != "S256" or not params.get("code_challenge"):
            return HTMLResponse("<p id='error'>PKCE with code_challenge_method=S256 is required</p>", status_code=400)
        hidden = "".join(f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
                         for k, v in params.items())
        options = "".join(f'<option value="{html.escape(sub)}">{html.escape(user.get("name", sub))} '
                          f'({html.escape(sub)})</option>' for sub, user in self.users.items())
        return HTMLResponse(
            "<!doctype html><title>Test OIDC login</title>"
            f'<form id="login" method="post" action="{html.escape(self.prefix)}/authorize">{hidden}'
            f'<label for="sub">User</label> <select id="sub" name="sub">{options}</select> '
            '<button id="sign-in" type="submit">Sign in</button> '
            '<button id="deny" type="submit" name="deny" value="1">Deny</button></form>')

    async def authorize_submit(self, request: Request) -> Response:
        form = await request.form()
        client, why = self._client_and_redirect(form)
        if client is None:
            return HTMLResponse(f"<p id='error'>{html.escape(why)}</p>", status_code=400)
        redirect_uri, state = str(form["redirect_uri"]), form.get("state")
        reply: dict[str, Any] = {"error": "access_denied"}
        if not form.get("deny"):
            sub = str(form.get("sub", ""))
            if sub not in self.users:
                return HTMLResponse("<p id='error'>unknown user</p>", status_code=400)
            code = secrets.token_urlsafe(24)
            self.codes[code] = {"client_id": form["client_id"], "redirect_uri": redirect_uri, "sub": sub,
                                "scope": form.get("scope", ""), "nonce": form.get("nonce"),
                                "challenge": form.get("code_challenge"), "resource": form.get("resource"),
                                "expires": time.time() + CODE_TTL}
            reply = {"code": code}
        reply |= {"state": state, "iss": self.issuer} if state is not None else {"iss": self.issuer}
        separator = "&" if "?" in redirect_uri else "?"
        return RedirectResponse(f"{redirect_uri}{separator}{urlencode(reply)}", status_code=303)

    def _authenticate(self, request: Request, form: Any) -> dict[str, Any] | None:
        """The client, by client_secret_basic (Authorization header) or client_secret_post (form)."""
        client_id, secret = form.get("client_id"), form.get("client_secret")
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("basic "):
            try:
                client_id, _, secret = base64.b64decode(auth[6:]).decode().partition(":")
            except ValueError:
                return None
            client_id, secret = unquote(client_id), unquote(secret)  # RFC 6749 2.3.1: form-encoded
        client = self.clients.get(str(client_id or ""))
        if client is None or not secrets.compare_digest(str(secret or ""), client["client_secret"]):
            return None
        return client

    async def token(self, request: Request) -> JSONResponse:
        form = await request.form()
        if form.get("grant_type") == DEVICE_GRANT:
            return self._device_token(form)
        client = self._authenticate(request, form)
        if client is None:
            return _error(401, "invalid_client", "unknown client or wrong secret")
        grant = form.get("grant_type")
        if grant == "client_credentials" and client.get("service_claims") is not None:
            claims = dict(client["service_claims"])
            sub, scope = claims.pop("sub", client["client_id"]), str(form.get("scope", ""))
            aud = form.get("resource") or client.get("resource")
            token = self.access_token(sub, aud, scope, client["client_id"], extra=claims)
            return JSONResponse({"access_token": token, "token_type": "Bearer", "expires_in": 300, "scope": scope})
        if grant != "authorization_code":
            return _error(400, "unsupported_grant_type", f"grant_type {grant!r} is not supported for this client")
        grant_data = self.codes.pop(str(form.get("code", "")), None)  # one use, even when the rest fails
        if grant_data is None or grant_data["expires"] < time.time():
            return _error(400, "invalid_grant", "unknown, used or expired code")
        if grant_data["client_id"] != client["client_id"] or grant_data["redirect_uri"] != form.get("redirect_uri"):
            return _error(400, "invalid_grant", "code was issued to another client or redirect_uri")
        verifier = str(form.get("code_verifier", ""))
        digest = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
        if not secrets.compare_digest(digest, grant_data["challenge"]):
            return _error(400, "invalid_grant", "PKCE code_verifier does not match the code_challenge")
        aud = form.get("resource") or grant_data["resource"] or client.get("resource")
        sub, scope = grant_data["sub"], grant_data["scope"]
        return JSONResponse({
            "access_token": self.access_token(sub, aud, scope, client["client_id"]),
            "id_token": self.id_token(sub, client["client_id"], grant_data["nonce"]),
            "token_type": "Bearer", "expires_in": 300, "scope": scope,
        })

    # -- device flow (RFC 8628) ---------------------------------------------------------------------

    async def device_code(self, request: Request) -> JSONResponse:
        form = await request.form()
        client = self.clients.get(str(form.get("client_id", "")))
        if client is None or not client.get("public"):
            return _error(401, "invalid_client", "unknown client, or not a public client")
        device_code, user_code = secrets.token_urlsafe(24), f"{secrets.token_hex(2)}-{secrets.token_hex(2)}".upper()
        self.devices[device_code] = {"client_id": client["client_id"], "user_code": user_code, "sub": None,
                                     "denied": False, "scope": str(form.get("scope", "")), "polled": 0.0,
                                     "resource": form.get("resource") or client.get("resource"),
                                     "expires": time.time() + DEVICE_TTL}
        page = f"{self.issuer}/device"
        return JSONResponse({"device_code": device_code, "user_code": user_code, "verification_uri": page,
                             "verification_uri_complete": f"{page}?{urlencode({'user_code': user_code})}",
                             "expires_in": DEVICE_TTL, "interval": 1})

    def _device(self, user_code: str) -> dict[str, Any] | None:
        return next((d for d in self.devices.values() if d["user_code"] == user_code and d["expires"] > time.time()), None)

    async def device_form(self, request: Request) -> Response:
        user_code = request.query_params.get("user_code", "")
        options = "".join(f'<option value="{html.escape(sub)}">{html.escape(sub)}</option>' for sub in self.users)
        return HTMLResponse(
            "<!doctype html><title>Test OIDC device sign-in</title>"
            f'<form id="device" method="post" action="{html.escape(self.prefix)}/device">'
            f'<input id="user_code" name="user_code" value="{html.escape(user_code)}">'
            f'<select id="sub" name="sub">{options}</select> <button id="sign-in" type="submit">Sign in</button> '
            '<button id="deny" type="submit" name="deny" value="1">Deny</button></form>')

    async def device_submit(self, request: Request) -> Response:
        form = await request.form()
        device = self._device(str(form.get("user_code", "")).upper())
        if device is None:
            return HTMLResponse("<p id='error'>unknown or expired code</p>", status_code=400)
        if form.get("deny"):
            device["denied"] = True
        elif str(form.get("sub", "")) in self.users:
            device["sub"] = str(form["sub"])
        else:
            return HTMLResponse("<p id='error'>unknown user</p>", status_code=400)
        return HTMLResponse("<p id='done'>You may close this window.</p>")

    def _device_token(self, form: Any) -> JSONResponse:
        device = self.devices.get(str(form.get("device_code", "")))
        if device is None or device["client_id"] != form.get("client_id"):
            return _error(400, "invalid_grant", "unknown device_code, or issued to another client")
        now = time.time()
        if device["expires"] <= now:
            return _error(400, "expired_token", "the device code expired")
        if device["denied"]:
            return _error(400, "access_denied", "the user denied the sign-in")
        if device["sub"] is None:
            too_soon = now - device["polled"] < 0.5
            device["polled"] = now
            return _error(400, "slow_down" if too_soon else "authorization_pending", "waiting for the user")
        del self.devices[str(form["device_code"])]  # one use
        return JSONResponse({"access_token": self.access_token(device["sub"], device["resource"], device["scope"], device["client_id"]),
                             "token_type": "Bearer", "expires_in": 300, "scope": device["scope"]})

    async def userinfo(self, request: Request) -> JSONResponse:
        auth = request.headers.get("authorization", "")
        challenge = {"WWW-Authenticate": 'Bearer error="invalid_token"'}
        try:
            token = jwt.decode(auth.removeprefix("Bearer "), KeySet(self.published), algorithms=["RS256", "ES256"])
            jwt.JWTClaimsRegistry(iss={"essential": True, "value": self.issuer}).validate(token.claims)
        except (JoseError, ValueError):
            return JSONResponse({"error": "invalid_token"}, status_code=401, headers=challenge)
        sub = token.claims.get("sub")
        return JSONResponse({"sub": sub} | self.users.get(sub, {}))

    # -- test control -------------------------------------------------------------------------------

    async def add_user(self, request: Request) -> JSONResponse:
        user = await request.json()
        self.users[str(user["sub"])] = user
        return JSONResponse(user)

    async def add_client(self, request: Request) -> JSONResponse:
        body = await request.json()
        client = {"client_id": body["client_id"], "client_secret": body["client_secret"],
                  "redirect_uris": list(body.get("redirect_uris", [])), "resource": body.get("resource"),
                  "service_claims": body.get("service_claims"), "public": bool(body.get("public"))}
        self.clients[client["client_id"]] = client
        return JSONResponse({k: v for k, v in client.items() if k != "client_secret"})

    async def mint(self, request: Request) -> JSONResponse:
        body = await request.json()
        try:
            token = self.access_token(
                body.get("sub"), body.get("aud"), body.get("scope", ""), body.get("client_id", "bastion-tests"),
                expires_in=body.get("expires_in", 300), nbf_offset=body.get("nbf_offset", 0),
                extra=body.get("extra"), alg=body.get("alg", "RS256"),
                unpublished=bool(body.get("unpublished_key")), header=body.get("header"))
        except ValueError as exc:
            return _error(400, "invalid_request", str(exc))
        return JSONResponse({"access_token": token})

    async def rotate(self, request: Request) -> JSONResponse:
        keep_old = bool((await request.json()).get("keep_old", True))
        self.signing = _rsa()
        old = [k for k in self.published if keep_old or isinstance(k, ECKey)]
        self.published = [self.signing, *old]
        return JSONResponse({"kid": self.signing.kid})

    async def admin_jwks(self, request: Request) -> JSONResponse:
        return JSONResponse(self.jwks())

    async def admin_stats(self, request: Request) -> JSONResponse:
        return JSONResponse(dict(self.stats))

    def app(self) -> Any:
        p = self.prefix
        inner = Starlette(routes=[
            Route(f"{p}/.well-known/openid-configuration", self.discovery),
            Route(f"{p}/jwks", self.jwks_endpoint),
            Route(f"{p}/authorize", self.authorize_form, methods=["GET"]),
            Route(f"{p}/authorize", self.authorize_submit, methods=["POST"]),
            Route(f"{p}/token", self.token, methods=["POST"]),
            Route(f"{p}/device/code", self.device_code, methods=["POST"]),
            Route(f"{p}/device", self.device_form, methods=["GET"]),
            Route(f"{p}/device", self.device_submit, methods=["POST"]),
            Route(f"{p}/userinfo", self.userinfo, methods=["GET", "POST"]),
            Route(f"{p}/admin/users", self.add_user, methods=["POST"]),
            Route(f"{p}/admin/clients", self.add_client, methods=["POST"]),
            Route(f"{p}/admin/token", self.mint, methods=["POST"]),
            Route(f"{p}/admin/rotate", self.rotate, methods=["POST"]),
            Route(f"{p}/admin/jwks", self.admin_jwks),
            Route(f"{p}/admin/stats", self.admin_stats),
        ])

        async def counting(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] == "http":
                self.stats[scope["path"].removeprefix(p) or "/"] += 1
            await inner(scope, receive, send)

        return counting


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: any free port)")
    parser.add_argument("--issuer-path", default="/", help="path of the issuer, e.g. /realms/test")
    args = parser.parse_args(argv)
    prefix = "/" + args.issuer_path.strip("/") if args.issuer_path.strip("/") else ""
    sock = socket.socket()
    sock.bind(("127.0.0.1", args.port))  # bound before the issuer is printed: no race for the port
    issuer = f"http://127.0.0.1:{sock.getsockname()[1]}{prefix}"
    print(json.dumps({"issuer": issuer}), flush=True)
    config = uvicorn.Config(Provider(issuer, prefix).app(), log_level="warning", access_log=False)
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    sys.exit(main())
