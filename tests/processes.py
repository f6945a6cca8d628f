"""Stopping the service processes the test plugins start (sshd, the OIDC provider, bastion serve)."""

from __future__ import annotations

import os
import re
import secrets
import subprocess


def stop(process: subprocess.Popen[bytes], timeout: float = 5) -> None:
    """SIGTERM, then SIGKILL if it has not gone within ``timeout`` seconds."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def unique_sleep(seconds: int = 30) -> str:
    """A `sleep` command line no other process on the machine has (this run's pid and a random part
    in its fraction), so `running` finds this test's processes only, however many runs share the host."""
    return f"sleep {seconds}.{os.getpid()}{secrets.randbelow(10**6):06d}"


def running(command_line: str) -> bool:
    """Whether a process whose command line contains ``command_line`` is alive (`pgrep -f`)."""
    return subprocess.run(["pgrep", "-f", re.escape(command_line)], capture_output=True).returncode == 0
