"""Bastion beside the MCP servers people would pick instead, on the same PostgreSQL table.

    .venv/bin/python tests/bench/bench_peers.py [--rounds 5] [--calls 100] [--seconds 4] [--peers DIR]
                                                [--stdio-only | --http-only]

Each server is its own process, driven by the MCP Python SDK's client, as an agent's host would:
Bastion (`bastion serve`: parse, decide, record durably, cap, run read-only as its login), DBHub
(`@bytebase/dbhub`) and the reference PostgreSQL server (`@modelcontextprotocol/server-postgres`), both
installed from npm into a scratch folder (``--peers``; nothing of theirs is kept in this repository).
Postgres MCP Pro is not on this machine's package index, so it is not measured. A fourth server,
`sdk-bare` (tests/bench/bare_sdk_server.py), is the floor of any server on the MCP Python SDK: Bastion's
tool and result shape with nothing of Bastion in it (psycopg only), over stdio and HTTP alike. On stdio,
`bastion-ee` is Bastion with `[audit] sync = "every-event"` (a call's end fsynced before the answer, not
within 50 ms after): what the default saves.

First stdio, two workloads, each with varied texts (an agent does not repeat one query): a point query
by a random id, and a 1,000-row range from a random start. Rounds are interleaved (every server once
per round, in a shuffled order); the ratio to Bastion is taken per round, and the medians printed.
CPU: the client's (this process) and the server's (its process tree, from /proc) per call.

Then streamable HTTP: each server started once as its own HTTP process on a free loopback port, and
1, 4 and 16 concurrent clients (each its own SDK ``Client`` over ``streamable_http_client`` with its own
connection pool, all in this process), each sending varied point queries one after another for
``--seconds``. Reported per server: calls per second, the ratio to Bastion taken per round (median of
rounds), the server's CPU per call (its process tree, from /proc) and this client process's CPU per
call and how busy it was (near 100% of a core means the client, not the server, set the pace). The
reference server has no HTTP transport (stdio only), so it is not in the HTTP part.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import httpx2
import psycopg

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1]))

from bench_postgres import bench_database, free_port, wait_port  # noqa: E402

PEERS = {"@bytebase/dbhub": "1.4.0", "@modelcontextprotocol/server-postgres": "0.6.2"}
TICKS = os.sysconf("SC_CLK_TCK")


def install_peers(folder: Path) -> Path:
    if not (folder / "node_modules" / ".bin" / "dbhub").exists():
        if shutil.which("npm") is None:
            sys.exit("the peers are npm packages: install Node.js and npm (apt-get install -y nodejs npm)")
        folder.mkdir(parents=True, exist_ok=True)
        subprocess.run(["npm", "install", "--silent", "--no-audit", "--no-fund", "--prefix", str(folder),
                        *(f"{name}@{version}" for name, version in PEERS.items())], check=True)
    return folder / "node_modules" / ".bin"


def url(dsn: str) -> str:
    p = psycopg.conninfo.conninfo_to_dict(dsn)
    return f"postgres://{p.get('user', 'postgres')}@{p.get('host', '127.0.0.1')}:{p.get('port', 5432)}/{p['dbname']}?sslmode=disable"


def bastion_call(q: str) -> tuple[str, dict[str, Any]]:
    return "sql_query", {"connection": "pg", "sql": q}


def servers(bin_dir: Path, config: Path, dsn: str) -> dict[str, tuple[list[str], Callable[[str], tuple[str, dict[str, Any]]]]]:
    """name → (command, how a SQL text becomes that server's tool call)."""
    bastion = str(Path(sys.executable).parent / "bastion")
    # The same gateway with `[audit] sync = "every-event"`: what fsyncing a call's end before the
    # answer costs (the default fsyncs it within 50 ms after).
    strict = config.with_name("bastion-every-event.toml")
    strict.write_text(config.read_text().replace('path = "audit.db"', 'path = "audit-every-event.db"\nsync = "every-event"'))
    return {
        "bastion": ([bastion, "serve", "--config", str(config)], bastion_call),
        "bastion-ee": ([bastion, "serve", "--config", str(strict)], bastion_call),
        "dbhub": ([str(bin_dir / "dbhub"), "--transport", "stdio", f"--dsn={url(dsn)}"],
                  lambda q: ("execute_sql", {"sql": q})),
        "reference": ([str(bin_dir / "mcp-server-postgres"), url(dsn)], lambda q: ("query", {"sql": q})),
        # The SDK's floor: Bastion's tool and result shape with nothing of Bastion in it.
        "sdk-bare": ([sys.executable, str(HERE / "bare_sdk_server.py"), dsn], bastion_call),
    }


def http_servers(bin_dir: Path, config: Path,
                 dsn: str) -> dict[str, tuple[Callable[[int], list[str]], Callable[[str], tuple[str, dict[str, Any]]]]]:
    """name → (command serving streamable HTTP on 127.0.0.1:port, how a SQL text becomes a tool call).
    The reference server speaks stdio only."""
    bastion = str(Path(sys.executable).parent / "bastion")
    stdio = servers(bin_dir, config, dsn)
    return {
        "bastion": (lambda port: [bastion, "serve", "--config", str(config), "--http", f"127.0.0.1:{port}"],
                    stdio["bastion"][1]),
        "dbhub": (lambda port: [str(bin_dir / "dbhub"), "--transport", "http", "--host", "127.0.0.1",
                                "--port", str(port), f"--dsn={url(dsn)}"], stdio["dbhub"][1]),
        "sdk-bare": (lambda port: [sys.executable, str(HERE / "bare_sdk_server.py"), dsn, str(port)], bastion_call),
    }


def tree_cpu(root: int) -> float:
    """CPU seconds of a process and its descendants (from /proc)."""
    children: dict[int, list[int]] = {}
    stats: dict[int, list[str]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            stats[int(entry.name)] = fields
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    total, stack = 0.0, [root]
    while stack:
        pid = stack.pop()
        if pid in stats:
            total += (int(stats[pid][11]) + int(stats[pid][12])) / TICKS
        stack += children.get(pid, [])
    return total


def texts(kind: str, n: int) -> list[str]:
    if kind == "point":
        return [f"SELECT id, total, note FROM orders WHERE id = {random.randint(1, 10_000)}" for _ in range(n)]
    return [f"SELECT id, a, b FROM big_500000 WHERE id >= {s} ORDER BY id LIMIT 1000"
            for s in (random.randint(1, 499_000) for _ in range(n))]


async def measure(command: list[str], call: Callable[[str], tuple[str, dict[str, Any]]], queries: list[str],
                  cwd: Path) -> tuple[float, float, float]:
    """ms per call, client CPU ms per call, server CPU ms per call."""
    from mcp import Client
    from mcp.client.stdio import StdioServerParameters, stdio_client

    before_children = set(_children())
    params = StdioServerParameters(command=command[0], args=command[1:], cwd=str(cwd), env=dict(os.environ))
    with open(os.devnull, "w") as quiet:  # the peers print banners on stderr
        async with Client(stdio_client(params, errlog=quiet)) as client:
            server = next(iter(set(_children()) - before_children), None)
            name, args = call(queries[0])
            check(await client.call_tool(name, args), command[0])  # warm: connections, caches, JIT
            cpu0, srv0, t0 = _self_cpu(), tree_cpu(server) if server else 0.0, time.perf_counter()
            for query in queries:
                name, args = call(query)
                check(await client.call_tool(name, args), command[0])
            elapsed, cpu, srv = time.perf_counter() - t0, _self_cpu() - cpu0, (tree_cpu(server) if server else 0.0) - srv0
    n = len(queries)
    return elapsed / n * 1e3, cpu / n * 1e3, srv / n * 1e3


def check(result: Any, who: str) -> None:
    if result.is_error:
        raise RuntimeError(f"{who}: {result.content[0].text[:300]}")


async def http_rate(endpoint: str, server: int, call: Callable[[str], tuple[str, dict[str, Any]]], clients: int,
                    seconds: float) -> tuple[float, float, float, float]:
    """calls/s, server CPU ms per call, client CPU ms per call, client busy (CPU s per second).

    Every client connects and makes one call before the clock starts; each then sends varied point
    queries back to back until ``seconds`` have passed (a call in flight then is finished and counted,
    and the time runs until the last one ends)."""
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    ready, go = anyio.Event(), anyio.Event()
    connected = done = 0
    deadline = 0.0

    async def client() -> None:
        nonlocal connected, done
        async with (httpx2.AsyncClient(timeout=60) as http,
                    Client(streamable_http_client(endpoint, http_client=http)) as session):
            check(await session.call_tool(*call(texts("point", 1)[0])), endpoint)
            connected += 1
            if connected == clients:
                ready.set()
            await go.wait()
            while time.monotonic() < deadline:
                check(await session.call_tool(*call(texts("point", 1)[0])), endpoint)
                done += 1

    async with anyio.create_task_group() as tasks:
        for _ in range(clients):
            tasks.start_soon(client)
        with anyio.fail_after(60):
            await ready.wait()
        cpu0, srv0, t0 = _self_cpu(), tree_cpu(server), time.perf_counter()
        deadline = time.monotonic() + seconds
        go.set()
    # The task group has waited for every client's last call (and its disconnect: a few ms of CPU
    # against hundreds of calls).
    elapsed, cpu, srv = time.perf_counter() - t0, _self_cpu() - cpu0, tree_cpu(server) - srv0
    return done / elapsed, srv / done * 1e3, cpu / done * 1e3, cpu / elapsed


def _children() -> list[int]:
    me = os.getpid()
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == me:
                    out.append(int(entry.name))
            except OSError:
                pass
    return out


def _self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def stdio_benchmarks(bin_dir: Path, config: Path, dsn: str, rounds: int, calls: int) -> None:
    table = servers(bin_dir, config, dsn)
    for kind, n in (("point", calls), ("1,000 rows", max(calls // 5, 10))):
        results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in table}
        ratios: dict[str, list[float]] = {name: [] for name in table}
        for _ in range(rounds):
            queries = texts("point" if kind == "point" else "rows", n)
            this_round = {}
            for name in random.sample(list(table), len(table)):
                command, call = table[name]
                this_round[name] = await measure(command, call, queries, config.parent)
                results[name].append(this_round[name])
            for name in table:
                ratios[name].append(this_round[name][0] / this_round["bastion"][0])
        print(f"{kind}: stdio, one client, {n} varied calls x {rounds} rounds (medians)")
        print(f"  {'server':<10} {'ms/call':>8} {'x Bastion':>10} {'client CPU ms':>14} {'server CPU ms':>14}")
        for name, rows in results.items():
            ms, client, server = (statistics.median(r[i] for r in rows) for i in range(3))
            print(f"  {name:<10} {ms:8.2f} {statistics.median(ratios[name]):10.2f} {client:14.2f} {server:14.2f}")


async def http_benchmarks(bin_dir: Path, config: Path, dsn: str, rounds: int, seconds: float,
                          levels: list[int]) -> None:
    table = http_servers(bin_dir, config, dsn)
    procs: dict[str, tuple[subprocess.Popen[bytes], int]] = {}
    try:
        for name, (command, _) in table.items():
            port = free_port()
            procs[name] = (subprocess.Popen(command(port), cwd=config.parent, stdout=subprocess.DEVNULL,
                                            stderr=subprocess.DEVNULL), port)
            wait_port(port)
        for clients in levels:
            results: dict[str, list[tuple[float, float, float, float]]] = {name: [] for name in table}
            ratios: dict[str, list[float]] = {name: [] for name in table}
            for _ in range(rounds):
                this_round = {}
                for name in random.sample(list(table), len(table)):
                    proc, port = procs[name]
                    this_round[name] = await http_rate(f"http://127.0.0.1:{port}/mcp", proc.pid, table[name][1],
                                                       clients, seconds)
                    results[name].append(this_round[name])
                for name in table:
                    ratios[name].append(this_round[name][0] / this_round["bastion"][0])
            print(f"point: streamable HTTP, {clients} concurrent client{'s' if clients > 1 else ''}, "
                  f"varied calls for {seconds:g} s x {rounds} rounds (medians)")
            print(f"  {'server':<10} {'calls/s':>8} {'x Bastion':>10} {'server CPU ms':>14} {'client CPU ms':>14} "
                  f"{'client busy':>12}")
            for name, rows in results.items():
                rate, server, client, busy = (statistics.median(r[i] for r in rows) for i in range(4))
                print(f"  {name:<10} {rate:8.0f} {statistics.median(ratios[name]):10.2f} {server:14.2f} {client:14.2f} "
                      f"{busy:12.0%}")
        print("  (the reference server has no HTTP transport, only stdio: not measured over HTTP)")
    finally:
        for proc, _ in procs.values():
            proc.terminate()
            proc.wait(10)


async def main() -> None:
    logging.getLogger("httpx2").setLevel(logging.WARNING)  # one INFO line per request otherwise
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=100, help="point calls per stdio measure (1,000-row: a fifth)")
    parser.add_argument("--seconds", type=float, default=4.0, help="length of one HTTP measure")
    parser.add_argument("--clients", default="1,4,16", help="concurrent HTTP clients, comma-separated")
    parser.add_argument("--peers", type=Path, default=Path("/tmp/bastion-peers"))
    only = parser.add_mutually_exclusive_group()
    only.add_argument("--stdio-only", action="store_true")
    only.add_argument("--http-only", action="store_true")
    args = parser.parse_args()
    bin_dir = install_peers(args.peers)
    with bench_database() as (dsn, config):
        if not args.http_only:
            await stdio_benchmarks(bin_dir, config, dsn, args.rounds, args.calls)
        if not args.stdio_only:
            await http_benchmarks(bin_dir, config, dsn, args.rounds, args.seconds,
                                  [int(n) for n in args.clients.split(",")])


if __name__ == "__main__":
    anyio.run(main)
