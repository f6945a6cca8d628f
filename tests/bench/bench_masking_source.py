"""Benchmark: the cost of masking at the source per statement, measured in the same run.

    .venv/bin/python tests/bench/bench_masking_source.py [--rounds 9] [--write]

Statements over the demo SQLite database (customers.email = redact, customers.phone = partial,
orders.card_last4 = hash, keyed). For each, a text not seen before against a catalog already in
use (the common case: the catalog is kept for 30 s, and what is worked out per relation — a view's
lineage, a relation's masked SELECT — is kept with it): the mask plan (parse, qualify, lineage,
channels) as before, and with the rewrite at the source added; the rewrite alone (parse, find the
scans, splice the derived tables); the plan once cached (the same text again). Then the first
statement after a catalog read, when the masked SELECT of each relation is built too.
The rewrite alone in the PostgreSQL dialect too (it adds the second opinion of PostgreSQL's parser).
Then the database's side: sqlite3 running a masked read as written and rewritten (every masked
column masked by SQL, the keyed hash by the registered Python function), fetching every row.
Prints medians (µs per statement, ms per query); `--write` puts them in docs/masking.md.
"""

from __future__ import annotations

import argparse
import gc
import re
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bastion.policy import analyse  # noqa: E402
from bastion.policy.masking import Catalog, MaskRules, mask  # noqa: E402
from bastion.policy.masking.plan import sensitive_relations, statement_plan  # noqa: E402
from bastion.policy.masking.source import AtSource, rewrite  # noqa: E402
from tests.bench.bench_masking import build_demo, catalog_of  # noqa: E402

RULES = MaskRules.build({"main.customers.email": "redact", "main.customers.phone": "partial",
                         "main.orders.card_last4": "hash"})
KEY = b"bench-key"
AT_SOURCE = AtSource(keyed=True, hash_function="bastion_mask_hash_bench")
STATEMENTS = {
    "one table": "SELECT id, name, email FROM customers WHERE id = 7",
    "join": ("SELECT c.name, c.email, o.status, o.card_last4 FROM customers c JOIN orders o ON o.customer_id = c.id "
             "WHERE o.status = 'shipped' ORDER BY c.id LIMIT 50"),
    "CTE + union": ("WITH recent AS (SELECT customer_id, card_last4 FROM orders WHERE ordered_at > '2024-01-01') "
                    "SELECT c.email, r.card_last4 FROM customers c JOIN recent r ON r.customer_id = c.id "
                    "UNION ALL SELECT phone, NULL FROM customers WHERE city = 'Paris'"),
    "subqueries": ("SELECT c.id, (SELECT count(*) FROM orders o WHERE o.customer_id = c.id) AS n, "
                   "(SELECT max(card_last4) FROM orders o2 WHERE o2.customer_id = c.id) AS last_card "
                   "FROM customers c WHERE c.id IN (SELECT customer_id FROM orders WHERE status = 'open')"),
}
WARM = ("SELECT * FROM customers", "SELECT * FROM orders", "SELECT count(*) FROM customers c, orders o")
FETCH = "SELECT c.id, c.name, c.email, c.phone, o.card_last4 FROM customers c JOIN orders o ON o.customer_id = c.id"


def median_us(samples: list[float]) -> float:
    return statistics.median(samples) * 1e6


def run(rounds: int) -> list[str]:
    work = Path(tempfile.mkdtemp())
    try:
        path = build_demo(work)
        lines = [f"masking at the source, per statement (SQLite demo), median of {rounds} rounds (µs):",
                 f"  {'statement':<14}{'plan, as before':>17}{'plan + rewrite':>16}{'rewrite alone':>15}{'rewrite/plan':>14}{'cached':>9}"]
        for name, text in STATEMENTS.items():
            statement = analyse(text, "sqlite").statements[0]
            before, after, alone, cached = [], [], [], []
            for _ in range(rounds):
                # A fresh catalog each time, warmed by other statements over the same relations.
                for at_source, out in ((None, before), (AT_SOURCE, after)):
                    catalog = _warm(path, at_source)
                    gc.collect()
                    start = time.perf_counter()
                    found = statement_plan(statement, catalog, RULES, at_source)
                    out.append(time.perf_counter() - start)
                assert found.rewrites and found.rewrites[0] is not None and found.rewrites[0].complete, name
                gc.collect()
                start = time.perf_counter()
                statement_plan(statement, catalog, RULES, AT_SOURCE)
                cached.append(time.perf_counter() - start)
                catalog = _warm(path, AT_SOURCE)
                sensitive = sensitive_relations(statement.reads, catalog, RULES)
                gc.collect()
                start = time.perf_counter()
                rewrite(text, catalog, RULES, sensitive, keyed=True, hash_function=AT_SOURCE.hash_function)
                alone.append(time.perf_counter() - start)
            b, a, r = median_us(before), median_us(after), median_us(alone)
            lines.append(f"  {name:<14}{b:>17.0f}{a:>16.0f}{r:>15.0f}{r / b:>13.2f}x{median_us(cached):>9.1f}")
        first = []
        statement = analyse(STATEMENTS["join"], "sqlite").statements[0]
        for _ in range(rounds):
            catalog = catalog_of(path)
            gc.collect()
            start = time.perf_counter()
            statement_plan(statement, catalog, RULES, AT_SOURCE)
            first.append(time.perf_counter() - start)
        lines.append(f"  first statement after a catalog read (join, plan + rewrite): {median_us(first):.0f}")
        lines += _postgres_rewrite(path, rounds)
        lines += _database(path, rounds)
        return lines
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _postgres_rewrite(path: Path, rounds: int) -> list[str]:
    """The rewrite alone in the PostgreSQL dialect (the same tables in schema public): it also
    parses the rewritten text with PostgreSQL's own parser (pglast) as a second opinion."""
    sqlite_catalog = catalog_of(path)
    tables = {f"public.{name.split('.', 1)[1]}": cols for name, cols in sqlite_catalog.tables.items()
              if not sqlite_catalog.is_view(name)}
    rules = MaskRules.build({"public.customers.email": "redact", "public.customers.phone": "partial",
                             "public.orders.card_last4": "hash"})
    lines = ["  PostgreSQL dialect, rewrite alone (with the second opinion of PostgreSQL's parser):"]
    for name, text in STATEMENTS.items():
        statement = analyse(text, "postgres", "public").statements[0]
        alone = []
        for _ in range(rounds):
            catalog = Catalog.build("postgres", "public", tables)
            for warm in WARM:
                statement_plan(analyse(warm, "postgres", "public").statements[0], catalog, rules, AtSource(keyed=True))
            sensitive = sensitive_relations(statement.reads, catalog, rules)
            gc.collect()
            start = time.perf_counter()
            found = rewrite(text, catalog, rules, sensitive, keyed=True)
            alone.append(time.perf_counter() - start)
            assert found.complete, (name, found.why)
        lines.append(f"  {name:<14}{median_us(alone):>48.0f}")
    return lines


def _warm(path: Path, at_source: AtSource | None) -> Catalog:
    """A fresh catalog that has planned other statements over customers and orders."""
    catalog = catalog_of(path)
    for text in WARM:
        statement_plan(analyse(text, "sqlite").statements[0], catalog, RULES, at_source)
    return catalog


def _database(path: Path, rounds: int) -> list[str]:
    catalog = catalog_of(path)
    statement = analyse(FETCH, "sqlite").statements[0]
    found = statement_plan(statement, catalog, RULES, AT_SOURCE)
    assert found.rewrites and found.rewrites[0] is not None
    rewritten = found.rewrites[0].text
    conn = sqlite3.connect(path)
    seen: dict[object, object] = {}  # as tools/masking.py's function: each distinct value hashed once per call
    conn.create_function(AT_SOURCE.hash_function or "", 1, lambda v: seen.get(v) or seen.setdefault(v, mask("hash", v, KEY)),
                         deterministic=True)
    times: dict[str, list[float]] = {"as written": [], "rewritten": []}
    count = 0
    for _ in range(rounds):
        for label, text in (("as written", FETCH), ("rewritten", rewritten)):
            gc.collect()
            start = time.perf_counter()
            count = len(conn.execute(text).fetchall())
            times[label].append(time.perf_counter() - start)
    conn.close()
    plain, masked = (statistics.median(times[k]) * 1e3 for k in ("as written", "rewritten"))
    return [f"the database's side: sqlite3 fetching {count:,} rows of customers ⋈ orders (3 masked columns), median (ms):",
            f"  as written   {plain:8.2f}",
            f"  rewritten    {masked:8.2f}   {masked / plain:.2f}x"]


def write(lines: list[str]) -> None:
    doc = ROOT / "docs" / "masking.md"
    text = doc.read_text()
    block = "<!-- bench-masking-source:begin -->\n```\n" + "\n".join(lines) + "\n```\n<!-- bench-masking-source:end -->"
    doc.write_text(re.sub(r"<!-- bench-masking-source:begin -->.*?<!-- bench-masking-source:end -->", lambda _: block, text,
                          flags=re.S))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--write", action="store_true", help="put the figures in docs/masking.md")
    args = parser.parse_args()
    lines = run(args.rounds)
    print("\n".join(lines))
    if args.write:
        write(lines)


if __name__ == "__main__":
    main()
