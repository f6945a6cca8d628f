"""`bastion login`: the OIDC device flow (RFC 8628) against the real test provider process, the
token kept for the user only, and the approvals CLI voting as the person who signed in."""

from __future__ import annotations

import re
import stat
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from bastion.store import SqliteAuditStore
from tests.oidc_server import OidcProvider
from tests.test_auth import RESOURCE, write_config

BASTION = str(Path(sys.executable).parent / "bastion")
PROMPT = re.compile(r"To sign in, open (\S+) and confirm the code (\S+)")


@pytest.fixture
def cli_config(tmp_path: Path, demo_db: Path, oidc_provider: OidcProvider) -> Path:
    client = f"bastion-cli-{uuid.uuid4().hex[:6]}"
    oidc_provider.register_client(client, "", [], resource=RESOURCE, public=True)
    return write_config(tmp_path, demo_db, oidc_provider.issuer, extra_auth=f'cli_client_id = "{client}"')


@pytest.fixture
def person(oidc_provider: OidcProvider) -> str:
    sub = f"dora-{uuid.uuid4().hex[:6]}"
    oidc_provider.add_user(sub, email=f"{sub}@example.com", realm_access={"roles": ["analysts"]})
    return sub


def env(tmp_path: Path) -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "XDG_STATE_HOME": str(tmp_path / "state")}


def login(config: Path, oidc_provider: OidcProvider, tmp_path: Path, sub: str, deny: bool = False) -> subprocess.CompletedProcess[str]:
    """Run `bastion login` and, as the person at a browser, answer its code on the provider's page."""
    with subprocess.Popen([BASTION, "login", "--config", str(config)], env=env(tmp_path),
                          stderr=subprocess.PIPE, text=True) as process:
        assert process.stderr is not None
        line = process.stderr.readline()
        shown = PROMPT.search(line)
        assert shown, f"no sign-in prompt: {line!r}"
        page = oidc_provider.http.post(shown.group(1).replace(oidc_provider.issuer, ""),
                                       data={"user_code": shown.group(2), "sub": sub, **({"deny": "1"} if deny else {})})
        assert page.status_code == 200, page.text
        rest = process.stderr.read()
        return subprocess.CompletedProcess(process.args, process.wait(timeout=60), "", line + rest)


def test_login_keeps_a_token_for_the_user_only_and_approvals_vote_as_that_person(
        cli_config: Path, oidc_provider: OidcProvider, tmp_path: Path, person: str) -> None:
    signed_in = login(cli_config, oidc_provider, tmp_path, person)
    assert signed_in.returncode == 0, signed_in.stderr
    assert f"signed in as {person}" in signed_in.stderr
    (kept,) = (tmp_path / "state" / "bastion" / "tokens").iterdir()
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600 and stat.S_IMODE(kept.parent.stat().st_mode) == 0o700

    listed = subprocess.run([BASTION, "approvals", "list", "--json", "--config", str(cli_config)], env=env(tmp_path),
                            capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
    events = list(SqliteAuditStore(cli_config.parent / "bastion-audit.db").iter_all())
    requested = [e for e in events if e["type"] == "call.requested"]
    assert requested and {e["identity"]["subject"] for e in requested} == {person}
    assert not any(kept.read_text().split('"access_token": "')[1].split('"')[0] in str(e) for e in events)

    out = subprocess.run([BASTION, "logout", "--config", str(cli_config)], env=env(tmp_path), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "signed out" in out.stderr and not kept.exists()
    refused = subprocess.run([BASTION, "approvals", "list", "--config", str(cli_config)], env=env(tmp_path),
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode != 0 and "run `bastion login`" in refused.stderr


def test_a_denied_sign_in_keeps_nothing(cli_config: Path, oidc_provider: OidcProvider, tmp_path: Path, person: str) -> None:
    denied = login(cli_config, oidc_provider, tmp_path, person, deny=True)
    assert denied.returncode != 0 and "sign-in failed: the sign-in was denied" in denied.stderr
    assert not (tmp_path / "state" / "bastion" / "tokens").exists() or not any((tmp_path / "state" / "bastion" / "tokens").iterdir())


def test_login_without_a_cli_client_says_what_to_configure(tmp_path: Path, demo_db: Path, oidc_provider: OidcProvider) -> None:
    config = write_config(tmp_path, demo_db, oidc_provider.issuer)
    result = subprocess.run([BASTION, "login", "--config", str(config)], env=env(tmp_path), capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "auth.cli_client_id: not set" in result.stderr and "BASTION_TOKEN" in result.stderr
