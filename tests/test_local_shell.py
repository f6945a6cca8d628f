"""The local shell executor: scrubbed environment, process group killed on timeout and cancellation."""

from __future__ import annotations

import os
import time
from pathlib import Path

import anyio
import pytest

from bastion.policy import Identity
from tests.conftest import requirement
from tests.postgres_server import wait_until
from tests.processes import running, unique_sleep
from bastion.tools.executors.local_shell import LocalShellExecutor
from bastion.tools.executors.shell_base import ShellRunRequest

pytestmark = pytest.mark.anyio


def request(command: str, *, timeout: float = 5, cap: int = 10_000) -> ShellRunRequest:
    return ShellRunRequest(command, None, timeout, cap, Identity("t"))


@requirement("shell:scrubbed-environment", "inv:no-credential-leak")
async def test_commands_never_see_the_gateways_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BASTION_DB_PASSWORD", "hunter2")
    result = await LocalShellExecutor("l", tmp_path).run(request("env"))
    assert "hunter2" not in result.stdout and "PATH=/usr/local/bin:/usr/bin:/bin" in result.stdout
    assert f"PWD={tmp_path}" in result.stdout


@requirement("shell:timeout-kills-group")
async def test_a_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    sleep = unique_sleep(31)
    started = time.monotonic()
    result = await LocalShellExecutor("l", tmp_path).run(request(f"{sleep} | {sleep}", timeout=0.5))
    assert result.timed_out and result.exit_code is None and time.monotonic() - started < 15  # not the sleeps' 31 s
    # The group was killed: gone within a guard far shorter than the sleeps (31 s), though the kernel
    # may take a moment under load to tear the sandbox's processes down.
    assert wait_until(lambda: not running(sleep), timeout=15)


@requirement("shell:timeout-kills-group", "inv:cancel-cancels-query")
async def test_cancelling_the_call_kills_the_process_group(tmp_path: Path) -> None:
    sleep = unique_sleep(32)
    with anyio.move_on_after(0.5):
        await LocalShellExecutor("l", tmp_path).run(request(f"{sleep}; echo never", timeout=60))
    with anyio.fail_after(5):
        while running(sleep):
            await anyio.sleep(0.05)


async def test_output_is_capped_without_holding_it_all(tmp_path: Path) -> None:
    result = await LocalShellExecutor("l", tmp_path).run(request("yes | head -c 50000000", cap=1000))
    assert result.truncated and len(result.stdout) == 1000 and result.exit_code == 0


async def test_stdin_is_closed(tmp_path: Path) -> None:
    result = await LocalShellExecutor("l", tmp_path).run(request("cat", timeout=5))
    assert result.exit_code == 0 and result.stdout == "" and not result.timed_out


async def test_the_process_gets_its_own_session(tmp_path: Path) -> None:
    result = await LocalShellExecutor("l", tmp_path).run(request("ps -o sid= -p $$"))
    assert int(result.stdout.strip()) != os.getsid(0)
