"""Container executor: the vetted command runs inside a running container through the runtime's own
CLI (`docker exec` / `podman exec`, the same flags on both), never through a host shell.

One call is one exec, as argv::

    <runtime> [runtime_args] exec -i --user U --workdir CWD <id> env -i PATH=… HOME=… sh -c _WRAPPER bastion SHELL PLAN

- ``env -i``: the process sees only the variables Bastion names, none of the container's (its
  image and `run -e` values often hold credentials) nor the gateway's;
- never ``--privileged``, never as root: the user is refused at config time when it is `root` or
  uid 0, and ``_WRAPPER`` refuses to run anything when the uid it really got inside is 0 (a name
  that maps to uid 0 in the image);
- a container that runs privileged or shares a host namespace (pid, ipc, uts, network) is refused:
  an exec there reaches the host;
- the process is killed *inside the container* on timeout or cancellation: the wrapper holds the
  exec's stdin and kills its process group when it reaches EOF (the gateway closed it, or died),
  and the gateway also sends `kill -KILL -<pgid>` by a second exec. Killing only the local client
  would leave the command running in the container.

The runtime's CLI gets the gateway's environment reduced to what selects and reaches the runtime
(DOCKER_*, CONTAINER_HOST, CONTAINERS_*, XDG_RUNTIME_DIR, HOME, PATH): never a database password.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from typing import Any

import anyio
from anyio.abc import Process

from bastion.policy.errors import TargetUnavailable
from bastion.tools.executors.local_shell import SAFE_PATH
from bastion.tools.executors.shell_base import ShellResult, ShellRunRequest, decode_capped, drain_capped, kill_group

CLI_TIMEOUT_S = 30.0  # inspect, ps, lifecycle and the kill exec: the runtime answers in well under this
KILL_TIMEOUT_S = 5.0
_HEADER_MAX = 128
_NOT_FOUND = re.compile(r"no such container|no container with name or id", re.I)
_HOST_NAMESPACES = ("PidMode", "IpcMode", "UTSMode", "NetworkMode")
_CLI_ENV_PREFIXES = ("DOCKER_", "CONTAINERS_", "PODMAN_")
_CLI_ENV_NAMES = ("PATH", "HOME", "XDG_RUNTIME_DIR", "TMPDIR", "CONTAINER_HOST", "CONTAINER_CONNECTION")

# Run by `sh -c _WRAPPER bastion SHELL PLAN` inside the container. It first reads its real uid
# (builtins only: no `id` needed) and prints a header the gateway strips: `bastion-exec PID UID`.
# Uid 0, or none readable: it stops before running anything. Then the watcher holds the exec's stdin
# on fd 3 and, at EOF, KILLs the process group (the exec'd process leads one: runc starts it with
# setsid); the command gets /dev/null as stdin and no fd 3, and the watcher's output goes to
# /dev/null so it cannot hold the exec's output open.
_WRAPPER = """u=
while read -r k r e _; do if [ "$k" = Uid: ]; then u="$r:$e"; break; fi; done </proc/self/status
echo "bastion-exec $$ ${u:-unknown}"
case "$u" in ''|0:*|*:0) exit 125 ;; esac
exec 3<&0 </dev/null
{ read -r _ <&3; kill -KILL 0; } >/dev/null 2>&1 &
watcher=$!
exec 3<&-
"$1" -c "$2"
status=$?
kill "$watcher" 2>/dev/null
exit "$status"
"""


@dataclass(frozen=True)
class Target:
    """The container a call reaches, as the runtime's inspect describes it."""

    id: str
    name: str
    raw: dict[str, Any]

    @property
    def running(self) -> bool:
        return bool(self.raw.get("State", {}).get("Running"))

    def host_reach(self) -> str | None:
        """Why an exec here would reach the host (privileged, a host namespace); None when it would not."""
        host = self.raw.get("HostConfig") or {}
        if host.get("Privileged"):
            return "it runs privileged"
        shared = [key[:-4].lower() for key in _HOST_NAMESPACES if str(host.get(key) or "") == "host"]
        return f"it shares the host's {', '.join(shared)} namespace" if shared else None


@dataclass(frozen=True)
class CliResult:
    code: int
    stdout: bytes
    stderr: str


class ContainerRuntime:
    """One connection's way to its container: the runtime's CLI (docker or podman), its global
    options, and the container by name or by label (exactly one running container must carry it)."""

    def __init__(self, name: str, *, runtime: str, path: str | None = None, args: tuple[str, ...] = (),
                 container: str | None = None, label: str | None = None) -> None:
        if (container is None) == (label is None):
            raise ValueError("name exactly one of container and label")
        self.name, self.runtime, self.args = name, runtime, tuple(args)
        self.path = path
        self.container, self.label = container, label
        self._checked: Target | None = None  # the container that last passed `running`: exec goes to its id

    @property
    def wanted(self) -> str:
        return f"`{self.container}`" if self.container else f"with label `{self.label}`"

    def unavailable(self, reason: str, *, hint: str | None = None, detail: str | None = None) -> TargetUnavailable:
        return TargetUnavailable(f"connection `{self.name}` is unavailable: {reason}", hint=hint, detail=detail)

    def argv(self, *words: str) -> list[str]:
        path = self.path or shutil.which(self.runtime)
        if path is None:
            raise self.unavailable(f"the container runtime's CLI `{self.runtime}` is not installed on the gateway's host",
                                   hint=f"Install {self.runtime}, or set `runtime_path` on this connection.")
        return [path, *self.args, *words]

    async def spawn(self, *words: str, stdin: int = subprocess.DEVNULL, stderr: int = subprocess.PIPE) -> Process:
        try:
            return await anyio.open_process(self.argv(*words), env=cli_env(), stdin=stdin, stderr=stderr,
                                            start_new_session=True)
        except OSError as error:
            raise self.unavailable(f"the container runtime's CLI could not start ({error.strerror})",
                                   hint="Check `runtime` and `runtime_path` on this connection.") from error

    async def cli(self, *words: str, cap: int = 4_000_000, timeout: float = CLI_TIMEOUT_S,
                  merge: bool = False) -> CliResult:
        """Run the CLI to its end (killed past ``timeout``): its exit code, stdout (at most cap + 1
        bytes; with ``merge``, stderr too) and stderr."""
        process = await self.spawn(*words, stderr=subprocess.STDOUT if merge else subprocess.PIPE)
        out, err = bytearray(), bytearray()
        try:
            with anyio.move_on_after(timeout) as scope:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(drain_capped, process.stdout, out, cap)
                    tg.start_soon(drain_capped, process.stderr, err, 64_000)
                await process.wait()
        finally:
            if process.returncode is None:
                kill_group(process)
                with anyio.CancelScope(shield=True):
                    await process.wait()
            await process.aclose()
        if scope.cancelled_caught:
            raise self.unavailable(f"the container runtime did not answer within {timeout:g} s (`{self.runtime} {words[0]}`)")
        return CliResult(process.returncode or 0, bytes(out), err.decode("utf-8", "replace"))

    async def target(self) -> Target:
        """The container this connection names, inspected now (a name may have been recreated since)."""
        ref = self.container
        if ref is None:
            found = await self.cli("ps", "-q", "--no-trunc", "--filter", f"label={self.label}")
            self.check(found, "ps")
            ids = found.stdout.decode().split()
            if len(ids) != 1:
                what = "no running container has" if not ids else f"{len(ids)} running containers have"
                raise self.unavailable(f"{what} the label `{self.label}`",
                                       hint="Exactly one running container must carry the connection's label; "
                                            "or name the container with `container`.")
            ref = ids[0]
        found = await self.cli("inspect", "--type", "container", ref)
        self.check(found, "inspect")
        try:
            raw = json.loads(found.stdout)[0]
        except (ValueError, IndexError, KeyError) as error:
            raise self.unavailable("the container runtime's inspect answer could not be read",
                                   detail=f"{type(error).__name__}: {error}") from error
        return Target(str(raw.get("Id", ref)), str(raw.get("Name", ref)).lstrip("/"), raw)

    def check(self, result: CliResult, verb: str) -> None:
        if result.code == 0:
            return
        if _NOT_FOUND.search(result.stderr):
            raise self.unavailable(f"there is no container {self.wanted}",
                                   hint="Start the container, or fix `container`/`label` on this connection.",
                                   detail=result.stderr.strip()[:2000])
        raise self.unavailable(f"the container runtime failed (`{self.runtime} {verb}` exited {result.code})",
                               hint="Ask the gateway's operator: is the runtime running, and may the gateway reach its socket?",
                               detail=result.stderr.strip()[:2000])

    async def running(self, *, reuse: bool = False) -> Target:
        """The target, refused unless it runs and an exec there stays inside the container.

        With ``reuse``, the container that passed last, by its id, without asking the runtime again
        (an inspect costs about as much as the exec): whether a container is privileged or shares a
        host namespace is fixed when it is created, so an id once checked stays checked. A container
        since removed, replaced under its name or stopped makes the exec fail before the wrapper
        starts, and the executor then asks again without ``reuse``."""
        if reuse and self._checked is not None:
            return self._checked
        target = await self.target()
        if not target.running:
            status = target.raw.get("State", {}).get("Status", "not running")
            raise self.unavailable(f"container `{target.name}` is not running ({status})",
                                   hint="Start it (the `container` tool's `start`, which approvers decide) and try again.")
        reach = target.host_reach()
        if reach is not None:
            raise self.unavailable(f"Bastion does not exec into container `{target.name}`: {reach}, so a command "
                                   "there reaches the host", hint="Use the `container` tool's logs and inspect for it.")
        self._checked = target
        return target


def cli_env() -> dict[str, str]:
    """What the runtime's CLI needs of the gateway's environment to find its runtime; nothing else."""
    return {k: v for k, v in os.environ.items() if k in _CLI_ENV_NAMES or k.startswith(_CLI_ENV_PREFIXES)}


class ContainerExecutor:
    """Runs each vetted command inside the connection's container as ``user`` (never root)."""

    def __init__(self, runtime: ContainerRuntime, *, user: str, cwd: str, shell: str = "sh") -> None:
        self.runtime, self.user, self.cwd, self.shell = runtime, user, cwd, shell

    def _env(self, cwd: str) -> list[str]:
        return [f"PATH={SAFE_PATH}", f"HOME={cwd}", "LANG=C.UTF-8", "TERM=dumb", "PAGER=cat", f"USER={self.user}"]

    async def run(self, request: ShellRunRequest) -> ShellResult:
        target = await self.runtime.running(reuse=True)
        try:
            return await self._exec(target, request)
        except _NotStarted as failed:
            # Nothing ran (the wrapper never started). The container may be gone, replaced or
            # stopped since it was checked: resolve it again, and try the new one once.
            fresh = await self.runtime.running()
            if fresh.id == target.id:
                raise failed.error from None
            return await self._exec(fresh, request)

    async def _exec(self, target: Target, request: ShellRunRequest) -> ShellResult:
        cwd = request.cwd or self.cwd
        process = await self.runtime.spawn(
            "exec", "-i", "--user", self.user, "--workdir", cwd, target.id,
            "env", "-i", *self._env(cwd), "sh", "-c", _WRAPPER, "bastion", self.shell, request.command,
            stdin=subprocess.PIPE)
        out, err = bytearray(), bytearray()
        timed_out = False
        try:
            with anyio.move_on_after(request.timeout_s) as scope:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(drain_capped, process.stdout, out, request.max_output_bytes + _HEADER_MAX)
                    tg.start_soon(drain_capped, process.stderr, err, request.max_output_bytes)
                await process.wait()
            timed_out = scope.cancelled_caught
        finally:
            if process.returncode is None or timed_out:
                with anyio.CancelScope(shield=True):
                    await self._stop(process, target, out)
            await process.aclose()
        header, body = _split_header(bytes(out))
        if header is None:  # the wrapper never started: the runtime refused the exec
            raise _NotStarted(self.runtime.unavailable(
                f"the command could not start in container `{target.name}`",
                hint=f"The container needs `sh` and `env`, the user `{self.user}` and the directory `{cwd}`.",
                detail=err.decode("utf-8", "replace").strip()[:2000]))
        if header[1] == "refused":
            raise self.runtime.unavailable(f"the user `{self.user}` is root (uid 0) inside container `{target.name}`; "
                                           "Bastion never runs a command there as root",
                                           hint="Map the connection to an unprivileged user of the image.")
        stdout, cut_out = decode_capped(body, request.max_output_bytes)
        stderr, cut_err = decode_capped(bytes(err), request.max_output_bytes)
        return ShellResult(None if timed_out else process.returncode, stdout, stderr, cut_out or cut_err, timed_out)

    async def _stop(self, process: Process, target: Target, out: bytearray) -> None:
        """Timeout or cancellation: end the command inside the container, then the local client.
        Closing stdin trips the wrapper's watcher; the KILL by a second exec does not depend on the
        runtime passing EOF on. A call cancelled early may not have read the header (the pid) yet:
        it is read now, briefly."""
        if process.stdout is not None and b"\n" not in out:
            with anyio.move_on_after(KILL_TIMEOUT_S):
                while b"\n" not in out and len(out) < _HEADER_MAX:
                    try:
                        out.extend(await process.stdout.receive())
                    except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
                        break
        if process.stdin is not None:
            await process.stdin.aclose()
        header, _ = _split_header(bytes(out))
        if header is not None and header[0].isdigit():
            with anyio.move_on_after(KILL_TIMEOUT_S):
                try:
                    await self.runtime.cli("exec", "--user", self.user, target.id, "sh", "-c",
                                           'kill -KILL -- "-$1" 2>/dev/null', "bastion", header[0],
                                           timeout=KILL_TIMEOUT_S)
                except TargetUnavailable:
                    pass  # the watcher still ends it when the exec's stdin closes
        kill_group(process)
        await process.wait()

    async def close(self) -> None:
        pass


class _NotStarted(Exception):
    """The exec ended before the wrapper printed its header: nothing ran."""

    def __init__(self, error: TargetUnavailable) -> None:
        super().__init__(error.message)
        self.error = error


def _split_header(out: bytes) -> tuple[tuple[str, str] | None, bytes]:
    """The wrapper's header `bastion-exec PID UID` → ((pid, "ok" | "refused"), the command's stdout)."""
    line, newline, rest = out.partition(b"\n")
    words = line.decode("ascii", "replace").split()
    if not newline or len(words) != 3 or words[0] != "bastion-exec":
        return None, out
    uids = words[2].split(":")
    ok = len(uids) == 2 and all(u.isdigit() and u != "0" for u in uids)
    return (words[1], "ok" if ok else "refused"), rest
