"""Policy backtest: run every recorded call's text through a draft policy and say what would change."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from bastion.policy import ConnectionPolicy, Identity
from bastion.policy.decision import Decision
from bastion.policy.shell.rules import ShellPolicy
from bastion.store.sqlite_store import SqliteAuditStore
from bastion.tools.guard import safe_check

GUARDED_TOOLS = ("sql_query", "shell_run", "check")


@dataclass
class Change:
    call_id: str
    subject: str
    connection: str
    text: str
    before: str
    after: str
    rules: list[str]
    reason: str


@dataclass
class Backtest:
    calls: int = 0
    counts: Counter[str] = field(default_factory=Counter)  # "allow → deny", ...
    examples: dict[str, list[Change]] = field(default_factory=dict)

    def changed(self) -> int:
        return sum(n for k, n in self.counts.items() if k.split(" → ")[0] != k.split(" → ")[1])


def backtest(store: SqliteAuditStore, policies: dict[str, ConnectionPolicy | ShellPolicy], *,
             after: str | None = None, examples: int = 5) -> Backtest:
    """Decide every recorded guarded call again under ``policies`` (the draft), as the identity that made it."""
    result = Backtest()
    for event in store.iter_all():
        if event["type"] != "call.requested" or event.get("tool") not in GUARDED_TOOLS or not event.get("decision"):
            continue
        if after and event["time"] < after:
            continue
        result.calls += 1
        before = event["decision"]["verdict"]
        ident = event.get("identity") or {}
        identity = Identity(ident.get("subject", "?"), frozenset(ident.get("groups") or ()))
        policy = policies.get(event.get("connection") or "")
        decision = (safe_check(policy, identity, event.get("text") or "") if policy is not None else
                    Decision.deny("default-deny", f"the draft has no connection `{event.get('connection')}`"))
        key = f"{before} → {decision.verdict.value}"
        result.counts[key] += 1
        if before != decision.verdict.value and len(result.examples.setdefault(key, [])) < examples:
            result.examples[key].append(Change(event["call_id"], identity.subject, event.get("connection") or "",
                                               event.get("text") or "", before, decision.verdict.value,
                                               list(decision.rules), decision.reason))
    return result


def summary(result: Backtest) -> list[dict[str, Any]]:
    return [{"change": k, "calls": n} for k, n in sorted(result.counts.items())]
