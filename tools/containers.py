"""The `container` tool: what an agent may do to a container itself, without exec.

`logs` (tail, since, grep; capped) and `inspect` (state, health, restarts, image, ports; environment
values redacted) read; `start`, `stop` and `restart` change it and are held for approvers unless
the connection's `actions` say otherwise. Commands *inside* the container go through shell_run
(tools/shell.py, tools/executors/container.py) like any shell connection's.

Each action is one guarded call: its canonical text (``logs --tail 100 --grep error``) is vetted
against the connection's `actions`, recorded before it runs, held where the verdict is review (an
approval binds to that exact text), and its result is masked by the connection's detectors and
recorded as returned. There is no action that copies files out of the container.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from bastion.policy import Decision, Verdict
from bastion.policy.errors import InvalidInput
from bastion.policy.masking import mask_text
from bastion.store import events as ev
from bastion.tools.calls import Caller
from bastion.tools.connections import ShellConnection
from bastion.tools.executors.container import ContainerExecutor, ContainerRuntime, Target
from bastion.tools.guard import Guarded, Vetted, fail_closed

if TYPE_CHECKING:
    from bastion.tools.gateway import Gateway

READS = ("logs", "inspect")
LIFECYCLE = ("start", "stop", "restart")
ACTIONS = READS + LIFECYCLE
DEFAULT_VERDICTS: dict[str, Verdict] = {"logs": Verdict.ALLOW, "inspect": Verdict.ALLOW, "start": Verdict.REVIEW,
                                         "stop": Verdict.REVIEW, "restart": Verdict.REVIEW}
MAX_TAIL = 10_000
# Go durations (`90s`, `15m`, `2h`) or an RFC 3339 date/time: what `docker/podman logs --since` take.
_SINCE = re.compile(r"^(\d{1,6}(s|m|h)|\d{4}-\d{2}-\d{2}(T\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|[+-]\d{2}:\d{2})?)?)$")


def verdicts(configured: Mapping[Any, str] | None) -> dict[str, Verdict]:
    """The connection's verdict per action: the defaults, overridden by its `actions`."""
    return {**DEFAULT_VERDICTS, **{a: Verdict(v) for a, v in (configured or {}).items()}}


@dataclass
class ContainerConnection(ShellConnection):
    """A shell connection whose commands run inside a container, plus the actions on the container."""

    actions: dict[str, Verdict] = field(default_factory=lambda: dict(DEFAULT_VERDICTS))

    @property
    def runtime(self) -> ContainerRuntime:
        assert isinstance(self.executor, ContainerExecutor)
        return self.executor.runtime


@dataclass(frozen=True)
class Action:
    """One call of the tool, validated: what to run."""

    action: str
    tail: int = 100
    since: str | None = None
    grep: str | None = None

    def text(self) -> str:
        """The canonical text recorded, vetted and (when held) approved."""
        words = [self.action]
        if self.action == "logs":
            words += ["--tail", str(self.tail)] + (["--since", self.since] if self.since else [])
            words += ["--grep", self.grep] if self.grep else []
        return shlex.join(words)


@dataclass
class ContainerAnswer:
    action: str
    output: str  # logs' lines, the runtime's answer to a lifecycle action, inspect as JSON text
    truncated: bool = False
    details: dict[str, Any] | None = None  # inspect: the summary; lifecycle: the state after
    masking: dict[str, Any] = field(default_factory=dict)


def parse_action(action: str, tail: int | None, since: str | None, grep: str | None) -> Action:
    if action not in ACTIONS:
        raise InvalidInput(f"`{action}` is not a container action", hint=f"Use one of: {', '.join(ACTIONS)}.")
    if action != "logs" and (tail is not None or since or grep):
        raise InvalidInput("`tail`, `since` and `grep` apply to `logs` only", hint=f"Call `{action}` without them.")
    if tail is not None and not 1 <= tail <= MAX_TAIL:
        raise InvalidInput(f"`tail` is {tail}; it must be between 1 and {MAX_TAIL}", hint="e.g. tail = 200")
    if since is not None and not _SINCE.match(since):
        raise InvalidInput(f"`since` is `{since}`: expected a duration such as `15m` or `2h`, or a date/time "
                           "such as `2026-12-07T22:00:00Z`", hint="e.g. since = \"15m\"")
    if grep is not None and (not grep or len(grep) > 200 or "\n" in grep):
        raise InvalidInput("`grep` must be one line of text, at most 200 characters", hint="e.g. grep = \"ERROR\"")
    return Action(action, tail or 100, since, grep)


def vet_action(connection: ContainerConnection, caller: Caller, wanted: Action) -> Vetted:
    """The connection's verdict on the action, with the caller's shell rule's limits."""
    def vet() -> Vetted:
        rules = connection.policy.rules_for(caller.identity)
        facts: dict[str, Any] = {"container_action": wanted.action}
        rule = f"container:{wanted.action}"
        verdict = connection.actions.get(wanted.action, DEFAULT_VERDICTS[wanted.action])
        if not rules:
            return Vetted(facts, Decision.deny("container:no-rule", "no rule of this connection applies to you"))
        if verdict is Verdict.DENY:
            return Vetted(facts, Decision.deny(rule, f"`{wanted.action}` is not allowed on this container",
                                               hint="Allowed: " + ", ".join(a for a, v in connection.actions.items()
                                                                            if v is not Verdict.DENY)))
        why = "reads the container" if wanted.action in READS else "changes the container: approvers decide"
        decision = Decision(verdict, (rule,), f"`{wanted.action}` {why}", limits=rules[0].limits,
                            read_only=wanted.action in READS)
        return Vetted(facts, decision, wanted)

    return fail_closed(vet)


def runner(connection: ContainerConnection) -> Callable[[Vetted], Awaitable[ContainerAnswer]]:
    async def execute(vetted: Vetted) -> ContainerAnswer:
        wanted: Action = vetted.plan
        limits = vetted.decision.limits
        assert limits is not None
        runtime = connection.runtime
        if wanted.action == "logs":
            answer = await _logs(runtime, wanted, limits.max_bytes, limits.timeout_s)
        elif wanted.action == "inspect":
            target = await runtime.target()
            answer = ContainerAnswer("inspect", "", details=summary(target))
        else:
            answer = await _lifecycle(runtime, wanted.action, limits.timeout_s)
        return _masked(connection, answer)

    return execute


async def _logs(runtime: ContainerRuntime, wanted: Action, cap: int, timeout: float) -> ContainerAnswer:
    target = await runtime.target()
    words = ["logs", "--tail", str(wanted.tail)] + (["--since", wanted.since] if wanted.since else []) + [target.id]
    # Without grep the runtime's own tail bounds it; with grep, read up to 8x the cap before filtering.
    result = await runtime.cli(*words, cap=cap if not wanted.grep else cap * 8, timeout=timeout, merge=True)
    runtime.check(result, "logs")
    text = result.stdout.decode("utf-8", "replace")
    truncated = len(result.stdout) > (cap if not wanted.grep else cap * 8)
    if wanted.grep:
        needle = wanted.grep.lower()
        text = "".join(line for line in text.splitlines(keepends=True) if needle in line.lower())
    data = text.encode()
    if len(data) > cap:
        text, truncated = data[:cap].decode("utf-8", "ignore"), True
    return ContainerAnswer("logs", text, truncated)


async def _lifecycle(runtime: ContainerRuntime, action: str, timeout: float) -> ContainerAnswer:
    target = await runtime.target()
    result = await runtime.cli(action, target.id, timeout=max(timeout, 30.0))
    runtime.check(result, action)
    after = await runtime.target()
    state = after.raw.get("State") or {}
    return ContainerAnswer(action, result.stdout.decode("utf-8", "replace").strip(),
                           details={"name": after.name, "state": state.get("Status"), "running": after.running})


def summary(target: Target) -> dict[str, Any]:
    """What inspect tells the agent: state, health, restarts, image, ports, mounts, and the names of
    the environment variables (their values often are credentials: never shown)."""
    raw = target.raw
    state = raw.get("State") or {}
    config = raw.get("Config") or {}
    host = raw.get("HostConfig") or {}
    health = state.get("Health") or state.get("Healthcheck") or {}
    ports = []
    for port, binds in sorted(((raw.get("NetworkSettings") or {}).get("Ports") or {}).items()):
        for bind in binds or [None]:
            ports.append(f"{bind.get('HostIp') or '0.0.0.0'}:{bind.get('HostPort')}->{port}" if bind else port)
    return {
        "id": target.id[:12], "name": target.name,
        "image": raw.get("ImageName") or config.get("Image") or raw.get("Image"),
        "state": state.get("Status"), "running": bool(state.get("Running")), "exit_code": state.get("ExitCode"),
        "started_at": state.get("StartedAt"), "finished_at": state.get("FinishedAt"),
        "oom_killed": bool(state.get("OOMKilled")),
        "health": health.get("Status") or None, "failing_streak": health.get("FailingStreak"),
        "restarts": raw.get("RestartCount", 0),
        "restart_policy": (host.get("RestartPolicy") or {}).get("Name") or None,
        "ports": ports,
        "mounts": [f"{m.get('Destination')} ({'rw' if m.get('RW') else 'ro'})" for m in raw.get("Mounts") or []],
        "user": config.get("User") or None,
        "env": [f"{str(e).split('=', 1)[0]}=<redacted>" for e in config.get("Env") or []],
    }


def _masked(connection: ContainerConnection, answer: ContainerAnswer) -> ContainerAnswer:
    """The connection's detectors over every text the answer carries, before it is recorded or returned."""
    kinds = connection.masking.rules.detectors if connection.masking is not None else frozenset()
    if answer.details is not None:
        answer.output = json.dumps(answer.details, ensure_ascii=False) if not answer.output else answer.output
    if not kinds:
        return answer
    counts: dict[str, int] = {}

    def scan(value: Any) -> Any:
        if isinstance(value, str):
            masked, found = mask_text(value, kinds)
            for kind, n in found.items():
                counts[kind] = counts.get(kind, 0) + n
            return masked
        if isinstance(value, list):
            return [scan(v) for v in value]
        if isinstance(value, dict):
            return {k: scan(v) for k, v in value.items()}
        return value

    answer.output = scan(answer.output)
    answer.details = scan(answer.details)
    if counts:
        answer.masking = {"detections": dict(sorted(counts.items()))}
    return answer


def result_record(answer: ContainerAnswer) -> ev.Outcome:
    record: dict[str, Any] = {"action": answer.action, "output": answer.output}
    if answer.details is not None:
        record["details"] = answer.details
    if answer.masking:
        record["masking"] = answer.masking
    return {"result": record, "truncated": answer.truncated}


async def container_call(gateway: Gateway, caller: Caller, connection: str, action: str, *, tail: int | None = None,
                         since: str | None = None, grep: str | None = None,
                         reason: str | None = None) -> Guarded[ContainerAnswer]:
    """One `container` tool call through the gateway's guard (the same record, holds and refusals)."""
    shown = shlex.join([action] + [f"{k}={v}" for k, v in (("tail", tail), ("since", since), ("grep", grep)) if v is not None])
    target: ContainerConnection = await gateway._resolve(caller, "container", connection, shown, ContainerConnection, reason)
    try:
        wanted = parse_action(action, tail, since, grep)
    except InvalidInput as error:
        await gateway.guard.refuse(caller, "container", connection, shown, reason, error)
        raise
    return await gateway.guard.run(caller, "container", connection, wanted.text(), reason, what="container action",
                                   vet=lambda: vet_action(target, caller, wanted), execute=runner(target),
                                   result_record=result_record)
