"""The baseline every MCP benchmark here is measured against: a tool that does nothing.

    python tests/bench/noop_server.py PORT     # streamable HTTP on 127.0.0.1:PORT

In memory: ``Client(noop)``.
"""

from __future__ import annotations

import sys

from mcp.server import MCPServer

noop = MCPServer("noop")


@noop.tool()
async def ping(connection: str, sql: str) -> dict[str, int]:
    return {"ok": 1}


if __name__ == "__main__":
    noop.run("streamable-http", host="127.0.0.1", port=int(sys.argv[1]))
