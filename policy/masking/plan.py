"""The mask plan of one call: which result column gets which masker and why, and whether the
statements may run at all given how they use sensitive columns.

    plan(statements, catalog, rules) → MaskPlan

- Each output column of the last statement (the one whose rows come back) gets the strongest masker
  of the sensitive columns it derives from, citing their rules.
- Fail closed: an output whose lineage is unresolved is masked (``redact``, or ``null`` when a
  column it may touch is ``null``) whenever the statement reads a relation holding sensitive
  columns, or one the catalog does not know that a pattern could cover. When even the number of
  outputs is unknown, every column of the result is masked that way. A statement that reads no
  such relation is not analysed further: nothing in it can derive from a sensitive column.
- The verdict (``decision``) covers inference channels (predicates.py) and writes that would copy a
  sensitive value somewhere it is masked less (``INSERT INTO notes SELECT email ...``, ``UPDATE t
  SET name = email``, ``CREATE TABLE AS``): a copy can be read back unmasked. A statement on
  sensitive relations that cannot be analysed at all is denied (``mask:unanalysable``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from sqlglot.errors import SqlglotError

from bastion.policy.decision import Decision, Verdict
from bastion.policy.masking import predicates
from bastion.policy.masking.catalog import Catalog
from bastion.policy.masking.lineage import Output, lineage, projections, view_lineage
from bastion.policy.masking.maskers import STRENGTH, at_least, strongest
from bastion.policy.masking.qualified import Prepared, prepare
from bastion.policy.masking.rules import MaskRules
from bastion.policy.masking.source import AtSource, SourceRewrite, rewrite
from bastion.policy.sql.facts import Kind, Statement

UNRESOLVED_RULE = "mask:unresolved"
UNANALYSABLE_RULE = "mask:unanalysable"
EXPLAIN_RULE = "mask:explain"
WRITE_RULE_HINT = ("Write masked values only into columns masked at least as strongly, or ask an administrator "
                   "to mask the target column too.")
# Statement kinds that move rows and that the plan cannot follow: on sensitive relations, denied.
_UNFOLLOWED = frozenset({Kind.MERGE})


@dataclass(frozen=True)
class ColumnMask:
    """How one output column is masked, and why: the rules of the sensitive columns it derives from,
    or (``note`` set) because its lineage could not be resolved."""

    masker: str
    rules: tuple[str, ...]
    sources: tuple[str, ...] = ()
    output: str = ""
    note: str | None = None
    # Its value was masked where the relation is scanned (source.py): it comes back masked already.
    at_source: bool = False

    def as_record(self) -> dict[str, Any]:
        out: dict[str, Any] = {"masker": self.masker, "rules": list(self.rules)}
        if self.sources:
            out["from"] = list(self.sources)
        if self.note:
            out["note"] = self.note
        if self.at_source:
            out["at"] = "source"
        return out


@dataclass(frozen=True)
class MaskPlan:
    # Per output column (None: not masked). Meaningful when ``known``.
    columns: tuple[ColumnMask | None, ...] = ()
    known: bool = True
    # The mask for every column when the outputs are unknown or the result does not have the
    # columns the plan expected (a catalog older than the table); None when nothing read is sensitive.
    fallback: ColumnMask | None = None
    decision: Decision | None = None
    uses: tuple[dict[str, str], ...] = ()
    detectors: frozenset[str] = frozenset()
    # Per statement: the text to run instead, with masked scans (None: run it as written).
    rewrites: tuple[SourceRewrite | None, ...] = ()

    def for_result(self, width: int) -> tuple[ColumnMask | None, ...]:
        """The mask of each column of a result ``width`` columns wide."""
        if self.known and len(self.columns) == width:
            return self.columns
        return (self.fallback,) * width

    @property
    def masks_columns(self) -> bool:
        return self.fallback is not None or any(self.columns)

    def summary(self) -> dict[str, Any]:
        """What `check` shows and the audit log keeps: masked outputs, channels, detectors (no values)."""
        out: dict[str, Any] = {}
        if self.known:
            masked = [{"index": i, "column": m.output, **m.as_record()} for i, m in enumerate(self.columns) if m]
            if masked:
                out["columns"] = masked
        elif self.fallback is not None:
            out["all_columns"] = self.fallback.as_record()
        if self.uses:
            out["predicates"] = list(self.uses)
        if self.decision is not None:
            out["verdict"] = self.decision.as_record()
        if self.detectors:
            out["detectors"] = sorted(self.detectors)
        rewritten = [{"statement": i, "text": r.as_server_sees_it, "relations": sorted(r.relations)}
                     for i, r in enumerate(self.rewrites) if r is not None]
        if rewritten:
            out["at_source"] = rewritten
        return out


def plan(statements: Sequence[Statement], catalog: Catalog, rules: MaskRules, at_source: AtSource | None = None) -> MaskPlan:
    """The plan for a call's statements (outputs are the last statement's). ``at_source``: plain
    reads are rewritten so that masked columns are masked where they are scanned (source.py)."""
    if not rules.columns:
        return MaskPlan(detectors=rules.detectors)
    parts = [statement_plan(s, catalog, rules, at_source) for s in statements]
    decisions = [p.decision for p in parts if p.decision is not None]
    # A denied use denies the call; else a held one holds it.
    decision = next((d for d in decisions if d.verdict is Verdict.DENY), decisions[0] if decisions else None)
    last = parts[-1] if parts else MaskPlan()
    uses = tuple(dict(t) for t in dict.fromkeys(tuple(u.items()) for p in parts for u in p.uses))
    rewrites = tuple(p.rewrites[0] if p.rewrites else None for p in parts)
    return MaskPlan(last.columns, last.known, last.fallback, decision, uses, rules.detectors,
                    rewrites if any(rewrites) else ())


def statement_plan(statement: Statement, catalog: Catalog, rules: MaskRules, at_source: AtSource | None = None) -> MaskPlan:
    """One statement's plan, kept with the catalog it was worked out against (and gone with it)."""
    key = ("plan", statement.text, rules, at_source)
    found = catalog.memo.get(key)
    if found is None:
        # Only a plain read is masked at its scans: a write's sources are what it writes.
        plain_read = statement.kind is Kind.SELECT and statement.explained is None and statement.is_read
        found = _statement_plan(statement.text, statement.kind, statement.explained is not None,
                                statement.explain_analyze, statement.explained.text if statement.explained else "",
                                catalog, rules, statement.effective.reads | statement.effective.writes,
                                at_source if plain_read else None)
        if len(catalog.memo) < _MEMO_LIMIT:
            catalog.memo[key] = found
    return found


_MEMO_LIMIT = 20_000  # plans and view lineages kept per catalog (a catalog lives until the next read)


def _statement_plan(text: str, kind: Kind, explain: bool, analyze: bool, inner: str, catalog: Catalog,
                    rules: MaskRules, relations: frozenset[str], at_source: AtSource | None) -> MaskPlan:
    sensitive = sensitive_relations(relations, catalog, rules)
    if not sensitive:
        return MaskPlan()  # nothing read or written can derive from a sensitive column
    fail = ColumnMask(_fail_masker(sensitive, catalog, rules), (UNRESOLVED_RULE,),
                      note="masked because its lineage could not be resolved")
    if at_source is not None:
        try:
            rewritten = rewrite(text, catalog, rules, sensitive, keyed=at_source.keyed, hash_function=at_source.hash_function)
        except (SqlglotError, ValueError, KeyError, AttributeError, TypeError, RecursionError):
            rewritten = None  # analysed below as written: it is denied there if it cannot be followed
        if rewritten is not None and rewritten.complete:
            return _at_source(_analyse(text, catalog, rules, fail, at_source=True), rewritten)
    if explain:
        # EXPLAIN returns a plan, not rows, but its row estimates come from the statistics of the
        # raw column (`secret = 'guess'` gets rows=59 for a common value, rows=1 otherwise): any
        # use of a masked column in a condition, join, grouping or ordering makes it an oracle, so
        # it is refused (the explained statement is not rewritten: the masking expressions, the
        # key's parameters among them, would be printed in the plan). EXPLAIN ANALYZE also runs it.
        inner_plan = _analyse(inner, catalog, rules, fail)
        if analyze and inner_plan.decision is not None and inner_plan.decision.verdict is not Verdict.ALLOW:
            return MaskPlan(decision=inner_plan.decision, uses=inner_plan.uses)  # the rule the statement breaks
        estimates = catalog.dialect != "sqlite"  # SQLite's EXPLAIN prints no row estimates
        if estimates and (inner_plan.uses or (inner_plan.decision is not None and UNANALYSABLE_RULE in inner_plan.decision.rules)):
            use = inner_plan.uses[0] if inner_plan.uses else None
            where = f" (`{use.get('column')}`, {use.get('use')})" if use else ""
            return MaskPlan(decision=Decision.deny(
                EXPLAIN_RULE, f"EXPLAIN of a statement that uses a masked column{where} would estimate rows from the "
                "raw column's statistics, which tell its values apart",
                hint="EXPLAIN the statement without conditions, joins, grouping or ordering on masked columns, "
                     "or run the query itself (masked columns come back masked)."))
        if not analyze:
            return MaskPlan()
        return MaskPlan(decision=inner_plan.decision, uses=inner_plan.uses)
    if kind in _UNFOLLOWED:
        return MaskPlan(known=False, fallback=fail, decision=Decision.deny(
            UNANALYSABLE_RULE, f"{kind.value.upper()} on relations with masked columns cannot be checked for masking",
            hint="Use INSERT, UPDATE or DELETE instead."))
    return _analyse(text, catalog, rules, fail)


def _at_source(found: MaskPlan, rewritten: SourceRewrite) -> MaskPlan:
    """A plan whose masked values come from the rewritten scans: outputs are not masked again
    (a hash of a hash is not the hash), only recorded; the lineage says which and why."""
    columns = tuple(replace(c, at_source=True) if c is not None else None for c in found.columns)
    fallback = replace(found.fallback, at_source=True) if found.fallback is not None else None
    return replace(found, columns=columns, fallback=fallback, rewrites=(rewritten,))


def _analyse(text: str, catalog: Catalog, rules: MaskRules, fail: ColumnMask, at_source: bool = False) -> MaskPlan:
    try:
        parts = prepare(text, catalog)
        uses = tuple(u for part in parts for u in predicates.predicate_uses(part, catalog))
        decision = predicates.judge(uses, rules, at_source=at_source) or _writes_decision(parts, catalog, rules)
        columns: tuple[ColumnMask | None, ...] = ()
        known = True
        if parts and parts[-1].outputs:
            found = lineage(parts[-1], catalog)
            known = found.outputs is not None
            columns = tuple(_column_mask(o, rules, fail) for o in found.outputs or ())
    except (SqlglotError, ValueError, KeyError, AttributeError, TypeError, RecursionError) as error:
        # Anything the analysis cannot follow: mask every column and refuse to run it.
        return MaskPlan(known=False, fallback=fail, decision=Decision.deny(
            UNANALYSABLE_RULE, f"the statement reads masked columns and its masking could not be worked out ({type(error).__name__})",
            hint="Write it more plainly: name the columns, avoid unusual constructs."))
    return MaskPlan(columns, known, fail, decision, tuple(predicates.sensitive_uses(uses, rules)))


def _column_mask(output: Output, rules: MaskRules, fail: ColumnMask) -> ColumnMask | None:
    found = [c for c in (rules.column(s) for s in sorted(output.sources)) if c is not None]
    if not output.resolved:
        masker = at_least(strongest(c.masker for c in found) or fail.masker, fail.masker)
        return ColumnMask(masker, tuple(dict.fromkeys([*(c.rule for c in found), UNRESOLVED_RULE])),
                          tuple(sorted({s for s in output.sources if rules.column(s)})), output.name,
                          f"masked because its lineage could not be resolved: {output.why}")
    if not found:
        return None
    best = strongest(c.masker for c in found)
    assert best is not None  # found is not empty
    return ColumnMask(best, tuple(dict.fromkeys(c.rule for c in found)),
                      tuple(sorted({s for s in output.sources if rules.column(s)})), output.name)


def _writes_decision(parts: list[Prepared], catalog: Catalog, rules: MaskRules) -> Decision | None:
    """A value written from a sensitive column into a column masked less strongly (or not at all)."""
    for part in parts:
        if not part.writes:
            continue
        width = len(part.tree.selects) - part.outputs
        outputs = projections(part, catalog, range(part.outputs, part.outputs + max(width, len(part.writes))))
        for i, output in enumerate(outputs):
            target = part.writes[i] if i < len(part.writes) else "?"
            found = [c for c in (rules.column(s) for s in sorted(output.sources)) if c is not None]
            source = max(found, key=lambda c: STRENGTH[c.masker]) if found else None
            kept = rules.column(target) if target != "?" else None
            if not output.resolved:
                return Decision.deny(UNRESOLVED_RULE, f"a value written to `{target}` may derive from a masked column "
                                     f"and its lineage could not be resolved ({output.why})", hint=WRITE_RULE_HINT)
            if source is not None and (kept is None or STRENGTH[kept.masker] < STRENGTH[source.masker]):
                where = f"`{target}`, which is not masked" if kept is None else f"`{target}`, masked only by {kept.masker}"
                return Decision.deny(source.rule, f"the statement writes a value derived from `{source.pattern}` "
                                     f"(masked: {source.masker}) into {where}: reading it back would bypass the mask",
                                     hint=WRITE_RULE_HINT)
    return None


def sensitive_relations(relations: frozenset[str], catalog: Catalog, rules: MaskRules) -> frozenset[str]:
    """Relations (and the tables behind views) holding a sensitive column, or unknown to the catalog
    and named by a pattern."""
    found = set()
    for relation in relations:
        if _relation_sensitive(relation, catalog, rules):
            found.add(relation)
    return frozenset(found)


def _relation_sensitive(relation: str, catalog: Catalog, rules: MaskRules) -> bool:
    key = ("sensitive", rules, relation)
    if key not in catalog.memo:
        columns = catalog.columns(relation)
        if columns is None:
            result = rules.covering(relation) is not None
        elif catalog.is_view(relation):
            # A view is as sensitive as what it reads; one whose definition cannot be followed, fail closed.
            found = view_lineage(catalog, relation)
            result = (found.why is not None or any(rules.column(f"{relation}.{c}") for c in columns)
                      or any(_relation_sensitive(r, catalog, rules) for r in found.relations - {relation}))
        else:
            result = any(rules.column(f"{relation}.{c}") for c in columns)
        catalog.memo[key] = result
    return bool(catalog.memo[key])


def _fail_masker(sensitive: frozenset[str], catalog: Catalog, rules: MaskRules) -> str:
    maskers = []
    for relation in sensitive:
        columns = catalog.columns(relation)
        if columns is None:
            covering = rules.covering(relation)
            maskers += [covering.masker] if covering else []
        else:
            maskers += [c.masker for c in (rules.column(f"{relation}.{col}") for col in columns) if c]
    return at_least(strongest(maskers) or "redact", "redact")


__all__ = ["ColumnMask", "MaskPlan", "plan", "sensitive_relations", "statement_plan"]
