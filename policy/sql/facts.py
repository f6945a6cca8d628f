"""What the analyser knows about a piece of SQL: immutable facts, decided on by policy/."""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import Enum


class Kind(str, Enum):
    SELECT = "select"
    INSERT = "insert"
    UPDATE = "update"
    DELETE = "delete"
    MERGE = "merge"
    CREATE = "create"
    ALTER = "alter"
    DROP = "drop"
    TRUNCATE = "truncate"
    GRANT = "grant"
    REVOKE = "revoke"
    COPY = "copy"
    SET = "set"
    RESET = "reset"
    TRANSACTION = "transaction"
    CALL = "call"
    DO = "do"
    PREPARE = "prepare"
    EXECUTE = "execute"
    EXPLAIN = "explain"
    VACUUM = "vacuum"
    ANALYZE = "analyze"
    LOCK = "lock"
    LISTEN = "listen"
    NOTIFY = "notify"
    SHOW = "show"
    COMMENT = "comment"
    OTHER = "other"


WRITE_KINDS = frozenset({Kind.INSERT, Kind.UPDATE, Kind.DELETE, Kind.MERGE})
DDL_KINDS = frozenset({Kind.CREATE, Kind.ALTER, Kind.DROP, Kind.COMMENT})


@dataclass(frozen=True)
class FunctionRef:
    """One place the text may call a function, as PostgreSQL's parser wrote it.

    ``how`` says which syntax: ``call`` (``f(x)``, also in FROM, ROWS FROM, LATERAL and CALL),
    ``attribute`` (``(x).f`` or ``t.f``: f(x) when no column f exists), ``operator`` (the function
    behind ``a + b``; ``name`` is the operator and ``nargs`` 1 or 2) or ``cast`` (``x::t``,
    ``t 'literal'``: the type's input function and the cast functions into ``t``; ``name`` is the type).
    ``schema`` is None when the name is unqualified: PostgreSQL then looks along the search_path.

    >>> FunctionRef("call", None, "pg_read_file", 1).label
    'pg_read_file()'
    """

    how: str
    schema: str | None
    name: str
    nargs: int

    @property
    def label(self) -> str:
        qualified = f"{self.schema}.{self.name}" if self.schema else self.name
        if self.how == "operator":
            return f"operator {qualified}"
        if self.how == "cast":
            return f"cast to {qualified}"
        if self.how == "attribute":
            return f"(…).{qualified}"
        return f"{qualified}()"


@dataclass(frozen=True)
class Statement:
    """One statement, as both parsers understood it.

    ``text`` is exactly what the executor will run (one statement, no trailing semicolon).
    ``kinds`` holds the top-level kind plus every kind nested inside it (a DELETE inside a CTE).
    Table names are ``schema.table``, unquoted names folded to lower case.
    """

    text: str
    kind: Kind
    kinds: frozenset[Kind]
    reads: frozenset[str] = frozenset()
    writes: frozenset[str] = frozenset()
    functions: frozenset[str] = frozenset()
    # Names that may call a function by attribute notation (`c.f`); deny lists check them too.
    attributes: frozenset[str] = frozenset()
    # The names in reads/writes that the text wrote without a schema: with the server's catalog they
    # are resolved along the search_path as PostgreSQL does (policy.sql.catalog).
    unqualified: frozenset[str] = frozenset()
    # Every function reference with its syntax, schema and argument count (PostgreSQL's parser), for
    # judging against the server's own catalog (policy.sql.catalog).
    calls: frozenset[FunctionRef] = frozenset()
    # Names the statement defines with WITH (an executor's own checks must not mistake them for tables).
    cte_names: frozenset[str] = frozenset()
    # Kinds of UPDATE/DELETE in this statement that have no WHERE (or only a constant one).
    unfiltered: frozenset[Kind] = frozenset()
    select_into: bool = False
    # An INSERT, UPDATE, DELETE or MERGE with RETURNING: it returns rows like a SELECT.
    returning: bool = False
    locking: bool = False
    explain_analyze: bool = False
    explained: Statement | None = None
    # Why the statement cannot be fully understood; any value here means deny.
    opaque: str | None = None

    @property
    def effective(self) -> Statement:
        """The statement whose effects count. EXPLAIN ANALYZE runs what it explains: that statement.
        A plain EXPLAIN only plans it: a read of the same tables, calling the same functions."""
        if self.explained is None:
            return self
        if self.explain_analyze:
            return self.explained
        inner = self.explained
        return replace(inner, kind=Kind.SELECT, kinds=frozenset({Kind.SELECT}), reads=inner.reads | inner.writes,
                       writes=frozenset(), unfiltered=frozenset(), select_into=False, locking=False)

    @property
    def returns_rows(self) -> bool:
        """Whether running it gives rows back (a query, EXPLAIN, SHOW, a write with RETURNING)."""
        if self.kind in (Kind.SELECT, Kind.EXPLAIN, Kind.SHOW):
            return not self.select_into
        return self.returning

    @property
    def is_read(self) -> bool:
        eff = self.effective
        return (
            eff.opaque is None
            and eff.kinds == {Kind.SELECT}
            and not eff.writes
            and not eff.select_into
            and not eff.locking
        )

    def summary(self) -> dict[str, object]:
        """Facts for the audit log and for `check`."""
        out: dict[str, object] = {"kind": self.kind.value}
        if self.kinds != {self.kind}:
            out["kinds"] = sorted(k.value for k in self.kinds)
        for name in ("reads", "writes", "functions", "unfiltered"):
            value = getattr(self, name)
            if value:
                out[name] = sorted(v.value if isinstance(v, Kind) else v for v in value)
        for name in ("select_into", "locking", "explain_analyze"):
            if getattr(self, name):
                out[name] = True
        if self.explained is not None:
            out["explains"] = self.explained.summary()
        if self.opaque:
            out["opaque"] = self.opaque
        return out


@dataclass(frozen=True)
class Analysis:
    """The facts of one text: its statements, or why the text as a whole cannot be understood."""

    dialect: str
    statements: tuple[Statement, ...]
    # A problem with the whole text (parse error, parsers disagree): deny, with this reason.
    error: str | None = None
    error_rule: str | None = None

    @property
    def is_read(self) -> bool:
        return bool(self.statements) and all(s.is_read for s in self.statements)

    def summary(self) -> dict[str, object]:
        out: dict[str, object] = {"dialect": self.dialect, "statements": [s.summary() for s in self.statements]}
        if self.error:
            out["error"] = self.error
        return out
