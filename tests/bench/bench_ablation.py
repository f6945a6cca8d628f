"""Ablation: what each part of a guarded call costs while the gateway serves streamable HTTP.

    .venv/bin/python tests/bench/bench_ablation.py [--rounds 5] [--seconds 4]

Serves `bastion serve --http` as it is, then with the audit append, the PostgreSQL executor, or
both replaced by stubs that return at once, and measures guarded SELECTs per second beside a no-op
MCP tool server in the same run. The gap between a variant and the full gateway is what that part
costs under load; what is left with both stubbed is the SDK's tool machinery plus Bastion's glue.
Not part of the tests: it is how docs/performance.md's "what stands in the way" was measured.
"""

from __future__ import annotations

import asyncio
import statistics
import subprocess
import sys
from pathlib import Path


HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
VARIANTS = ("full", "no-audit", "no-executor", "neither")


def serve(variant: str, config_path: str, port: int) -> None:
    """The gateway with ``variant``'s stubs in place (runs in its own process)."""
    sys.path.insert(0, str(ROOT))
    from bastion.server.config import load
    from bastion.server.http import serve_http
    from bastion.tools.executors.base import QueryResult

    if variant in ("no-audit", "neither"):
        from bastion.tools.recorder import Recorder

        async def append(self: Recorder, event: dict) -> dict:  # type: ignore[type-arg]
            return event
        Recorder.append = append  # type: ignore[method-assign]
    if variant in ("no-executor", "neither"):
        from bastion.tools.executors.postgres import PostgresExecutor

        async def run(self: PostgresExecutor, request: object) -> QueryResult:
            return QueryResult(["id", "total"], [[7, "10.5"]], 1)
        PostgresExecutor.run = run  # type: ignore[method-assign,assignment]
    serve_http(load(config_path), "127.0.0.1", port)


def rate(port: int, tool: str, clients: int, seconds: float, rounds: int) -> float:
    from bench_postgres import SELECT, http_rate

    return statistics.median(asyncio.run(http_rate(f"http://127.0.0.1:{port}/mcp", tool, {"connection": "pg", "sql": SELECT},
                                                   clients, seconds)) for _ in range(rounds))


def main() -> None:
    from bench_postgres import arguments, bench_database, free_port, wait_port

    args = arguments()
    processes: list[subprocess.Popen[bytes]] = []
    with bench_database() as (_, path):
        noop_port = free_port()
        processes.append(subprocess.Popen([sys.executable, str(HERE / "noop_server.py"), str(noop_port)],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        try:
            wait_port(noop_port)
            print(f"guarded SELECT over streamable HTTP with parts stubbed, {args.seconds:g} s per measure, "
                  f"median of {args.rounds} (calls per second, and % of the no-op tool's):")
            for clients in (4, 16):
                plain = rate(noop_port, "ping", clients, args.seconds, args.rounds)
                line = [f"  {clients:>2} clients: no-op tool {plain:6.0f}/s"]
                for variant in VARIANTS:
                    port = free_port()
                    gateway = subprocess.Popen([sys.executable, __file__, "--serve", variant, str(path), str(port)], cwd=ROOT,
                                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    try:
                        wait_port(port)
                        guarded = rate(port, "sql_query", clients, args.seconds, args.rounds)
                    finally:
                        gateway.terminate()
                        gateway.wait(10)
                    line.append(f"{variant} {guarded:5.0f}/s {guarded / plain:4.0%}")
                print("   ".join(line))
        finally:
            for process in processes:
                process.terminate()
                process.wait(10)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve"]:
        serve(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        sys.path.insert(0, str(HERE))
        main()
