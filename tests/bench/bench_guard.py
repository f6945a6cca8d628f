"""Benchmark: what the guard costs per call, against baselines measured in the same run.

    .venv/bin/python tests/bench/bench_guard.py [--rounds 7]

Prints medians over rounds (each round times the whole corpus) and ratios. Not part of the tests.
Sections 1 and 1b time the process's CPU (time.process_time), not the wall clock: the guard is
pure CPU in one thread, and on a shared machine the wall clock mostly measures the other load.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import sqlglot

from bastion.policy import ConnectionPolicy, Identity, analyse, decide
from bastion.policy.presets import READ_ONLY
from bastion.policy.sql import analyze as analyze_module

ROOT = Path(__file__).resolve().parents[2]


def golden() -> list[str]:
    """The golden corpus's PostgreSQL statements that the guard can analyse (harmful ones included)."""
    import tomllib

    cases = tomllib.loads((ROOT / "tests" / "golden" / "sql_cases.toml").read_text())["case"]
    return [c["text"] for c in cases if c["dialect"] == "postgres" and analyse(c["text"], "postgres").error is None]


def corpus(n: int = 240) -> list[str]:
    """Analytics-style queries over the demo schema, deterministic."""
    rng = random.Random(7)
    cols = ["o.id", "o.status", "o.ordered_at", "c.city", "c.name", "p.category", "i.quantity"]
    out = []
    for k in range(n):
        picked = rng.sample(cols, 3)
        where = rng.choice(["o.status = 'paid'", "c.city IN ('Oslo', 'Pune')", "i.quantity > 2", "o.ordered_at >= '2026-01-01'"])
        shape = k % 4
        if shape == 0:
            out.append(f"SELECT {', '.join(picked)} FROM orders o JOIN customers c ON c.id = o.customer_id "
                       f"JOIN order_items i ON i.order_id = o.id JOIN products p ON p.id = i.product_id WHERE {where} LIMIT {k + 10}")
        elif shape == 1:
            out.append(f"WITH t AS (SELECT o.customer_id, sum(i.quantity * i.unit_price) AS total FROM orders o "
                       f"JOIN order_items i ON i.order_id = o.id GROUP BY 1) SELECT c.city, avg(t.total), count(*) "
                       f"FROM t JOIN customers c ON c.id = t.customer_id GROUP BY c.city HAVING count(*) > {k % 5} ORDER BY 2 DESC")
        elif shape == 2:
            out.append(f"SELECT status, count(*) FILTER (WHERE ordered_at > '2026-0{1 + k % 9}-01'), "
                       f"rank() OVER (ORDER BY count(*) DESC) FROM orders GROUP BY status")
        else:
            out.append(f"SELECT p.name, (SELECT count(*) FROM order_items i WHERE i.product_id = p.id) AS n "
                       f"FROM products p WHERE p.price > {k} ORDER BY n DESC")
    return out


def timed(fn, items: list[str]) -> float:  # type: ignore[no-untyped-def]
    start = time.process_time()
    for item in items:
        fn(item)
    return (time.process_time() - start) / len(items) * 1e6  # CPU µs per item


def guard_rounds(texts: list[str], rounds: int) -> None:
    import json

    from pglast import parser as pglast_parser

    policy = ConnectionPolicy("bench", "postgres", (READ_ONLY,))
    who = Identity("bench")

    def guard(text: str) -> None:
        analyze_module._analyse_cached.cache_clear()
        policy.decisions.clear()
        decide(who, policy, analyse(text, "postgres"))

    def sqlglot_parse(text: str) -> None:
        sqlglot.parse(text, read="postgres")

    def both_parsers(text: str) -> None:  # the floor of a guard that asks PostgreSQL's parser too
        sqlglot.parse(text, read="postgres")
        json.loads(pglast_parser.parse_sql_json(text))

    def cached(text: str) -> None:
        decide(who, policy, analyse(text, "postgres"))

    raw, floor, full, hit = [], [], [], []
    for _ in range(rounds):
        raw.append(timed(sqlglot_parse, texts))
        floor.append(timed(both_parsers, texts))
        full.append(timed(guard, texts))
        for t in texts:
            cached(t)
        hit.append(timed(cached, texts))
    r, b, f, h = (statistics.median(x) for x in (raw, floor, full, hit))
    print(f"1. guard decision, {len(texts)} texts (golden corpus + generated analytics), median of {rounds} rounds (CPU µs per text):")
    print(f"  sqlglot.parse alone             {r:8.1f}")
    print(f"  sqlglot + pglast parse, no more {b:8.1f}   {b / r:.2f}x sqlglot (the floor with a second opinion)")
    print(f"  analyse + decide (no cache)     {f:8.1f}   {f / r:.2f}x sqlglot, {f / b:.2f}x the floor   goal <= 1.3x the floor")
    print(f"  analyse + decide (cache hit)    {h:8.1f}   goal <= 20 µs")


def point_queries(n: int = 200) -> list[str]:
    """The point query an agent repeats with a new id each time (bench_peers.py's)."""
    rng = random.Random(11)
    return [f"SELECT id, total, note FROM orders WHERE id = {rng.randint(1, 10_000)}" for _ in range(n)]


def catalog_rounds(texts: list[str], rounds: int) -> None:
    """The decision as a PostgreSQL connection makes it: every function, operator and cast judged
    against the server's own catalog (read from the PostgreSQL at $BASTION_TEST_PG_DSN), beside the
    two-parser floor, same texts, same run. "memo emptied" empties the catalog's memo (resolved and
    judged references, statements' tables and judgements) before each text: what a text costs whose
    references and relations no earlier text had."""
    import json

    from pglast import parser as pglast_parser

    from bench_postgres import ADMIN
    from bastion.tools.executors.postgres import PostgresExecutor

    async def read() -> object:
        executor = PostgresExecutor("bench", ADMIN)
        try:
            catalog = await executor.refresh_functions()
        finally:
            await executor.close()
        if catalog is None:
            raise SystemExit(f"cannot read the function catalog at {ADMIN}: start PostgreSQL or set BASTION_TEST_PG_DSN")
        return catalog

    catalog: Any = asyncio.run(read())
    policy = ConnectionPolicy("bench", "postgres", (READ_ONLY,))
    who = Identity("bench")

    def both_parsers(text: str) -> None:
        sqlglot.parse(text, read="postgres")
        json.loads(pglast_parser.parse_sql_json(text))

    def judged(text: str) -> None:
        analyze_module._analyse_cached.cache_clear()
        policy.decisions.clear()
        decide(who, policy, analyse(text, "postgres"), catalog)

    def judged_afresh(text: str) -> None:
        catalog._memo.clear()
        judged(text)

    floor, memo, afresh = [], [], []
    for _ in range(rounds):
        floor.append(timed(both_parsers, texts))
        afresh.append(timed(judged_afresh, texts))
        memo.append(timed(judged, texts))
    b, a, m = (statistics.median(x) for x in (floor, afresh, memo))
    print(f"1b. guard decision on PostgreSQL with the server's function catalog, {len(texts)} varied texts, "
          f"median of {rounds} rounds (CPU µs per text, no analysis or decision cache):")
    print(f"  sqlglot + pglast parse, no more {b:8.1f}   (the two-parser floor)")
    print(f"  analyse + decide, memo emptied  {a:8.1f}   {a / b:.2f}x the floor")
    print(f"  analyse + decide                {m:8.1f}   {m / b:.2f}x the floor   goal <= 1.3x")


async def mcp_rounds(rounds: int, calls: int = 200) -> None:
    from mcp import Client

    from measure import ms_per_call
    from noop_server import noop
    from bastion.server.app import create_server
    from bastion.server.config import load

    from bastion.server import demo

    work = Path(tempfile.mkdtemp())
    demo.write(work)

    arguments = {"connection": "demo", "sql": "SELECT id, status FROM orders WHERE id = 7"}
    guarded, baseline = [], []
    async with Client(create_server(load(work / "bastion.toml"))) as bastion, Client(noop) as plain:
        for _ in range(rounds):
            baseline.append(await ms_per_call(lambda: plain.call_tool("ping", arguments), calls))
            guarded.append(await ms_per_call(lambda: bastion.call_tool("sql_query", arguments), calls))
    b, g = statistics.median(baseline), statistics.median(guarded)
    print(f"sql_query through the in-memory MCP client, SQLite demo, {calls} calls x {rounds} rounds (ms per call):")
    print(f"  no-op tool                      {b:8.3f}")
    print(f"  guarded sql_query               {g:8.3f}   (+{g - b:.3f} ms: guard, two durable audit appends, SQLite query)")
    shutil.rmtree(work, ignore_errors=True)


async def shell_rounds(rounds: int, calls: int = 40) -> None:
    import anyio

    from bastion.policy.shell.decide import vet_shell_text
    from bastion.policy.shell.presets import INSPECT
    from bastion.policy.shell.rules import ShellPolicy
    from bastion.tools.executors.local_shell import LocalShellExecutor
    from measure import ms_per_call
    from bastion.tools.executors.shell_base import ShellRunRequest

    policy = ShellPolicy("bench", (INSPECT,), "/tmp")
    who = Identity("bench")
    executor = LocalShellExecutor("bench", "/tmp")
    async def guarded_echo() -> None:
        _, decision, rebuilt = vet_shell_text(who, policy, "echo hello")
        await executor.run(ShellRunRequest(rebuilt, None, 5, 10_000, who))

    guarded, raw = [], []
    for _ in range(rounds):
        raw.append(await ms_per_call(lambda: anyio.run_process(["bash", "-c", "echo hello"]), calls))
        guarded.append(await ms_per_call(guarded_echo, calls))
    r, g = statistics.median(raw), statistics.median(guarded)
    print(f"5. shell `echo hello`, {calls} runs x {rounds} rounds (ms per run):")
    print(f"  raw bash -c subprocess          {r:8.3f}")
    print(f"  guarded (vet + local exec)      {g:8.3f}   {g / r:.2f}x")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    guard_rounds(golden() + corpus(), args.rounds)
    catalog_rounds(golden() + corpus() + point_queries(), args.rounds)
    asyncio.run(mcp_rounds(args.rounds))
    asyncio.run(shell_rounds(args.rounds))
