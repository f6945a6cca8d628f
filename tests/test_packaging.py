"""The distribution ships every package of the four rooms, and nothing imports against the rooms' order."""

from __future__ import annotations

import re
import tomllib

from tests.conftest import ROOT


def test_every_package_is_in_the_distribution_under_bastion() -> None:
    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    declared = set(setuptools["packages"])
    found = {"bastion." + str(p.parent.relative_to(ROOT)).replace("/", ".")
             for room in ("server", "tools", "policy", "store") for p in (ROOT / room).rglob("__init__.py")}
    assert found == declared
    # The rooms install as bastion.<room>: no generic top-level name reaches site-packages.
    assert setuptools["package-dir"] == {f"bastion.{room}": room for room in ("server", "tools", "policy", "store")}


def test_the_rooms_import_each_other_only_as_bastion() -> None:
    for room in ("server", "tools", "policy", "store", "tests"):
        for path in (ROOT / room).rglob("*.py"):
            bare = re.findall(r"^\s*(?:from|import)\s+(server|tools|policy|store)\b", path.read_text(), re.M)
            assert not bare, f"{path} imports {bare[0]} as a top-level package; use bastion.{bare[0]}"


def test_imports_point_server_to_tools_to_policy_and_store() -> None:
    forbidden = {"tools": ("server",), "policy": ("server", "tools", "store"), "store": ("server", "tools")}
    io_libraries = ("psycopg", "asyncssh", "sqlite3", "sqlite_utils", "httpx", "httpx2", "subprocess", "mcp", "anyio")
    for room, banned in forbidden.items():
        for path in (ROOT / room).rglob("*.py"):
            text = path.read_text()
            for name in banned + (io_libraries if room == "policy" else ()):
                assert not re.search(rf"^\s*(from|import)\s+(bastion\.)?{name}\b", text, re.M), f"{path} imports {name}"
