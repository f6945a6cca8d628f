"""The golden shell corpus: each command text under the `inspect` preset → expected verdict and rule ids.

The corpus (tests/golden/shell_cases.toml) records what a careful security engineer expects. Where the
guard disagrees today, the case is listed in GUARD_BUGS and runs as xfail(strict=True): the test fails
as soon as the guard is fixed, so the entry must then be removed.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from bastion.policy import Identity
from bastion.policy.shell.decide import vet_shell_text
from bastion.policy.shell.presets import INSPECT
from bastion.policy.shell.rules import ShellPolicy

CASES = tomllib.loads((Path(__file__).parent / "golden" / "shell_cases.toml").read_text())["case"]
POLICY = ShellPolicy("golden", (INSPECT,), "/work/project")

# Cases where the guard is known to disagree with the secure expectation (none today).
GUARD_BUGS: dict[str, str] = {}


def test_corpus_is_large_and_titles_are_unique() -> None:
    titles = [case["title"] for case in CASES]
    assert len(set(titles)) == len(titles), "duplicate titles"
    assert len(set(titles)) >= 150


def test_known_guard_bugs_name_corpus_cases() -> None:
    assert not set(GUARD_BUGS) - {case["title"] for case in CASES}


def _param(case: dict[str, object]) -> object:
    title = str(case["title"])
    marks = [pytest.mark.xfail(strict=True, reason=GUARD_BUGS[title])] if title in GUARD_BUGS else []
    return pytest.param(case, id=title, marks=marks)


@pytest.mark.parametrize("case", [_param(case) for case in CASES])
def test_golden_shell_case(case: dict[str, object]) -> None:
    analysis, decision, rebuilt = vet_shell_text(Identity("golden"), POLICY, str(case["text"]))
    assert (decision.verdict.value, list(decision.rules)) == (case["verdict"], case["rules"]), (
        f"{decision.reason}\nfacts: {analysis.summary()}")
    if decision.allowed:
        assert rebuilt is not None
