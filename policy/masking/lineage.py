"""Column lineage: for each output column, the source columns (``schema.table.column``) it derives from.

sqlglot does the work: ``qualify`` (see qualified.py) names every column's table and expands stars,
and ``sqlglot.lineage.to_node`` follows an output through aliases, expressions, CASE, casts,
function calls, aggregates, windows, scalar subqueries, derived tables, CTE chains and each branch
of a UNION/INTERSECT/EXCEPT. This module maps what it reaches onto the catalog: a table's column,
or a view's column, which is followed through the view's own definition in turn.

"Derives from" is wide on purpose: ``CASE WHEN email LIKE 'a%' THEN 1 END`` derives from email, and
so does ``row_number() OVER (PARTITION BY email)``. Two exceptions: ``count(col)`` and
``count(DISTINCT col)`` derive nothing from ``col`` (a count is not a value of it; counting
distinct values is reported as an inference channel instead, see predicates.py).

Fail closed: an output is ``resolved=False`` when any part of it reaches something the catalog
does not know (an unknown table or column, a table function, a star that could not be expanded, a
whole-row reference such as ``SELECT c FROM customers c``); the plan masks it. When the number of
outputs itself is unknown (``SELECT *`` over an unknown table) ``Lineage.outputs`` is None.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from functools import lru_cache

import sqlglot
from sqlglot import exp
from sqlglot.errors import SqlglotError
from sqlglot.lineage import Node, to_node
from sqlglot.optimizer.scope import Scope, build_scope, find_all_in_scope

from bastion.policy.masking.catalog import Catalog
from bastion.policy.masking.qualified import Prepared, prepare

logging.getLogger("sqlglot").setLevel(logging.ERROR)


@dataclass(frozen=True)
class Output:
    """One output column: where it comes from, or why that is not known."""

    name: str
    sources: frozenset[str] = frozenset()
    resolved: bool = True
    why: str | None = None


@dataclass(frozen=True)
class Lineage:
    # None: the number of output columns is not known (a star the catalog could not expand).
    outputs: tuple[Output, ...] | None
    # Every relation read (``schema.table``), with the tables behind each view read.
    relations: frozenset[str] = frozenset()
    why: str | None = None


@dataclass
class Sources:
    """What one expression derives from, accumulated; ``why`` holds the first reason it is unresolved."""

    columns: set[str] = field(default_factory=set)
    why: str | None = None

    def add(self, other: Sources) -> None:
        self.columns |= other.columns
        self.why = self.why or other.why

    def fail(self, why: str) -> None:
        self.why = self.why or why

    def output(self, name: str) -> Output:
        return Output(name, frozenset(self.columns), self.why is None, self.why)


def lineage(prepared: Prepared, catalog: Catalog) -> Lineage:
    """The statement's output columns (the first ``prepared.outputs`` projections)."""
    relations = relations_read(prepared, catalog)
    if _has_star(prepared.tree.selects[: prepared.outputs]):
        return Lineage(None, relations, "`*` could not be expanded: a relation it covers is not in the catalog")
    return Lineage(projections(prepared, catalog, range(prepared.outputs)), relations)


def projections(prepared: Prepared, catalog: Catalog, indexes: range) -> tuple[Output, ...]:
    """Lineage of the projections at ``indexes`` of the prepared query."""
    tree, scope = _without_counted_columns(prepared)
    selects = tree.selects
    lost = _unscoped_subquery(scope)
    rows = whole_rows(prepared, catalog)
    outputs = []
    for i in indexes:
        if i >= len(selects):
            outputs.append(Output("?", resolved=False, why="the query has fewer columns than expected"))
            continue
        found = Sources()
        if lost:
            found.fail(lost)
        else:
            try:
                found.add(node_sources(to_node(i, scope, catalog.dialect, catalog.schema, trim_selects=False), catalog, rows))
            except (SqlglotError, ValueError, KeyError) as error:
                found.fail(f"lineage could not follow it ({type(error).__name__})")
        outputs.append(found.output(selects[i].alias_or_name))
    return tuple(outputs)


def column_sources(column: exp.Column | exp.TableColumn, scope: Scope, catalog: Catalog, rows: dict[str, Sources] | None = None) -> Sources:
    """What one column reference in ``scope`` derives from: a table's column, or whatever the
    derived table, CTE or outer query it names derives that column from. ``rows``: see node_sources."""
    found = Sources()
    if isinstance(column, exp.TableColumn):
        return (rows or {}).get(column.name) or _unknown_row(column.name)
    table = column.table
    if not table:
        # An output alias used in ORDER BY / HAVING / a set operation's ORDER BY.
        expr = scope.expression
        if isinstance(expr, exp.Query) and column.name in expr.named_selects:
            try:
                found.add(node_sources(to_node(column.name, scope, catalog.dialect, catalog.schema, trim_selects=False), catalog, rows))
            except (SqlglotError, ValueError, KeyError) as error:
                found.fail(f"lineage could not follow `{column.name}` ({type(error).__name__})")
        else:
            found.fail(f"`{column.name}` names no table")
        return found
    current: Scope | None = scope
    while current is not None:  # a correlated reference names a table of an enclosing query
        source = current.sources.get(table)
        if isinstance(source, exp.Table):
            found.add(leaf_sources(source, column.name, catalog))
            return found
        if isinstance(source, Scope):
            try:
                found.add(node_sources(to_node(column.name, source, catalog.dialect, catalog.schema, trim_selects=False), catalog, rows))
            except (SqlglotError, ValueError, KeyError) as error:
                found.fail(f"lineage could not follow `{table}.{column.name}` ({type(error).__name__})")
            return found
        current = current.parent
    found.fail(f"`{table}` is not a relation of the query")
    return found


def node_sources(node: Node, catalog: Catalog, rows: dict[str, Sources] | None = None) -> Sources:
    """The catalog columns at the ends of a lineage graph. An end that is not a table's column and
    is not a constant (a star left unexpanded, an unknown source) makes the result unresolved.
    ``rows``: what each whole-row reference (``row_to_json(c)``, by alias) carries."""
    found = Sources()
    for n in node.walk():
        # sqlglot's lineage does not follow a whole-row reference (PostgreSQL `c` for a row of c).
        if rows is not None:
            for ref in n.expression.find_all(exp.TableColumn):
                found.add(rows.get(ref.name) or _unknown_row(ref.name))
        if n.downstream:
            continue
        if isinstance(n.expression, exp.Table):
            column = _column_name(n.name, catalog.dialect)
            if column == "*":
                found.fail(f"`*` over `{n.expression.name}` could not be expanded")
            else:
                found.add(leaf_sources(n.expression, column, catalog))
        elif n.expression.find(exp.Column) is not None or isinstance(n.expression, (exp.Placeholder, exp.Query)):
            found.fail(f"`{n.name}` could not be traced to a table")
    return found


def leaf_sources(table: exp.Table, column: str, catalog: Catalog) -> Sources:
    """A column of a relation in the FROM clause, resolved through views."""
    found = Sources()
    if not isinstance(table.this, exp.Identifier):
        found.fail(f"`{table.sql(dialect=catalog.dialect)}` is a table function")
        return found
    relation = relation_name(table, catalog)
    if catalog.columns(relation) is None:
        found.fail(f"`{relation}` is not in the catalog")
    elif not catalog.has_column(relation, column):
        # Also a whole-row reference (`SELECT c FROM customers c`), which carries every column.
        found.fail(f"`{relation}` has no column `{column}`")
    elif catalog.is_view(relation):
        # The view's own column counts too: a pattern may name it.
        found.columns.add(f"{relation}.{column}")
        found.add(_view_column(catalog, relation, column))
    else:
        found.columns.add(f"{relation}.{column}")
    return found


def whole_rows(prepared: Prepared, catalog: Catalog) -> dict[str, Sources]:
    """Alias → every column of the relation(s) it names: what a whole-row reference carries. A
    derived table or CTE alias, or a relation the catalog does not know, is unresolved."""
    rows: dict[str, Sources] = {}
    if prepared.tree.find(exp.TableColumn) is None:
        return rows
    for scope in prepared.scope.traverse():
        for alias, source in scope.sources.items():
            found = rows.setdefault(alias, Sources())
            if isinstance(source, exp.Table) and isinstance(source.this, exp.Identifier):
                relation = relation_name(source, catalog)
                for column in catalog.columns(relation) or ():
                    found.add(leaf_sources(source, column, catalog))
                if catalog.columns(relation) is None:
                    found.fail(f"`{relation}` is not in the catalog")
            else:
                found.fail(f"`{alias}` is a whole row of a subquery")
    return rows


def _unknown_row(alias: str) -> Sources:
    found = Sources()
    found.fail(f"`{alias}` is a whole row that could not be traced")
    return found


def relation_name(table: exp.Table, catalog: Catalog) -> str:
    return f"{table.db or catalog.default_schema}.{table.name}"


def relations_read(prepared: Prepared, catalog: Catalog) -> frozenset[str]:
    """The tables and views the query reads (and the tables behind each view)."""
    found: set[str] = set()
    for scope in prepared.scope.traverse():
        for source in scope.sources.values():
            if isinstance(source, exp.Table) and isinstance(source.this, exp.Identifier):
                name = relation_name(source, catalog)
                found.add(name)
                if catalog.is_view(name):
                    found |= view_lineage(catalog, name).relations
    return frozenset(found)


def view_lineage(catalog: Catalog, view: str) -> Lineage:
    """A view's columns, each derived through its definition (itself perhaps over views). Worked
    out once per catalog."""
    key = ("view", view)
    if key in catalog.memo:
        found = catalog.memo[key]
        return found if found is not None else Lineage((), why=f"the view `{view}` is defined in terms of itself")
    catalog.memo[key] = None  # a view that reaches itself while it is being resolved
    catalog.memo[key] = result = _view_lineage(catalog, view)
    return result


def _view_lineage(catalog: Catalog, view: str) -> Lineage:
    names = catalog.columns(view) or ()
    definition = catalog.views.get(view) or catalog.views.get(view.lower(), "")
    schema = view.split(".", 1)[0]
    scoped = Catalog(catalog.dialect, schema, catalog.tables, catalog.views, catalog.memo) if schema != catalog.default_schema else catalog
    try:
        query = _view_query(definition, catalog.dialect)
        parts = prepare(query.sql(dialect=catalog.dialect), scoped)
        if len(parts) != 1 or parts[0].outputs != len(names):
            raise SqlglotError("its definition does not return its catalog columns")
        found = lineage(parts[0], scoped)
        if found.outputs is None:
            raise SqlglotError(found.why or "unknown columns")
        outputs = tuple(Output(name, o.sources, o.resolved, o.why) for name, o in zip(names, found.outputs))
        return Lineage(outputs, found.relations)
    except (SqlglotError, ValueError, KeyError) as error:
        why = f"the definition of view `{view}` could not be followed ({str(error).splitlines()[0][:80] if str(error) else type(error).__name__})"
        return Lineage(tuple(Output(n, resolved=False, why=why) for n in names), why=why)


def _view_query(definition: str, dialect: str) -> exp.Query:
    tree = sqlglot.parse_one(definition, read=dialect)
    if isinstance(tree, exp.Create):
        tree = tree.expression
    if not isinstance(tree, exp.Query):
        raise SqlglotError("not a query")
    return tree


def _view_column(catalog: Catalog, view: str, column: str) -> Sources:
    found = Sources()
    for output in view_lineage(catalog, view).outputs or ():
        if output.name == column or (catalog.dialect == "sqlite" and output.name.lower() == column.lower()):
            found.columns |= output.sources
            if not output.resolved:
                found.fail(output.why or f"view column `{view}.{column}` is unresolved")
            return found
    found.fail(f"view `{view}` has no column `{column}`")
    return found


@lru_cache(maxsize=4096)
def _column_name(leaf: str, dialect: str) -> str:
    """The column of a lineage leaf's name (``alias.column``, quoted as the dialect quotes)."""
    if leaf.endswith("*"):
        return "*"
    try:
        column = exp.to_column(leaf, dialect=dialect)
    except SqlglotError:
        return leaf.rsplit(".", 1)[-1]
    ident = column.this
    return ident.this if isinstance(ident, exp.Identifier) else column.name


def _has_star(selects: list[exp.Expr]) -> bool:
    return any(isinstance(s, exp.Star) or (isinstance(s, exp.Column) and isinstance(s.this, exp.Star)) for s in selects)


def _without_counted_columns(prepared: Prepared) -> tuple[exp.Query, Scope]:
    """The tree with each bare column counted by count() taken out (a count derives nothing from
    what it counts). A copy, and only when there is such a count: the prepared tree stays as is."""
    counts = [c for c in prepared.tree.find_all(exp.Count) if _counted_columns(c)]
    if not counts:
        return prepared.tree, prepared.scope
    tree = prepared.tree.copy()
    for count in list(tree.find_all(exp.Count)):
        for column in _counted_columns(count):
            column.replace(exp.Literal.number(1))
    scope = build_scope(tree)
    assert scope is not None
    return tree, scope


def _counted_columns(count: exp.Count) -> list[exp.Column]:
    arg = count.this
    if isinstance(arg, exp.Distinct):
        args = arg.expressions
    else:
        args = [arg] if arg is not None else []
    return [a for a in args if isinstance(a, exp.Column) and not isinstance(a.this, exp.Star)]


def _unscoped_subquery(scope: Scope) -> str | None:
    """sqlglot's lineage skips (with a log line) a subquery it has no scope for; that would be a
    silent gap, so such a query is unresolved as a whole."""
    for current in scope.traverse():
        if not isinstance(current.expression, exp.Select):
            continue
        known = {id(s.expression) for s in current.subquery_scopes}
        for projection in current.expression.selects:
            for query in find_all_in_scope(projection, *exp.UNWRAPPED_QUERIES):
                if id(query) not in known:
                    return "a subquery in the select list could not be followed"
    return None
