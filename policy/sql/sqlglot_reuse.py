"""sqlglot's tokenizer and parser, made once per dialect and thread instead of on every call.

``sqlglot.parse(text, read=d)`` builds a Dialect, a Tokenizer (its whole keyword and quote set-up)
and a Parser for every text; on the guard's short texts that set-up cost a fifth of the parse.
Both reset every field of their state at the start of each call (sqlglot's Parser.reset and
TokenizerCore.reset), so one of each serves every text as a fresh one would; they are not safe to
share between threads while parsing, hence one per thread. Each keeps the last text it read until
the next, which costs no more than that text.
"""

from __future__ import annotations

import threading

import sqlglot
from sqlglot import exp
from sqlglot.parser import Parser
from sqlglot.tokens import Token, Tokenizer


class _PerThread(threading.local):
    def __init__(self) -> None:
        self.tools: dict[str, tuple[Tokenizer, Parser]] = {}


_local = _PerThread()


def _tools(dialect: str) -> tuple[Tokenizer, Parser]:
    found = _local.tools.get(dialect)
    if found is None:
        made = sqlglot.Dialect.get_or_raise(dialect)
        found = _local.tools[dialect] = (made.tokenizer(), made.parser())
    return found


def tokenize(text: str, dialect: str) -> list[Token]:
    """What ``sqlglot.Dialect.get_or_raise(dialect).tokenize(text)`` returns."""
    return _tools(dialect)[0].tokenize(text)


def parse(text: str, dialect: str) -> list[exp.Expr | None]:
    """What ``sqlglot.parse(text, read=dialect)`` returns."""
    tokenizer, parser = _tools(dialect)
    return parser.parse(tokenizer.tokenize(text), text)
