"""Shared fixtures. Real parts (PostgreSQL, the demo database) come from tests/ fixture plugins."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

pytest_plugins = ["tests.postgres_server", "tests.sshd_server", "tests.oidc_server"]

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="session")
def demo_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo database, built once by the demo's own builder (bastion.server.demo)."""
    from bastion.server.demo import build_database

    return build_database(tmp_path_factory.mktemp("demo") / "demo.db")


@pytest.fixture
def demo_config(tmp_path: Path, demo_db: Path) -> Path:
    """The embedded demo as `bastion demo` writes it (bastion.toml, demo.db, workspace/) in a
    fresh folder; tests may write to it."""
    from bastion.server import demo

    shutil.copy(demo_db, tmp_path / demo.DATABASE)
    config, _ = demo.write(tmp_path)
    return config


@pytest.fixture(autouse=True)
def sandbox_reaches_test_folders(request: pytest.FixtureRequest) -> None:
    """Sandboxed shells run as an unprivileged uid that must reach a test's workspace; pytest makes its
    temporary folders 0700, so let others pass through (not list) a test's folder and those above it."""
    if "tmp_path" in request.fixturenames:
        path: Path = request.getfixturevalue("tmp_path")
        for folder in (path.parent.parent, path.parent, path):
            folder.chmod(0o711)


def requirement(*ids: str) -> pytest.MarkDecorator:
    """Mark a test as covering security requirements (tests/requirements.toml)."""
    return pytest.mark.requirement(*ids)
