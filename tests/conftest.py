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
    """The demo database, built once by the example script."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_demo_db", ROOT / "examples" / "make_demo_db.py")
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module.build(tmp_path_factory.mktemp("demo") / "demo.db")


@pytest.fixture
def demo_config(tmp_path: Path, demo_db: Path) -> Path:
    """examples/bastion.toml with its demo database copied beside it (tests may write to it)."""
    shutil.copy(demo_db, tmp_path / "demo.db")
    config = tmp_path / "bastion.toml"
    config.write_text((ROOT / "examples" / "bastion.toml").read_text())
    return config


def requirement(*ids: str) -> pytest.MarkDecorator:
    """Mark a test as covering security requirements (tests/requirements.toml)."""
    return pytest.mark.requirement(*ids)
