"""The shell parser before and after, in the same run: allow rates of `inspect` and `developer` on
real agent traffic and parse+decide time per command (median).

    .venv/bin/python tests/bench/bench_shell_parser.py [--baseline REF] [--corpus PATH] [--rounds N]

REF (default 9172026, main before tree-sitter) is a git commit of this repository: its `policy/`
is extracted to a scratch directory and imported as `bastion.policy` in a child process (it needs
the packages it depended on: `.venv/bin/pip install bashlex==0.18` for the old parser, which is no
longer a dependency). The current tree runs in another child.
Each child vets every corpus text (cwd /testbed, as bench_shell_presets.py) with the analysis cache
cleared, N rounds, and reports per-text verdicts; the parent prints rates, medians, their ratio,
and every text the baseline allowed that the current parser refuses, with the reason.
Not part of the tests.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CORPUS = Path("/work/shared/corpora/agent_shell_dev.jsonl")

_CHILD = r"""
import json, statistics, sys, time, types
root, corpus, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
if root:
    package = types.ModuleType("bastion")
    package.__path__ = [root + "/bastion"]
    sys.modules["bastion"] = package
from bastion.policy import Identity
from bastion.policy.shell import analyze
from bastion.policy.shell.decide import vet_shell_text
from bastion.policy.shell.presets import SHELL_PRESETS
from bastion.policy.shell.rules import ShellPolicy
rows = [json.loads(line) for line in open(corpus) if line.strip()]
out = {"module": analyze.__file__}
for preset in ("inspect", "developer"):
    policy = ShellPolicy("bench", (SHELL_PRESETS[preset],), "/testbed")
    times = [[] for _ in rows]
    verdicts = []
    for r in range(rounds):
        analyze._analyse_cached.cache_clear()
        for k, row in enumerate(rows):
            started = time.perf_counter()
            _, decision, _ = vet_shell_text(Identity("bench"), policy, row["text"])
            times[k].append(time.perf_counter() - started)
            if r == 0:
                verdicts.append([decision.allowed, ",".join(decision.rules), decision.reason])
    out[preset] = {"verdicts": verdicts, "times": [min(t) for t in times]}
print(json.dumps(out))
"""


def _extract(ref: str, into: Path) -> Path:
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "policy"], capture_output=True, check=True).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into / "bastion", filter="data")
    return into


def _child(root: str, corpus: Path, rounds: int) -> dict[str, object]:
    done = subprocess.run([sys.executable, "-c", _CHILD, root, str(corpus), str(rounds)], capture_output=True,
                          text=True, cwd=ROOT)
    if done.returncode != 0:
        hint = "\n(the baseline needs bashlex: .venv/bin/pip install bashlex==0.18)" if "bashlex" in done.stderr else ""
        raise SystemExit(f"child failed ({root or 'current'}):\n{done.stderr[-2000:]}{hint}")
    return json.loads(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--baseline", default="9172026")
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rows = [json.loads(line) for line in args.corpus.read_text().splitlines() if line.strip()]
    with tempfile.TemporaryDirectory(prefix="bench-parser-") as scratch:
        started = time.perf_counter()
        before = _child(str(_extract(args.baseline, Path(scratch))), args.corpus, args.rounds)
        after = _child("", args.corpus, args.rounds)
    print(f"corpus: {args.corpus} ({len(rows)} texts), cwd /testbed, {args.rounds} rounds (best of), "
          f"{time.perf_counter() - started:.0f} s")
    print(f"before: {args.baseline} ({before['module']}); after: working tree ({after['module']})")
    labelled = [r["expected"] == "allow" for r in rows]
    for preset in ("inspect", "developer"):
        print(f"\n{preset}:")
        for name, result in (("before", before), ("after", after)):
            data = result[preset]
            allowed = [v[0] for v in data["verdicts"]]
            read_only = sum(a for a, lab in zip(allowed, labelled, strict=True) if lab)
            print(f"  {name:6s} allows {sum(allowed):5d}/{len(rows)} = {100 * sum(allowed) / len(rows):5.1f} % of all, "
                  f"{read_only}/{sum(labelled)} = {100 * read_only / sum(labelled):5.1f} % of those labelled allow; "
                  f"median {statistics.median(data['times']) * 1e6:7.1f} µs per command "
                  f"(p90 {statistics.quantiles(data['times'], n=10)[-1] * 1e6:.0f} µs)")
        ratio = statistics.median(after[preset]["times"]) / statistics.median(before[preset]["times"])
        print(f"  after/before median time: {ratio:.2f}x")
        lost = [(rows[k]["text"], after[preset]["verdicts"][k])
                for k in range(len(rows)) if before[preset]["verdicts"][k][0] and not after[preset]["verdicts"][k][0]]
        gained = sum(1 for k in range(len(rows))
                     if after[preset]["verdicts"][k][0] and not before[preset]["verdicts"][k][0])
        print(f"  newly allowed: {gained}; allowed before, refused now: {len(lost)}")
        for text, (_, rule, reason) in lost:
            print(f"    {rule}: {reason[:120]}\n      {text[:160]!r}")


if __name__ == "__main__":
    main()
