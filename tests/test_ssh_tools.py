"""shell_run over SSH end to end: the SDK's in-memory client, Bastion, a real OpenSSH sshd."""

from __future__ import annotations

from pathlib import Path

import pytest
from mcp import Client

from bastion.server.app import create_server
from bastion.server.config import load
from bastion.store import SqliteAuditStore
from bastion.store import events as ev
from tests.conftest import requirement
from tests.sshd_server import SshServer

pytestmark = pytest.mark.anyio


@pytest.fixture
def ssh_config(sshd: SshServer, tmp_path: Path) -> Path:
    config = tmp_path / "bastion.toml"
    config.write_text(f"""
[identity]
subject = "agent"

[connections.host]
kind = "ssh"
host = "{sshd.host}"
port = {sshd.port}
user = "{sshd.user}"
key_file = "{sshd.key_file}"
known_hosts = "{sshd.known_hosts}"
cwd = "/tmp"

  [[connections.host.rules]]
  preset = "developer"
  programs = ["uname"]
""")
    return config


@requirement("inv:no-credential-leak")
async def test_uname_runs_on_the_host_and_rm_is_refused_and_both_are_recorded(ssh_config: Path) -> None:
    async with Client(create_server(load(ssh_config))) as client:
        ran = await client.call_tool("shell_run", {"connection": "host", "command": "uname -a", "reason": "which kernel"})
        refused = await client.call_tool("shell_run", {"connection": "host", "command": "rm -rf /var/bastion-no-such-dir"})
    assert not ran.is_error and ran.structured_content["exit_code"] == 0 and "Linux" in ran.structured_content["stdout"]
    assert refused.is_error and "(rule: developer:write-path)" in refused.content[0].text
    store = SqliteAuditStore(ssh_config.parent / "bastion-audit.db")
    finished = store.call(ran.structured_content["call_id"])[-1]
    assert finished["type"] == ev.FINISHED and "Linux" in finished["result"]["stdout"]
    key_file = load(ssh_config).connections["host"].key_file
    assert key_file and key_file not in str(list(store.iter_all()))  # the key's path never reaches the log
