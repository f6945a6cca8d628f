"""`bastion serve --http` as a real process (uvicorn on loopback), reached by the SDK's HTTP client."""

from __future__ import annotations

import os
import re
import secrets
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from bastion.store import SqliteAuditStore
from bastion.store import events as ev
from tests.conftest import requirement
from tests.postgres_server import wait_until
from tests.processes import stop

RAW_HEADERS = {"MCP-Protocol-Version": "2026-07-28", "Mcp-Method": "tools/call", "Mcp-Name": "sql_query",
               "Accept": "application/json, text/event-stream"}
SLOW = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n) SELECT count(*) FROM n"

RAW_CALL = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": "sql_query", "arguments": {"connection": "demo", "sql": SLOW},
                       "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                                 "io.modelcontextprotocol/clientCapabilities": {}}}}


def free_port() -> int:
    """A port free a moment ago, for a config that must name its own URL before the server starts
    ([auth] resource); anything else binds port 0 (`serving` without a port)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


_LISTENING = re.compile(rb"Uvicorn running on http://127\.0\.0\.1:(\d+)")


@contextmanager
def serving(config: Path, port: int | None = None) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """`bastion serve --http` as a real process; without ``port`` the OS picks one (port 0) and the
    server's start-up line says which, so no other process can take it in between."""
    log = config.parent / f"serve-{port or secrets.token_hex(4)}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "bastion.server", "serve", "--config", str(config), "--http", f"127.0.0.1:{port or 0}"],
                                stdout=out, stderr=subprocess.STDOUT)
    bound: list[int] = [port] if port else []

    def up() -> bool:
        if not bound:
            found = _LISTENING.search(log.read_bytes())
            if found is None:
                return False
            bound.append(int(found.group(1)))
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", bound[0])) == 0

    try:
        # A hang guard, not a timing claim: a loaded 2-core host has taken over 20 s to import and start.
        if not wait_until(lambda: up() or proc.poll() is not None, timeout=60) or proc.poll() is not None:
            proc.kill()
            proc.wait()
            pytest.fail(f"bastion serve --http did not start (exit code {proc.returncode}):\n" + log.read_text())
        yield proc, f"http://127.0.0.1:{bound[0]}/mcp"
    finally:
        stop(proc, timeout=10)


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_tools_over_streamable_http(demo_config: Path, mode: str) -> None:
    with serving(demo_config) as (_, url):
        async with httpx2.AsyncClient(timeout=30) as http, Client(streamable_http_client(url, http_client=http), mode=mode) as c:
            listed = await c.call_tool("list_connections", {})
            assert listed.structured_content["connections"][0]["name"] == "demo"
            rows = await c.call_tool("sql_query", {"connection": "demo", "sql": "SELECT count(*) FROM customers"})
            assert rows.structured_content["rows"] == [[200]]
            refused = await c.call_tool("sql_query", {"connection": "demo", "sql": "DROP TABLE customers"})
            assert refused.is_error and "developers-read:kind" in refused.content[0].text
    events = list(SqliteAuditStore(demo_config.parent / "bastion-audit.db").iter_all())
    assert {e["type"] for e in events} >= {ev.REQUESTED, ev.FINISHED, ev.DENIED}


@requirement("inv:interrupted-on-restart")
@pytest.mark.anyio
async def test_a_server_killed_mid_query_leaves_the_call_interrupted_after_restart(demo_config: Path) -> None:
    audit_path = demo_config.parent / "bastion-audit.db"
    with serving(demo_config) as (proc, url):
        async with httpx2.AsyncClient(timeout=60) as http:

            async def slow_call() -> None:  # one raw 2026-07-28 tools/call; the server dies under it
                with pytest.raises(httpx2.HTTPError):
                    await http.post(url, json=RAW_CALL, headers=RAW_HEADERS)

            async with anyio.create_task_group() as tg:
                tg.start_soon(slow_call)
                with anyio.fail_after(10):
                    while not SqliteAuditStore(audit_path).open_calls():
                        await anyio.sleep(0.05)
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
    (open_call,) = SqliteAuditStore(audit_path).open_calls()
    with serving(demo_config):
        pass  # start-up closes what the killed process left open
    assert [e["type"] for e in SqliteAuditStore(audit_path).call(open_call)] == [ev.REQUESTED, ev.INTERRUPTED]


@requirement("inv:loopback-only-http")
def test_http_refuses_a_non_loopback_address_without_oidc(demo_config: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "bastion.server", "serve", "--config", str(demo_config), "--http", "0.0.0.0:8765"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode != 0 and "loopback addresses only" in result.stderr


def test_health_and_readiness_say_whether_the_audit_store_can_be_written(demo_config: Path) -> None:
    import sqlite3

    import httpx

    with serving(demo_config) as (_, url):
        base = url.removesuffix("/mcp")
        assert httpx.get(f"{base}/healthz", timeout=10).text == "ok\n"
        ready = httpx.get(f"{base}/readyz", timeout=10)
        assert ready.status_code == 200 and ready.json() == {"ready": True}
        holder = sqlite3.connect(demo_config.parent / "bastion-audit.db", isolation_level=None)
        holder.execute("BEGIN EXCLUSIVE")  # another process holds the write lock
        try:
            locked = httpx.get(f"{base}/readyz", timeout=10)
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert locked.status_code == 503 and "database is locked" in locked.json()["problem"]
        assert httpx.get(f"{base}/readyz", timeout=10).status_code == 200
