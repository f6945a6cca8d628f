"""The `bastion` command: serve, check, audit, config. A thin click layer over the library."""

from __future__ import annotations

import ipaddress
from pathlib import Path
import os
import json
import logging
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TextIO, TypeVar

import click

from bastion.policy import ConnectionPolicy, Identity
from bastion.policy.errors import BastionError, ConfigError
from bastion.policy.presets import PRESETS
from bastion.policy.shell.presets import SHELL_PRESETS
from bastion.policy.shell.rules import ShellPolicy
from bastion.server import config as config_mod
from bastion.store import events as ev
from bastion.store.audit_store import AuditStore
from bastion.store.errors import StoreError
from bastion.store.sqlite_store import SqliteAuditStore
from bastion.tools.approvals import STATUSES as HOLD_STATUSES
from bastion.tools.guard import safe_check

if TYPE_CHECKING:
    from bastion.tools.calls import Caller
    from bastion.tools.gateway import Gateway

T = TypeVar("T")

config_option = click.option("--config", "config_path", type=click.Path(dir_okay=False), default=None,
                             help="Config file (default: $BASTION_CONFIG or ./bastion.toml).")


def _load(config_path: str | None) -> config_mod.Config:
    with click_errors():
        return config_mod.load(config_path)


def _config_message(error: ConfigError) -> str:
    """What was wrong, and how to fix it where the error knows."""
    return f"{error.message}\n  {error.hint}" if error.hint else error.message


def click_error(error: BastionError) -> click.ClickException:
    """The CLI's one translation of Bastion's errors: a config error as file, key and fix; any other
    as the agent reads it (`[code] message. hint`). No traceback either way."""
    return click.ClickException(_config_message(error) if isinstance(error, ConfigError) else error.for_agent())


@contextmanager
def click_errors() -> Iterator[None]:
    try:
        yield
    except BastionError as error:
        raise click_error(error) from None
    except StoreError as error:  # the audit store's own errors say what was wrong in their text
        raise click.ClickException(str(error)) from None


@click.group()
@click.version_option(package_name="agent-bastion")
def main() -> None:
    """Bastion: a guarded MCP gateway between AI agents and your databases.

    Example: bastion demo
    """
    quiet_stderr()


# Libraries whose INFO lines are noise on a server's stderr (a line per MCP session, per tool error,
# per HTTP request Bastion makes); their warnings and errors still show.
QUIET_LOGGERS = ("mcp", "httpx", "httpx2", "httpcore", "authlib")


def quiet_stderr() -> None:
    """stderr is for Bastion's own lines (and, on stdio, the only place a client shows them): INFO
    from Bastion, WARNING and up from libraries, and no deprecation warnings (libraries' business,
    not the operator's) unless warnings were asked for (-W or PYTHONWARNINGS)."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    if not sys.warnoptions:
        import warnings

        from mcp import MCPDeprecationWarning

        for category in (DeprecationWarning, PendingDeprecationWarning, MCPDeprecationWarning):
            warnings.filterwarnings("ignore", category=category)


# -- serve --------------------------------------------------------------------------------------


def _parse_listen(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit():
        raise click.BadParameter(f"expected HOST:PORT, e.g. 127.0.0.1:8765; found {value!r}")
    return host, int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@main.command()
@config_option
@click.option("--http", "listen", metavar="HOST:PORT", default=None,
              help="Serve streamable HTTP on HOST:PORT instead of stdio (loopback only unless [auth] is configured).")
@click.option("--access-log", is_flag=True, help="Log every HTTP request line (off: the audit log records every call).")
def serve(config_path: str | None, listen: str | None, access_log: bool) -> None:
    """Run the MCP server (stdio by default).

    On stdio, calls run as the config's [identity], or as the identity behind an OIDC access token
    in $BASTION_TOKEN (checked like an HTTP bearer token; needs [auth]). Over HTTP with [auth],
    every request needs a bearer token and any address may be bound; without it, loopback only.

    Example: bastion serve --config examples/postgres.toml --http 127.0.0.1:8765
    """
    _serve(_load(config_path), listen, access_log)


def _serve(config: config_mod.Config, listen: str | None, access_log: bool) -> None:
    """Serve ``config`` on stdio or HTTP. Everything that can fail at start-up (a secret named by
    reference but missing, an unreadable audit log) fails here, before the transport starts, as one
    line on stderr: a stdio client then shows that line instead of "connection closed"."""
    from bastion.server.app import create_server
    from bastion.server.build import build_gateway
    from bastion.server.http import serve_http

    try:
        if listen is None:
            stdio_identity = _stdio_identity(config)
            gateway = build_gateway(config)
            create_server(config, stdio_identity=stdio_identity, gateway=gateway).run("stdio")
            return
        host, port = _parse_listen(listen)
        if config.auth is None and not is_loopback(host):
            raise click.ClickException(f"refusing to serve HTTP on {host}: without OIDC authentication ([auth] in the "
                                       "config) Bastion binds loopback addresses only (127.0.0.1, ::1, localhost)")
        serve_http(config, host, port, access_log=access_log)
    except BastionError as error:  # a secret named by reference but missing, and the like: no traceback
        raise click_error(error) from None
    except BaseExceptionGroup as group:  # raised from inside the server's task groups
        found = _bastion_error_in(group)
        if found is None:
            raise
        raise click_error(found) from None


def _bastion_error_in(group: BaseExceptionGroup[BaseException]) -> BastionError | None:
    for error in group.exceptions:
        if isinstance(error, BastionError):
            return error
        if isinstance(error, BaseExceptionGroup):
            inner = _bastion_error_in(error)
            if inner is not None:
                return inner
    return None


@main.command()
@click.option("--dir", "directory", type=click.Path(file_okay=False), default=None,
              help="Data directory for the demo (default: $XDG_DATA_HOME/bastion/demo or ~/.local/share/bastion/demo).")
@click.option("--http", "listen", metavar="HOST:PORT", default=None, help="Serve streamable HTTP on HOST:PORT instead of stdio.")
@click.option("--as", "persona", type=click.Choice(["agent", "approver", "maintainer"]), default="agent", show_default=True,
              help="Who the calls run as: demo-agent (developers), demo-approver (approvers) or demo-maintainer (maintainers).")
@click.option("--access-log", is_flag=True, help="With --http: log every HTTP request line.")
def demo(directory: str | None, listen: str | None, persona: str, access_log: bool) -> None:
    """Run the embedded demo: a shop database, a shell workspace and an audit log, nothing else needed.

    The first run writes demo.db, an ordinary bastion.toml and a workspace/ folder into the data
    directory (printed on start, on stderr); every other command works on it with
    --config DIR/bastion.toml. To try an approval alone: the agent's UPDATE of an order is held;
    answer it from a second client running `bastion demo --as approver`.

    Example: bastion demo --http 127.0.0.1:8765
    """
    from bastion.server import demo as demo_mod

    where = Path(directory) if directory else demo_mod.default_dir()
    try:
        config_path, written = demo_mod.write(where)
    except OSError as error:
        raise click.ClickException(f"cannot write the demo into {where}: {error.strerror}") from None
    config = _load(str(config_path))
    subject, groups = demo_mod.PERSONAS[persona]
    if persona != "agent":
        config = config.model_copy(update={"identity": config_mod.IdentityConfig(subject=subject, groups=list(groups))})
    note = f"wrote {', '.join(written)}" if written else "existing files kept"
    workspace = Path(config.shell_policies()["workspace"].cwd) if "workspace" in config.connections else None
    if workspace is not None and os.geteuid() == 0 and not demo_mod.others_can_read(workspace):
        note += (f"; note: as root, shell commands run as an unprivileged user who cannot read {workspace}: "
                 "pass --dir under a folder others can read (e.g. /var/lib/bastion/demo)")
    click.echo(f"bastion demo: data in {where} ({note})\n"
               f"  config: {config_path}  (every command takes it: bastion audit tail --config {config_path})\n"
               f"  calls run as {config.identity.subject} (groups: {', '.join(config.identity.groups)}); "
               + ("serving stdio" if listen is None else f"serving http://{listen}/mcp"), err=True)
    _serve(config, listen, access_log)


def _stdio_identity(config: config_mod.Config, *, logged_in: bool = False) -> Identity | None:
    """The identity behind $BASTION_TOKEN (or, with ``logged_in``, the token `bastion login` kept),
    or None; a refused token is recorded and stops the command."""
    import anyio

    from bastion.server import login
    from bastion.server.auth import TokenRefused, identity_for_token

    token, source = os.environ.get("BASTION_TOKEN"), "BASTION_TOKEN"
    if not token and logged_in and config.auth is not None:
        token, source = login.stored(config.auth), "the token from `bastion login`"
    if not token:
        return None
    if config.auth is None:
        raise click.ClickException("BASTION_TOKEN is set but the config has no [auth] section to check it against")
    try:
        return anyio.run(identity_for_token, config.auth.token_rules(), token.strip())
    except TokenRefused as refused:
        from bastion.server.build import open_audit_store

        store = open_audit_store(config, checkpoints=False)
        try:
            store.append(ev.auth_refused(refused.reason, {"address": "stdio"}, refused.details))
        finally:
            store.close()
        raise click.ClickException(f"{source} was refused: {refused.reason}") from None


@main.command("login")
@config_option
def login_command(config_path: str | None) -> None:
    """Sign in with your identity provider (OIDC device flow) so that `bastion approvals` votes as you.

    Prints a link and a code; open it on any device and sign in. The access token is kept in your
    state folder (~/.local/state/bastion, yours only) until it expires.

    Example: bastion login --config bastion.toml
    """
    import httpx

    from bastion.server import login

    config = _load(config_path)
    if config.auth is None:
        raise click.ClickException("the config has no [auth] section: there is no identity provider to sign in with")
    with click_errors():
        cli_client = login.client_id(config.auth, config.source)
    try:
        with httpx.Client(timeout=10.0) as http:
            code = login.start(config.auth, cli_client, http)
            where = code.verification_uri_complete or code.verification_uri
            click.echo(f"To sign in, open {where} and confirm the code {code.user_code}", err=True)
            token = login.wait(cli_client, code)
    except login.LoginFailed as failed:
        raise click.ClickException(f"sign-in failed: {failed}") from None
    path = login.save(config.auth, token)
    identity = _stdio_identity(config, logged_in=True) if not os.environ.get("BASTION_TOKEN") else None
    click.echo(f"signed in{f' as {identity.subject}' if identity else ''}; token kept in {path}", err=True)


@main.command("logout")
@config_option
def logout_command(config_path: str | None) -> None:
    """Forget the token `bastion login` kept for this config's issuer.

    Example: bastion logout --config bastion.toml
    """
    from bastion.server import login

    config = _load(config_path)
    if config.auth is None:
        raise click.ClickException("the config has no [auth] section")
    click.echo("signed out" if login.forget(config.auth) else "no kept token", err=True)


# -- check --------------------------------------------------------------------------------------


def _policy_for(config_path: str | None, connection: str | None, preset: str | None, dialect: str,
                shell: bool) -> tuple[ConnectionPolicy | ShellPolicy, config_mod.Config | None]:
    if preset:
        if shell != (preset in SHELL_PRESETS):
            raise click.UsageError(f"preset `{preset}` is for {'shell commands (add --shell)' if preset in SHELL_PRESETS else 'SQL'}")
        if shell:
            return ShellPolicy(f"preset:{preset}", (SHELL_PRESETS[preset],), os.getcwd()), None
        return ConnectionPolicy(f"preset:{preset}", dialect, (PRESETS[preset],)), None
    if not connection:
        raise click.UsageError("give --preset, or --config with --connection")
    config = _load(config_path)
    policies: dict[str, ConnectionPolicy | ShellPolicy] = {**config.policies(), **config.shell_policies()}
    if connection not in policies:
        raise click.UsageError(f"no connection `{connection}` in {config.source}; known: {', '.join(policies) or 'none'}")
    return policies[connection], config


def _check_identity(config: config_mod.Config | None, subject: str | None, groups: tuple[str, ...]) -> Identity:
    """Who the check decides for: the config's [identity] unless --user or --group say otherwise
    (--group alone keeps the config's subject); with a preset, `cli` unless --user says otherwise."""
    if config is None:
        return Identity(subject or "cli", frozenset(groups), source="cli")
    if subject is None and not groups:
        return config.identity.to_identity()
    return Identity(subject or config.identity.subject, frozenset(groups), source="cli")


def _check_line(policy: ConnectionPolicy | ShellPolicy, identity: Identity, text: str) -> dict[str, Any]:
    decision = safe_check(policy, identity, text)
    return {"verdict": decision.verdict.value, "rules": list(decision.rules), "reason": decision.reason,
            **({"hint": decision.hint} if decision.hint else {})}


@main.command()
@click.argument("text", required=False)
@config_option
@click.option("--connection", help="Connection whose rules decide (with --config).")
@click.option("--user", "subject", default=None,
              help="Subject to decide for (default: the config's [identity], or `cli` with --preset).")
@click.option("--group", "groups", multiple=True, help="Group of that subject (repeatable; replaces the config's groups).")
@click.option("--preset", type=click.Choice(sorted(PRESETS) + sorted(SHELL_PRESETS)),
              help="Decide against a built-in preset, no config needed.")
@click.option("--shell", "shell", is_flag=True, help="The text is a shell command (with a shell --preset).")
@click.option("--dialect", type=click.Choice(["postgres", "sqlite"]), default="postgres", show_default=True,
              help="SQL dialect with --preset.")
@click.option("--jsonl", is_flag=True, help='Read {"id", "text"} lines on stdin; write {"id", "verdict", "rules", "reason"} lines.')
def check(text: str | None, config_path: str | None, connection: str | None, subject: str | None, groups: tuple[str, ...],
          preset: str | None, shell: bool, dialect: str, jsonl: bool) -> None:
    """Decide SQL text or a shell command without running it. Exit status 0 when allowed, 1 otherwise.

    Example: echo "DROP TABLE orders" | bastion check --preset read-only --dialect sqlite

    Example: bastion check --preset inspect --shell "find . -exec rm {} +"
    """
    policy, config = _policy_for(config_path, connection, preset, dialect, shell)
    identity = _check_identity(config, subject, groups)
    if jsonl:
        _check_jsonl(policy, identity, sys.stdin, sys.stdout)
        return
    body = text if text is not None else sys.stdin.read()
    out = _check_line(policy, identity, body)
    click.echo(f"{out['verdict']}  [{', '.join(out['rules'])}]  {out['reason']}")
    if out.get("hint"):
        click.echo(f"hint: {out['hint']}")
    sys.exit(0 if out["verdict"] == "allow" else 1)


def _check_jsonl(policy: ConnectionPolicy | ShellPolicy, identity: Identity, stream: TextIO, out: TextIO) -> None:
    for number, line in enumerate(stream, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            ident, body = item.get("id"), item["text"]
            if not isinstance(body, str):
                raise TypeError("text must be a string")
            result = {"id": ident, **_check_line(policy, identity, body)}
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            result = {"id": None, "verdict": "deny", "rules": ["guard:invalid-input"],
                      "reason": f"line {number} is not a JSON object with a string `text` ({error})"}
        out.write(json.dumps(result, ensure_ascii=False) + "\n")
        out.flush()


# -- audit --------------------------------------------------------------------------------------


@main.group()
def audit() -> None:
    """Read the audit log."""


def _store(config_path: str | None) -> AuditStore:
    config = _load(config_path)
    path = config.path(config.audit.path)
    if not config.audit.url and not path.exists():
        raise click.ClickException(f"no audit log at {path} yet (it is created when `bastion serve` first runs)")
    from bastion.server.build import open_audit_store

    with click_errors():
        store = open_audit_store(config, checkpoints=False)
    click.get_current_context().call_on_close(store.close)  # closed when the command ends, however it ends
    return store


def _line(event: ev.StoredEvent) -> str:
    who = event["identity"]["subject"] if event["identity"] else ""
    decision = event.get("decision") or {}
    verdict = decision.get("verdict", "")
    error = (event.get("error") or {}).get("code", "")
    text = " ".join((event.get("text") or "").split())
    text = text if len(text) <= 70 else text[:69] + "…"
    extra = []
    if event["type"] == "call.finished" and event.get("row_count") is not None:
        extra.append(f"{event['row_count']} rows")
    if event.get("duration_ms") is not None:
        extra.append(f"{event['duration_ms']:g} ms")
    tail = " ".join(filter(None, [verdict, error, ", ".join(extra), text]))
    return (f"{event['seq']:>6} {event['time'][:23]} {event['type']:<17} {event.get('call_id') or '-':<20} "
            f"{who:<12} {event.get('connection') or '':<10} {event.get('tool') or '':<12} {tail}")


@audit.command()
@config_option
@click.option("-n", "--lines", default=20, show_default=True, help="How many recent events.")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new events as they arrive.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per event.")
def tail(config_path: str | None, lines: int, follow: bool, as_json: bool) -> None:
    """Print the most recent events.

    Example: bastion audit tail -f --config bastion.toml
    """
    store = _store(config_path)
    emit = (lambda e: click.echo(json.dumps(e, ensure_ascii=False))) if as_json else (lambda e: click.echo(_line(e)))
    last = 0
    for event in store.tail(lines):
        emit(event)
        last = event["seq"]
    while follow:
        time.sleep(0.5)
        for event in store.after(last):
            emit(event)
            last = event["seq"]


@audit.command(name="search")
@click.argument("text", required=False, default="")
@config_option
@click.option("--user", help="Only calls by this subject.")
@click.option("--connection", help="Only calls on this connection.")
@click.option("--verdict", type=click.Choice(["allow", "review", "deny"]), help="Only calls with this verdict.")
@click.option("--tool", help="Only calls of this tool (sql_query, shell_run, ...).")
@click.option("--since", "since_", help="Only calls since: 1h, 30m, 2d, or an ISO time.")
@click.option("--until", "until_", help="Only calls before this ISO time (or duration ago).")
@click.option("-n", "--limit", default=50, show_default=True, help="At most this many calls, newest first.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per call.")
def search_command(text: str, config_path: str | None, user: str | None, connection: str | None, verdict: str | None,
                   tool: str | None, since_: str | None, until_: str | None, limit: int, as_json: bool) -> None:
    """Find calls by words in their text (all must appear), who, where, verdict and time.

    Example: bastion audit search "drop table" --user alice --since 1h
    """
    from bastion.store.search import search, since

    try:
        after, before = (since(since_) if since_ else None), (since(until_) if until_ else None)
    except ValueError as error:
        raise click.BadParameter(str(error)) from None
    found = search(_store(config_path), text, user=user, connection=connection, verdict=verdict, tool=tool,
                   after=after, before=before, limit=limit)
    for event in found:
        click.echo(json.dumps(event, ensure_ascii=False) if as_json else _line(event))


@audit.command(name="export")
@config_option
@click.option("--after", "after_seq", default=0, show_default=True, help="Resume after this event seq.")
@click.option("-o", "--output", type=click.File("a", encoding="utf-8"), default="-", help="Append to FILE (default stdout).")
def export_command(config_path: str | None, after_seq: int, output: TextIO) -> None:
    """Write events as JSON Lines for a SIEM, oldest first; each carries its `seq` to resume from.

    Example: bastion audit export --after 120000 -o bastion-events.jsonl
    """
    from bastion.store.search import export

    for line in export(_store(config_path), after_seq=after_seq):
        output.write(line + "\n")


@audit.command()
@click.argument("call_id")
@config_option
@click.option("--json", "as_json", is_flag=True, help="The events as a JSON array.")
def show(call_id: str, config_path: str | None, as_json: bool) -> None:
    """Show every event of one call.

    Example: bastion audit show 3f2a9c1e0b7d4e5f6a7b
    """
    events = _store(config_path).call(call_id)
    if not events:
        raise click.ClickException(f"no call `{call_id}` in the audit log")
    if as_json:
        click.echo(json.dumps(events, ensure_ascii=False, indent=2))
        return
    first = events[0]
    ident, client = first["identity"], first["client"]
    click.echo(f"call {call_id}  {first.get('tool')} on {first.get('connection') or '-'}  by {ident and ident['subject']} "
               f"(groups: {', '.join(ident['groups'] if ident else []) or '-'})")
    if client:
        click.echo(f"client: {client.get('name')} {client.get('version', '')}")
    if first.get("reason"):
        click.echo(f"reason: {first['reason']}")
    click.echo(f"text:\n  {(first.get('text') or '').strip()}")
    for event in events:
        click.echo(f"- {event['time']}  {event['type']}")
        for key in ("decision", "facts", "error"):
            if event.get(key):
                click.echo(f"    {key}: {json.dumps(event[key], ensure_ascii=False)}")
        if event["type"] == "call.finished" and event.get("result") is not None:
            result = event["result"]
            rows = result.get("rows") if isinstance(result, dict) else None
            summary = f"{event.get('row_count')} rows" if rows is not None else json.dumps(result)[:200]
            click.echo(f"    result: {summary}{' (truncated)' if event.get('truncated') else ''}, {event.get('duration_ms')} ms")


# -- config -------------------------------------------------------------------------------------


@main.group()
def approvals() -> None:
    """Held calls: list them, show one, approve or deny: as the person behind $BASTION_TOKEN or
    `bastion login` (required with [auth]), else as the config's [identity].

    Example: bastion approvals approve hold-3f9c0a1b2c3d4e5f --config bastion.toml
    """


def _approver(config: config_mod.Config) -> tuple[Gateway, Identity]:
    """Who votes: with [auth], only the person behind a verified bearer token ($BASTION_TOKEN), never
    the [identity] a config file declares (anyone can write one); without [auth], that [identity]."""
    from bastion.server.build import build_gateway

    identity = _stdio_identity(config, logged_in=True)
    if identity is None and config.auth is not None:
        raise click.ClickException(
            "with [auth], approvals are given as a person: run `bastion login`, or set BASTION_TOKEN to your access token from "
            f"{config.auth.issuer} (for the audience {config.auth.resource}); the config's [identity] is never an approver")
    return build_gateway(config), identity or config.identity.to_identity()


def _run_approvals(config_path: str | None, work: Callable[[Gateway, Caller], Awaitable[T]]) -> T:
    """Run ``work(gateway, caller)`` on a gateway built from the config, recorded like any call."""
    import anyio

    from bastion.tools.calls import Caller

    config = _load(config_path)
    gateway, identity = _approver(config)

    async def main_() -> T:
        try:
            return await work(gateway, Caller(identity, {"name": "bastion-cli"}, f"cli:{os.getpid()}"))
        finally:
            await gateway.shutdown()  # flushes webhook notices and signs the end of the chain

    with click_errors():
        return anyio.run(main_)


def _hold_line(hold: dict[str, Any]) -> str:
    text = " ".join(hold["text"].split())
    return (f"{hold['hold_id']}  {hold['status']:<8} {hold['requester']['subject']} on {hold['connection']} "
            f"(rule {hold['rule']}; {hold['approvals']}/{hold['min_approvals']}; until {hold['expires_at'][:19]}Z)\n"
            f"    {text[:160]}{'…' if len(text) > 160 else ''}")


@approvals.command(name="list")
@config_option
@click.option("--status", type=click.Choice([*HOLD_STATUSES, "all"]),
              default="pending", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
def approvals_list(config_path: str | None, status: str, as_json: bool) -> None:
    """Held calls you may decide or asked for, newest first."""
    holds = _run_approvals(config_path, lambda gw, caller: gw.approvals_list(caller, None if status == "all" else status))
    for hold in holds:
        click.echo(json.dumps(hold, ensure_ascii=False) if as_json else _hold_line(hold))
    if not holds and not as_json:
        click.echo(f"no {'' if status == 'all' else status + ' '}held calls for you")


@approvals.command(name="show")
@click.argument("hold_id")
@config_option
def approvals_show(hold_id: str, config_path: str | None) -> None:
    """One held call in full: text, reason, rule, votes, impact preview."""
    holds = _run_approvals(config_path, lambda gw, caller: gw.approvals_list(caller, None))
    found = next((h for h in holds if h["hold_id"] == hold_id), None)
    if found is None:
        raise click.ClickException(f"no held call `{hold_id}` you may see (bastion approvals list --status all)")
    click.echo(json.dumps(found, ensure_ascii=False, indent=2))


@approvals.command(name="approve")
@click.argument("hold_id")
@click.option("--reason", default=None, help="Why (recorded).")
@config_option
def approvals_approve(hold_id: str, reason: str | None, config_path: str | None) -> None:
    """Approve a held call: the waiting (or next identical) call runs once."""
    hold = _run_approvals(config_path, lambda gw, caller: gw.approval_decide(caller, hold_id, True, reason))
    click.echo(f"{hold_id}: {hold['status']} ({hold['approvals']} of {hold['min_approvals']} approvals)")


@approvals.command(name="deny")
@click.argument("hold_id")
@click.option("--reason", required=True, help="Why: the requester is told.")
@config_option
def approvals_deny(hold_id: str, reason: str, config_path: str | None) -> None:
    """Deny a held call, with the reason the requester is told."""
    hold = _run_approvals(config_path, lambda gw, caller: gw.approval_decide(caller, hold_id, False, reason))
    click.echo(f"{hold_id}: {hold['status']}")


@main.group(name="config")
def config_group() -> None:
    """Work with the config file."""


@config_group.command()
@config_option
@click.option("--connect", is_flag=True, help="Also ask every target to answer, and check each PostgreSQL login.")
def validate(config_path: str | None, connect: bool) -> None:
    """Validate a config file and summarise it; exit status 1 on any problem.

    Checks the file (every error with its line), the secrets it names by reference (variables set,
    files readable) and the files and folders it needs (a SQLite database, a shell's cwd); with
    --connect, that every target answers and that a PostgreSQL login is what the rules assume.

    Example: bastion config validate --config bastion.toml --connect
    """
    import anyio

    from bastion.server import validate as checks

    config = _load(config_path)
    text = checks.source_text(config)
    click.echo(f"{config.source}: the file is valid")
    for name, policy in config.policies().items():
        click.echo(f"  {name} ({policy.dialect}): " + (" | ".join(r.summary() for r in policy.rules) or "no rules (everything denied)"))
    for name, shell_policy in config.shell_policies().items():
        kind = config.connections[name].kind
        click.echo(f"  {name} ({kind} shell in {shell_policy.cwd}): "
                   + (" | ".join(r.summary() for r in shell_policy.rules) or "no rules (everything denied)"))
    click.echo(f"  audit log: {config.audit.url or config.path(config.audit.path)}")
    found = checks.references(config)
    if connect and not found:  # a missing secret would only fail the connection again
        with click_errors():
            said, probed = anyio.run(checks.connect, config)
        click.echo("connections:")
        for line in said:
            click.echo(line)
        found += probed
    for finding in found:
        click.echo(finding.line(config, text), err=True)
    if found:
        raise click.ClickException(f"{len(found)} problem{'s' if len(found) != 1 else ''} (above)")
    click.echo("ok" if connect else "ok (the targets were not contacted: add --connect)")


# -- replay and policy ------------------------------------------------------------------------------


@main.command()
@click.argument("ident", metavar="CALL_OR_SESSION")
@config_option
@click.option("--against", "sandbox", help="Re-run the recorded SQL against this connection (it must be marked sandbox).")
@click.option("--include-writes", is_flag=True, help="With --against: re-run writes too (reads only by default).")
def replay(ident: str, config_path: str | None, sandbox: str | None, include_writes: bool) -> None:
    """The timeline of a call or a session; with --against, re-run its reads on a sandbox and diff.

    Example: bastion replay 3f2a9c1e0b7d4e5f6a7b --against demo_sandbox
    """
    import anyio

    from bastion.server.build import build_gateway
    from bastion.tools.replay import Rerun, rerun, timeline

    config = _load(config_path)
    store = _store(config_path)
    with click_errors():
        steps = timeline(store, ident)
    for s in steps:
        click.echo(f"{s.time[:19]}  {s.subject:<14} {s.tool:<11} {s.connection:<10} {s.verdict or '-':<7} "
                   f"{s.outcome.removeprefix('call.'):<11} {' '.join(s.text.split())[:60]}")
        click.echo(f"{'':21}→ {s.summary}")
    if not sandbox:
        return

    async def go() -> list[Rerun]:
        gateway = build_gateway(config)
        try:
            return await rerun(gateway, steps, sandbox, include_writes=include_writes)
        finally:
            await gateway.close()

    with click_errors():
        results = anyio.run(go)
    differ = 0
    click.echo(f"\nreplayed against `{sandbox}`:")
    for r in results:
        mark = "same" if r.same else ("DIFFERS" if r.ran else "skipped")
        differ += r.ran and not r.same
        click.echo(f"  {r.step.call_id}  {mark:<8} recorded: {r.step.summary}  now: {r.now}")
        for line in r.diff:  # the first differing rows and columns
            click.echo(f"      {line}")
    sys.exit(1 if differ else 0)


@main.group(name="policy")
def policy_group() -> None:
    """Work with policies."""


@policy_group.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False), required=True, help="The draft config.")
@click.option("--log", "log_path", type=click.Path(dir_okay=False), help="Audit log to replay (default: the draft's).")
@click.option("--since", "since_", help="Only calls since: 1h, 2d, or an ISO time.")
@click.option("--examples", default=5, show_default=True, help="Examples shown per kind of change.")
def backtest(config_path: str, log_path: str | None, since_: str | None, examples: int) -> None:
    """Decide every recorded call again under a draft config; report what would change.

    Example: bastion policy backtest --config draft.toml --since 7d
    """
    from bastion.store.search import since
    from bastion.tools.backtest import backtest as run_backtest

    draft = _load(config_path)
    if log_path or not draft.audit.url:
        path = Path(log_path) if log_path else draft.path(draft.audit.path)
        if not path.exists():
            raise click.ClickException(f"no audit log at {path}")
        log: AuditStore = SqliteAuditStore(path)
    else:
        log = _store(config_path)
    policies: dict[str, ConnectionPolicy | ShellPolicy] = {**draft.policies(), **draft.shell_policies()}
    from bastion.server.cli_audit import draft_connections

    egress = {a.id: a.action for a in draft.alerts if a.kind == "egress"}
    result = run_backtest(log, policies, after=since(since_) if since_ else None, examples=examples,
                          connections=draft_connections(draft), egress=egress)
    click.echo(f"{result.calls} recorded calls decided again; {result.changed()} would change")
    for why, count in sorted(result.not_rechecked.items()):
        click.echo(f"  {count} kept their recorded verdict ({why})")
    for change, count in sorted(result.counts.items()):
        before, after = change.split(" → ")
        label = {("allow", "deny"): "newly denied", ("deny", "allow"): "newly allowed", ("review", "allow"): "newly allowed",
                 ("allow", "review"): "newly held", ("deny", "review"): "newly held", ("review", "deny"): "newly denied"}.get(
            (before, after), "unchanged")
        click.echo(f"  {change:<16} {count:>6}  {label}")
        for ex in result.examples.get(change, []):
            click.echo(f"      {ex.call_id} {ex.subject} on {ex.connection}: {' '.join(ex.text.split())[:70]}")
            click.echo(f"          [{', '.join(ex.rules)}] {ex.reason[:100]}")


from bastion.server import cli_audit  # noqa: E402,F401  (audit keygen, checkpoint, verify, prove, verify-proof)
