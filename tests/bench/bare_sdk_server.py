"""The floor of any server built on the MCP Python SDK: Bastion's `sql_query` tool with nothing of
Bastion in it. It sends the text to PostgreSQL through a psycopg pool and answers in Bastion's own
result shape (the same text table and structured content), with no parsing, policy, audit, caps or
transaction of its own.

    python tests/bench/bare_sdk_server.py DSN            # stdio
    python tests/bench/bare_sdk_server.py DSN PORT       # streamable HTTP on 127.0.0.1:PORT

Whatever Bastion costs above this server is Bastion's; what this costs above DBHub is the SDK's (and
Python's).
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from mcp.server import MCPServer
from mcp.server.mcpserver import Context
from mcp.types import CallToolResult, TextContent
from psycopg_pool import AsyncConnectionPool

from bastion.server import render
from bastion.tools.executors.base import json_value

DSN = sys.argv[1] if len(sys.argv) > 1 else ""


@asynccontextmanager
async def lifespan(server: MCPServer) -> AsyncIterator[AsyncConnectionPool]:
    async with AsyncConnectionPool(DSN, kwargs={"autocommit": True}, min_size=1, max_size=8) as pool:
        yield pool


bare = MCPServer("bare", lifespan=lifespan)


@bare.tool()
async def sql_query(connection: str, sql: str, ctx: Context) -> CallToolResult:
    """Run SQL."""
    pool: Any = ctx.request_context.lifespan_context
    async with pool.connection() as conn:
        cur = await conn.execute(sql)
        columns = [d.name for d in cur.description or []]
        rows: list[list[Any]] = [[json_value(v) for v in row] for row in await cur.fetchall()]
    text = render.table(columns, rows, footer=f"({len(rows)} rows)")
    out = {"columns": columns, "rows": rows, "row_count": len(rows), "truncated": False}
    return CallToolResult(content=[TextContent(type="text", text=text)], structured_content=out)


if __name__ == "__main__":
    if len(sys.argv) > 2:
        bare.run("streamable-http", host="127.0.0.1", port=int(sys.argv[2]))
    else:
        bare.run()
