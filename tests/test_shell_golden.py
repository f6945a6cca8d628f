"""The golden shell corpus: each command text under the `inspect` preset → expected verdict and rule ids.

The corpus (tests/golden/shell_cases.toml) records what a careful security engineer expects. Where the
guard disagrees today, the case is listed in GUARD_BUGS and runs as xfail(strict=True): the test fails
as soon as the guard is fixed, so the entry must then be removed.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from policy import Identity
from policy.shell.decide import vet_shell_text
from policy.shell.presets import INSPECT
from policy.shell.rules import ShellPolicy

CASES = tomllib.loads((Path(__file__).parent / "golden" / "shell_cases.toml").read_text())["case"]
POLICY = ShellPolicy("golden", (INSPECT,), "/work/project")

GUARD_BUGS: dict[str, str] = {
    "two lines of allowed commands in a substitution": (
        "guard bug: a newline inside $(...) is refused as guard:unsupported (the outer word is still cut where "
        "bashlex's positions say, then refused as ambiguous), so a harmless multi-line substitution cannot run"),
    "du of every entry": (
        "guard bug: the `could match a protected path` check in evaluate._protected uses fnmatch, whose `*` "
        "matches a leading dot (bash's does not), so `du -sh *` is refused for maybe matching .vault-token"),
}


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
