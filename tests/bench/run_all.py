"""Run every benchmark and write docs/performance.md (machine, command, date, figures).

    .venv/bin/python tests/bench/run_all.py [--quick]

Each benchmark prints medians and ratios against baselines measured in the same run; `--quick`
uses fewer rounds and a 200,000-event audit log (the full run takes about ten minutes).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "unknown")
    memory = next((line.split(":", 1)[1].strip() for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal")), "unknown")
    try:
        postgres = subprocess.run(["psql", "--version"], capture_output=True, text=True).stdout.strip()
    except OSError:
        postgres = "psql not found"
    return (f"{os.cpu_count()} CPUs ({cpu}), {memory} memory; Python {platform.python_version()}; "
            f"{postgres}; {platform.platform()}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    rounds = "3" if args.quick else "7"
    runs = [
        ("Guard decision, sql_query through the in-memory client, shell (items 1, 2, 5)",
         [sys.executable, str(HERE / "bench_guard.py"), "--rounds", rounds]),
        ("PostgreSQL: one call's added cost, HTTP concurrency, large results (items 2, 3, 4)",
         [sys.executable, str(HERE / "bench_postgres.py"), "--rounds", "3" if args.quick else "5"]),
        ("What each part costs under HTTP load: the gateway with parts stubbed (item 3)",
         [sys.executable, str(HERE / "bench_ablation.py"), "--rounds", "3" if args.quick else "5"]),
        ("Audit log: appends, verify, search (item 6)",
         [sys.executable, str(HERE / "bench_audit.py"), "--events", "200000" if args.quick else "1000000",
          "--rounds", "3" if args.quick else "5"]),
        ("Audit log on PostgreSQL: verify's peak memory, paged against one query",
         [sys.executable, str(HERE / "bench_verify_memory.py"), "--events", "200000", "--rounds", "3"]),
        ("OIDC bearer token check per request", [sys.executable, str(HERE / "bench_auth.py"), "--rounds", rounds]),
        ("Masking a 10,000-row result", [sys.executable, str(HERE / "bench_masking.py"), "--rounds", rounds]),
        ("Signed checkpoints and proofs: an append's cost, proving and verifying at 1M events",
         [sys.executable, str(HERE / "bench_checkpoints.py"), "--proofs-only", "--events",
          "200000" if args.quick else "1000000", "--rounds", "3"]),
        ("Shell sandbox: a local command's added cost", [sys.executable, str(HERE / "bench_sandbox.py"), "--rounds", rounds]),
        ("Beside the peers: DBHub, the reference PostgreSQL server, and the SDK's floor",
         [sys.executable, str(HERE / "bench_peers.py"), "--rounds", "3" if args.quick else "5"]),
    ]
    command = "python tests/bench/run_all.py" + (" --quick" if args.quick else "")
    sections = []
    for title, argv in runs:
        print(f"== {title}", flush=True)
        result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
        output = "\n".join(line for line in result.stdout.splitlines() if not line.startswith("HTTP Request"))
        print(output, flush=True)
        if result.returncode:
            output += f"\n(exit status {result.returncode})\n{result.stderr[-2000:]}"
        sections.append(f"## {title}\n\n`{' '.join(Path(a).name if a.endswith('.py') else a for a in argv[1:])}`\n\n"
                        f"```\n{output.strip()}\n```\n")
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text = (f"# Performance\n\nMeasured {now} with `{command}` on: {machine()}.\n\n"
            "Every figure is a median over rounds, beside a baseline measured in the same run. The machine\n"
            "is shared, so absolute figures move between runs; the ratios move less. Regenerate this page with\n"
            f"the command above.\n\n" + "\n".join(sections)
            + "\n" + (HERE / "FINDINGS.md").read_text())  # kept by hand: what profiles showed
    (ROOT / "docs" / "performance.md").write_text(text)
    print(f"wrote {ROOT / 'docs' / 'performance.md'}")


if __name__ == "__main__":
    main()
