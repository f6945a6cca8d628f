"""Benchmark the guarded path on the real PostgreSQL: one call's added cost, throughput over
streamable HTTP under concurrency, and large results (time and the gateway's peak memory).

    .venv/bin/python tests/bench/bench_postgres.py [--rounds 5] [--seconds 4]

PostgreSQL from $BASTION_TEST_PG_DSN, else 127.0.0.1:5432 as postgres; a database is created and
dropped. Prints medians and ratios against baselines measured in the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx2
import psycopg
from psycopg import sql

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
ADMIN = os.environ.get("BASTION_TEST_PG_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=postgres")
SELECT = "SELECT id, total FROM orders WHERE id = 7"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port}")


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def setup(database: str) -> str:
    """The bench database, and the DSN of a login that may only read it (the gateway serves no login
    that can do more than its rules allow; the peers get the same login)."""
    with psycopg.connect(ADMIN, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(database)))
    params = psycopg.conninfo.conninfo_to_dict(ADMIN) | {"dbname": database}
    dsn = psycopg.conninfo.make_conninfo(**params)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE orders AS SELECT g AS id, g * 1.5 AS total, md5(g::text) AS note "
                     "FROM generate_series(1, 10000) g; ALTER TABLE orders ADD PRIMARY KEY (id)")
        for n in (5_000, 500_000, 5_000_000):
            conn.execute(f"CREATE TABLE big_{n} AS SELECT g AS id, md5(g::text) AS a, g * 2 AS b FROM generate_series(1, {n}) g")
        # Vacuumed and analysed now, so autovacuum does not compete with the measurements.
        for table in ("orders", "big_5000", "big_500000", "big_5000000"):
            conn.execute(f"VACUUM ANALYZE {table}")
        conn.execute(sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA public TO {}").format(sql.Identifier(database)))
    return psycopg.conninfo.make_conninfo(**(params | {"user": database}))


def config(tmp: Path, dsn: str) -> Path:
    path = tmp / "bastion.toml"
    path.write_text(f"""
[identity]
subject = "bench"
[audit]
path = "audit.db"
[connections.pg]
kind = "postgres"
target = "{dsn}"
  [[connections.pg.rules]]
  preset = "read-only"
  max_rows = 1000
  max_bytes = 4000000
""")
    return path


async def one_call_cost(config_path: Path, dsn: str, rounds: int, calls: int = 200) -> None:
    from mcp import Client

    from measure import ms_per_call
    from noop_server import noop
    from bastion.server.app import create_server
    from bastion.server.config import load
    from bastion.store import SqliteAuditStore
    from bastion.tools.recorder import Recorder

    # What one durable audit append costs here (fsync per commit), the floor of record-before-run.
    recorder = Recorder(SqliteAuditStore(config_path.parent / "appends.db"))
    event = {"type": "call.requested", "call_id": "0" * 32, "identity": {"subject": "bench"}, "connection": "pg",
             "tool": "sql_query", "text": SELECT, "decision": {"verdict": "allow", "rules": ["read-only"]}}
    direct, baseline, guarded, appends = [], [], [], []
    conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    arguments = {"connection": "pg", "sql": SELECT}

    async def direct_query() -> None:
        await (await conn.execute(SELECT)).fetchall()

    async with Client(create_server(load(config_path))) as bastion, Client(noop) as plain:
        for _ in range(rounds):
            direct.append(await ms_per_call(direct_query, calls))
            baseline.append(await ms_per_call(lambda: plain.call_tool("ping", arguments), calls))
            guarded.append(await ms_per_call(lambda: bastion.call_tool("sql_query", arguments), calls))
            appends.append(await ms_per_call(lambda: recorder.append(event), calls))
    await conn.close()
    d, b, g, a = (statistics.median(x) for x in (direct, baseline, guarded, appends))
    added = g - b - d
    print(f"2. sql_query on PostgreSQL through the in-memory MCP client, {calls} calls x {rounds} rounds (ms per call):")
    print(f"  direct psycopg query              {d:8.3f}")
    print(f"  no-op MCP tool                    {b:8.3f}")
    print(f"  guarded sql_query                 {g:8.3f}   Bastion's own added median: {added:.3f} ms   goal <= 0.4 ms")
    print(f"  one durable audit append          {a:8.3f}   a call makes two (requested, finished): {2 * a:.3f} ms of the added;"
          f" the rest {added - 2 * a:.3f} ms")


def tools_call(tool: str, args: dict[str, str]) -> tuple[dict[str, str], dict[str, object]]:
    """Headers and body of one self-contained 2026-07-28 tools/call POST."""
    headers = {"MCP-Protocol-Version": "2026-07-28", "Mcp-Method": "tools/call", "Mcp-Name": tool,
               "Accept": "application/json, text/event-stream"}
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": tool, "arguments": args,
                       "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28",
                                 "io.modelcontextprotocol/clientCapabilities": {}}}}
    return headers, body


async def http_rate(url: str, tool: str, args: dict[str, str], clients: int, seconds: float) -> float:
    headers, body = tools_call(tool, args)
    done = 0
    deadline = time.monotonic() + seconds
    limits = httpx2.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx2.AsyncClient(timeout=60, limits=limits) as http:
        async def worker() -> None:
            nonlocal done
            while time.monotonic() < deadline:
                response = await http.post(url, json=body, headers=headers)
                response.raise_for_status()
                done += 1
        await asyncio.gather(*(worker() for _ in range(clients)))
    return done / seconds


def http_benchmarks(config_path: Path, rounds: int, seconds: float) -> None:
    bastion_port, noop_port = free_port(), free_port()
    bastion = subprocess.Popen([sys.executable, "-m", "bastion.server", "serve", "--config", str(config_path), "--http",
                                f"127.0.0.1:{bastion_port}"], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    noop = subprocess.Popen([sys.executable, str(HERE / "noop_server.py"), str(noop_port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        wait_port(bastion_port)
        wait_port(noop_port)
        print(f"3. streamable HTTP, {seconds:g} s per measure, median of {rounds} (calls per second):")
        for clients in (1, 4, 16, 64):
            guarded = statistics.median(asyncio.run(http_rate(f"http://127.0.0.1:{bastion_port}/mcp", "sql_query",
                                                              {"connection": "pg", "sql": SELECT}, clients, seconds))
                                        for _ in range(rounds))
            plain = statistics.median(asyncio.run(http_rate(f"http://127.0.0.1:{noop_port}/mcp", "ping",
                                                            {"connection": "pg", "sql": SELECT}, clients, seconds))
                                      for _ in range(rounds))
            print(f"  {clients:>2} clients: guarded SELECT {guarded:6.0f}/s   no-op tool {plain:6.0f}/s   "
                  f"{guarded / plain:.0%}   goal >= 70%")
        print("4. large results through streamable HTTP (max_rows 1000, server-side cursor):")
        small = None
        for n in (5_000, 500_000, 5_000_000):
            times = []
            for _ in range(rounds):
                start = time.perf_counter()
                asyncio.run(http_rate_once(f"http://127.0.0.1:{bastion_port}/mcp", f"SELECT * FROM big_{n}"))
                times.append((time.perf_counter() - start) * 1e3)
            rss = peak_rss_mb(bastion.pid)
            small = small or rss
            print(f"  {n:>9,} rows: time to result {statistics.median(times):7.1f} ms   gateway peak RSS {rss:6.1f} MB "
                  f"({rss / small:.2f}x the small case; goal <= 1.2x)")
    finally:
        for proc in (bastion, noop):
            proc.terminate()
            proc.wait(10)


async def http_rate_once(url: str, text: str) -> None:
    headers, body = tools_call("sql_query", {"connection": "pg", "sql": text})
    async with httpx2.AsyncClient(timeout=120) as http:
        (await http.post(url, json=body, headers=headers)).raise_for_status()


def arguments() -> argparse.Namespace:
    import logging

    logging.getLogger("httpx2").setLevel(logging.WARNING)  # one INFO line per request otherwise
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=4.0)
    return parser.parse_args()


@contextlib.contextmanager
def bench_database() -> Iterator[tuple[str, Path]]:
    """A database of its own for one run (dropped after), and a gateway config for it."""
    database = f"bastion_bench_{uuid.uuid4().hex[:8]}"
    dsn = setup(database)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            yield dsn, config(Path(tmp), dsn)
    finally:
        with psycopg.connect(ADMIN, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(database)))
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(database)))


def main() -> None:
    args = arguments()
    with bench_database() as (dsn, path):
        sys.path.insert(0, str(ROOT))
        asyncio.run(one_call_cost(path, dsn, args.rounds))
        http_benchmarks(path, args.rounds, args.seconds)


if __name__ == "__main__":
    main()
