"""The golden corpus: (title, text, dialect, preset) → expected verdict and rule ids."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from bastion.policy import ConnectionPolicy, Identity
from bastion.policy.presets import PRESETS
from bastion.tools.guard import safe_check

CASES = tomllib.loads((Path(__file__).parent / "golden" / "sql_cases.toml").read_text())["case"]


def test_corpus_is_large_and_titles_are_unique() -> None:
    titles = [case["title"] for case in CASES]
    assert len(CASES) >= 150
    assert len(set(titles)) == len(titles)


@pytest.mark.parametrize("case", CASES, ids=[case["title"] for case in CASES])
def test_golden_case(case: dict[str, object]) -> None:
    policy = ConnectionPolicy("golden", str(case["dialect"]), (PRESETS[str(case["preset"])],))
    decision = safe_check(policy, Identity("golden"), str(case["text"]))
    assert (decision.verdict.value, list(decision.rules)) == (case["verdict"], case["rules"]), decision.reason
