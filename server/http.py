"""The HTTP app: the MCP endpoint (streamable HTTP), OAuth protected-resource metadata, health.

Without [auth], it serves loopback only (the CLI enforces it) with DNS-rebinding protection for
loopback hosts. With [auth], every MCP request needs a bearer token and the Host header must be one
the config allows.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Callable
from typing import Any

from mcp.server import MCPServer
from mcp.server.transport_security import TransportSecuritySettings
import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from bastion.policy.cache import ClearingCache
from bastion.server.auth import OidcVerifier, TokenRefused
from bastion.server.config import Config
from bastion.tools.gateway import Gateway

# The address of the HTTP client behind the current request, for `auth.refused` events.
client_address: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("client_address", default=None)


class ClientAddress:
    """ASGI middleware: note the peer address for this request (the token verifier runs inside it)
    and, with [auth], record requests that bring no token (``missing``)."""

    def __init__(self, app: ASGIApp, missing: MissingToken | None = None) -> None:
        self.app = app
        self.missing = missing

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope.get("client"):
            host, port = scope["client"]
            token = client_address.set({"address": host, "port": port})
            try:
                if self.missing is not None:
                    await self.missing.check(scope, host)
                await self.app(scope, receive, send)
            finally:
                client_address.reset(token)
            return
        await self.app(scope, receive, send)


class MissingToken:
    """With [auth], a request to the MCP endpoint that brings no bearer token is recorded as
    `auth.refused` (the SDK answers it 401 before any token is checked). At most one event per client
    address a minute, each saying how many requests it stands for."""

    EVERY_S = 60.0
    MAX_ADDRESSES = 10_000

    def __init__(self, verifier: OidcVerifier, clock: Callable[[], float] = time.monotonic) -> None:
        self.verifier, self.clock = verifier, clock
        # address → (requests not yet recorded, last recorded)
        self._seen = ClearingCache[str, tuple[int, float]](self.MAX_ADDRESSES)

    async def check(self, scope: Scope, address: str) -> None:
        if scope["path"].rstrip("/") != "/mcp" or self.verifier.on_refused is None:
            return
        if not dict(scope["headers"]).get(b"authorization", b"").lower().startswith(b"bearer "):
            await self._note(address)

    async def _note(self, address: str) -> None:
        now = self.clock()
        unrecorded, last = self._seen.get(address, (0, float("-inf")))
        if now - last < self.EVERY_S:
            self._seen[address] = (unrecorded + 1, last)
            return
        self._seen.put(address, (0, now))
        assert self.verifier.on_refused is not None
        await self.verifier.on_refused(TokenRefused("no bearer token", channel="mcp", requests=unrecorded + 1))


async def healthz(request: Request) -> Response:
    """Liveness: the process answers."""
    return PlainTextResponse("ok\n")


def readiness(gateway: Gateway) -> Callable[[Request], Any]:
    """Readiness: 503 while the audit store cannot be written, before any call finds out (nothing
    runs unrecorded, so a gateway that cannot record is not ready)."""
    async def readyz(request: Request) -> Response:
        problem = await anyio.to_thread.run_sync(gateway.store.unwritable)
        return JSONResponse({"ready": problem is None, **({"problem": problem} if problem else {})},
                            status_code=503 if problem else 200)

    return readyz


def security(config: Config, host: str) -> TransportSecuritySettings | None:
    if config.auth is not None:
        return TransportSecuritySettings(allowed_hosts=config.auth.hosts(), allowed_origins=[])
    return None  # the SDK protects loopback hosts by default


def http_app(server: MCPServer, config: Config, gateway: Gateway | None = None, host: str = "127.0.0.1") -> ClientAddress:
    """The MCP endpoint at /mcp and, given the ``gateway`` the server runs on, the approvals API
    and page under /approvals."""
    app = server.streamable_http_app(transport_security=security(config, host), host=host,
                                     stateless_http=config.http.stateless)
    if gateway is not None:
        from bastion.server.approvals_web import approvals_app

        app.router.routes.append(Mount("/approvals", app=approvals_app(config, gateway, server)))
        app.router.routes += [Route("/healthz", healthz, methods=["GET"]),
                              Route("/readyz", readiness(gateway), methods=["GET"])]
    verifier = getattr(server, "verifier", None)
    return ClientAddress(app, MissingToken(verifier) if verifier is not None else None)


def serve_http(config: Config, host: str, port: int, *, access_log: bool = False) -> None:
    import uvicorn

    from bastion.server.app import create_server
    from bastion.server.build import build_gateway

    gateway = build_gateway(config)
    app = http_app(create_server(config, gateway=gateway), config, gateway, host)
    # No access log by default: the audit log records every call, and a line per request costs
    # about a tenth of the gateway's throughput (tests/bench/bench_postgres.py).
    uvicorn.run(app, host=host, port=port, log_level="info", lifespan="on", access_log=access_log)
