"""Shared fixtures. Real parts (PostgreSQL, the demo database) come from tests/ fixture plugins."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

pytest_plugins = ["tests.postgres_server", "tests.sshd_server", "tests.oidc_server", "tests.store_backends",
                  "tests.container_runtime"]

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


def pytest_configure(config: pytest.Config) -> None:
    """Sandboxed shells run as an unprivileged uid that must reach each test's workspace. pytest keeps
    its folders under /tmp/pytest-of-<user>, which every pytest run on the machine resets to 0700; this
    run gets a folder of its own that others may pass through (not list)."""
    if config.option.basetemp is None:
        base = Path(tempfile.mkdtemp(prefix="bastion-pytest-"))
        base.chmod(0o711)
        config.option.basetemp = base
        config.add_cleanup(lambda: shutil.rmtree(base, ignore_errors=True))


@pytest.fixture(scope="session", autouse=True)
def sandbox_reaches_this_runs_folder(tmp_path_factory: pytest.TempPathFactory) -> None:
    base = tmp_path_factory.getbasetemp()
    base.chmod(0o711)  # pytest made it 0700
    if os.environ.get("PYTEST_XDIST_WORKER"):  # a worker's folder is inside the run's, which xdist made afresh (0700)
        base.parent.chmod(0o711)


@pytest.fixture(autouse=True)
def sandbox_reaches_test_folders(request: pytest.FixtureRequest) -> None:
    """A test's own folder (0700 from pytest) may be passed through too."""
    if "tmp_path" in request.fixturenames:
        request.getfixturevalue("tmp_path").chmod(0o711)


def requirement(*ids: str) -> pytest.MarkDecorator:
    """Mark a test as covering security requirements (tests/requirements.toml)."""
    return pytest.mark.requirement(*ids)
