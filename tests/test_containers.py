"""Container connections against a real runtime (Podman, tests/container_runtime.py): commands are
vetted like any shell command and run inside the container as an unprivileged user; the `container`
tool reads logs and inspect (env values redacted) and holds lifecycle actions for approvers.

One container serves the whole module. Every claim is checked by its effect inside the container
(a marker file, its process list, its start time), not only by a verdict.
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import pytest
from mcp import Client

from bastion.policy import Identity
from bastion.policy.errors import ApprovalRequired, Denied, PendingApproval, TargetUnavailable
from bastion.server.app import create_server
from bastion.server.build import build_gateway
from bastion.server.config import load
from bastion.store import SqliteAuditStore
from bastion.store import events as ev
from bastion.tools.calls import Caller
from bastion.tools.containers import container_call
from bastion.tools.gateway import Gateway
from tests.conftest import requirement
from tests.container_runtime import Container

pytestmark = pytest.mark.anyio
AGENT = Caller(Identity("agent", frozenset({"developers"})), session="agent-session")
APPROVER = Caller(Identity("lead", frozenset({"approvers"})), session="lead-session")
MARK = f"bastion-marker-{os.getpid()}"


def write_config(folder: Path, container: Container, *, target: str | None = None, user: str = "app",
                 timeout: float = 30, max_output_bytes: int = 100_000, extra: str = "") -> Path:
    pick = f'label = "{container.label}"' if target is None else f'container = "{target}"'
    config = folder / "bastion.toml"
    config.write_text(f"""
[identity]
subject = "agent"
groups = ["developers"]

[approvals]
wait = "0.2s"

[connections.app]
kind = "container"
runtime = "podman"
runtime_args = {container.podman.toml_args()}
{pick}
user = "{user}"
cwd = "/tmp"
detectors = ["email"]
{extra}

  [[connections.app.rules]]
  programs = ["id", "echo", "cat", "ls", "sleep", "touch", "printenv"]
  redirects = "read"
  timeout = {timeout}
  max_output_bytes = {max_output_bytes}
""")
    return config


@pytest.fixture
async def gateway(tmp_path: Path, container: Container) -> AsyncIterator[Gateway]:
    gw = build_gateway(load(write_config(tmp_path, container)))
    await gw.start()
    try:
        yield gw
    finally:
        await gw.shutdown()


def events(gw: Gateway, call_id: str) -> list[dict]:  # type: ignore[type-arg]
    return gw.store.call(call_id)


@requirement("container:vetted-exec", "container:scrubbed-env")
async def test_an_allowed_command_runs_inside_as_the_unprivileged_user_and_is_recorded(tmp_path: Path,
                                                                                      container: Container) -> None:
    config = write_config(tmp_path, container, target=container.name)
    async with Client(create_server(load(config))) as client:
        listed = {t.name for t in (await client.list_tools()).tools}
        ran = await client.call_tool("shell_run", {"connection": "app", "command": f"id -u && touch {MARK}-ran && printenv"})
    assert "container" in listed  # the container tool is listed where a container connection exists
    assert not ran.is_error, ran.content[0].text
    out = ran.structured_content["stdout"]
    assert out.splitlines()[0] == "1000" and "bastion-exec" not in out
    assert container.exists(f"/tmp/{MARK}-ran")  # it ran in the container, in the connection's cwd
    assert "SECRET_TOKEN" not in out and "container=podman" not in out  # env -i: none of the container's variables
    finished = SqliteAuditStore(tmp_path / "bastion-audit.db").call(ran.structured_content["call_id"])[-1]
    assert finished["type"] == ev.FINISHED and finished["result"]["stdout"] == out


@requirement("container:vetted-exec")
async def test_a_refused_command_never_reaches_the_container(gateway: Gateway, container: Container) -> None:
    for command in (f"rm -f /tmp/{MARK}-x", f"echo x > /tmp/{MARK}-refused", f"sh -c 'touch /tmp/{MARK}-refused'"):
        with pytest.raises(Denied):
            await gateway.shell_run(AGENT, "app", command, None)
    assert not container.exists(f"/tmp/{MARK}-refused")
    denied = [e for e in gateway.store.iter_all() if e["type"] == ev.DENIED and e.get("decision")]
    assert len(denied) == 3  # each refusal is in the record


@requirement("container:never-root")
async def test_a_name_that_is_uid_0_inside_is_refused_before_the_command_runs(tmp_path: Path, container: Container) -> None:
    gw = build_gateway(load(write_config(tmp_path, container, user="toor")))  # `toor` is uid 0 in the image
    await gw.start()
    try:
        with pytest.raises(TargetUnavailable, match="is root \\(uid 0\\)"):
            await gw.shell_run(AGENT, "app", f"touch /tmp/{MARK}-as-root", None)
    finally:
        await gw.shutdown()
    assert not container.exists(f"/tmp/{MARK}-as-root")


@requirement("container:kill-inside")
async def test_a_timed_out_command_is_killed_inside_the_container(tmp_path: Path, container: Container) -> None:
    gw = build_gateway(load(write_config(tmp_path, container, timeout=1)))
    await gw.start()
    try:
        done = await gw.shell_run(AGENT, "app", "sleep 3451", None)
    finally:
        await gw.shutdown()
    assert done.result.timed_out and done.result.exit_code is None
    assert "sleep 3451" not in container.processes()


@requirement("container:kill-inside")
async def test_a_cancelled_call_kills_the_process_inside_the_container(gateway: Gateway, container: Container) -> None:
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(gateway.shell_run, AGENT, "app", "sleep 3452", None)
            while "sleep 3452" not in (seen := await anyio.to_thread.run_sync(container.processes)):
                await anyio.sleep(0.1)
            assert "app      sleep 3452" in seen  # running inside, as the connection's user
            tg.cancel_scope.cancel()
    assert "sleep 3452" not in container.processes()
    failed = [e for e in gateway.store.iter_all() if e["type"] == ev.FAILED]
    assert failed and failed[-1]["error"]["code"] == "cancelled"


async def test_output_is_masked_before_it_is_returned_or_recorded(gateway: Gateway) -> None:
    done = await gateway.shell_run(AGENT, "app", "echo write to alice@example.com", None)
    assert "alice@example.com" not in done.result.stdout and done.result.masking["detections"] == {"email": 1}
    finished = events(gateway, done.call_id)[-1]  # the text asked for is recorded as sent; the output masked
    assert finished["type"] == ev.FINISHED and "alice@example.com" not in str(finished)


async def test_logs_tail_and_grep_are_masked_and_recorded(gateway: Gateway) -> None:
    logs = await container_call(gateway, AGENT, "app", "logs", tail=10)
    assert "boot ok" in logs.result.output and "ops@example.com" not in logs.result.output
    grepped = await container_call(gateway, AGENT, "app", "logs", grep="error")
    assert set(grepped.result.output.splitlines()) == {"ERROR disk almost full"}
    requested = events(gateway, grepped.call_id)[0]
    assert requested["tool"] == "container" and requested["text"] == "logs --tail 100 --grep error"
    assert requested["decision"]["verdict"] == "allow"


@requirement("container:env-redacted")
async def test_inspect_shows_state_and_redacts_environment_values(gateway: Gateway, container: Container) -> None:
    done = await container_call(gateway, AGENT, "app", "inspect")
    details = done.result.details
    assert details is not None and details["name"] == container.name and details["running"] is True
    assert details["image"] == container.podman.image and details["restarts"] == 0
    assert "SECRET_TOKEN=<redacted>" in details["env"]
    assert "canary-6f1d2e" not in done.result.output and "canary-6f1d2e" not in str(list(gateway.store.iter_all()))


@requirement("container:lifecycle-review")
async def test_a_restart_waits_for_approval_then_runs_once_approved(gateway: Gateway, container: Container) -> None:
    started = container.inspect()["State"]["StartedAt"]
    with pytest.raises(PendingApproval) as pending:
        await container_call(gateway, AGENT, "app", "restart", reason="stuck worker")
    assert container.inspect()["State"]["StartedAt"] == started  # held: nothing happened yet
    found = re.search(r"\(approval `([^`]+)`", pending.value.message)
    assert found is not None, pending.value.message
    await gateway.approval_decide(APPROVER, found[1], True, "go")
    done = await container_call(gateway, AGENT, "app", "restart", reason="stuck worker")
    assert done.result.details == {"name": container.name, "state": "running", "running": True}
    assert container.inspect()["State"]["StartedAt"] != started


async def test_a_denied_action_is_refused_and_recorded(tmp_path: Path, container: Container) -> None:
    gw = build_gateway(load(write_config(tmp_path, container, extra='actions = { stop = "deny" }')))
    await gw.start()
    try:
        with pytest.raises(Denied) as refused:
            await container_call(gw, AGENT, "app", "stop")
        assert not isinstance(refused.value, ApprovalRequired) and "container:stop" in refused.value.for_agent()
    finally:
        await gw.shutdown()
    assert container.inspect()["State"]["Running"] is True


async def test_a_missing_container_is_a_clear_error(tmp_path: Path, container: Container) -> None:
    gw = build_gateway(load(write_config(tmp_path, container, target=f"bastion-no-such-{os.getpid()}")))
    await gw.start()
    try:
        with pytest.raises(TargetUnavailable) as missing:
            await gw.shell_run(AGENT, "app", "id -u", None)
        with pytest.raises(TargetUnavailable, match="there is no container"):
            await container_call(gw, AGENT, "app", "logs")
    finally:
        await gw.shutdown()
    assert missing.value.message == f"connection `app` is unavailable: there is no container `bastion-no-such-{os.getpid()}`"
    assert "Start the container" in (missing.value.hint or "")


@requirement("container:host-reach")
@pytest.mark.parametrize(("flag", "reason"), [("--privileged", "it runs privileged"),
                                              ("--pid=host", "it shares the host's pid namespace")])
async def test_no_exec_into_a_container_that_reaches_the_host(tmp_path: Path, container: Container, flag: str,
                                                             reason: str) -> None:
    podman = container.podman
    name = f"bastion-test-{os.getpid()}-host-{flag.strip('-').split('=')[0]}"
    podman.run("run", "-d", "--name", name, flag, podman.image, "sleep", "1000000")
    try:
        gw = build_gateway(load(write_config(tmp_path, container, target=name)))
        await gw.start()
        try:
            with pytest.raises(TargetUnavailable, match=reason):
                await gw.shell_run(AGENT, "app", f"touch /tmp/{MARK}-host", None)
            inspected = await container_call(gw, AGENT, "app", "inspect")  # diagnosis without exec still works
        finally:
            await gw.shutdown()
        assert inspected.result.details is not None and inspected.result.details["running"] is True
        assert podman.run("exec", name, "test", "-e", f"/tmp/{MARK}-host", check=False).returncode == 1
    finally:
        podman.run("rm", "-f", "-t", "0", name, check=False)


@requirement("container:host-reach")
async def test_a_container_replaced_or_stopped_under_its_name_is_checked_again(tmp_path: Path,
                                                                              container: Container) -> None:
    podman = container.podman
    name = f"bastion-test-{os.getpid()}-replaced"

    def replace(*flags: str) -> None:
        podman.run("rm", "-f", "-t", "0", name, check=False)
        podman.run("run", "-d", "--name", name, *flags, podman.image, "sleep", "1000000")

    replace()
    gw = build_gateway(load(write_config(tmp_path, container, target=name)))
    await gw.start()
    try:
        assert (await gw.shell_run(AGENT, "app", "id -u", None)).result.stdout == "1000\n"  # checked, id kept
        replace("--pid=host")  # the same name, now a container that reaches the host
        with pytest.raises(TargetUnavailable, match="shares the host's pid namespace"):
            await gw.shell_run(AGENT, "app", f"touch /tmp/{MARK}-replaced", None)
        assert podman.run("exec", name, "test", "-e", f"/tmp/{MARK}-replaced", check=False).returncode == 1
        replace()
        assert (await gw.shell_run(AGENT, "app", "id -u", None)).result.stdout == "1000\n"
        podman.run("stop", "-t", "0", name)
        with pytest.raises(TargetUnavailable, match=f"container `{name}` is not running"):
            await gw.shell_run(AGENT, "app", "id -u", None)
    finally:
        await gw.shutdown()
        podman.run("rm", "-f", "-t", "0", name, check=False)


async def test_output_and_logs_are_capped_at_the_rules_bytes(tmp_path: Path, container: Container) -> None:
    gw = build_gateway(load(write_config(tmp_path, container, max_output_bytes=12)))
    await gw.start()
    try:
        ran = await gw.shell_run(AGENT, "app", "cat /etc/passwd", None)
        logs = await container_call(gw, AGENT, "app", "logs")
    finally:
        await gw.shutdown()
    assert ran.result.truncated and ran.result.stdout == "root:x:0:0:r"  # the command's output, no header
    assert logs.result.truncated and logs.result.output == "boot ok\nERRO"


async def test_the_container_tool_over_mcp_answers_and_refuses_bad_input_clearly(tmp_path: Path,
                                                                                 container: Container) -> None:
    async with Client(create_server(load(write_config(tmp_path, container)))) as client:
        logs = await client.call_tool("container", {"connection": "app", "action": "logs", "grep": "disk", "tail": 50})
        wrong = await client.call_tool("container", {"connection": "app", "action": "inspect", "since": "10m"})
        late = await client.call_tool("container", {"connection": "app", "action": "logs", "since": "yesterday"})
    lines = logs.structured_content["output"].splitlines()  # once per start: a test above restarts it
    assert not logs.is_error and lines and set(lines) == {"ERROR disk almost full"}
    assert logs.content[0].text.startswith("ERROR disk almost full\n")
    assert wrong.is_error and "[invalid_input] `tail`, `since` and `grep` apply to `logs` only" in wrong.content[0].text
    assert late.is_error and "expected a duration such as `15m`" in late.content[0].text
    store = SqliteAuditStore(tmp_path / "bastion-audit.db")
    refused = [e for e in store.iter_all() if e["type"] == ev.DENIED]
    assert [e["error"]["code"] for e in refused] == ["invalid_input", "invalid_input"]  # refused calls are recorded
