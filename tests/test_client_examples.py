"""examples/clients/: each file is valid JSON in its client's shape, and each stdio entry, pointed at
this checkout, starts a real Bastion that the SDK's stdio client can initialise and list tools from."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters, stdio_client

ROOT = Path(__file__).resolve().parent.parent
CLIENTS = ROOT / "examples" / "clients"
FILES = {  # file → the key its client keeps servers under
    "devin/config.json": "mcpServers",
    "claude-code/.mcp.json": "mcpServers",
    "cursor/.cursor/mcp.json": "mcpServers",
    "vscode/.vscode/mcp.json": "servers",
}
PLACEHOLDER_BIN = "/opt/bastion/.venv/bin/bastion"


def servers(name: str) -> dict[str, dict[str, Any]]:
    return json.loads((CLIENTS / name).read_text())[FILES[name]]


@pytest.mark.parametrize("name", FILES)
def test_each_client_file_has_a_stdio_and_an_http_entry(name: str) -> None:
    entries = servers(name)
    stdio, http = entries["bastion"], entries["bastion-http"]
    assert stdio["command"] == PLACEHOLDER_BIN and stdio["args"][:1] == ["serve"]
    assert http["url"].endswith("/mcp") and http["headers"]["Authorization"].startswith("Bearer ${")
    if name.startswith("vscode"):
        inputs = {i["id"]: i for i in json.loads((CLIENTS / name).read_text())["inputs"]}
        assert inputs["bastion-token"]["password"] is True and "${input:bastion-token}" in http["headers"]["Authorization"]
    if name.startswith(("claude-code", "vscode")):
        assert stdio["type"] == "stdio" and http["type"] == "http"


def test_the_readme_shows_the_client_files_paths() -> None:
    readme = (ROOT / "README.md").read_text()
    blocks = [json.loads(b) for b in re.findall(r"```json\n(.*?)```", readme, re.S)]
    shown = [b["mcpServers"]["bastion"] for b in blocks if "bastion" in b.get("mcpServers", {})]
    assert shown and all(entry == servers("cursor/.cursor/mcp.json")["bastion"] for entry in shown)
    for name in FILES:  # the same command and config path everywhere
        assert servers(name)["bastion"]["command"] == PLACEHOLDER_BIN and PLACEHOLDER_BIN in readme
        assert "/opt/bastion/bastion.toml" in servers(name)["bastion"]["args"]
    assert "/opt/bastion" in (CLIENTS / "README.md").read_text() and "/path/to" not in readme


@pytest.mark.anyio
@pytest.mark.parametrize("name", FILES)
async def test_each_stdio_entry_starts_a_working_bastion(name: str, demo_config: Path) -> None:
    entry = servers(name)["bastion"]
    command = str(Path(sys.executable).parent / "bastion")
    args = [str(demo_config) if a == "/opt/bastion/bastion.toml" else a for a in entry["args"]]
    params = StdioServerParameters(command=command, args=args, env=entry.get("env") or None, cwd=str(demo_config.parent))
    async with Client(stdio_client(params)) as client:
        tools = {t.name for t in (await client.list_tools()).tools}
        listed = await client.call_tool("list_connections", {})
    assert {"list_connections", "sql_query", "shell_run", "check", "describe"} <= tools
    assert {c["name"] for c in listed.structured_content["connections"]} >= {"demo"}
