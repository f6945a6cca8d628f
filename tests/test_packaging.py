"""The distribution ships every package of the four rooms, and nothing imports against the rooms' order."""

from __future__ import annotations

import re
import tomllib

from tests.conftest import ROOT


def test_every_package_is_in_the_distribution() -> None:
    declared = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {str(p.parent.relative_to(ROOT)).replace("/", ".")
             for room in ("server", "tools", "policy", "store") for p in (ROOT / room).rglob("__init__.py")}
    assert found == declared


def test_imports_point_server_to_tools_to_policy_and_store() -> None:
    forbidden = {"tools": ("server",), "policy": ("server", "tools", "store"), "store": ("server", "tools")}
    io_libraries = ("psycopg", "asyncssh", "sqlite3", "sqlite_utils", "httpx", "httpx2", "subprocess", "mcp", "anyio")
    for room, banned in forbidden.items():
        for path in (ROOT / room).rglob("*.py"):
            text = path.read_text()
            for name in banned + (io_libraries if room == "policy" else ()):
                assert not re.search(rf"^\s*(from|import)\s+{name}\b", text, re.M), f"{path} imports {name}"
