"""Detector quality: precision and recall per kind on the generated corpus, and false positives on
random 9-digit and 16-digit numbers.

    .venv/bin/python tests/bench/detector_quality.py [--write]

Prints a Markdown table; --write puts it into docs/masking.md between its quality markers.
Deterministic (seeded). Not part of the tests (tests/test_detectors.py asserts the thresholds).
"""

from __future__ import annotations

import argparse
import random
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bastion.policy.masking.detectors import KINDS, card_issuer, find_spans, luhn  # noqa: E402
from tests.detector_corpus import random_numbers, unclaimed  # noqa: E402
from tests.test_detectors import ALL, corpus, measure  # noqa: E402

BEGIN, END = "<!-- detector-quality:begin -->", "<!-- detector-quality:end -->"


def by_form(samples: list) -> dict[str, tuple[int, int]]:  # type: ignore[type-arg]
    out: dict[str, list[int]] = {}
    for s in samples:
        if s.kind is None:
            continue
        hit = s.kind in {k for _, _, k in find_spans(s.text, KINDS)}
        counts = out.setdefault(s.form, [0, 0])
        counts[0] += hit
        counts[1] += 1
    return {form: (c[0], c[1]) for form, c in sorted(out.items())}


def false_positives(numbers: list[str], column: str) -> tuple[int, Counter[str]]:
    (_,), counts = ALL.scan_columns([numbers], [column])
    return sum(counts.values()), counts


def report() -> str:
    samples = corpus()
    figures = measure(samples)
    negatives = sum(1 for s in samples if s.kind is None)
    lines = [f"Generated corpus (seed 2026): {len(samples) - negatives:,} positives in {len(KINDS)} kinds, "
             f"{negatives:,} hard negatives (look-alikes: versions, phone numbers, dates, Luhn-failing "
             "card numbers, invalid SSNs, IBANs with a wrong check, certificates, UUIDs, ...).", "",
             "| kind | samples | precision | recall |", "|---|---:|---:|---:|"]
    for kind in KINDS:
        f = figures[kind]
        lines.append(f"| {kind} | {int(f['samples'])} | {f['precision']:.4f} | {f['recall']:.4f} |")
    lines += ["", "Recall by written form:", "", "| form | found |", "|---|---:|"]
    for form, (hit, total) in by_form(samples).items():
        lines.append(f"| {form} | {hit}/{total} |")
    lines += ["", "Forms the detectors do not claim (by design, or not yet), for the record:", "",
              "| form | found |", "|---|---:|"]
    for form, (hit, total) in by_form(unclaimed(random.Random(7), 200)).items():
        lines.append(f"| {form} | {hit}/{total} |")
    nine = random_numbers(random.Random(9), 10_000, 9)
    sixteen = random_numbers(random.Random(16), 10_000, 16)
    n9, _ = false_positives(nine, "value")
    n9s, _ = false_positives(nine, "ssn")
    n16, _ = false_positives(sixteen, "order_id")
    n16c, _ = false_positives(sixteen, "card_number")
    bare = sum(1 for n in sixteen if card_issuer(n) and luhn(n))
    lines += ["", "False positives on 10,000 random numbers (one per cell):", "",
              "| numbers | column | detections | rate |", "|---|---|---:|---:|",
              f"| 9-digit | `value` | {n9} | {n9 / 1e4:.2%} |",
              f"| 9-digit | `ssn` (named for SSNs) | {n9s} | {n9s / 1e4:.2%} |",
              f"| 16-digit order ids | `order_id` | {n16} | {n16 / 1e4:.2%} |",
              f"| 16-digit | `card_number` (named for cards) | {n16c} | {n16c / 1e4:.2%} |",
              "", f"For comparison, {bare / 1e4:.2%} of the random 16-digit numbers pass an issuer prefix and Luhn: "
              "what bare digit runs would cost without the context rule."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--write", action="store_true", help="update docs/masking.md")
    args = parser.parse_args()
    text = report()
    print(text)
    if args.write:
        doc = ROOT / "docs" / "masking.md"
        current = doc.read_text()
        head, rest = current.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        doc.write_text(f"{head}{BEGIN}\n{text}\n{END}{tail}")
        print(f"\nwritten to {doc}")


if __name__ == "__main__":
    main()
