"""OIDC on streamable HTTP: real tokens from a real provider process (tests/oidc_provider.py), checked
against its JWKS over HTTP; every refusal is a 401 and an `auth.refused` event that never holds the token."""

from __future__ import annotations

import base64
import json
import shutil
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx2
import pytest
from joserfc.jwk import RSAKey
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from bastion.server.app import create_server
from bastion.server.config import load
from bastion.server.http import http_app
from bastion.store import SqliteAuditStore
from tests.conftest import requirement
from tests.oidc_server import OidcProvider

pytestmark = pytest.mark.anyio
RESOURCE = "http://127.0.0.1:8765/mcp"
# One stateless 2026-07-28 request, as a client sends it.
MCP_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json",
               "MCP-Protocol-Version": "2026-07-28", "Mcp-Method": "tools/list"}
PING = {"jsonrpc": "2.0", "id": 1, "method": "tools/list",
        "params": {"_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                             "io.modelcontextprotocol/clientCapabilities": {}}}}


def write_config(tmp_path: Path, demo_db: Path, issuer: str, extra_auth: str = "") -> Path:
    shutil.copy(demo_db, tmp_path / "demo.db")
    config = tmp_path / "bastion.toml"
    config.write_text(f"""
[auth]
issuer = "{issuer}"
resource = "{RESOURCE}"
groups_claim = "realm_access.roles"
jwks_refetch_interval = 0
{extra_auth}

[connections.demo]
kind = "sqlite"
target = "demo.db"

[[connections.demo.rules]]
id = "analysts-read"
preset = "read-only"
groups = ["analysts"]
""")
    return config


@asynccontextmanager
async def bastion(config_path: Path, token: str | None = None) -> AsyncIterator[httpx2.AsyncClient]:
    """Bastion's HTTP app in process (lifespan run by hand); the token verifier reaches the provider over HTTP."""
    config = load(config_path)
    asgi = http_app(create_server(config), config)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with asgi.app.router.lifespan_context(asgi.app):  # type: ignore[attr-defined]
        async with httpx2.AsyncClient(transport=httpx2.ASGITransport(app=asgi), base_url="http://127.0.0.1:8765",
                                      headers=headers, timeout=30) as http:
            yield http


def refusals(config_path: Path) -> list[dict[str, Any]]:
    return [e for e in SqliteAuditStore(config_path.parent / "bastion-audit.db").iter_all() if e["type"] == "auth.refused"]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _forged(header: dict[str, Any], payload: dict[str, Any], sign: Any = None) -> str:
    import hashlib
    import hmac

    head, body = _b64(json.dumps(header).encode()), _b64(json.dumps(payload).encode())
    signature = _b64(hmac.new(sign, f"{head}.{body}".encode(), hashlib.sha256).digest()) if sign else ""
    return f"{head}.{body}.{signature}"


@pytest.fixture
def user(oidc_provider: OidcProvider) -> str:
    sub = f"ana-{uuid.uuid4().hex[:6]}"
    oidc_provider.add_user(sub, email=f"{sub}@example.com", name="Ana Analyst", realm_access={"roles": ["analysts"]})
    return sub


@pytest.fixture
def config(tmp_path: Path, demo_db: Path, oidc_provider: OidcProvider) -> Path:
    return write_config(tmp_path, demo_db, oidc_provider.issuer)


def _claims(now_offset: int = 0) -> dict[str, Any]:
    import time

    now = int(time.time()) + now_offset
    return {"iss": "", "sub": "mallory", "aud": RESOURCE, "exp": now + 300, "iat": now}


def refused_tokens(p: OidcProvider, sub: str) -> dict[str, tuple[str, str]]:
    """Each bad token, and the reason Bastion must record for it."""
    good = p.token(sub, RESOURCE)
    head, _, sig = good.split(".")
    claims = {**_claims(), "iss": p.issuer, "sub": "admin"}
    rsa = next(k for k in p.jwks()["keys"] if k["kty"] == "RSA")
    public_pem = RSAKey.import_key(rsa).as_pem(private=False)
    return {
        "expired": (p.token(sub, RESOURCE, expires_in=-120), "expired"),
        "not yet valid": (p.token(sub, RESOURCE, nbf_offset=600), "not yet valid"),
        "wrong issuer": (p.token(sub, RESOURCE, iss="http://127.0.0.1:1/evil"), "wrong issuer"),
        "wrong audience": (p.token(sub, "http://127.0.0.1:9999/other"), "wrong audience"),
        "alg none": (_forged({"alg": "none", "typ": "at+jwt"}, claims), "algorithm 'none' is not allowed"),
        "HS256 keyed with the RSA public key": (
            _forged({"alg": "HS256", "kid": rsa["kid"]}, claims, sign=public_pem), "algorithm 'HS256' is not allowed"),
        "tampered payload": (f"{head}.{_b64(json.dumps(claims).encode())}.{sig}", "bad signature"),
        "missing sub": (p.token(sub, RESOURCE, extra={"sub": None}), "missing claim 'sub'"),
        "unknown key id": (p.token(sub, RESOURCE, unpublished_key=True), "signed with a key the issuer does not publish"),
        "published kid, other key": (p.token(sub, RESOURCE, header={"kid": rsa["kid"]}, unpublished_key=True),
                                     "bad signature"),
        "not a JWT": ("opaque-token-123", "not a signed JWT"),
    }


@requirement("auth:token-checks")
async def test_each_bad_token_is_a_401_with_an_auth_refused_event(config: Path, oidc_provider: OidcProvider,
                                                                  user: str) -> None:
    cases = refused_tokens(oidc_provider, user)
    for name, (token, reason) in cases.items():
        async with bastion(config, token) as http:
            response = await http.post("/mcp", json=PING, headers=MCP_HEADERS)
        assert response.status_code == 401, name
        assert 'error="invalid_token"' in response.headers["www-authenticate"], name
        assert "resource_metadata=" in response.headers["www-authenticate"], name
        event = refusals(config)[-1]
        assert event["error"]["message"].startswith(reason), (name, event["error"])
        assert event["client"]["address"] == "127.0.0.1", name
        assert token not in json.dumps(event), name
    assert len(refusals(config)) == len(cases)


async def test_no_token_is_a_401_pointing_at_the_protected_resource_metadata(config: Path, oidc_provider: OidcProvider) -> None:
    async with bastion(config) as http:
        response = await http.post("/mcp", json=PING, headers=MCP_HEADERS)
        metadata = (await http.get("/.well-known/oauth-protected-resource/mcp")).json()
    assert response.status_code == 401 and "resource_metadata=" in response.headers["www-authenticate"]
    assert metadata["resource"] == RESOURCE
    assert metadata["authorization_servers"][0].rstrip("/") == oidc_provider.issuer


@requirement("auth:token-checks")
@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_a_valid_token_calls_as_its_subject_with_groups_from_a_nested_claim(config: Path, oidc_provider: OidcProvider,
                                                                                  user: str, mode: str) -> None:
    async with bastion(config, oidc_provider.token(user, RESOURCE)) as http:
        async with Client(streamable_http_client(RESOURCE, http_client=http), mode=mode) as client:
            listed = await client.call_tool("list_connections", {})
            rows = await client.call_tool("sql_query", {"connection": "demo", "sql": "SELECT count(*) FROM products"})
    assert [c["name"] for c in listed.structured_content["connections"]] == ["demo"]
    assert rows.structured_content["rows"] == [[10]]
    requested = [e for e in SqliteAuditStore(config.parent / "bastion-audit.db").iter_all() if e["tool"] == "sql_query"]
    assert requested[0]["identity"] == {"subject": user, "groups": ["analysts"], "email": f"{user}@example.com",
                                        "name": "Ana Analyst", "source": "oidc"}


@requirement("auth:key-rotation")
async def test_an_unknown_key_id_refetches_the_keys_once_and_passes_only_when_really_published(
        config: Path, oidc_provider: OidcProvider, user: str) -> None:
    async with bastion(config, oidc_provider.token(user, RESOURCE)) as http:
        assert (await http.post("/mcp", json=PING, headers=MCP_HEADERS)).status_code == 200
        fetched = oidc_provider.stats().get("/jwks", 0)
        assert (await http.post("/mcp", json=PING, headers=MCP_HEADERS)).status_code == 200
        assert oidc_provider.stats().get("/jwks", 0) == fetched, "the keys are cached between requests"

        oidc_provider.rotate(keep_old=True)
        rotated = {"Authorization": f"Bearer {oidc_provider.token(user, RESOURCE)}", **MCP_HEADERS}
        assert (await http.post("/mcp", json=PING, headers=rotated)).status_code == 200
        assert oidc_provider.stats().get("/jwks", 0) == fetched + 1, "one refetch for the new key id"

        forged = {"Authorization": f"Bearer {oidc_provider.token(user, RESOURCE, unpublished_key=True)}", **MCP_HEADERS}
        assert (await http.post("/mcp", json=PING, headers=forged)).status_code == 401
        assert oidc_provider.stats().get("/jwks", 0) == fetched + 2, "an unknown key id is looked up once, then refused"


@requirement("auth:scope")
async def test_a_token_without_the_required_scope_gets_403(tmp_path: Path, demo_db: Path, oidc_provider: OidcProvider,
                                                         user: str) -> None:
    config = write_config(tmp_path, demo_db, oidc_provider.issuer, 'required_scopes = ["bastion:use"]')
    async with bastion(config, oidc_provider.token(user, RESOURCE, scope="openid")) as http:
        response = await http.post("/mcp", json=PING, headers=MCP_HEADERS)
    assert response.status_code == 403 and 'error="insufficient_scope"' in response.headers["www-authenticate"]
    async with bastion(config, oidc_provider.token(user, RESOURCE, scope="openid bastion:use")) as http:
        assert (await http.post("/mcp", json=PING, headers=MCP_HEADERS)).status_code == 200


async def test_a_host_header_outside_the_allow_list_is_refused(config: Path, oidc_provider: OidcProvider, user: str) -> None:
    async with bastion(config, oidc_provider.token(user, RESOURCE)) as http:
        response = await http.post("/mcp", json=PING, headers={**MCP_HEADERS, "Host": "evil.example.com"})
    assert response.status_code in (400, 421)


@requirement("auth:token-checks")
async def test_stdio_runs_as_the_identity_behind_bastion_token(config: Path, oidc_provider: OidcProvider, user: str) -> None:
    import subprocess
    import sys

    from mcp.client.stdio import StdioServerParameters, stdio_client

    bastion_bin = str(Path(sys.executable).parent / "bastion")
    params = StdioServerParameters(command=bastion_bin, args=["serve", "--config", str(config)], cwd=str(config.parent),
                                   env={"BASTION_TOKEN": oidc_provider.token(user, RESOURCE)})
    async with Client(stdio_client(params)) as client:
        rows = await client.call_tool("sql_query", {"connection": "demo", "sql": "SELECT count(*) FROM products"})
    assert rows.structured_content["rows"] == [[10]]
    events = list(SqliteAuditStore(config.parent / "bastion-audit.db").iter_all())
    assert {e["identity"]["subject"] for e in events if e["type"] == "call.requested"} == {user}

    expired = oidc_provider.token(user, RESOURCE, expires_in=-120)
    result = subprocess.run([bastion_bin, "serve", "--config", str(config)], env={"BASTION_TOKEN": expired, "PATH": "/usr/bin:/bin"},
                            capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert result.returncode != 0 and "BASTION_TOKEN was refused: expired" in result.stderr
    assert refusals(config)[-1]["client"] == {"address": "stdio"} and expired not in json.dumps(refusals(config))


@requirement("auth:token-checks")
async def test_requests_without_a_token_are_recorded_once_a_minute_per_address(config: Path,
                                                                              oidc_provider: OidcProvider) -> None:
    async with bastion(config) as http:
        for _ in range(3):
            response = await http.post("/mcp", json=PING, headers=MCP_HEADERS)
            assert response.status_code == 401
        await http.get("/.well-known/oauth-protected-resource/mcp")  # not the MCP endpoint: not recorded
    (event,) = refusals(config)
    assert event["error"]["message"] == "no bearer token" and event["error"]["channel"] == "mcp"
    assert event["client"]["address"] == "127.0.0.1"


async def test_the_no_token_record_counts_the_requests_it_stands_for(oidc_provider: OidcProvider) -> None:
    from bastion.server.auth import OidcVerifier, TokenRules
    from bastion.server.http import MissingToken

    now = [1000.0]
    seen: list[dict[str, Any]] = []
    verifier = OidcVerifier(TokenRules(oidc_provider.issuer, RESOURCE, None))

    async def record(refused: Any) -> None:
        seen.append(refused.details)

    verifier.on_refused = record
    missing = MissingToken(verifier, clock=lambda: now[0])
    scope = {"path": "/mcp", "headers": [(b"content-type", b"application/json")]}
    for step in (0, 10, 20, 61, 62):
        now[0] = 1000.0 + step
        await missing.check(scope, "10.0.0.7")
    await missing.check({**scope, "headers": [(b"authorization", b"Bearer x")]}, "10.0.0.7")
    assert seen == [{"channel": "mcp", "requests": 1}, {"channel": "mcp", "requests": 3}]


@requirement("approval:authenticated-approver")
def test_with_auth_the_approvals_cli_votes_only_as_the_person_behind_a_token(config: Path, oidc_provider: OidcProvider,
                                                                               user: str) -> None:
    import subprocess
    import sys

    bastion_bin = str(Path(sys.executable).parent / "bastion")
    # A config file may declare any [identity]: with [auth] it never votes.
    config.write_text(config.read_text().replace("[connections.demo]", '[identity]\nsubject = "made-up-boss"\n'
                                                 'groups = ["approvers"]\n\n[connections.demo]', 1))
    base = {"PATH": "/usr/bin:/bin"}
    refused = subprocess.run([bastion_bin, "approvals", "list", "--config", str(config)], env=base,
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and "set BASTION_TOKEN" in refused.stderr and "never an approver" in refused.stderr
    listed = subprocess.run([bastion_bin, "approvals", "list", "--json", "--config", str(config)], capture_output=True,
                            text=True, timeout=60, env={**base, "BASTION_TOKEN": oidc_provider.token(user, RESOURCE)})
    assert listed.returncode == 0, listed.stderr
    events = [e for e in SqliteAuditStore(config.parent / "bastion-audit.db").iter_all() if e["type"] == "call.requested"]
    assert events and {e["identity"]["subject"] for e in events} == {user}
