"""Two `bastion serve --http` replicas behind one address, as a load balancer without session
affinity would spread them: every request goes to the other replica than the one before.

A self-confirmation (the gateway asks the caller "run this write?") is sealed by the replica that
asked and answered on the other one; it completes only when both hold the same `[http]` state key.
Legacy (2025-era) clients need `[http] stateless = true` to be served by whichever replica answers.
"""

from __future__ import annotations

import secrets
import sqlite3
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import Client, types
from mcp.shared.exceptions import MCPError
from mcp.client.streamable_http import streamable_http_client

from tests.test_holds import WRITE, self_confirm_config
from tests.test_http import serving

pytestmark = pytest.mark.anyio


class Alternating(httpx2.AsyncBaseTransport):
    """Sends each request to the next of ``ports`` in turn (round robin, no affinity)."""

    def __init__(self, ports: list[int]) -> None:
        self.ports, self.sent = ports, 0
        self.inner = httpx2.AsyncHTTPTransport()

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        port = self.ports[self.sent % len(self.ports)]
        self.sent += 1
        request.url = request.url.copy_with(port=port)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def replica_configs(tmp_path: Path, demo_db: Path, http: str) -> list[Path]:
    """Two replicas' configs: one demo database, each its own audit store, ``http`` as [http]."""
    shared = self_confirm_config(tmp_path, demo_db)
    configs = []
    for name in ("a", "b"):
        folder = tmp_path / name
        folder.mkdir()
        config = folder / "bastion.toml"
        config.write_text(shared.read_text().replace('target = "demo.db"', f'target = "{tmp_path / "demo.db"}"')
                          + f"\n[http]\n{http}\n")
        configs.append(config)
    return configs


async def confirm(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
    return types.ElicitResult(action="accept", content={"confirm": True})


async def call_through_both(configs: list[Path], mode: str, tool: str, arguments: dict[str, Any]) -> Any:
    with ExitStack() as stack:
        urls = [stack.enter_context(serving(config))[1] for config in configs]
        transport = Alternating([int(url.split(":")[2].split("/")[0]) for url in urls])
        async with httpx2.AsyncClient(transport=transport, timeout=30) as http, \
                Client(streamable_http_client(urls[0], http_client=http), mode=mode, elicitation_callback=confirm) as client:
            result = await client.call_tool(tool, arguments)
        assert transport.sent >= 2  # the call really crossed replicas
        return result


def prices(tmp_path: Path) -> list[float]:
    with sqlite3.connect(tmp_path / "demo.db") as db:
        return [row[0] for row in db.execute("SELECT price FROM products ORDER BY id")]


async def test_a_confirmation_asked_by_one_replica_is_answered_on_the_other_with_a_shared_key(tmp_path: Path, demo_db: Path) -> None:
    (tmp_path / "state.key").write_text(secrets.token_hex(32))
    configs = replica_configs(tmp_path, demo_db, f'state_key_file = "{tmp_path / "state.key"}"')
    before = prices(tmp_path)
    ran = await call_through_both(configs, "auto", "sql_query", {"connection": "demo", "sql": WRITE})
    assert not ran.is_error, ran.content[0].text
    assert prices(tmp_path) == [p * 2 for p in before]


async def test_without_a_shared_key_the_other_replica_cannot_open_the_state_and_nothing_runs(tmp_path: Path, demo_db: Path) -> None:
    configs = replica_configs(tmp_path, demo_db, "")
    before = prices(tmp_path)
    with pytest.raises(BaseExceptionGroup) as refused:
        await call_through_both(configs, "auto", "sql_query", {"connection": "demo", "sql": WRITE})
    assert refused.group_contains(MCPError, match="Invalid or expired requestState", depth=None)
    assert prices(tmp_path) == before


async def test_legacy_clients_are_served_by_either_replica_when_stateless(tmp_path: Path, demo_db: Path) -> None:
    configs = replica_configs(tmp_path, demo_db, "stateless = true")
    listed = await call_through_both(configs, "legacy", "list_connections", {})
    assert listed.structured_content["connections"][0]["name"] == "demo"


def test_a_short_state_key_is_a_config_error(tmp_path: Path, demo_db: Path) -> None:
    from bastion.policy.errors import ConfigError
    from bastion.server.config import load

    (tmp_path / "state.key").write_text("too-short")
    config = replica_configs(tmp_path, demo_db, f'state_key_file = "{tmp_path / "state.key"}"')[0]
    with pytest.raises(ConfigError, match=r"http.state_key: found a key of 9 bytes; expected at least 32"):
        load(config).request_state_keys()
