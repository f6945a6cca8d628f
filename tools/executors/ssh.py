"""SSH executor: asyncssh, one reused connection per target, the gateway's key, known_hosts checked.

The vetted command runs remotely under ``timeout`` (coreutils) and a small bash wrapper
(``_WRAPPER``), so no remote process outlives its call:

- the wrapper keeps the channel's stdin open on fd 3 and runs a watcher that ends the whole process
  group when that stdin reaches EOF, which happens when the gateway closes the channel (local timeout,
  cancelled call) or the connection dies. This needs no SSH "signal" request, which sshd refuses for
  sessions that skip privilege separation (root logins);
- ``timeout`` gives the group its own deadline (a little after ours) as a backstop, and KILLs what
  ignores TERM.

The remote login shell must be POSIX (the command line is quoted with ``shlex.quote``). No
environment is forwarded: the command sees only what sshd gives a session.
"""

from __future__ import annotations

import os
import shlex
import socket
import warnings
from pathlib import Path

import anyio
import anyio.lowlevel

with warnings.catch_warnings():
    # asyncssh still names DSA keys; newer cryptography warns on that at import. Bastion never uses DSA.
    warnings.filterwarnings("ignore", "DSA is deprecated", DeprecationWarning)
    warnings.filterwarnings("ignore", "DSA is deprecated", UserWarning)
    import asyncssh

from bastion.policy.errors import TargetUnavailable
from bastion.tools.executors.sandbox import remote_bwrap
from bastion.tools.executors.shell_base import ShellResult, ShellRunRequest, decode_capped

_CHUNK = 64 * 1024
_REMOTE_GRACE_S = 2.0  # the remote deadline is a backstop: the local one must win the race
_KILL_AFTER = "2s"  # TERM first, then KILL for a command that ignores it
_MAX_SESSIONS = 10  # OpenSSH's default MaxSessions: channels open at once on one connection


class SshExecutor:
    def __init__(self, name: str, *, host: str, port: int = 22, user: str, key_file: str | Path,
                 known_hosts: str | Path | None, accept_unknown_hosts: bool = False,
                 connect_timeout: float = 10.0, sandbox: list[str] | None = None) -> None:
        self.name = name
        self.sandbox = sandbox  # remote_bwrap(...) when the host wraps each command in bubblewrap
        self.host, self.port, self.user = host, port, user
        self._key_file = Path(key_file)
        # Like OpenSSH, no file named means the gateway user's own known_hosts (never "no checking").
        self.known_hosts = Path(known_hosts) if known_hosts is not None else Path.home() / ".ssh" / "known_hosts"
        self.accept_unknown_hosts = accept_unknown_hosts
        self.connect_timeout = connect_timeout
        self._conn: asyncssh.SSHClientConnection | None = None
        self._lock = anyio.Lock()  # concurrent first calls share one connection
        self._sessions = anyio.Semaphore(_MAX_SESSIONS)

    async def run(self, request: ShellRunRequest) -> ShellResult:
        async with self._sessions:
            process = await self._start(_remote_command(request, self.sandbox))
            out, err = _Capped(request.max_output_bytes), _Capped(request.max_output_bytes)
            try:
                with anyio.move_on_after(request.timeout_s) as deadline:
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(out.drain, process.stdout)
                        tg.start_soon(err.drain, process.stderr)
                    await process.wait_closed()
            except anyio.get_cancelled_exc_class():
                process.close()  # sends without awaiting, so no shield is needed; the watcher does the rest
                raise
            if deadline.cancelled_caught:
                process.close()
            elif process.exit_status is None and process.exit_signal is None:
                raise self._unavailable("the connection was lost while the command ran", None,
                                        detail=out.error or err.error)
        stdout, cut_out = out.text()
        stderr, cut_err = err.text()
        return ShellResult(exit_code=None if deadline.cancelled_caught else process.returncode,
                           stdout=stdout, stderr=stderr, truncated=cut_out or cut_err,
                           timed_out=deadline.cancelled_caught)

    async def close(self) -> None:
        async with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
            await conn.wait_closed()

    async def _start(self, command: str) -> asyncssh.SSHClientProcess[bytes]:
        conn = await self._connection()
        try:
            return await self._open(conn, command)
        except TargetUnavailable:
            await anyio.lowlevel.checkpoint()  # asyncssh marks a lost connection closed on its next turn
            if not conn.is_closed():
                raise
        # The shared connection dropped since its last use (sshd restarted, idle link cut): nothing
        # ran, so open the session once more on a new connection.
        return await self._open(await self._connection(), command)

    async def _open(self, conn: asyncssh.SSHClientConnection, command: str) -> asyncssh.SSHClientProcess[bytes]:
        try:
            # Shielded: the command starts before sshd answers the exec request, and a cancel landing
            # in between would leave its channel open and the command running, with no process object
            # to close (asyncssh does not close it). A cancel meanwhile is taken just below.
            with anyio.CancelScope(shield=True), anyio.fail_after(self.connect_timeout):
                # stdin stays open (the wrapper's lifeline) and is never written.
                process = await conn.create_process(command, encoding=None)
        except TimeoutError as error:
            conn.abort()  # a connection that cannot open a channel in time is as good as dead
            raise self._unavailable("the host did not open a session in time", error) from error
        except (asyncssh.Error, OSError) as error:
            raise self._unavailable("the host refused a new session", error) from error
        try:
            await anyio.lowlevel.checkpoint()
        except anyio.get_cancelled_exc_class():
            process.close()  # the watcher sees stdin close and stops the command, as at any cancel
            raise
        return process

    async def _connection(self) -> asyncssh.SSHClientConnection:
        async with self._lock:
            if self._conn is None or self._conn.is_closed():
                self._conn = await self._connect()
            return self._conn

    async def _connect(self) -> asyncssh.SSHClientConnection:
        try:
            key = asyncssh.read_private_key(self._key_file)
        except (OSError, asyncssh.KeyImportError) as error:
            raise self._unavailable("the gateway could not load its client key for it", error,
                                    hint="Check the key file this connection's config names.") from error
        checker = _HostKeyCheck(self._read_known_hosts(), self.known_hosts, self.accept_unknown_hosts, self.host, self.port)
        try:
            return await asyncssh.connect(
                self.host, self.port, username=self.user, client_keys=[key], known_hosts=checker.known,
                client_factory=lambda: checker, connect_timeout=self.connect_timeout,
                # Only the gateway's key: no ssh-agent, no ~/.ssh/config, no other ways to log in.
                agent_path=None, config=None, preferred_auth="publickey", password_auth=False,
                kbdint_auth=False, gss_auth=False, gss_kex=False,
                keepalive_interval=30, keepalive_count_max=3)
        except asyncssh.HostKeyNotVerifiable as error:
            reason, hint = checker.explain()
            raise self._unavailable(reason, error, hint=hint) from error
        except asyncssh.PermissionDenied as error:
            raise self._unavailable(f"authentication failed for the configured user `{self.user}`", error,
                                    hint="The remote user's authorized_keys must hold the public half of the gateway's key.") from error
        except TimeoutError as error:  # asyncssh's connect_timeout
            raise self._unavailable(f"the host did not answer within {self.connect_timeout:g} s", error) from error
        except socket.gaierror as error:
            raise self._unavailable("its host name could not be resolved", error) from error
        except ConnectionRefusedError as error:
            raise self._unavailable("the host refused the connection (is sshd listening on that port?)", error) from error
        except (OSError, asyncssh.Error) as error:
            raise self._unavailable("the SSH connection failed", error) from error

    def _read_known_hosts(self) -> asyncssh.SSHKnownHosts:
        try:
            return asyncssh.read_known_hosts(str(self.known_hosts))
        except FileNotFoundError as error:
            if self.accept_unknown_hosts:
                return asyncssh.SSHKnownHosts()  # first use: the file is created when the key is added
            raise self._unavailable("the host key is not trusted: the configured known_hosts file does not exist", error,
                                    hint="Create it with the host's key (e.g. from `ssh-keyscan`, fingerprint checked).") from error
        except (OSError, ValueError) as error:
            raise self._unavailable("the host key cannot be checked: the known_hosts file could not be read", error) from error

    def _unavailable(self, reason: str, error: BaseException | None, *, hint: str | None = None,
                     detail: str | None = None) -> TargetUnavailable:
        raw = detail if error is None else f"{type(error).__name__}: {error}"
        return TargetUnavailable(f"connection `{self.name}` is unavailable: {reason}", hint=hint, detail=self._scrub(raw))

    def _scrub(self, text: str | None) -> str | None:
        """Driver text for the audit log, without the key's path (an OSError names it)."""
        if text is None:
            return None
        for path in {str(self._key_file), str(self._key_file.resolve())}:
            if os.sep in path:  # a bare file name could be any word ("key"): config paths are absolute
                text = text.replace(path, "<client key>")
        return text


class _HostKeyCheck(asyncssh.SSHClient):
    """asyncssh asks here about a host key that known_hosts did not vouch for.

    A host known_hosts lists with other keys is refused (a changed key may be an attack); an
    unlisted host is accepted and recorded only when trust on first use is configured.
    """

    def __init__(self, known: asyncssh.SSHKnownHosts, path: Path, accept_unknown: bool, host: str, port: int) -> None:
        self.known, self.path, self.accept_unknown = known, path, accept_unknown
        self.host, self.port = host, port
        self.refused: str | None = None

    def validate_host_public_key(self, host: str, addr: str, port: int, key: asyncssh.SSHKey) -> bool:
        trusted, authorities, *_ = self.known.match(host, addr, None if port == 22 else port)
        if trusted or authorities:
            self.refused = "changed"
            return False
        if not self.accept_unknown:
            self.refused = "unknown"
            return False
        pattern = self.host if self.port == 22 else f"[{self.host}]:{self.port}"
        line = f"{pattern} {key.export_public_key('openssh').decode().strip()}\n"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        existing = self.path.read_text() if self.path.exists() else ""
        with self.path.open("a") as file:
            file.write(line if not existing or existing.endswith("\n") else "\n" + line)
        return True

    def explain(self) -> tuple[str, str]:
        """Reason and hint for a refused host key."""
        if self.refused == "changed":
            return ("the host key is not trusted: it differs from the key known_hosts holds for this host",
                    "If the host's key was replaced on purpose, put the new key in known_hosts (check its fingerprint); "
                    "otherwise treat this as a possible attack.")
        if self.refused == "unknown":
            return ("the host key is not trusted: the host is not in known_hosts",
                    "Add the host's key to known_hosts (e.g. from `ssh-keyscan`, fingerprint checked), "
                    "or allow trust on first use for this connection.")
        return ("the host key is not trusted (known_hosts revokes it or could not vouch for it)",
                "Check this host's entries in known_hosts.")


class _Capped:
    """One output stream, kept up to the cap (plus a byte to know it was cut); the rest is read and dropped
    so the remote side never blocks on a full window."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.data = bytearray()
        self.error: str | None = None

    async def drain(self, stream: asyncssh.SSHReader[bytes]) -> None:
        try:
            while chunk := await stream.read(_CHUNK):
                if len(self.data) <= self.cap:
                    self.data += chunk[: self.cap + 1 - len(self.data)]
        except (asyncssh.Error, OSError) as error:  # the connection dropped: reported by run()
            self.error = f"{type(error).__name__}: {error}"

    def text(self) -> tuple[str, bool]:
        return decode_capped(bytes(self.data), self.cap)


# Runs under bash as `bash -c _WRAPPER bastion SCRIPT`. The watcher holds the channel's stdin (fd 3)
# and, at EOF, sends TERM to the process group `timeout` made; the command gets /dev/null as stdin
# and no fd 3. The watcher's output goes to /dev/null so it cannot hold the channel open. The wrapper
# outlives TERM (a trap, not an ignore, so the command keeps the default) until the command ends:
# `timeout` exits with its child, and must still be there to KILL a command that ignores TERM.
_WRAPPER = """trap : TERM
exec 3<&0 </dev/null
{ read -r _ <&3; kill -TERM 0; } >/dev/null 2>&1 &
watcher=$!
exec 3<&-
bash --noprofile --norc -c "$1"
status=$?
kill "$watcher" 2>/dev/null
exit "$status"
"""


def _remote_command(request: ShellRunRequest, sandbox: list[str] | None = None) -> str:
    script = request.command
    if request.cwd is not None:
        # `|| exit`, not `&&`: with `&&` a list such as `a || b` would still run `b` elsewhere.
        script = f"cd -- {shlex.quote(request.cwd)} || exit 1\n{script}"
    limit = request.timeout_s + _REMOTE_GRACE_S
    wrap = "".join(f"{shlex.quote(arg)} " for arg in sandbox or ())
    return (f"exec timeout --kill-after={_KILL_AFTER} {limit:.3f}s "
            f"{wrap}bash --noprofile --norc -c {shlex.quote(_WRAPPER)} bastion {shlex.quote(script)}")
