"""Benchmark: masking a 10,000-row result against fetching it, measured in the same run.

    .venv/bin/python tests/bench/bench_masking.py [--rounds 7] [--write]

The result: customers × orders from the demo SQLite database (10 columns, 10,000 rows), with
customers.email = redact, customers.phone = partial, orders.card_last4 = hash and every detector
on. "fetch" is sqlite3 reading those rows (execute + fetchall); "executor" is Bastion's SQLite
executor returning them (its row and byte budget, JSON values). Masking is the plan (cached, as on
a repeated call; the cold figure is printed too) plus mask_result over the rows.
Goal: masking ≤ 1× fetch (the whole call then costs at most twice the fetch). Prints medians;
each timed step starts after a garbage collection, so none is charged for another's garbage.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bastion.policy import Identity, Limits, analyse  # noqa: E402
from bastion.policy.masking import DETECTOR_KINDS, Catalog, MaskRules, mask_result, plan  # noqa: E402
from bastion.tools.executors.base import RunRequest  # noqa: E402
from bastion.tools.executors.sqlite import SqliteExecutor  # noqa: E402

QUERY = ("SELECT c.id, c.name, c.email, c.phone, c.city, c.created_at, o.id AS order_id, o.status, o.ordered_at, "
         "o.card_last4 FROM customers c CROSS JOIN orders o LIMIT 10000")
# The same rows with no column masks: the detectors find every email themselves (their worst common case).
RULES = MaskRules.build({"main.customers.email": "redact", "main.customers.phone": "partial",
                         "main.orders.card_last4": "hash"}, detectors=DETECTOR_KINDS)
DETECTORS_ONLY = MaskRules.build({}, detectors=DETECTOR_KINDS)
KEY = b"bench-key"


def build_demo(work: Path) -> Path:
    from bastion.server.demo import build_database

    return build_database(work / "demo.db")


def catalog_of(path: Path) -> Catalog:
    conn = sqlite3.connect(path)
    tables = {f"main.{name}": tuple(c[1] for c in conn.execute(f"PRAGMA table_info('{name}')"))
              for (name,) in conn.execute("SELECT name FROM sqlite_schema WHERE type IN ('table', 'view')")}
    views = {f"main.{name}": sql for name, sql in conn.execute("SELECT name, sql FROM sqlite_schema WHERE type = 'view'")}
    conn.close()
    return Catalog.build("sqlite", "main", tables, views)


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1e3


def run(rounds: int) -> list[str]:
    work = Path(tempfile.mkdtemp())
    try:
        path = build_demo(work)
        catalog = catalog_of(path)
        statements = analyse(QUERY, "sqlite").statements
        executor = SqliteExecutor("bench", path)
        request = RunRequest(statements, True, Limits(max_rows=10_000, max_bytes=100_000_000), Identity("bench"))
        conn = sqlite3.connect(path)
        fetch, executor_fetch, cold, warm, masking, detect_only = [], [], [], [], [], []
        record: dict[str, object] = {}
        for _ in range(rounds):
            # Each timed step starts from a collected heap, so none pays for another's garbage.
            gc.collect()
            start = time.perf_counter()
            cur = conn.execute(QUERY)
            columns = [d[0] for d in cur.description]
            rows = cur.fetchall()
            fetch.append(time.perf_counter() - start)

            gc.collect()
            start = time.perf_counter()
            result = asyncio.run(executor.run(request))
            executor_fetch.append(time.perf_counter() - start)
            assert len(result.rows) == 10_000 and result.columns == columns

            catalog.memo.clear()  # nothing worked out yet: no view lineage, no plan
            start = time.perf_counter()
            plan(statements, catalog, RULES)
            cold.append(time.perf_counter() - start)
            start = time.perf_counter()
            masked_plan = plan(statements, catalog, RULES)
            warm.append(time.perf_counter() - start)

            owned = [list(r) for r in rows]  # the executor's rows are fresh lists the gateway owns
            gc.collect()
            start = time.perf_counter()
            _, record = mask_result(columns, owned, masked_plan, key=KEY, in_place=True)
            masking.append(time.perf_counter() - start + warm[-1])

            owned = [list(r) for r in rows]
            plain = plan(statements, catalog, DETECTORS_ONLY)
            gc.collect()
            start = time.perf_counter()
            _, found = mask_result(columns, owned, plain, key=KEY, in_place=True)
            detect_only.append(time.perf_counter() - start)
        f, e, m, d = median_ms(fetch), median_ms(executor_fetch), median_ms(masking), median_ms(detect_only)
        lines = [
            f"masking a 10,000-row, 10-column result (SQLite demo), median of {rounds} rounds (ms):",
            f"  fetch: sqlite3 execute + fetchall     {f:8.2f}",
            f"  fetch: Bastion's SQLite executor      {e:8.2f}",
            f"  plan, cold (parse, qualify, lineage)  {median_ms(cold):8.2f}",
            f"  plan, cached                          {median_ms(warm):8.3f}",
            "  mask (plan + 3 masked columns + 7 scanned by every detector)",
            f"                                        {m:8.2f}   {m / f:.2f}x the sqlite3 fetch, {m / e:.2f}x the executor's   goal <= 1x",
            "  detectors only, nothing masked by column: 10,000 emails found and replaced",
            f"                                        {d:8.2f}   {d / f:.2f}x the sqlite3 fetch   detections: {found.get('detections')}",
        ]
        print("\n".join(lines))
        print(f"  record: {record}")
        conn.close()
        return lines
    finally:
        shutil.rmtree(work, ignore_errors=True)


BEGIN, END = "<!-- bench-masking:begin -->", "<!-- bench-masking:end -->"

if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--write", action="store_true", help="put the figures into docs/masking.md")
    args = parser.parse_args()
    figures = run(args.rounds)
    if args.write:
        doc = ROOT / "docs" / "masking.md"
        head, rest = doc.read_text().split(BEGIN, 1)
        doc.write_text(f"{head}{BEGIN}\n```\n" + "\n".join(figures) + f"\n```\n{END}" + rest.split(END, 1)[1])
