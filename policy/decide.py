"""decide(identity, policy, analysis) → Decision. The combining rules live here and only here."""

from __future__ import annotations

from bastion.policy.decision import Decision, Limits, Verdict
from bastion.policy.identity import Identity
from bastion.policy.rules import ConnectionPolicy, SqlRule
from bastion.policy.combine import combine
from bastion.policy.outcome import worst
from bastion.policy.sql.evaluate import evaluate
from bastion.policy.sql import dangerous_functions
from bastion.policy.sql.catalog import FunctionCatalog, changes_state
from bastion.policy.sql.facts import Analysis, Kind, Statement

_GUARD_HINT = "Send one plain SQL statement per line of intent, as PostgreSQL or SQLite would parse it."


_MEMO_TEXT_LIMIT = 16 * 1024


def decide(identity: Identity, policy: ConnectionPolicy, analysis: Analysis,
           functions: FunctionCatalog | None = None) -> Decision:
    """The decision is a pure function of its arguments, so it is memoised on the policy. Analyses
    are cached by text (analyse), so a repeated text from the same identity is a dictionary lookup.
    The memo keeps the analysis and catalog it was keyed by alive, so that ``id`` cannot be reused
    meanwhile. ``functions``: the connection's catalog (PostgreSQL); every function reference is
    judged there (policy.sql.catalog). Without it, names decide (a policy checked offline)."""
    memo = policy.decisions
    if functions is not None and memo.scope is not functions:
        # A fresh catalog (read again after its TTL or DDL): decisions by the old one no longer hold,
        # and keeping them would keep every old catalog alive.
        memo.within(functions)
    key = (identity, id(analysis), id(functions))
    hit = memo.get(key)
    if hit is not None and hit[0][0] is analysis and hit[0][1] is functions:
        return hit[1]
    decision = _decide(identity, policy, analysis, functions)
    # Big texts are not kept (analyse does not cache them either): the memo would hold them alive.
    if sum(len(s.text) for s in analysis.statements) <= _MEMO_TEXT_LIMIT:
        memo.put(key, ((analysis, functions), decision))
    return decision


def _decide(identity: Identity, policy: ConnectionPolicy, analysis: Analysis,
            functions: FunctionCatalog | None) -> Decision:
    # The text as a whole could not be understood (parse error, parsers disagree): deny.
    if analysis.error is not None:
        return Decision.deny(analysis.error_rule or "guard:parse-error", analysis.error, hint=_GUARD_HINT)
    # Nothing to run is not a decision anyone asked for.
    if not analysis.statements:
        return Decision.deny("guard:empty", "the text holds no SQL statement", hint="Send one SQL statement.")
    rules = policy.rules_for(identity)
    # No rule covers this identity on this connection: the default is deny.
    if not rules:
        return Decision.deny("default-deny", f"no rule on connection `{policy.connection}` applies to `{identity.subject}`",
                             hint="Ask an administrator for access to this connection.")
    decisions = [_decide_statement(rules, stmt, policy.dialect, functions) for stmt in analysis.statements]
    return _combine_statements(decisions, analysis, _only_reads(analysis, policy.dialect, functions))


def _only_reads(analysis: Analysis, dialect: str, functions: FunctionCatalog | None = None) -> bool:
    """Whether the call can run in a READ ONLY transaction: reads only, calling no function with side
    effects (an exempted `nextval` needs a writable transaction); with the catalog, no volatile
    function that is not harmless (only a rule that covers writes lets one through)."""
    risky = dangerous_functions.POSTGRES if dialect == "postgres" else dangerous_functions.SQLITE
    if not analysis.is_read or any(f in risky for s in analysis.statements for f in s.effective.functions):
        return False
    return functions is None or not any(changes_state(s, functions) for s in analysis.statements)


def _decide_statement(rules: tuple[SqlRule, ...], stmt: Statement, dialect: str,
                      functions: FunctionCatalog | None = None) -> Decision:
    # A statement the parser could not fully understand: deny, whatever the rules say.
    if stmt.opaque is not None:
        return Decision.deny("guard:opaque", f"`{stmt.kind.value.upper()}` statements cannot be checked: {stmt.opaque}",
                             hint="Only statements Bastion can fully parse are run; plain SELECT/INSERT/UPDATE/DELETE are.")
    # COPY reaches server files and programs, or streams Bastion cannot carry: never, whatever the rules.
    if Kind.COPY in stmt.kinds or (stmt.explained is not None and Kind.COPY in stmt.explained.kinds):
        return Decision.deny("guard:copy", "COPY does not run through Bastion: to or from a file or program it "
                             "reaches the database server's files and commands",
                             hint="Use SELECT to read rows, INSERT to add them.")
    parts = [stmt] + ([stmt.effective] if stmt.explained is not None else [])
    # Each rule's outcome for the statement is the worst over its parts (EXPLAIN and what it explains).
    return combine([(worst(evaluate(rule, part, dialect, functions) for part in parts), rule.limits) for rule in rules])


def _combine_statements(decisions: list[Decision], analysis: Analysis, read_only: bool) -> Decision:
    many = len(decisions) > 1
    # One denied statement denies the whole text: nothing of it runs.
    for i, d in enumerate(decisions):
        if d.verdict is Verdict.DENY:
            reason = f"statement {i + 1} of {len(decisions)}: {d.reason}" if many else d.reason
            return Decision.deny(d.rules, reason, hint=d.hint)
    # A call returns one result: a text whose statements return several would lose all but the last.
    returning = [i + 1 for i, s in enumerate(analysis.statements) if s.returns_rows]
    if len(returning) > 1:
        return Decision.deny("guard:several-results",
                             f"statements {', '.join(map(str, returning[:-1]))} and {returning[-1]} of {len(decisions)} "
                             "each return rows, and a call returns the result of one statement: the others would be lost",
                             hint="Send each query in a call of its own; writes without RETURNING followed by one query may share a call.")
    # Any statement held for review holds all of them.
    held = [d for d in decisions if d.verdict is Verdict.REVIEW]
    limits = _tightest([d.limits for d in decisions])
    if held:
        return Decision(Verdict.REVIEW, tuple(r for d in held for r in d.rules), held[0].reason,
                        hint=held[0].hint, limits=limits, read_only=read_only)
    rules = tuple(dict.fromkeys(r for d in decisions for r in d.rules))
    return Decision(Verdict.ALLOW, rules, "allowed by " + ", ".join(f"`{r}`" for r in rules),
                    limits=limits, read_only=read_only)


def _tightest(limits: list[Limits | None]) -> Limits:
    out = Limits()
    known = [lim for lim in limits if lim is not None]
    if known:
        out = known[0]
        for lim in known[1:]:
            out = out.tightest(lim)
    return out
