"""Several gateways, one record: a load test and a benchmark of the PostgreSQL audit store.

    .venv/bin/python tests/bench/bench_two_gateways.py [--clients 32] [--calls 200] [--rounds 1]

Scenarios, in one run, each on a fresh store (every `bastion serve --http` its own process, the
target the demo's SQLite shop, the identity a read-only developer):

- ``pg x2``: two gateways on one PostgreSQL store (one chain, serialised by an advisory lock); the
  clients split between them, as a load balancer would;
- ``pg x2, a chain each``: two gateways each on its own schema of the same database (one chain per
  gateway, no lock between them): the alternative the design was measured against;
- ``pg x1``: one gateway on a PostgreSQL store, all clients on it;
- ``sqlite x1``: one gateway on the SQLite store (the default), all clients on it.

Each of ``--clients`` MCP SDK clients (streamable HTTP, all in this process) makes ``--calls`` mixed
calls one after another: point reads (70%), 100-row reads (15%), statements the policy denies (10%)
and calls to a connection that does not exist (5%); each carries a unique ``reason``. Afterwards the
store is checked: every call exactly once as `call.requested` with exactly one terminal event, which
matches what the client saw (finished for an answer, denied for a refusal), and the chain verifies.
A scenario that does not finish within ``--timeout`` is a deadlock and fails the run.
Printed per scenario: calls per second (wall), p50 and p99 latency seen by the clients, and the
ratio of throughput to ``pg x1``.

With ``--store-only``, the store alone, no gateway: ``--writers`` processes, each with 8 threads
appending a call's two events at a time (group commit batches them), first on one chain, then each
process on a chain of its own (its own schema), for ``--seconds``; events per second, and how many
events one transaction carried on average. This isolates what the one chain's lock costs.

PostgreSQL from $BASTION_TEST_PG_DSN, else 127.0.0.1:5432 as postgres; a scratch database is created
and dropped.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import quote

import anyio
import httpx2
import psycopg
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from bastion.store import events as ev  # noqa: E402
from bastion.store import open_store  # noqa: E402
from bastion.store.verify import verify  # noqa: E402

ADMIN = os.environ.get("BASTION_TEST_PG_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=postgres")


def gateway_config(folder: Path, demo: Path, audit: str) -> Path:
    """A gateway serving the demo shop read-only to `dev`; ``audit`` is its [audit] line."""
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "bastion.toml"
    config.write_text(f"""
[identity]
subject = "dev"
groups = ["developers"]

[audit]
{audit}

[connections.demo]
kind = "sqlite"
target = "{demo}"

[[connections.demo.rules]]
id = "developers-read"
preset = "read-only"
groups = ["developers"]
""")
    return config


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serving(config: Path) -> Iterator[str]:
    """`bastion serve --http` on a free loopback port; its MCP URL."""
    port = _free_port()
    log = (config.parent / f"serve-{port}.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "bastion.server", "serve", "--config", str(config),
                             "--http", f"127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"bastion serve did not start: {(config.parent / log.name).read_text()}")
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


@dataclass
class Call:
    tag: str  # the unique reason
    sql: str
    connection: str = "demo"
    seconds: float = 0.0
    error: bool | None = None


@dataclass
class Outcome:
    calls: list[Call] = field(default_factory=list)
    wall: float = 0.0

    def latencies_ms(self) -> list[float]:
        return sorted(c.seconds * 1000 for c in self.calls)

    def summary(self) -> tuple[float, float, float]:
        """(calls per second, p50 ms, p99 ms)."""
        lat = self.latencies_ms()
        return len(self.calls) / self.wall, statistics.median(lat), lat[min(len(lat) - 1, int(len(lat) * 0.99))]


def plan(client: int, calls: int, rng: random.Random) -> list[Call]:
    out = []
    for i in range(calls):
        tag, roll = f"load c{client}-{i}", rng.random()
        if roll < 0.70:
            out.append(Call(tag, f"SELECT id, name, city FROM customers WHERE id = {rng.randint(1, 200)}"))
        elif roll < 0.85:
            out.append(Call(tag, f"SELECT id, status FROM orders ORDER BY id LIMIT 100 OFFSET {rng.randint(0, 50)}"))
        elif roll < 0.95:
            out.append(Call(tag, "DROP TABLE customers"))
        else:
            out.append(Call(tag, "SELECT 1", connection="nowhere"))
    return out


async def load(urls: list[str], clients: int, calls: int, seed: int = 7, timeout: float = 600) -> Outcome:
    """``clients`` SDK clients, client i on ``urls[i % len(urls)]``, each making its planned calls in turn."""
    rng = random.Random(seed)
    plans = [plan(n, calls, rng) for n in range(clients)]
    outcome = Outcome([c for p in plans for c in p])

    async def client(n: int) -> None:
        async with httpx2.AsyncClient(timeout=120) as http, \
                Client(streamable_http_client(urls[n % len(urls)], http_client=http)) as session:
            for call in plans[n]:
                started = time.perf_counter()
                result = await session.call_tool("sql_query", {"connection": call.connection, "sql": call.sql,
                                                               "reason": call.tag})
                call.seconds = time.perf_counter() - started
                call.error = bool(result.is_error)

    started = time.perf_counter()
    with anyio.fail_after(timeout):  # longer is a deadlock
        async with anyio.create_task_group() as tg:
            for n in range(clients):
                tg.start_soon(client, n)
    outcome.wall = time.perf_counter() - started
    return outcome


def check_record(targets: list[str], outcome: Outcome) -> list[str]:
    """What is wrong with the record of ``outcome``'s calls in the stores at ``targets`` (empty: all
    is well): each call exactly once, with exactly one terminal event matching what the client saw,
    and every chain verifying."""
    problems: list[str] = []
    requested: dict[str, list[dict[str, Any]]] = {}
    terminal: dict[str, list[str]] = {}
    for target in targets:
        store = open_store(target)
        try:
            for event in store.iter_all():
                if event["type"] == ev.REQUESTED and (event.get("reason") or "").startswith("load "):
                    requested.setdefault(event["reason"], []).append(event)
                elif event["type"] in ev.TERMINAL:
                    terminal.setdefault(event["call_id"], []).append(event["type"])
            report = verify(store.conn)
            if not report.ok:
                problems.append(f"{target}: the chain does not verify: {report.problems[:3]}")
        finally:
            store.close()
    for call in outcome.calls:
        found = requested.get(call.tag, [])
        if len(found) != 1:
            problems.append(f"{call.tag}: recorded {len(found)} times")
            continue
        ends = terminal.get(found[0]["call_id"], [])
        expected = ev.DENIED if call.error else ev.FINISHED
        if ends != [expected]:
            problems.append(f"{call.tag}: terminal events {ends}, the client saw {'an error' if call.error else 'an answer'}")
    return problems


@contextmanager
def scratch_database() -> Iterator[str]:
    """A scratch database, dropped after; its postgresql:// URL (no schema)."""
    name = f"bastion_bench_gw_{os.getpid()}"
    params = psycopg.conninfo.conninfo_to_dict(ADMIN)
    with psycopg.connect(ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"postgresql://{params.get('user', 'postgres')}@{params.get('host', '127.0.0.1')}:{params.get('port', 5432)}/{name}"
    finally:
        with psycopg.connect(ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def schema_url(database_url: str, schema: str) -> str:
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    return f"{database_url}?options={quote(f'-csearch_path={schema}')}"


async def scenario(name: str, stores: list[str], gateways: int, tmp: Path, demo: Path, clients: int,
                   calls: int, timeout: float) -> Outcome:
    """``gateways`` gateways, gateway i on ``stores[i % len(stores)]``, under the load; the record checked."""
    with ExitStack() as stack:
        urls = []
        for g in range(gateways):
            target = stores[g % len(stores)]
            audit = f'url = "{target}"' if target.startswith("postgresql://") else f'path = "{target}"'
            urls.append(stack.enter_context(serving(gateway_config(tmp / f"{name}-{g}", demo, audit))))
        outcome = await load(urls, clients, calls, timeout=timeout)
    problems = check_record(stores, outcome)
    if problems:
        raise SystemExit(f"{name}: the record is wrong ({len(problems)} problems), e.g. {problems[:5]}")
    return outcome


def _append_for(target: str, seconds: float, out: Any) -> None:
    """One writer process: 8 threads appending (requested, finished) pairs for ``seconds``."""
    import threading

    store = open_store(target)
    commits = [0]
    conn = store.conn
    execute = conn.execute

    def counting(sql: str, *args: Any) -> Any:
        commits[0] += sql == "COMMIT"
        return execute(sql, *args)

    conn.execute = counting  # type: ignore[method-assign]
    written = [0] * 8
    stop = time.monotonic() + seconds

    def one(t: int) -> None:
        while time.monotonic() < stop:
            store.append_many([{"type": ev.REQUESTED, "call_id": f"{os.getpid()}-{t}-{written[t]}", "text": "SELECT 1"},
                               {"type": ev.FINISHED, "call_id": f"{os.getpid()}-{t}-{written[t]}", "row_count": 1}])
            written[t] += 2

    threads = [threading.Thread(target=one, args=(t,)) for t in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    store.close()
    out.put((sum(written), commits[0]))


def store_only(writers: int, seconds: float) -> None:
    import multiprocessing

    spawn = multiprocessing.get_context("spawn")
    with scratch_database() as database:
        for name, targets in (("one chain (advisory lock)", [schema_url(database, "one")] * writers),
                              ("a chain per writer", [schema_url(database, f"own_{n}") for n in range(writers)])):
            for target in set(targets):
                open_store(target).close()  # migrated before the clock starts
            out = spawn.Queue()
            processes = [spawn.Process(target=_append_for, args=(t, seconds, out)) for t in targets]
            for p in processes:
                p.start()
            results = [out.get(timeout=seconds + 120) for _ in processes]
            for p in processes:
                p.join(60)
            events, commits = sum(r[0] for r in results), sum(r[1] for r in results)
            problems = [t for t in set(targets) if not _verifies(t)]
            print(f"{name:28} {writers} processes x 8 threads: {events / seconds:8.0f} events/s, "
                  f"{events / max(commits, 1):5.1f} events per transaction" + (f"  BROKEN {problems}" if problems else ""),
                  flush=True)


def _verifies(target: str) -> bool:
    store = open_store(target)
    try:
        return verify(store.conn).ok
    finally:
        store.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--calls", type=int, default=200, help="calls per client")
    parser.add_argument("--rounds", type=int, default=1, help="every scenario this many times, interleaved")
    parser.add_argument("--timeout", type=float, default=900, help="seconds a scenario may take (longer: deadlock)")
    parser.add_argument("--store-only", action="store_true", help="the store alone: one chain against a chain per writer")
    parser.add_argument("--writers", type=int, default=4, help="--store-only: writer processes")
    parser.add_argument("--seconds", type=float, default=10, help="--store-only: seconds per scenario")
    args = parser.parse_args()
    if args.store_only:
        store_only(args.writers, args.seconds)
        return
    from bastion.server.demo import build_database

    tmp = Path(tempfile.mkdtemp(prefix="bastion-bench-gw-"))
    results: dict[str, list[tuple[float, float, float]]] = {}
    try:
        demo = build_database(tmp / "demo.db")
        with scratch_database() as database:
            for r in range(args.rounds):
                names = ["pg x2", "pg x2, a chain each", "pg x1", "sqlite x1"]
                for name in names:
                    key = name.replace(" ", "").replace(",", "")
                    if name == "pg x2":
                        stores, gateways = [schema_url(database, f"one_{r}")], 2
                    elif name == "pg x2, a chain each":
                        stores, gateways = [schema_url(database, f"a_{r}"), schema_url(database, f"b_{r}")], 2
                    elif name == "pg x1":
                        stores, gateways = [schema_url(database, f"single_{r}")], 1
                    else:
                        stores, gateways = [str(tmp / f"{key}-{r}.db")], 1
                    outcome = await scenario(f"{key}-{r}", stores, gateways, tmp, demo, args.clients, args.calls,
                                             args.timeout)
                    results.setdefault(name, []).append(outcome.summary())
                    rate, p50, p99 = outcome.summary()
                    print(f"round {r + 1} {name:22} {len(outcome.calls)} calls recorded once each, chain verified: "
                          f"{rate:7.1f} calls/s  p50 {p50:6.1f} ms  p99 {p99:7.1f} ms", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    base = statistics.median(r[0] for r in results["pg x1"])
    print(f"\n{args.clients} clients x {args.calls} mixed calls, medians of {args.rounds} round(s):")
    print(f"{'scenario':24} {'calls/s':>9} {'vs pg x1':>9} {'p50 ms':>8} {'p99 ms':>8}")
    for name, rows in results.items():
        rate = statistics.median(r[0] for r in rows)
        print(f"{name:24} {rate:9.1f} {rate / base:8.2f}x {statistics.median(r[1] for r in rows):8.1f} "
              f"{statistics.median(r[2] for r in rows):8.1f}")


if __name__ == "__main__":
    anyio.run(main)
