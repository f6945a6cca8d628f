"""A real OpenSSH sshd for tests: started once per session on a free 127.0.0.1 port, with a throwaway
host key and user key, as a child process (`sshd -D -e`); stopped at the end.

The binary is $BASTION_TEST_SSHD, else /usr/sbin/sshd, else `sshd` on PATH; without one the tests
that need it fail saying how to provide it.
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.processes import stop

HOW_TO = ("No OpenSSH sshd found (looked at $BASTION_TEST_SSHD, /usr/sbin/sshd and PATH). "
          "Install it with `apt-get install -y openssh-server` (CI does), or set BASTION_TEST_SSHD to its path.")


@dataclass
class SshServer:
    host: str
    port: int
    user: str
    key_file: Path  # the user's private key (its public half is the only authorized key)
    known_hosts: Path  # holds the host key as `[127.0.0.1]:PORT`
    host_key: Path  # the server's private host key
    log: Path  # sshd's stderr (-e)
    process: subprocess.Popen[bytes]

    def logins(self) -> int:
        """Successful logins so far: one per SSH connection."""
        return self.log.read_text(errors="replace").count("Accepted publickey for")

    def connection_pids(self) -> list[int]:
        """The per-connection sshd processes (children of this listener), to cut a connection."""
        found = subprocess.run(["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True)
        return [int(pid) for pid in found.stdout.split()]


def find_sshd() -> str | None:
    candidates = [os.environ.get("BASTION_TEST_SSHD"), "/usr/sbin/sshd", shutil.which("sshd")]
    return next((c for c in candidates if c and os.access(c, os.X_OK)), None)


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "bastion-test", "-f", str(path)],
                   check=True, capture_output=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            return s.recv(4).startswith(b"SSH-")  # the listener itself, not just an open port
    except OSError:
        return False


def _start(sshd: str, root: Path, port: int) -> subprocess.Popen[bytes] | None:
    """sshd listening on ``port``, or None when it exited first (port taken: try another)."""
    config = root / f"sshd_config.{port}"
    config.write_text("\n".join([
        f"Port {port}", "ListenAddress 127.0.0.1", f"HostKey {root / 'host_key'}",
        f"AuthorizedKeysFile {root / 'authorized_keys'}", f"PidFile {root / 'sshd.pid'}",
        "PermitRootLogin prohibit-password", "UsePAM no", "StrictModes no",
        "PubkeyAuthentication yes", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
        "PrintMotd no", "LogLevel VERBOSE", "",
    ]))
    log = (root / "sshd.log").open("ab")
    process = subprocess.Popen([sshd, "-D", "-e", "-f", str(config)], stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    log.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return None
        if _answers(port):
            return process
        time.sleep(0.05)
    stop(process)
    pytest.fail(f"sshd did not listen on 127.0.0.1:{port} within 10 s:\n{(root / 'sshd.log').read_text(errors='replace')}")


@pytest.fixture(scope="session")
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SshServer]:
    binary = find_sshd()
    if binary is None:
        pytest.fail(HOW_TO)
    if not shutil.which("ssh-keygen"):
        pytest.fail(f"ssh-keygen is missing. {HOW_TO}")
    # Debian's sshd refuses to start without its privilege-separation directory.
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    root = tmp_path_factory.mktemp("sshd")
    _keygen(root / "host_key")
    _keygen(root / "user_key")
    shutil.copy(root / "user_key.pub", root / "authorized_keys")
    for _ in range(5):
        port = _free_port()
        process = _start(binary, root, port)
        if process is not None:
            break
    else:
        pytest.fail(f"sshd would not start:\n{(root / 'sshd.log').read_text(errors='replace')}")
    host_key = (root / "host_key.pub").read_text().split()
    known_hosts = root / "known_hosts"
    known_hosts.write_text(f"[127.0.0.1]:{port} {host_key[0]} {host_key[1]}\n")
    try:
        yield SshServer("127.0.0.1", port, getpass.getuser(), root / "user_key", known_hosts, root / "host_key",
                        root / "sshd.log", process)
    finally:
        stop(process)
