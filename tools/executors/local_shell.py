"""Local shell executor: `bash --noprofile --norc -c` on the rebuilt command inside the connection's
OS sandbox (tools/executors/sandbox.py), in its own process group, with a timeout that kills the
whole sandbox, and capped output. The TCP endpoints a connection names are forwarded into the
sandbox for the length of each call (network_bridge.py), and what each call sent and received is in
its result for the audit record. Without a sandbox (an explicit `isolation = "none"`) it runs as the
gateway's user or ``run_as`` with a scrubbed environment."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager, nullcontext
from pathlib import Path

import anyio
from anyio.abc import Process

from bastion.policy.errors import TargetUnavailable
from bastion.tools.executors.network_bridge import Bridge, open_bridge
from bastion.tools.executors.sandbox import Sandbox
from bastion.tools.executors.shell_base import ShellResult, ShellRunRequest, decode_capped, drain_capped, kill_group

SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"
_WRITABLE_WORKSPACES: dict[str, anyio.Lock] = {}  # workspace + "/" → its lock (see LocalShellExecutor._turn)


def scrubbed_env(cwd: str, home: str | None = None) -> dict[str, str]:
    """The only environment a command sees: nothing of the gateway's (it holds secrets)."""
    return {"PATH": SAFE_PATH, "HOME": home or os.environ.get("HOME", cwd), "PWD": cwd, "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8", "TERM": "dumb", "PAGER": "cat", "GIT_PAGER": "cat", "GIT_TERMINAL_PROMPT": "0",
            "USER": os.environ.get("USER", ""), "LOGNAME": os.environ.get("LOGNAME", "")}


class LocalShellExecutor:
    """Runs every command in ``sandbox``; with none, as the gateway's own OS user, or as ``run_as``:
    through runuser when the gateway is root, else through `sudo -n -u` (a sudoers entry; -n never prompts)."""

    def __init__(self, name: str, cwd: str | Path, *, run_as: str | None = None, sandbox: Sandbox | None = None) -> None:
        self.name = name
        self.cwd = str(cwd)
        self.run_as = run_as
        self.sandbox = sandbox
        self._probed = False
        if sandbox is not None and sandbox.writable:
            _WRITABLE_WORKSPACES.setdefault(sandbox.workspace.rstrip("/") + "/", anyio.Lock())

    def _turn(self) -> AbstractAsyncContextManager[object]:
        """Commands take turns on any tree a writable sandbox can change: the walk that finds what to
        hide and the binds bubblewrap makes from it must see the same folders, and a command could
        move them in between. One lock per writable workspace, taken by every sandbox whose
        workspace overlaps it (the same folder, one inside the other), read-only ones too."""
        if self.sandbox is None:
            return nullcontext()
        mine = self.sandbox.workspace.rstrip("/") + "/"
        locks = [lock for path, lock in sorted(_WRITABLE_WORKSPACES.items())
                 if path.startswith(mine) or mine.startswith(path)]
        return _all(locks)

    def _network(self) -> AbstractAsyncContextManager[Bridge | None]:
        """The call's forwarders to the endpoints the connection names; none when it names none."""
        sandbox = self.sandbox
        if sandbox is None or not sandbox.network:
            return nullcontext()
        return open_bridge(sandbox.network, sandbox.runtime_dir(), sandbox.user() if os.geteuid() == 0 else None)

    async def _ready(self) -> None:
        """A host that cannot run the sandbox refuses every call, saying how to fix it (checked once)."""
        if self.sandbox is not None and not self._probed:
            await anyio.to_thread.run_sync(self.sandbox.probe)
            self._probed = True

    async def _spawn(self, command: str, cwd: str, bridge: Bridge | None) -> Process:
        if self.sandbox is None:
            argv, who = self._argv(command)
            return await anyio.open_process(argv, cwd=cwd, env={**scrubbed_env(cwd), **(who or {})},
                                            start_new_session=True, stdin=subprocess.DEVNULL)
        net_dir = bridge.directory if bridge is not None else None
        launch = await anyio.to_thread.run_sync(self.sandbox.launch, command, cwd, net_dir)  # walks the workspace
        try:
            return await anyio.open_process(launch.argv, cwd="/", env={"PATH": SAFE_PATH}, start_new_session=True,
                                            stdin=subprocess.DEVNULL, pass_fds=launch.pass_fds, **launch.spawn)
        finally:
            launch.close()

    def _argv(self, command: str) -> tuple[list[str], dict[str, str] | None]:
        bash = ["bash", "--noprofile", "--norc", "-c", command]
        if self.run_as is None:
            return bash, None
        try:
            home = pwd.getpwnam(self.run_as).pw_dir
        except KeyError:
            raise TargetUnavailable(f"connection `{self.name}` is unavailable: its mapped OS user `{self.run_as}` does not exist",
                                    hint="Ask the gateway's operator to create the user or fix the mapping.") from None
        who = {"HOME": home, "USER": self.run_as, "LOGNAME": self.run_as}
        tool = "runuser" if os.geteuid() == 0 else "sudo"
        path = shutil.which(tool, path="/usr/sbin:/usr/bin:/sbin:/bin")
        if path is None:
            raise TargetUnavailable(f"connection `{self.name}` is unavailable: `{tool}` is needed to run as `{self.run_as}`",
                                    hint=f"Ask the gateway's operator to install {tool}.")
        switch = [path, "-u", self.run_as, "--"] if tool == "runuser" else [path, "-n", "-u", self.run_as, "--"]
        return switch + bash, who

    async def run(self, request: ShellRunRequest) -> ShellResult:
        cwd = request.cwd or self.cwd
        if not Path(cwd).is_dir():
            raise TargetUnavailable(f"connection `{self.name}` is unavailable: its working directory does not exist")
        async with self._turn():  # one command at a time in a writable workspace (see _turn)
            await self._ready()  # the probe walks the workspace too
            async with self._network() as bridge:  # the call's forwarders outlive its process
                process = await self._spawn(request.command, cwd, bridge)
                out, err, timed_out = await _collect(process, request)
                network = bridge.record() if bridge is not None else []
        stdout, cut_out = decode_capped(out, request.max_output_bytes)
        stderr, cut_err = decode_capped(err, request.max_output_bytes)
        return ShellResult(None if timed_out else process.returncode, stdout, stderr, cut_out or cut_err, timed_out,
                           network=network)

    async def close(self) -> None:
        if self.sandbox is not None:
            self.sandbox.close()


@asynccontextmanager
async def _all(locks: list[anyio.Lock]) -> AsyncIterator[None]:
    """Hold every lock, taken in one (sorted) order so that two callers cannot deadlock."""
    async with AsyncExitStack() as stack:
        for lock in locks:
            await stack.enter_async_context(lock)
        yield


async def _collect(process: Process, request: ShellRunRequest) -> tuple[bytes, bytes, bool]:
    """stdout, stderr (each kept to the cap) and whether the timeout struck; the process is gone after."""
    out, err = bytearray(), bytearray()
    timed_out = False
    try:
        with anyio.move_on_after(request.timeout_s) as scope:
            async with anyio.create_task_group() as tg:
                tg.start_soon(drain_capped, process.stdout, out, request.max_output_bytes)
                tg.start_soon(drain_capped, process.stderr, err, request.max_output_bytes)
            await process.wait()
        timed_out = scope.cancelled_caught
    finally:
        # Timeout, cancellation or an error: the whole process group goes, not just bash.
        if process.returncode is None or timed_out:
            kill_group(process)
            with anyio.CancelScope(shield=True):
                await process.wait()
        await process.aclose()
    return bytes(out), bytes(err), timed_out
