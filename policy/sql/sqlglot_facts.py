"""Facts of one statement from sqlglot's tree. Reads the tree, never changes it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlglot import exp

from bastion.policy.sql.facts import Kind, Statement
from bastion.policy.sql.postgres_parser import PgStatement

# Top-level node class → kind. Order matters only for subclasses (none overlap here).
_KIND_OF_NODE: tuple[tuple[type[exp.Expr], Kind], ...] = (
    (exp.Select, Kind.SELECT),
    (exp.SetOperation, Kind.SELECT),
    (exp.Subquery, Kind.SELECT),
    (exp.Values, Kind.SELECT),
    (exp.Insert, Kind.INSERT),
    (exp.Update, Kind.UPDATE),
    (exp.Delete, Kind.DELETE),
    (exp.Merge, Kind.MERGE),
    (exp.Create, Kind.CREATE),
    (exp.Alter, Kind.ALTER),
    (exp.Drop, Kind.DROP),
    (exp.TruncateTable, Kind.TRUNCATE),
    (exp.Grant, Kind.GRANT),
    (exp.Revoke, Kind.REVOKE),
    (exp.Copy, Kind.COPY),
    (exp.Set, Kind.SET),
    (exp.Transaction, Kind.TRANSACTION),
    (exp.Commit, Kind.TRANSACTION),
    (exp.Rollback, Kind.TRANSACTION),
    (exp.Analyze, Kind.ANALYZE),
    (exp.Comment, Kind.COMMENT),
)

# First keyword of a statement sqlglot keeps only as an opaque Command → kind.
KIND_OF_KEYWORD: dict[str, Kind] = {
    "SET": Kind.SET,
    "RESET": Kind.RESET,
    "DO": Kind.DO,
    "CALL": Kind.CALL,
    "PREPARE": Kind.PREPARE,
    "DEALLOCATE": Kind.PREPARE,
    "EXECUTE": Kind.EXECUTE,
    "EXPLAIN": Kind.EXPLAIN,
    "VACUUM": Kind.VACUUM,
    "ANALYZE": Kind.ANALYZE,
    "ANALYSE": Kind.ANALYZE,
    "LOCK": Kind.LOCK,
    "LISTEN": Kind.LISTEN,
    "UNLISTEN": Kind.LISTEN,
    "NOTIFY": Kind.NOTIFY,
    "SHOW": Kind.SHOW,
    "COPY": Kind.COPY,
    "GRANT": Kind.GRANT,
    "REVOKE": Kind.REVOKE,
    "BEGIN": Kind.TRANSACTION,
    "START": Kind.TRANSACTION,
    "COMMIT": Kind.TRANSACTION,
    "END": Kind.TRANSACTION,
    "ROLLBACK": Kind.TRANSACTION,
    "SAVEPOINT": Kind.TRANSACTION,
    "RELEASE": Kind.TRANSACTION,
    "ABORT": Kind.TRANSACTION,
    "CREATE": Kind.CREATE,
    "ALTER": Kind.ALTER,
    "DROP": Kind.DROP,
    "TRUNCATE": Kind.TRUNCATE,
    "COMMENT": Kind.COMMENT,
}

# Func subclasses that are operators (AND, OR, ||), not calls by name.
_OPERATORS = (exp.Connector,)
_DML = (exp.Insert, exp.Update, exp.Delete, exp.Merge)
_DML_KIND: dict[type[exp.Expr], Kind] = {exp.Insert: Kind.INSERT, exp.Update: Kind.UPDATE, exp.Delete: Kind.DELETE, exp.Merge: Kind.MERGE}


def kind_of(tree: exp.Expr) -> Kind:
    if isinstance(tree, exp.Command):
        return KIND_OF_KEYWORD.get(str(tree.this).upper(), Kind.OTHER)
    for cls, kind in _KIND_OF_NODE:
        if isinstance(tree, cls):
            return kind
    return Kind.OTHER


def ident(node: exp.Expr | str | None) -> str:
    """An identifier as the database sees it: unquoted names fold to lower case."""
    if node is None:
        return ""
    if isinstance(node, exp.Identifier):
        return node.this if node.quoted else node.this.lower()
    if isinstance(node, exp.Expr):
        return node.name.lower()
    return str(node).lower()


def function_name(node: exp.Func) -> str:
    if isinstance(node, exp.Anonymous):
        return ident(node.this) if isinstance(node.this, exp.Identifier) else str(node.this).lower()
    return node.sql_name().lower()


def with_second_opinion(pg: PgStatement | None, **fields: Any) -> Statement:
    """A Statement of ``fields`` with what PostgreSQL's parser read of the same text (``pg``): the
    union of both parsers' functions, so neither can hide a call from the other; attribute names,
    function references and EXPLAIN's options as the server reads them (ANALYZE false, off, 0).
    Built once, rather than built and then copied with these fields replaced."""
    if pg is not None:
        fields.update(functions=fields.get("functions", frozenset()) | pg.functions, attributes=pg.attributes,
                      calls=pg.calls, explain_analyze=pg.explain_analyze)
    return Statement(**fields)


def statement_facts(tree: exp.Expr, text: str, default_schema: str, pg: PgStatement | None = None) -> Statement:
    """The facts sqlglot's ``tree`` gives, with PostgreSQL's parser's (``pg``) when there is one."""
    kind = kind_of(tree)
    nodes = _by_type(tree)  # one walk; every fact below reads these lists
    if isinstance(tree, exp.Command) or nodes.commands:
        keyword = str(tree.this).upper() if isinstance(tree, exp.Command) else "a nested statement"
        return _opaque(text, kind, f"the SQL parser understands `{keyword}` only as an opaque command", pg)
    if kind is Kind.OTHER:  # parsed, but as something that is not a statement Bastion knows
        return _opaque(text, kind, "it is not a statement kind Bastion knows", pg)

    targets = _write_targets(tree, nodes)
    reads: set[str] = set()
    writes: set[str] = set()
    unqualified: set[str] = set()
    for table in nodes.tables:
        # A write target is always a table; anything else may name a CTE in scope (none without a WITH).
        if isinstance(table.this, exp.Func) or (id(table) not in targets and nodes.withs and _is_cte_reference(table)):
            continue
        name = qualified(table, default_schema)
        (writes if id(table) in targets else reads).add(name)
        if not table.args.get("db"):
            unqualified.add(name)

    kinds: set[Kind] = {kind}
    unfiltered: set[Kind] = set()
    for node in nodes.dml:
        node_kind = _DML_KIND[type(node)]
        kinds.add(node_kind)
        if isinstance(node, (exp.Update, exp.Delete)) and not _filters_rows(node.args.get("where")):
            unfiltered.add(node_kind)

    select_into = any(s.args.get("into") for s in nodes.selects)
    if select_into:  # SELECT INTO creates a table: it needs what CREATE TABLE AS needs
        kinds.add(Kind.CREATE)
    return with_second_opinion(
        pg,
        text=text,
        kind=kind,
        kinds=frozenset(kinds),
        reads=frozenset(reads),
        writes=frozenset(writes),
        functions=frozenset(function_name(f) for f in nodes.functions),
        cte_names=frozenset(_cte_names(nodes.ctes)),
        unqualified=frozenset(unqualified),
        unfiltered=frozenset(unfiltered),
        select_into=select_into,
        returning=isinstance(tree, _DML) and tree.args.get("returning") is not None,
        locking=nodes.locking,
    )


class _Nodes:
    __slots__ = ("commands", "tables", "dml", "selects", "functions", "ctes", "withs", "locking")

    def __init__(self) -> None:
        self.commands: list[exp.Expr] = []
        self.tables: list[exp.Table] = []
        self.dml: list[exp.Expr] = []
        self.selects: list[exp.Select] = []
        self.functions: list[exp.Func] = []
        self.ctes: list[exp.CTE] = []
        self.withs: list[exp.With] = []
        self.locking = False


def _by_type(tree: exp.Expr) -> _Nodes:
    out = _Nodes()
    lists_of = _LISTS.get
    for node in tree.walk():
        kind = type(node)
        lists = lists_of(kind)
        if lists is None:
            lists = _LISTS[kind] = _lists_for(kind)
        for name in lists:
            getattr(out, name).append(node)
        # sqlglot hangs FOR UPDATE on whichever node it closes: a SELECT, a parenthesised one, a UNION.
        if node.args.get("locks"):
            out.locking = True
    return out


# Which of _Nodes' lists a node class goes to, worked out once per class (isinstance per node is slow).
_LISTS: dict[type, tuple[str, ...]] = {}


def _lists_for(kind: type) -> tuple[str, ...]:
    names = []
    for base, name in ((exp.Table, "tables"), (_DML, "dml"), (exp.Select, "selects"), (exp.CTE, "ctes"),
                       (exp.With, "withs"), (exp.Command, "commands")):
        if issubclass(kind, base):
            names.append(name)
            break
    if issubclass(kind, exp.Func) and not issubclass(kind, _OPERATORS):
        names.append("functions")
    return tuple(names)


def _opaque(text: str, kind: Kind, why: str, pg: PgStatement | None) -> Statement:
    return with_second_opinion(pg, text=text, kind=kind, kinds=frozenset({kind}), opaque=why)


def qualified(table: exp.Table, default_schema: str) -> str:
    schema = ident(table.args.get("db")) or default_schema
    name = ident(table.this)
    # PostgreSQL searches pg_catalog before the search path, and every relation there is named
    # pg_*: an unqualified pg_* name is the catalog's.
    if not table.args.get("db") and name.startswith("pg_"):
        schema = "pg_catalog"
    return f"{schema}.{name}"


def _filters_rows(where: exp.Expr | None) -> bool:
    """Whether a WHERE can leave rows out. ``WHERE true``, ``WHERE 1=1``, ``WHERE id = id`` and
    ``WHERE true OR id = 1`` cannot: a condition restricts only if it tests a column, and an OR
    restricts only if every branch does."""
    return where is not None and _restricts(where.this)


def _restricts(cond: exp.Expr) -> bool:
    while isinstance(cond, exp.Paren):
        cond = cond.this
    if isinstance(cond, exp.And):
        return _restricts(cond.left) or _restricts(cond.right)
    if isinstance(cond, exp.Or):
        return _restricts(cond.left) and _restricts(cond.right)
    if isinstance(cond, (exp.EQ, exp.Is, exp.GTE, exp.LTE)) and cond.left == cond.right:
        return False  # x = x holds for every row where x is not null
    return cond.find(exp.Column) is not None


def _cte_names(ctes: Sequence[exp.Expr]) -> set[str]:
    return {ident(cte.args["alias"].this) for cte in ctes if cte.args.get("alias")}


def _is_cte_reference(table: exp.Table) -> bool:
    """Whether an unqualified name refers to a CTE in scope, with PostgreSQL's scoping: the query
    body sees all its CTEs; a CTE's own body sees only the CTEs before it (all of them, itself
    included, under WITH RECURSIVE)."""
    if table.args.get("db"):
        return False
    name = ident(table.this)
    child: exp.Expr = table
    node: exp.Expr | None = table.parent
    came_from_cte: exp.Expr | None = None
    while node is not None:
        if isinstance(node, exp.With):
            came_from_cte = child
        with_ = node.args.get("with_") or node.args.get("with")
        if isinstance(with_, exp.With):
            ctes = list(with_.expressions)
            if child is with_ and came_from_cte is not None and not with_.args.get("recursive"):
                ctes = ctes[: ctes.index(came_from_cte)]
            if name in _cte_names(ctes):
                return True
        child, node = node, node.parent
    return False


def _write_targets(tree: exp.Expr, nodes: _Nodes) -> set[int]:
    """ids of the Table nodes a statement writes to (DML targets, DDL objects, SELECT INTO)."""
    targets: set[int] = set()

    def mark(node: exp.Expr | None) -> None:
        if node is None:
            return
        if isinstance(node, exp.Table):
            targets.add(id(node))
        elif isinstance(node, exp.Schema):
            mark(node.this)

    for node in nodes.dml:
        mark(node.this)
    for select in nodes.selects:
        into = select.args.get("into")
        if into is not None:
            mark(into.this)
    if isinstance(tree, (exp.Create, exp.Alter, exp.Comment)):
        mark(tree.this)
    if isinstance(tree, exp.Drop):
        mark(tree.this)
        for table in tree.args.get("tables") or ():
            mark(table)
    if isinstance(tree, (exp.Grant, exp.Revoke)):  # the object whose privileges change
        for table in tree.find_all(exp.Table):
            targets.add(id(table))
    if isinstance(tree, exp.TruncateTable):
        for table in tree.expressions:
            mark(table)
    if isinstance(tree, exp.Copy) and tree.args.get("kind"):  # COPY ... FROM writes the table
        mark(tree.this)
    return targets
