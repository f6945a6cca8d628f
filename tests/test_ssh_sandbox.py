"""SSH with `remote_isolation = "bubblewrap"`: the host's own bubblewrap wraps each command, so a
command sees the workspace and system folders only (a real sshd on loopback, the machine's bwrap)."""

from __future__ import annotations

import secrets
import shutil
from pathlib import Path

import pytest

from bastion.policy import Identity
from bastion.tools.executors.sandbox import remote_bwrap
from bastion.tools.executors.shell_base import ShellRunRequest
from bastion.tools.executors.ssh import SshExecutor
from tests.conftest import requirement
from tests.sshd_server import SshServer

pytestmark = pytest.mark.anyio


@requirement("shell:ssh-sandbox")
async def test_a_remote_command_in_bubblewrap_sees_only_its_workspace(sshd: SshServer, tmp_path: Path) -> None:
    if shutil.which("bwrap") is None:
        pytest.fail("this test needs bubblewrap on the SSH host (this machine): `apt-get install -y bubblewrap`")
    canary = "CANARY-" + secrets.token_hex(6)
    (tmp_path / "secret.txt").write_text(canary)
    ws = tmp_path / "ws"
    ws.mkdir()
    (ws / "a.txt").write_text("inside\n")
    ssh = SshExecutor("remote", host=sshd.host, port=sshd.port, user=sshd.user, key_file=sshd.key_file,
                      known_hosts=sshd.known_hosts, sandbox=remote_bwrap(str(ws), writable=False))
    try:
        result = await ssh.run(ShellRunRequest(
            f"cat a.txt; cat {tmp_path}/secret.txt; cat {sshd.key_file}; ls -A /home /root; echo x > b.txt; "
            f"echo > /dev/tcp/127.0.0.1/{sshd.port} && echo NET", None, 20, 100_000, Identity("t")))
    finally:
        await ssh.close()
    assert result.stdout.startswith("inside\n"), result
    assert canary not in result.stdout + result.stderr and "PRIVATE KEY" not in result.stdout
    assert "NET" not in result.stdout and "Read-only file system" in result.stderr
    assert not (ws / "b.txt").exists()
