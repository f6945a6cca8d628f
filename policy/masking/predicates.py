"""Inference channels: sensitive columns used where their values shape the answer without being returned.

``SELECT name FROM customers WHERE email = 'ada@example.com'`` returns no email, yet its row count
says whether that address is a customer; ``LIKE 'a%'``, then ``'ad%'``, ... spells the address out.
Masking the outputs cannot stop that, so each such use is a fact here, and the rules decide it:

    use            where it is found
    equality       = <> IN, IS [NOT] DISTINCT FROM, = ANY (...)
    like           LIKE ILIKE SIMILAR TO GLOB, starts_with / ^@
    regex          ~ ~* REGEXP
    range          < <= > >= BETWEEN (and so binary search)
    filter         any other condition on it in WHERE / HAVING / QUALIFY (`WHERE f(email)`)
    null-check     IS [NOT] NULL
    join           a JOIN condition with no comparison of its own
    order, group   ORDER BY, GROUP BY, DISTINCT ON
    partition, window-order   a window's PARTITION BY / ORDER BY
    distinct-count count(DISTINCT col)
    filter         also: LIMIT / OFFSET sized by it, an argument of a function in FROM (the rows
                   `generate_series(1, ascii(substr(secret, i, 1)))` gives spell the value out), and
                   a divisor anywhere (division by zero is an oracle), the select list included

The comparison nearest the column names the use (``ORDER BY email = 'x'`` is equality); the
clause it sits in is kept as well. A comparison inside a select-list expression is not a channel:
that output derives from the column and is masked (lineage.py). A scalar or IN subquery's select
list flows into the enclosing condition, so it is followed out to it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from sqlglot import exp
from sqlglot.optimizer.scope import Scope, ScopeType

from bastion.policy.decision import Decision, Verdict
from bastion.policy.masking.catalog import Catalog
from bastion.policy.masking.lineage import column_sources, relation_name, whole_rows
from bastion.policy.masking.qualified import Prepared
from bastion.policy.masking.rules import PROBING, MaskRules

_COMPARISONS: dict[type[exp.Expr], str] = {
    exp.EQ: "equality", exp.NEQ: "equality", exp.NullSafeEQ: "equality", exp.NullSafeNEQ: "equality",
    exp.In: "equality",
    exp.Like: "like", exp.ILike: "like", exp.SimilarTo: "like", exp.Glob: "like", exp.StartsWith: "like",
    exp.EndsWith: "like", exp.Contains: "like",
    exp.RegexpLike: "regex", exp.RegexpILike: "regex",
    exp.GT: "range", exp.GTE: "range", exp.LT: "range", exp.LTE: "range", exp.Between: "range",
    exp.Is: "null-check",
}
# Clause → the use when no comparison is nearer.
_CLAUSE_USE = {"where": "filter", "having": "filter", "join": "join", "order": "order", "group": "group",
               "partition": "partition", "window-order": "window-order", "distinct-count": "distinct-count",
               "limit": "filter", "from": "filter", "divisor": "filter"}
# Subqueries whose select list is a value of the enclosing expression.
_VALUE_SCOPES = (ScopeType.SUBQUERY, ScopeType.SET_OPERATION)


@dataclass(frozen=True)
class PredicateUse:
    """One column reference in a condition: the source columns it derives from, how it is used,
    and in which clause. ``why`` says why its sources are not fully known; then ``columns`` also
    holds every catalog column it could be (same name, or a whole row: ``t.*``)."""

    columns: frozenset[str]
    use: str
    clause: str
    name: str
    why: str | None = None

    def as_record(self, column: str) -> dict[str, str]:
        return {"column": column, "use": self.use, "clause": self.clause}


def predicate_uses(prepared: Prepared, catalog: Catalog) -> tuple[PredicateUse, ...]:
    scopes = {id(s.expression): s for s in prepared.scope.traverse()}
    aliases = _aliases(prepared, catalog)
    rows = whole_rows(prepared, catalog)
    found = []
    references: Iterator[exp.Column | exp.TableColumn] = prepared.tree.find_all(exp.Column, exp.TableColumn)
    for column in references:
        if isinstance(column.this, exp.Star):
            continue
        placed = _classify(column, scopes)
        if placed is None:
            continue
        use, clause, scope = placed
        sources = column_sources(column, scope, catalog, rows)
        columns = set(sources.columns)
        if sources.why is not None:
            columns |= _candidates(column.name, aliases, catalog)
        found.append(PredicateUse(frozenset(columns), use, clause, column.name, sources.why))
    return tuple(found)


def judge(uses: tuple[PredicateUse, ...], rules: MaskRules, at_source: bool = False) -> Decision | None:
    """The rules' verdict on the uses of sensitive columns: the first denied use denies, else the
    first held use holds; None when every use is allowed. ``at_source``: the statement's scans are
    masked (source.py), so a condition sees the masked value, not the raw one: the default denials
    (which guard raw values) do not apply, only verdicts the connection configured."""
    held: Decision | None = None
    for use in uses:
        for column in sorted(use.columns):
            sensitive = _sensitive(column, rules)
            if sensitive is None:
                continue
            masker, rule = sensitive
            if at_source and (masker, use.use) not in rules.configured:
                continue
            verdict = rules.predicate_verdict(masker, use.use)
            if verdict is Verdict.ALLOW:
                continue
            decision = Decision(verdict, (rule,), _reason(column, masker, use), hint=_hint(use))
            if verdict is Verdict.DENY:
                return decision
            held = held or decision
    return held


def sensitive_uses(uses: tuple[PredicateUse, ...], rules: MaskRules) -> list[dict[str, str]]:
    """The uses of sensitive columns, as plain records for `check` and the audit log."""
    out = []
    for use in uses:
        for column in sorted(use.columns):
            if _sensitive(column, rules) is not None:
                out.append(use.as_record(column))
    return [dict(t) for t in dict.fromkeys(tuple(r.items()) for r in out)]


def _sensitive(column: str, rules: MaskRules) -> tuple[str, str] | None:
    # `t.*`: any column of a table the catalog does not know.
    found = rules.covering(column[:-2]) if column.endswith(".*") else rules.column(column)
    return (found.masker, found.rule) if found else None


def _classify(column: exp.Expr, scopes: dict[int, Scope]) -> tuple[str, str, Scope] | None:
    """(use, clause, the scope the column resolves in), or None when the column only feeds an
    output of its query (lineage's business) or a FROM item."""
    use: str | None = None
    clause: str | None = None
    innermost: Scope | None = None
    node: exp.Expr = column
    while node.parent is not None:
        parent, key = node.parent, node.arg_key
        if use is None:
            use = _COMPARISONS.get(type(parent))
        if clause is None:
            clause = _clause(parent, key)
        scope = scopes.get(id(parent))
        if scope is not None:
            innermost = innermost or scope
            if clause is not None:
                break
            if scope.scope_type not in _VALUE_SCOPES:
                return None  # a projection or FROM item of a query whose outputs lineage follows
        node = parent
    if clause is None or innermost is None:
        return None
    return use or _CLAUSE_USE[clause], clause, innermost


def _clause(parent: exp.Expr, key: str | None) -> str | None:
    if isinstance(parent, (exp.Div, exp.IntDiv, exp.Mod)) and key == "expression":
        return "divisor"  # whether it errors depends on the value, wherever it is
    if isinstance(parent, (exp.Limit, exp.Offset, exp.Fetch)):
        return "limit"
    if isinstance(parent, (exp.Table, exp.Lateral)) and key == "this" and isinstance(parent.this, exp.Func):
        return "from"  # the rows a table function gives depend on its arguments
    if isinstance(parent, exp.Unnest) and isinstance(parent.parent, (exp.From, exp.Join, exp.Table, exp.Lateral)):
        return "from"
    if isinstance(parent, exp.Where):
        # FILTER (WHERE ...) belongs to an aggregate in the select list: its output is masked.
        return None if isinstance(parent.parent, exp.Filter) else "where"
    if isinstance(parent, (exp.Having, exp.Qualify)):
        return "having" if isinstance(parent, exp.Having) else "where"
    if isinstance(parent, exp.Join) and key in ("on", "using"):
        return "join"
    if isinstance(parent, exp.Order):
        if isinstance(parent.parent, exp.Window):
            return "window-order"
        return None if isinstance(parent.parent, exp.WithinGroup) else "order"
    if isinstance(parent, exp.Group):
        return "group"
    if isinstance(parent, exp.Window) and key == "partition_by":
        return "partition"
    if isinstance(parent, exp.Distinct):
        if isinstance(parent.parent, exp.Count):
            return "distinct-count"
        return "group" if key == "on" else None
    return None


def _aliases(prepared: Prepared, catalog: Catalog) -> dict[str, str]:
    """Every relation the statement reads, by its alias and by its name."""
    out: dict[str, str] = {}
    for scope in prepared.scope.traverse():
        for alias, source in scope.sources.items():
            if isinstance(source, exp.Table) and isinstance(source.this, exp.Identifier):
                name = relation_name(source, catalog)
                out[alias] = name
                out[source.name] = name
    return out


def _candidates(name: str, aliases: dict[str, str], catalog: Catalog) -> set[str]:
    """What an unresolved column could be, failing closed: the same-named column of any relation
    read, any column of a relation the catalog does not know, every column of a whole-row reference."""
    found: set[str] = set()
    for alias, relation in aliases.items():
        columns = catalog.columns(relation)
        if columns is None:
            found.add(f"{relation}.{name}")
            if alias == name:
                found.add(f"{relation}.*")
        elif alias == name:
            found |= {f"{relation}.{c}" for c in columns}
        elif catalog.has_column(relation, name):
            found.add(f"{relation}.{name}")
    return found


def _reason(column: str, masker: str, use: PredicateUse) -> str:
    clause = {"where": "WHERE", "having": "HAVING", "join": "a JOIN condition", "order": "ORDER BY",
              "group": "GROUP BY", "partition": "a window's PARTITION BY", "window-order": "a window's ORDER BY",
              "distinct-count": "count(DISTINCT ...)", "limit": "LIMIT/OFFSET", "from": "FROM",
              "divisor": "an expression"}.get(use.clause, use.clause)
    what = {"equality": "compares it with a value", "like": "matches it against a pattern",
            "regex": "matches it against a regular expression", "range": "compares it with a range",
            "filter": "filters rows on it", "null-check": "tests it for NULL", "join": "joins on it",
            "order": "orders rows by it", "group": "groups rows by it", "partition": "partitions rows by it",
            "window-order": "orders a window by it", "distinct-count": "counts its distinct values"}[use.use]
    what = {"limit": "sizes the result by it", "from": "passes it to a function that makes rows",
            "divisor": "divides by it (an error says when it is zero)"}.get(use.clause, what)
    channel = ("each answer reveals part of the masked value" if use.use in PROBING
               else "the shape of the answer reveals something of the masked values")
    unsure = f" (`{use.name}` could not be resolved exactly, so it is taken to be it)" if use.why else ""
    return f"`{column}` is masked ({masker}) and the query {what} in {clause}{unsure}: {channel}"


def _hint(use: PredicateUse) -> str:
    return ("Filter, join and sort on columns that are not masked (an id, a date); select the masked column "
            "itself if you need it (it comes back masked). An administrator can allow this use with "
            "`mask_predicates` on the connection.")

