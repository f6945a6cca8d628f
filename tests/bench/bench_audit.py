"""Benchmark the audit log: group-committed appends, verify and search over a large log.

    .venv/bin/python tests/bench/bench_audit.py [--events 1000000] [--rounds 5]

Prints medians and ratios against baselines measured in the same run. Not part of the tests.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import threading
import time
from pathlib import Path

from bastion.store import SqliteAuditStore
from bastion.store.search import search
from bastion.store.sqlite_store import _Ticket
from bastion.store.verify import verify

WORDS = "select insert update delete drop table orders customers products where limit join group by".split()


def event(rng: random.Random, i: int) -> dict[str, object]:
    return {"type": "call.requested", "call_id": f"c{i}", "tool": "sql_query", "connection": rng.choice(["db", "shop"]),
            "identity": {"subject": rng.choice(["alice", "bob", "carol", "dave"]), "groups": ["analysts"]},
            "decision": {"verdict": rng.choice(["allow", "allow", "allow", "deny"])},
            "text": " ".join(rng.choice(WORDS) for _ in range(8))}


def appends_per_second(path: Path, threads: int, per_thread: int) -> float:
    store = SqliteAuditStore(path)
    rng = random.Random(threads)
    start = time.perf_counter()
    workers = [threading.Thread(target=lambda: [store.append(event(rng, i)) for i in range(per_thread)])
               for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - start
    store.close()
    return threads * per_thread / elapsed


def fill(path: Path, n: int) -> SqliteAuditStore:
    """A large log, written through the store's own writer in big batches (same rows, same chain)."""
    store = SqliteAuditStore(path)
    rng = random.Random(1)
    for base in range(0, n, 20_000):
        store._write([_Ticket(event(rng, i) | {"event_id": f"e{i}", "time": f"2026-11-{1 + i % 28:02d}T00:00:00"})
                      for i in range(base, min(n, base + 20_000))])
    return store


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp())

    single, grouped = [], []
    for r in range(args.rounds):
        single.append(appends_per_second(work / f"single{r}.db", 1, 300))
        grouped.append(appends_per_second(work / f"group{r}.db", 64, 100))
    s, g = statistics.median(single), statistics.median(grouped)
    print(f"appends per second (fsync per commit), median of {args.rounds} rounds:")
    print(f"  one caller at a time           {s:10.0f}")
    print(f"  64 concurrent callers (group)  {g:10.0f}   {g / s:.1f}x   goal >= 5000")

    start = time.perf_counter()
    store = fill(work / "big.db", args.events)
    print(f"built a log of {args.events:,} events in {time.perf_counter() - start:.1f} s")

    times = []
    for _ in range(max(1, args.rounds // 2)):
        start = time.perf_counter()
        report = verify(store.db.conn)
        times.append(time.perf_counter() - start)
        assert report.ok and report.events == args.events
    print(f"verify {args.events:,} events: median {statistics.median(times):.2f} s   goal <= 10 s")

    queries = [("drop table", {}), ("orders", {"user": "alice"}), ("customers join", {"verdict": "deny"}),
               ("", {"user": "bob", "connection": "shop"}), ("select limit", {"after": "2026-11-20"})]
    per_query = []
    for _ in range(args.rounds):
        for text, filters in queries:
            start = time.perf_counter()
            search(store, text, limit=50, **filters)  # type: ignore[arg-type]
            per_query.append((time.perf_counter() - start) * 1000)
    print(f"search over {args.events:,} events, {len(per_query)} queries: median {statistics.median(per_query):.1f} ms, "
          f"max {max(per_query):.1f} ms   goal <= 50 ms median")


if __name__ == "__main__":
    main()
