"""The network a sandboxed command may reach: the TCP endpoints its connection names, and nothing else.

The sandbox keeps its own network namespace (only loopback); nothing in it can route anywhere. For
each named endpoint the gateway listens on a Unix socket in a folder private to the call (0700,
owned by the sandbox's user), bound into the sandbox at ``/run/bastion/net``; every connection
accepted there is connected by the gateway to that one host and port (resolved by the gateway, when
the connection is made) and the bytes are piped both ways. Inside, before the command starts, one
socat per endpoint listens on TCP at the endpoint's loopback address and port and forwards to its
socket, and a generated /etc/hosts maps each name to that address. So `psql -h db.internal` and
`curl http://localhost:8080/` work as on the host, and reach only what was named.

What the command can do with this is what a TCP client of those endpoints can do: the gateway never
connects anywhere else, whatever is sent, and the bridge dies with the call.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import tempfile
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import ByteStream, SocketListener

SOCKET_DIR = "/run/bastion/net"  # inside the sandbox
MIN_PORT = 1024  # the sandbox has no privilege to listen below it
MAX_ENDPOINTS = 64
CONNECT_TIMEOUT_S = 10.0
# Forwarded connections open at once, per call: each holds descriptors of the gateway's, and a
# command can open Unix connections without socat (whose processes max_processes would count).
MAX_OPEN = 64
READY_TIMEOUT_S = 10  # the bridge inside must listen by then, or the call fails (exit 125)
EXPECTED = ('expected "host:port" or "name=host:port" (host: a name the gateway resolves, or an address; '
            f'name: a host name or a 127.x.x.x address; port: {MIN_PORT} to 65535)')
_NAME = re.compile(r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*")
_ENTRY = re.compile(r"(?:(?P<name>[^=\s]+)=)?(?P<host>\[[0-9A-Fa-f:.]+\]|[^:=\[\]\s]+):(?P<port>[0-9]{1,5})")


@dataclass(frozen=True)
class Endpoint:
    """One endpoint a command may reach: as ``name:port`` inside (listening on ``address``), and as
    ``host:port`` from the gateway."""

    name: str
    host: str
    port: int
    address: str

    @property
    def inside(self) -> str:
        return f"{self.name}:{self.port}"

    @property
    def target(self) -> str:
        return _join(self.host, self.port)

    def __str__(self) -> str:
        return self.inside if self.name == self.host else f"{self.inside} (gateway: {self.target})"


def plan(entries: Sequence[str]) -> tuple[Endpoint, ...]:
    """The endpoints of a connection's ``network`` list, each with its address inside the sandbox:
    `localhost` and 127.x.x.x stay themselves; every other name gets a 127.0.0.N of its own (so two
    names can share a port). Raises ValueError, in the config's words, on anything else."""
    if len(entries) > MAX_ENDPOINTS:
        raise ValueError(f"found {len(entries)} endpoints; expected at most {MAX_ENDPOINTS}")
    parsed = [_parse(entry) for entry in entries]
    literal = {name for name, _, _ in parsed if _loopback(name)}
    addresses: dict[str, str] = {"localhost": "127.0.0.1"}
    free = (f"127.0.0.{n}" for n in range(2, 255))
    endpoints: list[Endpoint] = []
    seen: dict[tuple[str, int], str] = {}
    for entry, (name, host, port) in zip(entries, parsed):
        if name not in addresses:
            addresses[name] = name if name in literal else next(a for a in free if a not in literal)
        endpoint = Endpoint(name, host, port, addresses[name])
        key = (endpoint.address, port)
        if key in seen:
            raise ValueError(f'found "{entry}" after "{seen[key]}": both are {endpoint.address}:{port} inside the sandbox; '
                             "expected each name and port once (localhost is 127.0.0.1)")
        seen[key] = entry
        endpoints.append(endpoint)
    return tuple(endpoints)


def _parse(entry: str) -> tuple[str, str, int]:
    found = f'found "{entry}"'
    match = _ENTRY.fullmatch(entry.strip())
    if match is None:
        raise ValueError(f"{found}; {EXPECTED}")
    host, port = match["host"].strip("[]").lower(), int(match["port"])
    name = (match["name"] or host).lower()
    if not MIN_PORT <= port <= 65535:
        raise ValueError(f"{found}; expected a port from {MIN_PORT} to 65535 (the sandbox has no privilege to "
                         "listen on a lower port inside)" if port else f"{found}; {EXPECTED}")
    if not (_NAME.fullmatch(host) or _address(host)):
        raise ValueError(f"{found}; {EXPECTED}")
    if _address(name) and not _loopback(name):
        raise ValueError(f'{found}; a command cannot reach {name} by number inside the sandbox (only loopback '
                         f'routes there): give it a name, e.g. "db={entry.strip()}", and connect to `db`')
    if not (_NAME.fullmatch(name) or _loopback(name)):
        raise ValueError(f"{found}; {EXPECTED}")
    return name, host, port


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    with suppress(ValueError):
        return ipaddress.ip_address(text)
    return None


def _loopback(text: str) -> bool:
    address = _address(text)
    return isinstance(address, ipaddress.IPv4Address) and address.is_loopback


def _join(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def describe(endpoints: Sequence[Endpoint]) -> str:
    """For list_connections and the start log."""
    return "network: " + (", ".join(str(e) for e in endpoints) if endpoints else "none")


def hosts_file(endpoints: Sequence[Endpoint]) -> str:
    """/etc/hosts inside: localhost is 127.0.0.1 only (the bridge listens on IPv4), each name its address."""
    names: dict[str, str] = {}
    for endpoint in endpoints:
        if not _address(endpoint.name) and endpoint.name != "localhost":
            names.setdefault(endpoint.name, endpoint.address)
    lines = ["127.0.0.1\tlocalhost", "::1\tip6-localhost ip6-loopback"]
    if "sandbox" not in names:  # the sandbox's own host name, unless an endpoint is called that
        lines.append("127.0.1.1\tsandbox")
    return "\n".join(lines + [f"{address}\t{name}" for name, address in names.items()]) + "\n"


# Names resolve from /etc/hosts only: there is no DNS server to ask, and none should be looked for.
NSSWITCH = "passwd: files\ngroup: files\nshadow: files\nhosts: files\nnetworks: files\nprotocols: files\nservices: files\n"


def bridge_script(endpoints: Sequence[Endpoint]) -> str:
    """bash run inside before the command: start one socat per endpoint, and wait until each listens.

    socat with -lm writes its start-up log to stderr and switches to syslog (there is none inside)
    right after listen(), saying "starting accept loop": that line is the signal, so the command
    never starts before every bridge listens, and nothing is left writing into the pipe after. The
    socats are not the command's jobs (the substitution's shell has gone), so its `wait` does not
    wait for them; they die with the sandbox."""
    socats = " ".join(
        f"socat -d -d -d -lm TCP-LISTEN:{e.port},bind={e.address},fork,reuseaddr,backlog=128 "
        f"UNIX-CONNECT:{SOCKET_DIR}/{i}.sock &" for i, e in enumerate(endpoints))
    count = len(endpoints)
    return (f"exec 9< <(exec 2>&1 >/dev/null </dev/null; {socats})\n"
            f"_n=0; while ((_n < {count})) && IFS= read -r -t {READY_TIMEOUT_S} -u 9 _l; do case $_l in "
            f"*'starting accept loop'*) ((_n += 1));; *' E '*|*'not found'*) printf '%s\\n' \"bastion network bridge: ${{_l#* E }}\" >&2;; esac; done\n"
            f"exec 9<&-; ((_n == {count})) || {{ echo 'bastion: the network bridge did not start' >&2; exit 125; }}\n"
            "unset _n _l\n")


@dataclass
class Use:
    """What one call did with one endpoint (for the audit record)."""

    endpoint: str  # as the command reaches it
    target: str  # where the gateway connected
    connections: int = 0
    failed: int = 0
    bytes_out: int = 0  # from the command to the endpoint
    bytes_in: int = 0
    error: str | None = None  # why the first failed connection failed


@dataclass
class Bridge:
    directory: Path
    uses: dict[str, Use] = field(default_factory=dict)
    open: int = 0  # forwarded connections open now (at most MAX_OPEN)

    def record(self) -> list[dict[str, Any]]:
        return [asdict(use) for use in self.uses.values()]


@asynccontextmanager
async def open_bridge(endpoints: Sequence[Endpoint], parent: Path, owner: tuple[int, int] | None) -> AsyncIterator[Bridge]:
    """The gateway's side for one call: a private folder of listening sockets, one per endpoint, and
    every forwarded connection, all closed when the call ends (a timeout included)."""
    directory = Path(tempfile.mkdtemp(prefix="net-", dir=parent))  # 0700
    listeners: list[SocketListener] = []
    try:
        if owner is not None:
            os.chown(directory, *owner)
        bridge = Bridge(directory)
        failure: BaseException | None = None
        async with anyio.create_task_group() as tg:
            for index, endpoint in enumerate(endpoints):
                path = directory / f"{index}.sock"
                listeners.append(await anyio.create_unix_listener(path, mode=0o600))
                if owner is not None:
                    os.chown(path, *owner)
                tg.start_soon(listeners[-1].serve, partial(_forward, endpoint, bridge))
            try:
                yield bridge
            except BaseException as error:  # the call's own error: raised as itself, not in an exception group
                failure = error
            tg.cancel_scope.cancel()
        if failure is not None:
            raise failure
    finally:
        for listener in listeners:
            with anyio.CancelScope(shield=True):
                await listener.aclose()
        shutil.rmtree(directory, ignore_errors=True)


async def _forward(endpoint: Endpoint, bridge: Bridge, client: ByteStream) -> None:
    use = bridge.uses.setdefault(endpoint.inside, Use(endpoint.inside, endpoint.target))
    use.connections += 1
    async with client:
        if bridge.open >= MAX_OPEN:
            use.failed += 1
            use.error = use.error or f"more than {MAX_OPEN} connections open at once"
            return
        bridge.open += 1
        try:
            with anyio.fail_after(CONNECT_TIMEOUT_S):
                upstream = await anyio.connect_tcp(endpoint.host, endpoint.port)
        except (OSError, TimeoutError) as error:
            use.failed += 1
            use.error = use.error or (getattr(error, "strerror", None) or str(error) or type(error).__name__)
            bridge.open -= 1
            return
        try:
            async with upstream, anyio.create_task_group() as tg:
                tg.start_soon(_pipe, client, upstream, use, "bytes_out", tg.cancel_scope)
                tg.start_soon(_pipe, upstream, client, use, "bytes_in", tg.cancel_scope)
        finally:
            bridge.open -= 1


async def _pipe(source: ByteStream, sink: ByteStream, use: Use, counter: str, scope: anyio.CancelScope) -> None:
    """Copy until the end, then pass the end on (half-close); a broken side ends both directions."""
    try:
        async for chunk in source:
            await sink.send(chunk)
            setattr(use, counter, getattr(use, counter) + len(chunk))
        await sink.send_eof()
    except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
        scope.cancel()


def socat_missing() -> bool:
    return shutil.which("socat", path="/usr/local/bin:/usr/bin:/bin") is None
