"""Text → Analysis: split, parse with sqlglot, and on PostgreSQL check against PostgreSQL's parser.

Every way the text can fail to be fully understood ends in an Analysis with ``error`` set, or a
Statement with ``opaque`` set; decide() denies both.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from functools import lru_cache

from sqlglot import exp
from sqlglot.errors import SqlglotError
from sqlglot.tokens import TokenType

from bastion.policy.sql import postgres_parser, sqlglot_reuse
from bastion.policy.sql.facts import Analysis, Kind, Statement
from bastion.policy.sql.postgres_parser import PgStatement
from bastion.policy.sql.sqlglot_facts import statement_facts, with_second_opinion

# sqlglot logs a warning for every Command fallback; Bastion reports those as facts instead.
logging.getLogger("sqlglot").setLevel(logging.ERROR)

DIALECTS = {"postgres": "public", "sqlite": "main"}  # dialect → default schema


def analyse(text: str, dialect: str, default_schema: str | None = None) -> Analysis:
    """Facts of ``text`` in ``dialect``; unqualified tables belong to ``default_schema`` (the
    connection's search path). Cached by (dialect, default schema, text)."""
    if dialect not in DIALECTS:
        raise ValueError(f"unknown SQL dialect {dialect!r}; expected one of {sorted(DIALECTS)}")
    schema = default_schema or DIALECTS[dialect]
    if len(text) > _CACHE_TEXT_LIMIT:  # big texts are rare and would make the cache big
        return _analyse_cached.__wrapped__(dialect, schema, text)
    return _analyse_cached(dialect, schema, text)


_CACHE_TEXT_LIMIT = 16 * 1024


@lru_cache(maxsize=4096)
def _analyse_cached(dialect: str, default_schema: str, text: str) -> Analysis:
    try:
        if dialect == "postgres":
            return _analyse_postgres(text, default_schema)
        return _analyse_generic(text, dialect, default_schema)
    except RecursionError:
        return _fail(dialect, "guard:parse-error", "the SQL is nested too deeply to analyse")


def _fail(dialect: str, rule: str, reason: str) -> Analysis:
    return Analysis(dialect=dialect, statements=(), error=reason, error_rule=rule)


def _parse_one(piece: str, dialect: str) -> exp.Expr:
    trees = [t for t in sqlglot_reuse.parse(piece, dialect) if t is not None]
    if len(trees) != 1:
        raise SqlglotError(f"expected one statement, found {len(trees)}")
    return trees[0]


def _analyse_postgres(text: str, default_schema: str) -> Analysis:
    if postgres_parser.uses_unicode_escapes(text):
        return _fail("postgres", "guard:unicode-escape",
                     'identifiers written with Unicode escapes (U&"...") are not accepted; write the plain name')
    try:
        pg_statements = postgres_parser.parse(text)
    except postgres_parser.PgParseError as error:
        return _fail("postgres", "guard:parse-error", f"PostgreSQL cannot parse this SQL: {error}")
    statements = []
    for pg_stmt in pg_statements:
        try:
            statement = _facts(pg_stmt.text, "postgres", default_schema, pg_stmt)
        except SqlglotError as error:
            return _fail("postgres", "guard:parsers-disagree",
                         f"parsers disagree: PostgreSQL reads a {pg_stmt.kind.value} statement that sqlglot cannot parse ({_short(error)})")
        if statement.kind != pg_stmt.kind:
            return _fail("postgres", "guard:parsers-disagree",
                         f"parsers disagree on `{_clip(pg_stmt.text)}`: PostgreSQL reads {pg_stmt.kind.value}, sqlglot reads {statement.kind.value}")
        if statement.kind == Kind.EXPLAIN and statement.explained is not None and pg_stmt.explained_kind != statement.explained.kind:
            return _fail("postgres", "guard:parsers-disagree",
                         f"parsers disagree on what `{_clip(pg_stmt.text)}` explains")
        statements.append(_with_sequences(statement, pg_stmt.sequences, default_schema))
    return Analysis(dialect="postgres", statements=tuple(statements))


def _with_sequences(statement: Statement, sequences: frozenset[str | None], default_schema: str) -> Statement:
    """nextval('s') and setval('s', n) change sequence s: it is a write target, judged by the rule's
    write_tables like a table. A sequence not named by a literal cannot be judged: opaque."""
    if not sequences:
        return statement
    if None in sequences:
        return replace(statement, opaque="nextval/setval name their sequence with an expression, so Bastion cannot "
                                         "tell which sequence they change; name it with a string literal")
    writes, unqualified = set(statement.writes), set(statement.unqualified)
    for literal in sequences:
        name = _relation_name(literal or "", default_schema)
        if name is None:
            return replace(statement, opaque=f"`{literal}` is not a sequence name Bastion can read")
        writes.add(name[0])
        if not name[1]:
            unqualified.add(name[0])
    return replace(statement, writes=frozenset(writes), unqualified=frozenset(unqualified))


def _relation_name(text: str, default_schema: str) -> tuple[str, bool] | None:
    """A regclass literal as PostgreSQL reads it: `s`, `sch.s`, `"Mixed"` → (schema.name, qualified)."""
    parts: list[str] = []
    rest = text.strip()
    while rest:
        if rest.startswith('"'):
            end = rest.find('"', 1)
            while end != -1 and rest[end + 1 : end + 2] == '"':
                end = rest.find('"', end + 2)
            if end == -1:
                return None
            parts.append(rest[1:end].replace('""', '"'))
            rest = rest[end + 1 :]
        else:
            end = rest.find(".")
            word = rest if end == -1 else rest[:end]
            if not word or not all(c.isalnum() or c in "_$" for c in word):
                return None
            parts.append(word.lower())
            rest = "" if end == -1 else rest[end:]
        if rest.startswith("."):
            rest = rest[1:]
            if not rest:
                return None
        elif rest:
            return None
    if len(parts) == 1:
        schema = "pg_catalog" if parts[0].startswith("pg_") else default_schema
        return f"{schema}.{parts[0]}", False
    if len(parts) == 2:
        return f"{parts[0]}.{parts[1]}", True
    return None


def _analyse_generic(text: str, dialect: str, default_schema: str) -> Analysis:
    try:
        pieces = split(text, dialect)
        statements = tuple(_facts(piece, dialect, default_schema) for piece in pieces)
    except SqlglotError as error:
        return _fail(dialect, "guard:parse-error", f"cannot parse this SQL: {_short(error)}")
    return Analysis(dialect=dialect, statements=statements)


def split(text: str, dialect: str) -> list[str]:
    """Statement texts, split at the semicolons sqlglot's tokenizer sees (not inside strings)."""
    tokens = sqlglot_reuse.tokenize(text, dialect)
    pieces, start = [], None
    end = 0
    for token in tokens:
        if token.token_type == TokenType.SEMICOLON:
            if start is not None:
                pieces.append(text[start : end + 1].strip())
            start = None
            continue
        if start is None:
            start = token.start
        end = token.end
    if start is not None:
        pieces.append(text[start : end + 1].strip())
    return pieces


def _facts(piece: str, dialect: str, default_schema: str, pg: PgStatement | None = None) -> Statement:
    """The facts of one statement; ``pg``: what PostgreSQL's parser read of it (with_second_opinion)."""
    tree = _parse_one(piece, dialect)
    if isinstance(tree, exp.Command) and str(tree.this).upper() == "EXPLAIN":
        return _explain_facts(piece, dialect, default_schema, pg)
    statement = statement_facts(tree, piece, default_schema, pg)
    if dialect == "sqlite":
        # sqlglot renames functions it knows (sqlite_version → current_version) and keeps quoted
        # names' case; SQLite matches names case-insensitively. Add every name called as written.
        statement = replace(statement, functions=frozenset(f.lower() for f in statement.functions) | _called_names(piece, dialect))
    return statement


def _called_names(piece: str, dialect: str) -> frozenset[str]:
    tokens = sqlglot_reuse.tokenize(piece, dialect)
    return frozenset(t.text.lower() for t, n in zip(tokens, tokens[1:])
                     if n.token_type == TokenType.L_PAREN and t.token_type not in _NOT_NAMES)


_NOT_NAMES = {TokenType.L_PAREN, TokenType.R_PAREN, TokenType.COMMA, TokenType.STRING, TokenType.NUMBER,
              TokenType.SELECT, TokenType.WITH, TokenType.VALUES, TokenType.IN, TokenType.FROM, TokenType.WHERE,
              TokenType.AND, TokenType.OR, TokenType.NOT, TokenType.EXISTS, TokenType.ALIAS, TokenType.ON,
              TokenType.JOIN, TokenType.USING, TokenType.INTO, TokenType.TABLE, TokenType.EQ, TokenType.PLUS,
              TokenType.DASH, TokenType.STAR, TokenType.SLASH}


_EXPLAIN_WORDS = {"ANALYZE", "ANALYSE", "VERBOSE", "QUERY", "PLAN"}


def _explain_facts(piece: str, dialect: str, default_schema: str, pg: PgStatement | None) -> Statement:
    """EXPLAIN [ (options) | ANALYZE VERBOSE | QUERY PLAN ] inner: facts of inner, wrapped."""
    # The tokenizer keeps everything after the EXPLAIN keyword as one string: tokenize the rest.
    rest = piece[sqlglot_reuse.tokenize(piece, dialect)[0].end + 1 :]
    tokens = sqlglot_reuse.tokenize(rest, dialect)
    i, analyze = 0, False
    if i < len(tokens) and tokens[i].token_type == TokenType.L_PAREN:
        depth = 0
        while i < len(tokens):
            kind = tokens[i].token_type
            depth += (kind == TokenType.L_PAREN) - (kind == TokenType.R_PAREN)
            analyze |= tokens[i].text.upper() in ("ANALYZE", "ANALYSE")
            i += 1
            if depth == 0:
                break
    while i < len(tokens) and tokens[i].text.upper() in _EXPLAIN_WORDS:
        analyze |= tokens[i].text.upper() in ("ANALYZE", "ANALYSE")
        i += 1
    if i >= len(tokens):
        raise SqlglotError("EXPLAIN without a statement")
    inner = _facts(rest[tokens[i].start :], dialect, default_schema)
    return with_second_opinion(pg, text=piece, kind=Kind.EXPLAIN, kinds=frozenset({Kind.EXPLAIN}),
                               explain_analyze=analyze, explained=inner, opaque=inner.opaque)


def _short(error: Exception) -> str:
    return str(error).splitlines()[0][:200]


def _clip(text: str, width: int = 60) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"
