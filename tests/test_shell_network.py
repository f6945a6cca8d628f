"""The endpoints a local connection names, judged by effect against the real sandbox: test servers
on the host's loopback that a command reaches only when named, the real PostgreSQL, the forwarding
sockets' folder, a timeout that closes what was forwarded, and the config's errors.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from bastion.policy import Identity
from bastion.policy.errors import ConfigError, TargetUnavailable
from bastion.tools.executors import network_bridge
from bastion.tools.executors.local_shell import LocalShellExecutor
from bastion.tools.executors.network_bridge import plan
from bastion.tools.executors.sandbox import SANDBOX_UID, Sandbox
from bastion.tools.executors.shell_base import ShellResult, ShellRunRequest
from tests.conftest import requirement
from tests.test_shell_sandbox import CONFIG, site  # noqa: F401 (the fixture: a workspace among canaries)

pytestmark = [pytest.mark.anyio, requirement("shell:sandbox-network")]


class Server:
    """A TCP server on the host's 127.0.0.1 (a port the OS picks): answers each line with `got <line>`,
    and keeps every connection it accepted, so a test can see what reached it and when it closed."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self.lines: list[bytes] = []
        self.first = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)
            self.first.set()
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn: socket.socket) -> None:
        with conn.makefile("rb") as lines:
            for line in lines:
                self.lines.append(line.strip())
                try:
                    conn.sendall(b"got " + line)
                except OSError:
                    return

    def close(self) -> None:
        self.sock.close()
        for conn in self.accepted:
            conn.close()


@pytest.fixture
def servers() -> Iterator[tuple[Server, Server]]:
    pair = Server(), Server()
    yield pair
    for server in pair:
        server.close()


def executor(site: Path, *network: str) -> LocalShellExecutor:  # noqa: F811
    ws = site / "ws"
    return LocalShellExecutor("box", ws, sandbox=Sandbox(str(ws), network=plan(network)))


async def run(box: LocalShellExecutor, command: str, *, timeout: float = 20, close: bool = True) -> ShellResult:
    try:
        return await box.run(ShellRunRequest(command, None, timeout, 1_000_000, Identity("mallory")))
    finally:
        if close:
            await box.close()


def talk(host: str, port: int, line: str) -> str:
    """bash inside: connect, send one line, print the answer (or bash's error)."""
    return f"(exec 3<>/dev/tcp/{host}/{port} && echo {line} >&3 && head -n1 <&3) 2>&1"


async def test_a_named_endpoint_is_reached_by_address_and_by_name_and_nothing_else(
        site: Path, servers: tuple[Server, Server]) -> None:  # noqa: F811
    named, other = servers
    box = executor(site, f"127.0.0.1:{named.port}", f"db.test=127.0.0.1:{named.port}")
    py = f"import socket; s = socket.create_connection(('db.test', {named.port})); s.sendall(b'py\\n'); print(s.recv(64))"
    result = await run(box, "; ".join([
        talk("127.0.0.1", named.port, "by-address"), talk("db.test", named.port, "by-name"),
        f"python3 -c \"{py}\"", talk("127.0.0.1", other.port, "other-port"), talk("localhost", named.port, "localhost"),
        talk("10.1.2.3", named.port, "elsewhere"), "getent hosts example.com db.test localhost || echo no-name",
        "(exec 3<>/dev/udp/9.9.9.9/53) 2>&1", "echo done"]))
    out = result.stdout
    assert "got by-address" in out and "got by-name" in out and "b'got py\\n'" in out, out
    assert "Connection refused" in out, "another port of the host's loopback is not there"
    assert "Network is unreachable" in out, "nothing routes outside the sandbox"
    # localhost is 127.0.0.1 inside, so it reaches what 127.0.0.1 names
    assert sorted(named.lines) == [b"by-address", b"by-name", b"localhost", b"py"]
    assert other.lines == [] and other.accepted == []
    assert "127.0.0.2\tdb.test" in out.replace("       ", "\t") and "example.com" not in out
    assert {u["endpoint"]: (u["connections"], u["bytes_out"]) for u in result.network} == {
        f"127.0.0.1:{named.port}": (2, len("by-address\nlocalhost\n")), f"db.test:{named.port}": (2, len("by-name\npy\n"))}


async def test_without_a_network_list_nothing_is_reached(site: Path, servers: tuple[Server, Server]) -> None:  # noqa: F811
    named, _ = servers
    result = await run(executor(site), talk("127.0.0.1", named.port, "x") + "; ls /run 2>&1; getent hosts localhost")
    assert "Connection refused" in result.stdout and "No such file" in result.stdout and named.accepted == []
    assert result.network == []


async def test_the_real_postgresql_answers_only_when_named(site: Path) -> None:  # noqa: F811
    try:
        socket.create_connection(("127.0.0.1", 5432), timeout=5).close()
    except OSError:
        pytest.fail("this test needs PostgreSQL on 127.0.0.1:5432 with trust auth for `postgres` (CI's .ci/run starts it)")
    query = "psql -h 127.0.0.1 -p 5432 -U postgres -d postgres -Atc 'select 40 + 2' 2>&1"
    closed = await run(executor(site), query)
    opened = await run(executor(site, "127.0.0.1:5432"), query)
    by_name = await run(executor(site, "pg.test=127.0.0.1:5432"), query.replace("127.0.0.1", "pg.test"))
    assert "42" not in closed.stdout and "Connection refused" in closed.stdout
    assert opened.stdout.splitlines()[0] == "42" and by_name.stdout.splitlines()[0] == "42", opened.stdout
    assert opened.network[0]["bytes_in"] > 0


async def test_no_host_socket_comes_in_with_the_bridge(site: Path, servers: tuple[Server, Server]) -> None:  # noqa: F811
    named, other = servers
    result = await run(executor(site, f"127.0.0.1:{named.port}", f"api.test:{other.port}"),
                       "find /run -mindepth 1 -printf '%p %y %u %m\\n' | sort; ls /run/postgresql /var/run 2>&1 | wc -l")
    assert result.stdout.splitlines() == [
        "/run/bastion d agent 700", "/run/bastion/net d agent 700", "/run/bastion/net/0.sock s agent 600",
        "/run/bastion/net/1.sock s agent 600", "2"], "only the bridge's own sockets: no /run/postgresql, no /var/run"


async def test_the_forwarding_sockets_are_the_sandbox_users_alone(site: Path, servers: tuple[Server, Server]) -> None:  # noqa: F811
    if os.getuid() != 0:
        pytest.fail("this test needs the suite to run as root (CI does): it tries the sockets as another user")
    named, _ = servers
    box = executor(site, f"127.0.0.1:{named.port}")
    token = secrets.token_hex(4)
    probe = ("import socket, sys\ns = socket.socket(socket.AF_UNIX)\ntry:\n    s.connect(sys.argv[1]); print('connected')\n"
             "except OSError as e:\n    print(type(e).__name__)\n")
    outcome: dict[str, object] = {}

    def look() -> None:  # while the call holds a connection open
        assert named.first.wait(30)
        assert box.sandbox is not None
        folders = list(box.sandbox.runtime_dir().glob("net-*"))
        outcome["folders"] = [(oct(f.stat().st_mode & 0o777), f.stat().st_uid) for f in folders]
        outcome["nobody"] = subprocess.run(["python3", "-c", probe, str(folders[0] / "0.sock")], capture_output=True, text=True,
                                           user=65534, group=65534, extra_groups=[]).stdout
        named.accepted[0].sendall(b"release\n")

    watcher = threading.Thread(target=look)
    watcher.start()
    result = await run(box, f"exec 3<>/dev/tcp/127.0.0.1/{named.port}; head -n1 <&3; echo {token}", close=False)
    watcher.join()
    assert box.sandbox is not None
    left = list(box.sandbox.runtime_dir().glob("net-*"))
    await box.close()
    assert result.stdout.split() == ["release", token]
    assert outcome["folders"] == [("0o700", SANDBOX_UID)]
    assert outcome["nobody"] == "PermissionError\n", "another user cannot reach the forwarding sockets"
    assert left == [], "the call's folder goes with the call"


async def test_the_command_starts_only_once_every_bridge_listens(site: Path, servers: tuple[Server, Server]) -> None:  # noqa: F811
    named, other = servers
    box = executor(site, f"127.0.0.1:{named.port}", f"b.test=127.0.0.1:{other.port}", "c.test=127.0.0.1:5432")
    results = [await run(box, f"echo > /dev/tcp/127.0.0.1/{named.port} && echo > /dev/tcp/b.test/{other.port} && "
                              "sleep 0.1 & wait; echo waited", close=False) for _ in range(10)]
    await box.close()
    assert [r.stdout for r in results] == ["waited\n"] * 10, [r.stderr for r in results]
    assert len(named.accepted) == 10 and len(other.accepted) == 10


async def test_a_timeout_closes_every_forwarded_connection(site: Path, servers: tuple[Server, Server]) -> None:  # noqa: F811
    named, _ = servers
    result = await run(executor(site, f"127.0.0.1:{named.port}"),
                       f"exec 3<>/dev/tcp/127.0.0.1/{named.port}; echo hello >&3; sleep 60", timeout=2)
    assert result.timed_out and len(named.accepted) == 1
    conn = named.accepted[0]
    conn.settimeout(20)
    data = b""
    while chunk := conn.recv(4096):  # the line, then the end: the gateway closed it
        data += chunk
    assert data in (b"", b"hello\n") and named.lines == [b"hello"]


async def test_an_endpoint_that_does_not_answer_is_recorded_as_failed(site: Path) -> None:  # noqa: F811
    unused = socket.socket()
    unused.bind(("127.0.0.1", 0))
    port = unused.getsockname()[1]
    unused.close()  # nothing listens there
    result = await run(executor(site, f"gone.test=127.0.0.1:{port}"), talk("gone.test", port, "x") + "; echo end")
    assert "got" not in result.stdout and result.stdout.endswith("end\n")
    assert result.network == [{"endpoint": f"gone.test:{port}", "target": f"127.0.0.1:{port}", "connections": 1,
                               "failed": 1, "bytes_out": 0, "bytes_in": 0, "error": "Connection refused"}] or \
        result.network[0]["error"] in ("Connect call failed", "All connection attempts failed"), result.network


async def test_a_command_cannot_make_the_gateway_hold_unbounded_connections(
        site: Path, servers: tuple[Server, Server]) -> None:  # noqa: F811
    named, _ = servers
    extra = 6
    flood = ("import socket\nsocks = []\n"
             f"for _ in range({network_bridge.MAX_OPEN + extra}):\n"
             "    s = socket.socket(socket.AF_UNIX); s.connect('/run/bastion/net/0.sock'); socks.append(s)\n"
             "answered = 0\nfor s in socks:\n    s.settimeout(15)\n"
             "    try:\n        s.sendall(b'x\\n'); answered += s.recv(8).startswith(b'got')\n    except OSError:\n        pass\n"
             "print(answered)\n")
    (site / "ws" / "flood.py").write_text(flood)
    result = await run(executor(site, f"127.0.0.1:{named.port}"), "python3 flood.py", timeout=60)
    assert result.stdout.strip() == str(network_bridge.MAX_OPEN), result.stderr
    assert len(named.accepted) == network_bridge.MAX_OPEN
    assert result.network[0]["failed"] == extra and "at once" in result.network[0]["error"]


async def test_a_host_without_socat_refuses_saying_how_to_install_it(site: Path, monkeypatch: pytest.MonkeyPatch,  # noqa: F811
                                                                      servers: tuple[Server, Server]) -> None:
    monkeypatch.setattr(network_bridge, "socat_missing", lambda: True)
    monkeypatch.setattr("bastion.tools.executors.sandbox.socat_missing", lambda: True)
    with pytest.raises(TargetUnavailable) as raised:
        await run(executor(site, f"127.0.0.1:{servers[0].port}"), "true")
    assert "socat" in str(raised.value) and "apt-get install socat" in (raised.value.hint or "")


BAD = {
    '"db"': 'found "db"; expected "host:port" or "name=host:port"',
    '"db.internal:80"': "expected a port from 1024 to 65535",
    '"10.0.0.5:5432"': 'cannot reach 10.0.0.5 by number inside the sandbox (only loopback routes there): give it a name, '
                       'e.g. "db=10.0.0.5:5432"',
    '"http://db:5432/"': 'found "http://db:5432/"; expected',
    '"localhost:5432", "127.0.0.1:5432"': 'found "127.0.0.1:5432" after "localhost:5432": both are 127.0.0.1:5432',
}


@pytest.mark.parametrize("entries", BAD)
def test_an_invalid_network_entry_is_a_config_error_saying_where_and_what_would_pass(site: Path, entries: str) -> None:  # noqa: F811
    from bastion.server.config import load

    (site / "bastion.toml").write_text(CONFIG.format(extra=f"network = [{entries}]"))
    with pytest.raises(ConfigError) as raised:
        load(site / "bastion.toml")
    assert str(raised.value).startswith(f"{site / 'bastion.toml'}:13: connections.box.network: "), str(raised.value)
    assert BAD[entries] in str(raised.value)


def test_network_needs_the_sandbox(site: Path) -> None:  # noqa: F811
    from bastion.server.config import load

    (site / "bastion.toml").write_text(CONFIG.format(extra='isolation = "none"\nnetwork = ["db.test:5432"]'))
    with pytest.raises(ConfigError, match="with `isolation = \"none\"` commands have the host's whole network"):
        load(site / "bastion.toml")


async def test_the_gateway_lists_the_endpoints_and_records_each_calls_traffic(
        site: Path, servers: tuple[Server, Server], caplog: pytest.LogCaptureFixture) -> None:  # noqa: F811
    import logging

    from bastion.server.build import build_gateway
    from bastion.server.config import load
    from bastion.tools.gateway import Caller

    named, _ = servers
    caplog.set_level(logging.INFO)
    # A connection that may run one script of the workspace's (interpreters run script files only).
    (site / "ws" / "connect.py").write_text(f"import socket\nsocket.create_connection(('db.test', {named.port})).close()\n")
    rules = '[[connections.box.rules]]\npreset = "developer"\nprograms = ["python3"]'
    (site / "bastion.toml").write_text(CONFIG.replace('preset = "inspect"', "").format(
        extra=f'writable = false\nnetwork = ["db.test=127.0.0.1:{named.port}"]\n{rules}'))
    gateway = build_gateway(load(site / "bastion.toml"))
    try:
        caller = Caller(Identity("dev", frozenset({"developers"})))
        listed = await gateway.list_connections(caller)
        done = await gateway.shell_run(caller, "box", "python3 connect.py", None)
        finished = [e for e in gateway.store.tail(5) if e["type"] == "call.finished"][-1]
    finally:
        await gateway.close()
    shown = f"network: db.test:{named.port} (gateway: 127.0.0.1:{named.port})"
    assert shown in listed[0]["description"] and shown in caplog.text
    assert done.result.network[0]["connections"] == 1
    assert f'"endpoint": "db.test:{named.port}"' in str(finished["result"]).replace("'", '"'), finished
