"""Policy backtest: run every recorded call's text through a draft policy and say what would change.

A call is decided again as the live guard decides it, not only by the rules: on a connection that
masks, the mask plan's verdict (inference channels, write flows, the statistics catalogs) is folded
in against the connection's catalog (given ``connections``, built from the draft); an egress refusal
(`alert:<id>`) depended on the identity's traffic at the time, so it stands while the draft keeps that
egress rule with the same action and its rules still allow the call. What cannot be decided again
(masking with no catalog to judge by) keeps its recorded verdict and is counted in ``not_rechecked``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from bastion.policy import ConnectionPolicy, Identity, Verdict, analyse
from bastion.policy.decision import Decision
from bastion.policy.shell.rules import ShellPolicy
from bastion.store.audit_store import AuditStore
from bastion.tools import masking
from bastion.tools.connections import Connection
from bastion.tools.guard import Vetted, fail_closed, safe_check

GUARDED_TOOLS = ("sql_query", "shell_run", "check")
MASK_RULES = ("mask:", "masking:")  # verdicts of the mask plan: `mask:<column>`, `masking:stats-catalog`


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
    not_rechecked: Counter[str] = field(default_factory=Counter)  # why a recorded verdict was kept as it was

    def changed(self) -> int:
        return sum(n for k, n in self.counts.items() if k.split(" → ")[0] != k.split(" → ")[1])


async def refresh_catalogs(connections: Mapping[str, Connection]) -> None:
    """Read the catalog of every connection that masks columns (what the mask plan judges against)."""
    for connection in connections.values():
        if connection.masking is not None:
            await masking.refresh(connection)


def _masked(connection: Connection, decision: Decision, text: str) -> Decision:
    """``decision`` with the connection's mask plan folded in, as tools/sql.py's vet does."""
    def vet() -> Vetted:
        statements = analyse(text, connection.dialect, connection.policy.default_schema).statements
        return Vetted(None, masking.vet(connection, statements, None, decision))

    return fail_closed(vet).decision


def redecide(policy: ConnectionPolicy | ShellPolicy, connection: Connection | None, identity: Identity, text: str,
             recorded: Mapping[str, Any], egress: Mapping[str, str]) -> tuple[Decision | None, str | None]:
    """The draft's decision on one recorded call, or (None, why) when it keeps its recorded verdict."""
    decision = safe_check(policy, identity, text)
    rules = recorded.get("rules") or []
    masks = connection.masking if connection is not None else None
    if isinstance(policy, ConnectionPolicy) and connection is not None and masks is not None and masks.rules.active:
        if masks.columns and masks._catalog is None:
            if any(r.startswith(MASK_RULES) for r in rules):
                return None, "masking: the connection's catalog could not be read"
        decision = _masked(connection, decision, text)
    elif isinstance(policy, ConnectionPolicy) and any(r.startswith(MASK_RULES) for r in rules) and connection is None:
        return None, "masking: the draft's connections were not built"
    egress_rule = next((r.removeprefix("alert:") for r in rules if r.startswith("alert:")), None)
    if egress_rule is not None and decision.allowed and egress.get(egress_rule) in ("deny", "review"):
        # Over the budget then; the backtest does not replay traffic, so the refusal stands, with
        # the draft rule's action.
        verdict = Verdict.DENY if egress[egress_rule] == "deny" else Verdict.REVIEW
        return Decision(verdict, (f"alert:{egress_rule}",), recorded.get("reason") or "over the egress budget"), None
    return decision, None


def backtest(store: AuditStore, policies: dict[str, ConnectionPolicy | ShellPolicy], *,
             after: str | None = None, examples: int = 5, connections: Mapping[str, Connection] | None = None,
             egress: Mapping[str, str] | None = None) -> Backtest:
    """Decide every recorded guarded call again under ``policies`` (the draft), as the identity that
    made it; ``connections`` (the draft's, catalogs read) re-check masking, ``egress`` (egress alert
    rule id → action) says which recorded egress refusals the draft keeps."""
    result = Backtest()
    egress = egress or {}
    for event in store.iter_all():
        recorded = event["decision"]
        if event["type"] != "call.requested" or event["tool"] not in GUARDED_TOOLS or not recorded:
            continue
        if after and event["time"] < after:
            continue
        result.calls += 1
        before = recorded["verdict"]
        ident = event["identity"]
        identity = Identity(ident["subject"], frozenset(ident["groups"])) if ident else Identity("?")
        name = event.get("connection") or ""
        policy = policies.get(name)
        decision: Decision | None
        if policy is None:
            decision = Decision.deny("default-deny", f"the draft has no connection `{name}`")
        else:
            connection = (connections or {}).get(name) if connections is not None else None
            decision, kept = redecide(policy, connection if connections is not None else None, identity,
                                      event.get("text") or "", recorded, egress)
            if decision is None:
                result.not_rechecked[kept or ""] += 1
                result.counts[f"{before} → {before}"] += 1
                continue
        key = f"{before} → {decision.verdict.value}"
        result.counts[key] += 1
        if before != decision.verdict.value and len(result.examples.setdefault(key, [])) < examples:
            result.examples[key].append(Change(event["call_id"] or "", identity.subject, event.get("connection") or "",
                                               event.get("text") or "", before, decision.verdict.value,
                                               list(decision.rules), decision.reason))
    return result


def summary(result: Backtest) -> list[dict[str, Any]]:
    return [{"change": k, "calls": n} for k, n in sorted(result.counts.items())]
