"""The shell tool's guard steps: vet a command, rebuild it from the vetted structure, run that."""

from __future__ import annotations

import os
import posixpath
from collections.abc import Awaitable, Callable
from typing import Any

from dataclasses import replace

from bastion.policy.errors import InvalidInput
from bastion.policy.shell.decide import vet_shell_text
from bastion.store import events as ev
from bastion.tools import masking
from bastion.tools.calls import Caller
from bastion.tools.connections import ShellConnection
from bastion.tools.executors.shell_base import ShellResult, ShellRunRequest
from bastion.tools.guard import Vetted, fail_closed, scoped


def resolve_cwd(connection: ShellConnection, cwd: str | None) -> str:
    """The working directory for a call: the connection's, or a `cwd` that stays inside it."""
    base = connection.policy.cwd
    if not cwd:
        return base
    path = posixpath.normpath(posixpath.join(base, cwd))
    if connection.kind == "local":
        path = os.path.realpath(path)  # symlinks must not lead out either
        base = os.path.realpath(base)
    if path != base and not path.startswith(base.rstrip("/") + "/"):
        raise InvalidInput(f"the working directory `{cwd}` is outside `{connection.policy.cwd}`",
                           hint=f"Use a directory inside `{connection.policy.cwd}`, or omit cwd.")
    return path


def vet_shell(connection: ShellConnection, caller: Caller, command: str, cwd: str) -> Vetted:
    def vet() -> Vetted:
        policy = connection.policy if cwd == connection.policy.cwd else replace(connection.policy, cwd=cwd)
        # Run what was parsed: the plan is the rebuilt text, never the agent's.
        analysis, decision, plan = vet_shell_text(caller.identity, policy, command)
        facts: dict[str, Any] = analysis.summary()
        if plan is not None:
            facts["run"] = plan
        return scoped(connection, caller, Vetted(facts, decision, plan))

    return fail_closed(vet)


def runner(connection: ShellConnection, caller: Caller, cwd: str) -> Callable[[Vetted], Awaitable[ShellResult]]:
    async def execute(vetted: Vetted) -> ShellResult:
        limits = vetted.decision.limits
        assert limits is not None
        executor = connection.executor_for(connection.run_as(caller.identity) if vetted.run_as else None)
        result = await executor.run(ShellRunRequest(vetted.plan, cwd, limits.timeout_s, limits.max_bytes,
                                                    caller.identity))
        # ⑥ The detectors run over stdout and stderr before anything records or returns them.
        return masking.mask_shell(connection, result)

    return execute


def result_record(result: ShellResult) -> ev.Outcome:
    body: dict[str, Any] = {"exit_code": result.exit_code, "stdout": result.stdout, "stderr": result.stderr,
                            "timed_out": result.timed_out}
    if result.masking:  # detections per kind; never a value
        body["masking"] = result.masking
    if result.network:  # the endpoints the command reached through the sandbox's bridge (network_bridge.py)
        body["network"] = result.network
    return {"result": body, "truncated": result.truncated}
