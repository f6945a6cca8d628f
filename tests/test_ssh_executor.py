"""The SSH executor against a real OpenSSH sshd on a loopback port (tests/sshd_server.py).

sshd runs on this machine, so a remote process is a local one: `pgrep -f` shows whether it is gone.
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import asyncssh
import pytest

from bastion.policy import Identity
from bastion.policy.errors import TargetUnavailable
from tests.cancelling import cancel_once
from tests.conftest import requirement
from tests.processes import running, unique_sleep
from tests.sshd_server import SshServer
from bastion.tools.executors.shell_base import ShellRunRequest
from bastion.tools.executors import ssh
from bastion.tools.executors.ssh import SshExecutor

pytestmark = pytest.mark.anyio
# Waits are hang guards with seconds to spare on a loaded machine, never timing claims: a test that
# tells "at once" from "at a deadline" puts that deadline much further away than the guard.
HANG_GUARD_S = 30.0
LONG_S = 600  # a command that would outlast every guard if nothing killed it
ALICE = Identity("alice@example.com", frozenset({"developers"}))


def make(server: SshServer, **overrides: object) -> SshExecutor:
    options: dict[str, object] = {"host": server.host, "port": server.port, "user": server.user,
                                  "key_file": server.key_file, "known_hosts": server.known_hosts,
                                  "connect_timeout": 5.0}
    options.update(overrides)
    return SshExecutor("box", **options)  # type: ignore[arg-type]


def request(command: str, *, cwd: str | None = None, timeout_s: float = 10.0, cap: int = 100_000) -> ShellRunRequest:
    return ShellRunRequest(command, cwd, timeout_s, cap, ALICE)


@pytest.fixture
async def executor(sshd: SshServer) -> AsyncIterator[SshExecutor]:
    ex = make(sshd)
    try:
        yield ex
    finally:
        await ex.close()


def other_key(path: Path) -> asyncssh.SSHKey:
    key = asyncssh.generate_private_key("ssh-ed25519")
    key.write_private_key(path)
    return key


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_for(predicate, timeout: float = HANG_GUARD_S) -> None:  # type: ignore[no-untyped-def]
    with anyio.fail_after(timeout):
        while not predicate():
            await anyio.sleep(0.05)


def assert_no_secret(error: TargetUnavailable, key_file: Path) -> None:
    for text in (error.message, error.detail or "", error.hint or "", error.for_agent(), str(error)):
        assert str(key_file) not in text and key_file.name not in text
        assert "PRIVATE KEY" not in text


async def test_a_command_runs_and_returns_its_output(executor: SshExecutor) -> None:
    result = await executor.run(request("uname -a"))
    assert result.exit_code == 0
    assert result.stdout.startswith("Linux ") and result.stderr == ""
    assert not result.truncated and not result.timed_out


async def test_a_failing_command_returns_its_exit_code_and_stderr(executor: SshExecutor) -> None:
    result = await executor.run(request("echo partial; echo oops >&2; exit 7"))
    assert (result.exit_code, result.stdout, result.stderr) == (7, "partial\n", "oops\n")


async def test_the_command_runs_in_the_requested_directory(executor: SshExecutor, tmp_path: Path) -> None:
    result = await executor.run(request("pwd", cwd=str(tmp_path)))
    assert (result.exit_code, result.stdout) == (0, f"{tmp_path}\n")


async def test_nothing_runs_when_the_directory_is_missing(executor: SshExecutor, tmp_path: Path) -> None:
    # With `cd dir && a || b`, `b` would run in the wrong directory: the executor must not allow that.
    result = await executor.run(request("echo ran || echo ran", cwd=str(tmp_path / "missing")))
    assert result.exit_code == 1 and result.stdout == ""
    assert "missing" in result.stderr


@requirement("shell:scrubbed-environment")
async def test_the_gateway_environment_is_not_forwarded(executor: SshExecutor, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BASTION_PROBE_SECRET", "must-not-travel")
    monkeypatch.setenv("LC_BASTION_PROBE", "must-not-travel")  # LC_* is what ssh clients usually send
    result = await executor.run(request("env"))
    assert result.exit_code == 0 and "HOME=" in result.stdout
    assert "must-not-travel" not in result.stdout


async def test_the_command_reads_an_empty_stdin(executor: SshExecutor) -> None:
    with anyio.fail_after(5):
        result = await executor.run(request("cat; echo done"))
    assert (result.exit_code, result.stdout) == (0, "done\n")


@requirement("shell:timeout-kills-group")
@pytest.mark.parametrize("prefix", ["", "trap '' TERM; "], ids=["plain", "ignoring-TERM"])
async def test_a_command_past_its_timeout_is_killed_on_the_host(executor: SshExecutor, prefix: str,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    # The remote backstop (`timeout`, normally 2 s after ours) moved to 300 s and the command to 600 s,
    # so a kill within the guard is the local deadline's doing (the watcher's TERM, then `timeout`'s
    # KILL 2 s later for a command that ignores TERM), whatever the machine's load.
    monkeypatch.setattr(ssh, "_REMOTE_GRACE_S", 300.0)
    sleep = unique_sleep(LONG_S)
    with anyio.fail_after(HANG_GUARD_S):  # the local deadline (1 s) wins, not the command's end
        result = await executor.run(request(f"echo started; {prefix}{sleep}", timeout_s=1))
    assert result.timed_out and result.exit_code is None
    assert result.stdout == "started\n"  # the output so far is kept
    await wait_for(lambda: not running(sleep))  # not at the remote backstop (300 s) or the sleep's end
    assert (await executor.run(request("echo still usable"))).stdout == "still usable\n"


@pytest.mark.parametrize("redirect", ["", ">&2"], ids=["stdout", "stderr"])
async def test_output_is_capped_and_marked_truncated(executor: SshExecutor, redirect: str) -> None:
    with anyio.fail_after(10):
        result = await executor.run(request(f"yes | head -c 5000000 {redirect}", cap=10_000))
    assert result.exit_code == 0 and result.truncated and not result.timed_out
    output = result.stderr if redirect else result.stdout
    assert 0 < len(output.encode()) <= 10_000 and output.startswith("y\ny\n")


@requirement("shell:timeout-kills-group")
async def test_a_cancelled_call_kills_the_remote_command(executor: SshExecutor) -> None:
    sleep = unique_sleep(LONG_S)
    await cancel_once(lambda: running(sleep), lambda: executor.run(request(sleep, timeout_s=LONG_S)))
    await wait_for(lambda: not running(sleep))  # long before the deadline (600 s)
    assert (await executor.run(request("echo still usable"))).stdout == "still usable\n"


@requirement("shell:timeout-kills-group")
async def test_a_call_cancelled_while_the_host_answers_its_exec_request_still_stops_the_command(
        executor: SshExecutor, monkeypatch: pytest.MonkeyPatch) -> None:
    """sshd starts the command before it answers the exec request: a cancel in between used to leave
    the channel open and the command running until the shared connection closed. Here the answer is
    held back until the command runs, and the call is cancelled then."""
    sleep = unique_sleep(LONG_S)
    make_request = asyncssh.channel.SSHChannel._make_request

    async def answered_once_running(channel, request: bytes, *args: bytes):  # type: ignore[no-untyped-def]
        answer = await make_request(channel, request, *args)
        if request == b"exec":
            await wait_for(lambda: running(sleep))
            scope.cancel()
            await anyio.sleep(0)
        return answer

    monkeypatch.setattr(asyncssh.channel.SSHChannel, "_make_request", answered_once_running)
    with anyio.move_on_after(2 * HANG_GUARD_S) as scope:
        await executor.run(request(sleep, timeout_s=LONG_S))
    assert scope.cancelled_caught
    await wait_for(lambda: not running(sleep))  # long before the deadline (600 s)
    monkeypatch.undo()
    assert (await executor.run(request("echo still usable"))).stdout == "still usable\n"


@pytest.mark.parametrize("accept_unknown_hosts", [False, True])
@requirement("shell:ssh-host-key")
async def test_a_changed_host_key_is_refused(sshd: SshServer, tmp_path: Path, accept_unknown_hosts: bool) -> None:
    known_hosts = tmp_path / "known_hosts"
    impostor = other_key(tmp_path / "impostor").export_public_key().decode()
    known_hosts.write_text(f"[127.0.0.1]:{sshd.port} {impostor}")
    ex = make(sshd, known_hosts=known_hosts, accept_unknown_hosts=accept_unknown_hosts)
    try:
        with anyio.fail_after(5), pytest.raises(TargetUnavailable, match="host key is not trusted") as caught:
            await ex.run(request("uname"))
    finally:
        await ex.close()
    assert "known_hosts" in caught.value.message and "known_hosts" in (caught.value.hint or "")
    assert known_hosts.read_text() == f"[127.0.0.1]:{sshd.port} {impostor}"  # trust on first use never overrides
    assert_no_secret(caught.value, sshd.key_file)


@requirement("shell:ssh-host-key")
async def test_an_unknown_host_is_refused_by_default(sshd: SshServer, tmp_path: Path) -> None:
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("")
    ex = make(sshd, known_hosts=known_hosts)
    try:
        with anyio.fail_after(5), pytest.raises(TargetUnavailable, match="host key is not trusted: the host is not in known_hosts"):
            await ex.run(request("uname"))
        # A missing file trusts nothing either.
        with pytest.raises(TargetUnavailable, match="host key is not trusted"):
            await make(sshd, known_hosts=tmp_path / "absent").run(request("uname"))
    finally:
        await ex.close()
    assert known_hosts.read_text() == ""


@pytest.mark.parametrize("existing", [None, "", "# no newline at the end"], ids=["no-file", "empty", "unterminated"])
async def test_trust_on_first_use_when_configured_records_the_host_key(sshd: SshServer, tmp_path: Path,
                                                                       existing: str | None) -> None:
    known_hosts = tmp_path / "ssh" / "known_hosts"
    if existing is not None:
        known_hosts.parent.mkdir()
        known_hosts.write_text(existing)
    first = make(sshd, known_hosts=known_hosts, accept_unknown_hosts=True)
    try:
        assert (await first.run(request("echo first"))).stdout == "first\n"
    finally:
        await first.close()
    host_key = " ".join((Path(f"{sshd.host_key}.pub").read_text().split())[:2])
    assert f"[127.0.0.1]:{sshd.port} {host_key}\n" in known_hosts.read_text()
    assert known_hosts.read_text().startswith(existing or "")
    # Recorded: the next connection trusts it without trust on first use.
    second = make(sshd, known_hosts=known_hosts)
    try:
        assert (await second.run(request("echo again"))).stdout == "again\n"
    finally:
        await second.close()


async def test_a_host_that_is_down_is_reported_quickly(sshd: SshServer) -> None:
    ex = make(sshd, port=free_port(), connect_timeout=300.0)
    with anyio.fail_after(HANG_GUARD_S), pytest.raises(TargetUnavailable, match="connection `box` is unavailable: the host refused") as caught:
        await ex.run(request("uname"))
    assert caught.value.code == "target_unavailable"
    assert_no_secret(caught.value, sshd.key_file)


async def test_an_unresolvable_host_is_reported(sshd: SshServer) -> None:
    ex = make(sshd, host="no-such-host.invalid")
    with anyio.fail_after(10), pytest.raises(TargetUnavailable, match="could not be resolved"):
        await ex.run(request("uname"))


@requirement("inv:no-credential-leak")
async def test_a_key_the_host_does_not_accept_fails_authentication(sshd: SshServer, tmp_path: Path) -> None:
    key_file = tmp_path / "gateway_secret_key"
    other_key(key_file)
    ex = make(sshd, key_file=key_file)
    with anyio.fail_after(5), pytest.raises(TargetUnavailable, match=f"authentication failed for the configured user `{sshd.user}`") as caught:
        await ex.run(request("uname"))
    assert_no_secret(caught.value, key_file)


@requirement("inv:no-credential-leak")
@pytest.mark.parametrize("problem", ["missing", "encrypted", "garbage"])
async def test_a_client_key_that_cannot_be_loaded_is_reported_without_its_path(sshd: SshServer, tmp_path: Path,
                                                                               problem: str) -> None:
    key_file = tmp_path / "gateway_secret_key"
    if problem == "encrypted":
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "hunter2", "-f", str(key_file)], check=True)
    elif problem == "garbage":
        key_file.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nnot a key\n-----END OPENSSH PRIVATE KEY-----\n")
    ex = make(sshd, key_file=key_file)
    with pytest.raises(TargetUnavailable, match="could not load its client key") as caught:
        await ex.run(request("uname"))
    assert_no_secret(caught.value, key_file)
    assert "hunter2" not in (caught.value.detail or "")


async def test_one_connection_serves_many_calls_even_when_they_start_together(sshd: SshServer) -> None:
    ex = make(sshd)
    before = sshd.logins()
    try:
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:
                for n in range(5):
                    tg.start_soon(ex.run, request(f"echo {n}"))
            for n in range(3):
                assert (await ex.run(request(f"echo {n}"))).stdout == f"{n}\n"
    finally:
        await ex.close()
    assert sshd.logins() - before == 1


async def test_a_dropped_connection_is_replaced_transparently(sshd: SshServer) -> None:
    ex = make(sshd)
    try:
        assert (await ex.run(request("echo one"))).stdout == "one\n"
        before = sshd.logins()
        for pid in sshd.connection_pids():  # sshd's side of every open connection: ours is the only one
            subprocess.run(["kill", str(pid)], check=False)
        with anyio.fail_after(10):
            assert (await ex.run(request("echo two"))).stdout == "two\n"
        assert sshd.logins() - before == 1
    finally:
        await ex.close()


async def test_a_connection_lost_mid_command_is_reported_and_the_command_dies(sshd: SshServer) -> None:
    ex = make(sshd)
    sleep = unique_sleep(LONG_S)
    try:
        with anyio.fail_after(2 * HANG_GUARD_S):
            async with anyio.create_task_group() as tg:

                async def cut_when_running() -> None:
                    await wait_for(lambda: running(sleep))
                    for pid in sshd.connection_pids():
                        subprocess.run(["kill", str(pid)], check=False)

                tg.start_soon(cut_when_running)
                with pytest.raises(TargetUnavailable, match="the connection was lost while the command ran"):
                    await ex.run(request(sleep, timeout_s=LONG_S))
        await wait_for(lambda: not running(sleep))  # the watcher saw the channel's stdin close
    finally:
        await ex.close()
