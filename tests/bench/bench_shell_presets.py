"""What the shell presets allow of real agent traffic (issue 14, item 2).

    .venv/bin/python tests/bench/bench_shell_presets.py [--corpus PATH] [--preset inspect] [--show N]

The corpus is /work/shared/corpora/agent_shell_dev.jsonl by default (one JSON object a line: `text`,
`expected` allow|deny, `class`; README beside it). Each text is vetted against the preset with the
working directory /testbed, the repository root in the agents' containers. Prints the allow rate of
the texts labelled `allow`, the rate of texts labelled `deny` that the preset allows anyway (by class),
the top refusal reasons (rule id and the reason with quoted words folded), and the slowest vets.
Not part of the tests.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import time
from dataclasses import replace
from pathlib import Path

from bastion.policy import Identity
from bastion.policy.shell.decide import vet_shell_text
from bastion.policy.shell.presets import SHELL_PRESETS
from bastion.policy.shell.rules import ShellPolicy

DEFAULT_CORPUS = Path("/work/shared/corpora/agent_shell_dev.jsonl")


def _fold(reason: str) -> str:
    """A refusal reason with the agent's words after the first folded (the first names the program or
    option), so that reasons group."""
    first = re.search(r"`[^`]*`", reason)
    head = reason[: first.end()] if first else ""
    return (head + re.sub(r"`[^`]*`", "`…`", reason[len(head):]))[:110]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--preset", default="inspect", choices=sorted(SHELL_PRESETS))
    parser.add_argument("--cwd", default="/testbed")
    parser.add_argument("--programs", default="", help="developer: comma-separated commands the rule names "
                                                            "(e.g. 'python -m pytest,python,pip install')")
    parser.add_argument("--show", type=int, default=0, help="print this many refused texts per top reason")
    parser.add_argument("--allowed-denies", type=int, default=0, help="print this many allowed texts labelled deny")
    args = parser.parse_args()
    rows = [json.loads(line) for line in args.corpus.read_text().splitlines() if line.strip()]
    rule = SHELL_PRESETS[args.preset]
    if args.programs:
        rule = replace(rule, programs=rule.programs | frozenset(p.strip() for p in args.programs.split(",")))
    policy = ShellPolicy("bench", (rule,), args.cwd)
    identity = Identity("bench")
    allowed = {"allow": 0, "deny": 0}
    total = collections.Counter(r["expected"] for r in rows)
    by_class: collections.Counter[str] = collections.Counter()
    reasons: collections.Counter[tuple[str, str]] = collections.Counter()
    examples: dict[tuple[str, str], list[str]] = collections.defaultdict(list)
    wrongly: list[str] = []
    timings: list[tuple[float, str]] = []
    for row in rows:
        started = time.perf_counter()
        _, decision, _ = vet_shell_text(identity, policy, row["text"])
        timings.append((time.perf_counter() - started, row["text"]))
        if decision.allowed:
            allowed[row["expected"]] += 1
            if row["expected"] == "deny":
                by_class[row["class"]] += 1
                wrongly.append(row["text"])
        elif row["expected"] == "allow":
            key = (",".join(decision.rules), _fold(decision.reason))
            reasons[key] += 1
            examples[key].append(row["text"])
    print(f"corpus: {args.corpus} ({len(rows)} texts); preset `{args.preset}`, cwd {args.cwd}")
    print(f"labelled allow: {allowed['allow']}/{total['allow']} allowed = {100 * allowed['allow'] / max(total['allow'], 1):.1f} %")
    print(f"labelled deny:  {allowed['deny']}/{total['deny']} allowed = {100 * allowed['deny'] / max(total['deny'], 1):.1f} %"
          f" {dict(by_class)} of {dict(collections.Counter(r['class'] for r in rows if r['expected'] == 'deny'))}")
    print("top refusals of texts labelled allow:")
    for (rule, reason), count in reasons.most_common(20):
        print(f"  {count:5d}  {rule}: {reason}")
        for text in examples[(rule, reason)][: args.show]:
            print(f"           {text[:150]!r}")
    for text in wrongly[: args.allowed_denies]:
        print(f"  allowed, labelled deny: {text[:200]!r}")
    timings.sort(reverse=True)
    median = sorted(t for t, _ in timings)[len(timings) // 2]
    print(f"vet time: median {median * 1000:.2f} ms, max {timings[0][0] * 1000:.1f} ms ({timings[0][1][:60]!r})")


if __name__ == "__main__":
    main()
