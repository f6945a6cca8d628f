"""PostgreSQL's own parser (pglast, libpg_query): the second opinion on PostgreSQL text.

It splits the text exactly where the server would, says what kind each statement is, and lists
every function called anywhere, with names decoded as the server decodes them.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from collections.abc import Callable
from typing import Any

from pglast import parser as pg

from bastion.policy.cache import ClearingCache
from bastion.policy.sql.facts import FunctionRef, Kind


@dataclass(frozen=True)
class PgStatement:
    text: str
    kind: Kind
    functions: frozenset[str]
    # Last names of qualified column references and (expr).field selections: `c.f` calls f(c) when
    # f is a function of c's row type (attribute notation), so deny lists check these too.
    attributes: frozenset[str]
    explain_analyze: bool
    explained_kind: Kind | None
    # Every function reference, in every syntax, with schema and argument count (see FunctionRef).
    calls: frozenset[FunctionRef] = frozenset()
    # The sequences nextval/setval change: the literal naming each, or None when it is not a literal.
    sequences: frozenset[str | None] = frozenset()


class PgParseError(ValueError):
    pass


_EXACT: dict[str, Kind] = {
    "SelectStmt": Kind.SELECT,
    "InsertStmt": Kind.INSERT,
    "UpdateStmt": Kind.UPDATE,
    "DeleteStmt": Kind.DELETE,
    "MergeStmt": Kind.MERGE,
    "ViewStmt": Kind.CREATE,
    "IndexStmt": Kind.CREATE,
    "DefineStmt": Kind.CREATE,
    "RuleStmt": Kind.CREATE,
    "CompositeTypeStmt": Kind.CREATE,
    "CreatedbStmt": Kind.CREATE,
    "RenameStmt": Kind.ALTER,
    "TruncateStmt": Kind.TRUNCATE,
    "CopyStmt": Kind.COPY,
    "TransactionStmt": Kind.TRANSACTION,
    "CallStmt": Kind.CALL,
    "DoStmt": Kind.DO,
    "PrepareStmt": Kind.PREPARE,
    "DeallocateStmt": Kind.PREPARE,
    "ExecuteStmt": Kind.EXECUTE,
    "ExplainStmt": Kind.EXPLAIN,
    "LockStmt": Kind.LOCK,
    "ListenStmt": Kind.LISTEN,
    "UnlistenStmt": Kind.LISTEN,
    "NotifyStmt": Kind.NOTIFY,
    "VariableShowStmt": Kind.SHOW,
    "CommentStmt": Kind.COMMENT,
}


def _kind(node_type: str, body: dict[str, Any]) -> Kind:
    if node_type in _EXACT:
        return _EXACT[node_type]
    if node_type in ("GrantStmt", "GrantRoleStmt"):
        return Kind.GRANT if body.get("is_grant") else Kind.REVOKE
    if node_type == "VariableSetStmt":
        return Kind.RESET if str(body.get("kind", "")).startswith("VAR_RESET") else Kind.SET
    if node_type == "VacuumStmt":
        return Kind.VACUUM if body.get("is_vacuumcmd") else Kind.ANALYZE
    if node_type.startswith("Create"):
        return Kind.CREATE
    if node_type.startswith("Alter"):
        return Kind.ALTER
    if node_type.startswith("Drop"):
        return Kind.DROP
    return Kind.OTHER


def _strings(items: Any) -> list[str] | None:
    """The names of a list of String nodes as the server decoded them (quoted case kept); None when
    an item is something else (``t.*``)."""
    if not isinstance(items, list):
        return None
    out = []
    for item in items:
        if not (isinstance(item, dict) and "String" in item):
            return None
        out.append(item["String"].get("sval", ""))
    return out


def _ref(how: str, names: list[str] | None, nargs: int, out: set[FunctionRef]) -> None:
    if names:
        key = (how, names[-2] if len(names) >= 2 else None, names[-1], nargs)
        ref = _REFS.get(key)
        if ref is None:  # texts name few distinct references: made once, shared (it is immutable)
            ref = FunctionRef(*key)
            _REFS.put(key, ref)
        out.add(ref)


_REFS: ClearingCache[tuple[str, str | None, str, int], FunctionRef] = ClearingCache(4096)


# BETWEEN is spelt as a keyword in the tree; PostgreSQL runs it with >= and <=.
_BETWEEN_OPERATORS = (">=", "<=")


SEQUENCE_WRITERS = ("nextval", "setval")


def _literal(node: Any) -> str | None:
    """The text of a string literal, also cast (`'s'::regclass`); None for anything else."""
    if isinstance(node, dict) and "TypeCast" in node:
        node = node["TypeCast"].get("arg")
    if isinstance(node, dict) and "A_Const" in node:
        value = node["A_Const"].get("sval")
        if isinstance(value, dict) and "sval" in value:
            return str(value["sval"])
    return None


def _sequences(node: Any, out: set[str | None]) -> None:
    """The first argument of every nextval/setval call: the sequence it changes."""
    if isinstance(node, list):
        for value in node:
            _sequences(value, out)
        return
    if not isinstance(node, dict):
        return
    call = node.get("FuncCall")
    if isinstance(call, dict):
        names = _strings(call.get("funcname")) or []
        if names and names[-1] in SEQUENCE_WRITERS:
            args = call.get("args") or []
            out.add(_literal(args[0]) if args else None)
    for value in node.values():
        _sequences(value, out)


def _node_refs(key: str, body: dict[str, Any], out: set[FunctionRef]) -> None:
    """The function reference a node ``{key: body}`` makes itself (not those nested in it)."""
    if key == "FuncCall":
        nargs = len(body.get("args") or [])
        if body.get("agg_within_group"):  # percentile_cont(0.5) WITHIN GROUP (ORDER BY x): 2 arguments
            nargs += len(body.get("agg_order") or [])
        _ref("call", _strings(body.get("funcname")), nargs, out)
    elif key == "ColumnRef":
        fields = body.get("fields") or []
        if len(fields) >= 2 and isinstance(fields[-1], dict) and "String" in fields[-1]:
            _ref("attribute", [fields[-1]["String"].get("sval", "")], 1, out)
    elif key == "A_Indirection":
        for item in body.get("indirection") or []:
            if isinstance(item, dict) and "String" in item:
                _ref("attribute", [item["String"].get("sval", "")], 1, out)
    elif key == "A_Expr":
        names = _strings(body.get("name"))
        nargs = 2 if body.get("lexpr") is not None else 1
        if str(body.get("kind", "")).startswith("AEXPR_BETWEEN") or str(body.get("kind", "")).startswith("AEXPR_NOT_BETWEEN"):
            for op in _BETWEEN_OPERATORS:
                _ref("operator", [op], 2, out)
        else:
            _ref("operator", names, nargs, out)
    elif key == "SortBy" and body.get("useOp"):
        _ref("operator", _strings(body.get("useOp")), 2, out)
    elif key == "SubLink" and body.get("operName"):
        _ref("operator", _strings(body.get("operName")), 2, out)
    elif key == "TypeCast":
        type_name = body.get("typeName") or {}
        _ref("cast", _strings(type_name.get("names")), 1, out)


_REF_KEYS = frozenset({"FuncCall", "ColumnRef", "A_Indirection", "A_Expr", "SortBy", "SubLink", "TypeCast"})


def _calls(node: Any, out: set[FunctionRef]) -> None:
    """Every function reference under ``node``: calls (also in FROM, ROWS FROM, LATERAL, CALL),
    attribute notation, operators (A_Expr, ORDER BY USING, ANY/ALL over a subquery) and casts."""
    if isinstance(node, list):
        for value in node:
            _calls(value, out)
        return
    if not isinstance(node, dict):
        return
    for key, body in node.items():
        if not isinstance(body, dict):
            _calls(body, out)
            continue
        if key in _REF_KEYS:
            _node_refs(key, body, out)
        _calls(body, out)


def _collector() -> tuple[Callable[[dict[str, Any]], dict[str, Any]], set[FunctionRef]]:
    """A json.loads object_hook that sees every object of the document once, as it is decoded, and
    keeps the references it makes (what _calls finds by walking the loaded tree, without the walk);
    a closure, not an object's __call__: it runs for every JSON object."""
    refs: set[FunctionRef] = set()
    keys = _REF_KEYS

    def hook(node: dict[str, Any]) -> dict[str, Any]:
        for key in node.keys() & keys if len(node) > 1 else node:
            if key in keys:
                body = node[key]
                if isinstance(body, dict):
                    _node_refs(key, body, refs)
        return node

    return hook, refs


def _option_on(option: dict[str, Any], name: str) -> bool:
    """An EXPLAIN option as the server reads it: ``ANALYZE``, ``ANALYZE true|on|1`` are on."""
    if option.get("defname") != name:
        return False
    arg = option.get("arg")
    if arg is None:
        return True
    value = arg.get("String", {}).get("sval") if "String" in arg else arg.get("Integer", {}).get("ival", 0)
    if "Boolean" in arg:
        value = arg["Boolean"].get("boolval", False)
    return str(value).lower() not in ("false", "off", "0", "no")


def uses_unicode_escapes(text: str) -> bool:
    """True when an identifier is written U&"..." (decoded by the server, not by sqlglot)."""
    if "&" not in text:
        return False
    try:
        return any(token.name == "UIDENT" for token in pg.scan(text))
    except Exception:  # a scan failure surfaces as a parse failure right after
        return False


def relations(node: Any, out: set[str]) -> None:
    """Every relation a tree reads (RangeVar), as schema.name; unqualified ones as pg_catalog's: a view
    definition printed with search_path = pg_catalog qualifies everything else."""
    if isinstance(node, list):
        for value in node:
            relations(value, out)
        return
    if not isinstance(node, dict):
        return
    ref = node.get("RangeVar")
    if isinstance(ref, dict) and ref.get("relname"):
        out.add(f"{ref.get('schemaname') or 'pg_catalog'}.{ref['relname']}")
    for value in node.values():
        relations(value, out)


@functools.lru_cache(maxsize=4096)  # the same definitions come back at every catalog read
def view_facts(definition: str) -> tuple[frozenset[FunctionRef], frozenset[str]] | None:
    """The function references and relations of a view's definition; None when it cannot be parsed."""
    try:
        tree = json.loads(pg.parse_sql_json(definition))
    except Exception:  # judged as unresolvable: reading the view is denied
        return None
    calls: set[FunctionRef] = set()
    reads: set[str] = set()
    for item in tree.get("stmts", []):
        _calls(item["stmt"], calls)
        relations(item["stmt"], reads)
    return frozenset(calls), frozenset(reads)


def parse(text: str) -> list[PgStatement]:
    hook, refs = _collector()
    try:
        tree = json.loads(pg.parse_sql_json(text), object_hook=hook)
    except Exception as error:  # pglast raises ParseError; anything else is a failure too
        raise PgParseError(str(getattr(error, "args", [error])[0])) from error
    encoded = text.encode()  # libpg_query reports byte offsets
    statements = []
    stmts = tree.get("stmts", [])
    for item in stmts:
        (node_type, body), = item["stmt"].items()
        start = item.get("stmt_location", 0)
        length = item.get("stmt_len", 0) or len(encoded) - start
        piece = encoded[start : start + length].decode().strip()
        explained_kind = None
        analyze = False
        if node_type == "ExplainStmt":
            (inner_type, inner_body), = body["query"].items()
            explained_kind = _kind(inner_type, inner_body)
            analyze = any(_option_on(opt.get("DefElem", {}), "analyze") for opt in body.get("options", []))
        # One statement: every reference in the document is its own (the objects around its body,
        # the document, the statement and its type's wrapper, are no references).
        calls = refs if len(stmts) == 1 else set()
        if len(stmts) != 1:
            _calls(body, calls)
        sequences: set[str | None] = set()
        if any(ref.name in SEQUENCE_WRITERS for ref in calls):
            _sequences(body, sequences)
        # Called functions and attribute names, as deny lists read them: the references' names, lower case.
        functions = frozenset(ref.name.lower() for ref in calls if ref.how == "call")
        attributes = frozenset(ref.name.lower() for ref in calls if ref.how == "attribute")
        statements.append(PgStatement(piece, _kind(node_type, body), functions, attributes,
                                      analyze, explained_kind, frozenset(calls), frozenset(sequences)))
    return statements
