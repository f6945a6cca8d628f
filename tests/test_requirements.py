"""Every security requirement in tests/requirements.toml is covered by at least one test."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _manifest() -> set[str]:
    data = tomllib.loads((HERE / "requirements.toml").read_text())
    return {rid for section in data.values() for rid in section}


def _covered() -> set[str]:
    found: set[str] = set()
    for path in HERE.rglob("test_*.py"):
        for call in re.findall(r"requirement\(([^)]*)\)", path.read_text()):
            found.update(re.findall(r'"([a-z]+:[a-z0-9-]+)"', call))
    for corpus in sorted((HERE / "golden").glob("*_cases.toml")):
        found.update(case["requirement"] for case in tomllib.loads(corpus.read_text())["case"])
    return found


def test_every_requirement_has_a_test() -> None:
    missing = _manifest() - _covered()
    assert not missing, f"requirements with no test: {sorted(missing)}"


def test_tests_only_cite_known_requirements() -> None:
    unknown = _covered() - _manifest()
    assert not unknown, f"tests cite requirements missing from tests/requirements.toml: {sorted(unknown)}"
