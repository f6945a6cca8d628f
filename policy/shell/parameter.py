"""Parameter expansions with an operator: `${x:-default}`, `${f%.py}`, `${#x}`, `${x/a/b}`, `${x^^}` ...

Which of them the guard reads (``parse``; anything else stays a `param-complex` segment, refused by
the rules), and what each yields from a known value (``apply``, bash 5.2's semantics; checked against
bash in tests/test_shell_parameter.py). The accepted forms are the ones whose operands are plain:
letters, digits and ``_ . / , : @ % + = -``, `*` and `?` in patterns, `$NAME` in words, blanks only
inside double quotes. So no quoting, tilde, substitution or arithmetic hides in them, and Bastion
can rebuild the expansion inside double quotes (policy.shell.rebuild) with the same meaning.

Refused, each for a reason bash gives it: `${!x}` (indirection: the value names another variable),
`${x@P}` and the other `@` operators (prompt expansion runs the command substitutions in the value),
`${x:=...}` (assigns), an offset or length that is not a literal decimal integer (`${x:n}` evaluates
`n`'s value as arithmetic, which can run commands: policy.shell.arithmetic), `&` in a replacement
(bash 5.2 puts the matched text there), positional and special parameters, arrays."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PLAIN = r"A-Za-z0-9_./,:@%+=\-"
_WORD = re.compile(rf"(?:[{_PLAIN}]|\$[A-Za-z_][A-Za-z0-9_]*|\$\{{[A-Za-z_][A-Za-z0-9_]*\}})*")
_WORD_QUOTED = re.compile(rf"(?:[{_PLAIN} \t*?]|\$[A-Za-z_][A-Za-z0-9_]*|\$\{{[A-Za-z_][A-Za-z0-9_]*\}})*")
_PATTERN = re.compile(rf"[{_PLAIN}*?]*")
_PATTERN_QUOTED = re.compile(rf"[{_PLAIN} \t*?]*")
_INTEGER = re.compile(r" *(-?(?:0|[1-9][0-9]{0,8})) *")
_VARIABLE = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?")

# Operators after the name, longest first (bash reads `${x:-3}` as a default, `${x: -3}` as an offset).
_WORD_OPS = (":-", ":+", ":?", "-", "+", "?")
_PATTERN_OPS = ("##", "#", "%%", "%", "^^", "^", ",,", ",")
_REPLACE_OPS = ("//", "/#", "/%", "/")
DERIVED = frozenset(_PATTERN_OPS + _REPLACE_OPS + (":",))  # a value made from the variable's value


@dataclass(frozen=True)
class Expansion:
    """``${name OP operands}``; op "len" is ``${#name}``, ":" a substring (operands: offset[, length])."""

    name: str
    op: str
    operands: tuple[str, ...] = ()

    @property
    def derived(self) -> bool:
        """Whether the result is computed from the variable's value (trimmed, replaced, recased, cut)."""
        return self.op in DERIVED

    @property
    def words(self) -> tuple[str, ...]:
        """Operands that are words (a default, an alternative, a replacement), not patterns."""
        if self.op in _WORD_OPS:
            return self.operands
        if self.op in _REPLACE_OPS:
            return self.operands[1:]
        return ()

    @property
    def variables(self) -> tuple[str, ...]:
        """The name, then every variable the words use."""
        return (self.name, *(m.group(1) for word in self.words for m in _VARIABLE.finditer(word)))


@lru_cache(maxsize=1024)
def parse(body: str, quoted: bool) -> Expansion | str:
    """The expansion written as ``${body}`` (``quoted``: inside double quotes), or why it is refused."""
    if body.startswith("!"):
        return "indirection (`${!NAME}`) expands a variable named by another variable's value"
    if body.startswith("#") and len(body) > 1:
        return Expansion(body[1:], "len") if _NAME.fullmatch(body[1:]) else "only `${#NAME}` lengths are accepted"
    name = _NAME.match(body)
    if name is None:
        return "positional and special parameters are not accepted with an operator"
    rest = body[name.end():]
    if rest.startswith("["):
        return "arrays are not accepted"
    if rest.startswith("@"):
        return f"`${{NAME{rest}}}` transforms the value (`@P` would run the substitutions in it)"
    if rest.startswith((":=", "=")):
        return "`${NAME:=WORD}` assigns the variable"
    word_pattern = _WORD_QUOTED if quoted else _WORD
    pattern = _PATTERN_QUOTED if quoted else _PATTERN
    for op in _WORD_OPS:
        if rest.startswith(op):
            word = rest[len(op):]
            if not word_pattern.fullmatch(word):
                return f"the word in `${{{body}}}` holds characters other than letters, digits, ._/,:@%+=- and $NAME"
            return Expansion(name.group(), op, (word,))
    for op in _REPLACE_OPS:
        if rest.startswith(op):
            find, slash, replacement = rest[len(op):].partition("/")
            if not find.strip("*"):
                return "a replacement needs a pattern that cannot match the empty string"
            if not pattern.fullmatch(find) or (slash and not word_pattern.fullmatch(replacement)):
                return (f"the pattern or replacement in `${{{body}}}` holds characters other than letters, digits, "
                        "._/,:@%+=- (and * ? in the pattern)")
            return Expansion(name.group(), op, (find, replacement))
    for op in _PATTERN_OPS:
        if rest.startswith(op):
            find = rest[len(op):]
            if not pattern.fullmatch(find):
                return f"the pattern in `${{{body}}}` holds characters other than letters, digits, ._/,:@%+=- * ?"
            if op[0] in "^," and find and not re.fullmatch(r"[A-Za-z?]", find):
                return "a case pattern must be one letter or ?"
            return Expansion(name.group(), op, (find,))
    if rest.startswith(":"):
        parts = rest[1:].split(":")
        if len(parts) > 2 or not all(_INTEGER.fullmatch(p) for p in parts):
            return "an offset or length that is not a literal integer is arithmetic (it can run commands)"
        if parts[0].lstrip().startswith("-") and not rest[1:].startswith(" "):
            return "write a negative offset after a blank: `${NAME: -3}`"
        return Expansion(name.group(), ":", tuple(p.strip() for p in parts))
    return f"the operator in `${{{body}}}` is not accepted"


def _regex(pattern: str) -> re.Pattern[str]:
    return re.compile("".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern), re.DOTALL)


def apply(expansion: Expansion, value: str, words: tuple[str, ...]) -> str:
    """The result for a variable set to ``value`` (operand words already expanded, in order)."""
    op, operands = expansion.op, expansion.operands
    if op == "len":
        return str(len(value))
    if op in _WORD_OPS:
        empty = not value if op.startswith(":") else False  # a set variable (loop variables always are)
        if op.endswith("+"):
            return "" if empty else words[0]
        return words[0] if empty and op.endswith("-") else value
    if op in ("#", "##", "%", "%%"):
        match = _regex(operands[0]).fullmatch
        cuts = range(len(value) + 1)
        if op in ("#", "##"):
            for k in (cuts if op == "#" else reversed(cuts)):
                if match(value[:k]):
                    return value[k:]
        else:
            for k in (reversed(cuts) if op == "%" else cuts):
                if match(value[k:]):
                    return value[:k]
        return value
    if op in _REPLACE_OPS:
        return _replace(op, _regex(operands[0]), value, words[0] if words else "")
    if op in ("^", "^^", ",", ",,"):
        change = str.upper if op[0] == "^" else str.lower
        fits = _regex(operands[0] or "?").fullmatch
        out = [change(c) if c.isascii() and fits(c) and (op in ("^^", ",,") or k == 0) else c
               for k, c in enumerate(value)]
        return "".join(out)
    offset = int(operands[0])
    start = offset if offset >= 0 else len(value) + offset
    if start < 0 or start > len(value):
        return ""
    if len(operands) == 1:
        return value[start:]
    length = int(operands[1])
    end = start + length if length >= 0 else len(value) + length
    return value[start:end] if end >= start else ""


def _replace(op: str, pattern: re.Pattern[str], value: str, replacement: str) -> str:
    if op == "/#":
        for k in range(len(value), -1, -1):
            if pattern.fullmatch(value[:k]):
                return replacement + value[k:]
        return value
    if op == "/%":
        for k in range(len(value) + 1):
            if pattern.fullmatch(value[k:]):
                return value[:k] + replacement
        return value
    out, at = [], 0
    while at <= len(value):
        end = next((e for e in range(len(value), at, -1) if pattern.fullmatch(value[at:e])), None)
        if end is None:
            if at < len(value):
                out.append(value[at])
            at += 1
            continue
        out.append(replacement)
        at = end
        if op == "/":
            out.append(value[at:])
            break
    return "".join(out)


def case_changes(expansion: Expansion) -> bool:
    return expansion.op in ("^", "^^", ",", ",,")
