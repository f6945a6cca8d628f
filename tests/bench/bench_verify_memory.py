"""Peak memory of `verify` over a large PostgreSQL audit log: paged by seq (store/verify.py's `_Pages`)
against the whole log in one query (how it walked before), each in a fresh child process.

    .venv/bin/python tests/bench/bench_verify_memory.py [--events 200000] [--rounds 3] [--dsn ...]

Fills a schema of its own (dropped afterwards) through the store's writer; each child opens the store,
walks it and reports its peak RSS (VmHWM) and time; "open only" is the floor (Python, imports, the
store's connections). Prints medians and ratios against the one-query walk of the same run.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import quote

import psycopg

ROOT = Path(__file__).resolve().parents[2]
MODES = ("open only", "one query (before)", "pages (now)", "pages + public key")


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def child(mode: str, url: str, events: int) -> None:
    from bastion.store import verify as verify_module
    from bastion.store.checkpoints import Signer
    from bastion.store.postgres_store import PostgresAuditStore

    store = PostgresAuditStore(url)
    start = time.perf_counter()
    if mode == "one query (before)":
        cursor = store.conn.execute(f"SELECT {', '.join(verify_module._COLUMNS)} FROM events ORDER BY seq")
        walked = verify_module._walk(cursor, frozenset())
        ok, count = walked.problem is None, walked.events
    elif mode.startswith("pages"):
        # With a public key the walk also keeps every event's Merkle leaf (32 bytes) for the tree.
        verifier = Signer.generate("bench.example/verify").verifier if "key" in mode else None
        report = verify_module.verify(store.conn, verifier=verifier)
        ok, count = report.ok, report.events
    else:
        ok, count = True, events
    elapsed = time.perf_counter() - start
    assert ok and count == events, (mode, ok, count)
    print(f"{peak_rss_mb():.1f} {elapsed:.3f}")
    store.close()


def fill(url: str, n: int, result_bytes: int) -> None:
    """Calls as a gateway records them: requested, then finished with a result of ``result_bytes``."""
    from bastion.store.audit_store import _Ticket
    from bastion.store.postgres_store import PostgresAuditStore

    store = PostgresAuditStore(url)
    rng = random.Random(1)
    words = "select insert update delete table orders customers where limit join group by".split()
    for base in range(0, n, 10_000):
        batch = []
        for i in range(base, min(n, base + 10_000)):
            call = f"c{i // 2}"
            if i % 2 == 0:
                event = {"type": "call.requested", "call_id": call, "tool": "sql_query", "connection": "shop",
                         "identity": {"subject": rng.choice(["alice", "bob"]), "groups": ["analysts"]},
                         "decision": {"verdict": "allow"}, "text": " ".join(rng.choice(words) for _ in range(8))}
            else:
                event = {"type": "call.finished", "call_id": call, "row_count": 10, "duration_ms": 1.5,
                         "result": {"rows": ["x" * (result_bytes // 10)] * 10}}
            batch.append(_Ticket(event | {"event_id": f"e{i}", "time": f"2026-11-{1 + i % 28:02d}T00:00:00"}))
        store._write(batch)
    store.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--result-bytes", type=int, default=500, help="the size of each finished call's result")
    parser.add_argument("--dsn", default="postgresql://postgres@127.0.0.1:5432/test")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.url, args.events)
        return
    schema = f"bench_verify_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    with psycopg.connect(args.dsn, autocommit=True) as admin:
        admin.execute(f"CREATE SCHEMA {schema}")
    url = f"{args.dsn}?options={quote(f'-csearch_path={schema}')}"
    try:
        start = time.perf_counter()
        fill(url, args.events, args.result_bytes)
        with psycopg.connect(args.dsn, autocommit=True) as admin:
            size = admin.execute(f"SELECT pg_size_pretty(pg_total_relation_size('{schema}.events'))").fetchone()
        print(f"filled {args.events:,} events ({size[0] if size else '?'}) in {time.perf_counter() - start:.1f} s")
        peaks: dict[str, list[float]] = {m: [] for m in MODES}
        times: dict[str, list[float]] = {m: [] for m in MODES}
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        for _ in range(args.rounds):  # rounds interleave the modes, so load from elsewhere hits all alike
            for mode in MODES:
                out = subprocess.run([sys.executable, __file__, "--child", mode, "--url", url,
                                      "--events", str(args.events)], capture_output=True, text=True, env=env,
                                     check=True).stdout.split()
                peaks[mode].append(float(out[0]))
                times[mode].append(float(out[1]))
        before = statistics.median(peaks["one query (before)"])
        floor = statistics.median(peaks["open only"])
        print(f"verify {args.events:,} events on PostgreSQL, median of {args.rounds} rounds (load: "
              f"{os.getloadavg()[0]:.1f}):")
        for mode in MODES:
            peak, seconds = statistics.median(peaks[mode]), statistics.median(times[mode])
            print(f"  {mode:20s} peak RSS {peak:7.1f} MB  ({peak - floor:6.1f} MB above opening)   "
                  f"{seconds:6.2f} s   {peak / before:.2f}x of one query")
    finally:
        with psycopg.connect(args.dsn, autocommit=True) as admin:
            admin.execute(f"DROP SCHEMA {schema} CASCADE")


if __name__ == "__main__":
    main()
