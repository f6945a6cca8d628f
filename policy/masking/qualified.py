"""One statement parsed afresh and qualified against the catalog: the tree lineage and predicates read.

sqlglot's ``qualify`` names every column's table, expands ``*`` and ``t.*`` from the catalog and
normalises identifiers as the dialect does; ``build_scope`` then says where each name comes from.
The tree is this module's own parse (the analyser's facts are never touched).

A DML statement has no query of its own: it is read as the SELECT it implies. ``UPDATE t SET a = x
FROM u WHERE p RETURNING r`` becomes ``SELECT r, x FROM t, u WHERE p``: the first projections are
the statement's outputs (what RETURNING returns), the rest the values it writes.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlglot
from sqlglot import exp
from sqlglot.errors import OptimizeError
from sqlglot.optimizer.qualify import qualify
from sqlglot.optimizer.scope import Scope, build_scope

from bastion.policy.masking.catalog import Catalog

_QUERIES = (exp.Select, exp.SetOperation, exp.Subquery, exp.Values)
_ALL = -1


@dataclass
class Prepared:
    """A qualified query. Its first ``outputs`` projections are the statement's result columns;
    the ``writes`` projections after them are values the statement writes, to the named columns."""

    tree: exp.Query
    scope: Scope
    outputs: int
    writes: tuple[str, ...] = ()


def prepare(text: str, catalog: Catalog) -> list[Prepared]:
    """The qualified queries of one statement: none for DDL, SET and the like; for an INSERT, the
    query its rows come from and then its RETURNING. The part that returns rows, if any, is last.
    Raises sqlglot errors when the text cannot be parsed or qualified; callers fail closed."""
    tree = sqlglot.parse_one(text, read=catalog.dialect)
    parts = []
    for query, outputs, writes in _queries_of(tree, catalog):
        qualified = qualify(query, dialect=catalog.dialect, schema=catalog.schema, db=catalog.default_schema,
                            validate_qualify_columns=False, identify=False)
        if not isinstance(qualified, exp.Query):  # _queries_of gives queries; fail closed if not
            raise OptimizeError(f"not a query: {type(qualified).__name__}")
        scope = build_scope(qualified)
        if scope is None:
            raise OptimizeError("no scope for the statement's query")
        # A query's outputs are all its projections, counted after `*` was expanded; so are the
        # columns of a new relation it fills.
        if outputs == _ALL:
            outputs = len(qualified.selects) - len(writes)
        if len(writes) == 1 and writes[0].endswith(".*"):
            writes = tuple(f"{writes[0][:-2]}.{s.alias_or_name}" for s in qualified.selects)
        parts.append(Prepared(qualified, scope, outputs, writes))
    return parts


def _queries_of(tree: exp.Expr, catalog: Catalog) -> list[tuple[exp.Expr, int, tuple[str, ...]]]:
    if isinstance(tree, exp.Select) and tree.args.get("into") is not None:
        # SELECT INTO: its rows go into a new table, none come back.
        into = tree.args["into"].this
        return [(tree, 0, (f"{_table_name(into, catalog)}.*",))]
    if isinstance(tree, _QUERIES):
        return [(_selectable(tree), _ALL, ())]
    if isinstance(tree, exp.Create) and isinstance(tree.expression, exp.Query):
        # CREATE TABLE / VIEW ... AS: every column of the query is written to the new relation.
        target = tree.this.this if isinstance(tree.this, exp.Schema) else tree.this
        return [(_selectable(tree.expression.copy()), 0, (f"{_table_name(target, catalog)}.*",))]
    if isinstance(tree, (exp.Update, exp.Delete)):
        return [_update_or_delete(tree, catalog)]
    if isinstance(tree, exp.Insert):
        return _insert(tree, catalog)
    return []


def _update_or_delete(tree: exp.Update | exp.Delete, catalog: Catalog) -> tuple[exp.Expr, int, tuple[str, ...]]:
    returning = _returning(tree)
    target = tree.this
    tables = [target.copy()] + [t.copy() for t in tree.args.get("using") or []]
    from_ = tree.args.get("from_")
    if from_ is not None:
        tables.append(from_.this.copy())
        tables += [j.this.copy() for j in from_.args.get("joins") or []]
    written = [e for e in tree.expressions if isinstance(e, exp.EQ)] if isinstance(tree, exp.Update) else []
    select = exp.Select(expressions=[*returning, *(w.expression.copy() for w in written)] or [exp.Literal.number(1)])
    select = select.from_(tables[0], copy=False)
    for table in tables[1:]:
        select = select.join(table, join_type="cross", copy=False)
    for key in ("where", "with_"):
        if tree.args.get(key) is not None:
            select.set(key, tree.args[key].copy())
    names = tuple(f"{_table_name(target, catalog)}.{_ident(w.this)}" for w in written)
    return select, _ALL if returning else 0, names


def _insert(tree: exp.Insert, catalog: Catalog) -> list[tuple[exp.Expr, int, tuple[str, ...]]]:
    target = tree.this.this if isinstance(tree.this, exp.Schema) else tree.this
    table = _table_name(target, catalog)
    listed = [_ident(c) for c in tree.this.expressions] if isinstance(tree.this, exp.Schema) else None
    parts = []
    source = tree.expression
    if source is not None:
        query = _selectable(source.copy())
        if tree.args.get("with_") is not None and isinstance(query, exp.Select):
            query.set("with_", tree.args["with_"].copy())
        columns = listed if listed is not None else list(catalog.columns(table) or ())
        # Unknown target columns are named by position: still checked, never matched to a pattern by accident.
        parts.append((query, 0, tuple(f"{table}.{c}" for c in columns) or ("?",)))
    returning = _returning(tree)
    if returning:
        parts.append((exp.Select(expressions=returning).from_(target.copy(), copy=False), _ALL, ()))
    return parts


def _selectable(query: exp.Expr) -> exp.Expr:
    """VALUES as a SELECT that qualify and scope understand: its i-th projection is the tuple of
    every row's i-th value (what a column of the VALUES derives from)."""
    if not isinstance(query, exp.Values):
        return query
    rows = [row.expressions if isinstance(row, exp.Tuple) else [row] for row in query.expressions]
    width = max((len(r) for r in rows), default=0)
    return exp.Select(expressions=[
        exp.alias_(exp.Tuple(expressions=[r[i] for r in rows if i < len(r)]), f"column{i + 1}")
        for i in range(width)])


def _returning(tree: exp.Expr) -> list[exp.Expr]:
    returning = tree.args.get("returning")
    return [e.copy() for e in returning.expressions] if returning is not None else []


def _ident(node: exp.Expr) -> str:
    ident = node.this if isinstance(node, exp.Column) else node
    if isinstance(ident, exp.Identifier):
        return ident.this if ident.quoted else ident.this.lower()
    return node.name.lower()


def _table_name(table: exp.Table, catalog: Catalog) -> str:
    db = table.args.get("db")
    return f"{_ident(db) if db is not None else catalog.default_schema}.{_ident(table.this)}"
