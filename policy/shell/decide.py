"""decide_shell(identity, policy, analysis) → Decision. Combining works as for SQL (policy.combine)."""

from __future__ import annotations

from dataclasses import replace

from bastion.policy.combine import combine
from bastion.policy.decision import Decision, Verdict
from bastion.policy.identity import Identity
from bastion.policy.shell.evaluate import evaluate_shell
from bastion.policy.shell.analyze import analyse_shell
from bastion.policy.shell.facts import ShellAnalysis
from bastion.policy.shell.rebuild import RebuildError, rebuild
from bastion.policy.shell.rules import ShellPolicy

_HINT = "Send plain commands with literal program names, joined by | && || ;."


def decide_shell(identity: Identity, policy: ShellPolicy, analysis: ShellAnalysis) -> Decision:
    # The text could not be fully understood: deny.
    if analysis.error is not None:
        return Decision.deny(analysis.error_rule or "guard:parse-error", analysis.error,
                             hint=analysis.error_hint or _HINT)
    if not analysis.commands and (analysis.structure is None or analysis.structure.kind != "arithmetic"):
        return Decision.deny("guard:empty", "the text holds no command", hint=_HINT)
    # A program name computed at run time ($cmd, $(...), a glob) cannot be checked: deny.
    for command in analysis.commands:
        if command.program is not None and (not command.program.literal or command.program.ansi_c):
            return Decision.deny("guard:dynamic-program",
                                 f"the program name `{command.program.value}` is computed at run time", hint=_HINT)
    rules = policy.rules_for(identity)
    if not rules:
        return Decision.deny("default-deny", f"no rule on connection `{policy.connection}` applies to `{identity.subject}`",
                             hint="Ask an administrator for access to this connection.")
    decision = combine([(evaluate_shell(rule, analysis, policy.cwd), rule.limits) for rule in rules])
    return replace(decision, read_only=False)


def vet_shell_text(identity: Identity, policy: ShellPolicy, text: str) -> tuple[ShellAnalysis, Decision, str | None]:
    """Analyse, decide, and for an allowed or held command rebuild what will run (None otherwise).
    A command that cannot be rebuilt to the same structure is denied (`guard:rebuild`)."""
    analysis = analyse_shell(text)
    decision = decide_shell(identity, policy, analysis)
    if decision.verdict is Verdict.DENY:
        return analysis, decision, None
    try:
        return analysis, decision, rebuild(analysis)
    except RebuildError as error:
        return analysis, Decision.deny("guard:rebuild", str(error), hint=error.hint or _HINT), None
