"""awk programs read token by token, to tell the ones that only compute and print from the ones that
run commands or write files.

``refusal(program)`` returns why a program is refused, or None. Refused: ``system()``, any pipe
(``print | "cmd"``, ``"cmd" | getline``, gawk's ``|&``), output redirection (``print > "file"``,
``>>``), gawk's indirect calls and directives (``@f()``, ``@include``, ``@load``), and a program
this reader cannot tokenise to its end (fail closed). ``getline < "file"`` reads a file, as `cat` may.

    >>> refusal('/class DateTime/,/^class [A-Z]/ { print NR": "$0 }') is None
    True
    >>> refusal('BEGIN { system("id") }')
    'awk `system()` runs a command'
    >>> refusal('{ f = "toupper"; print @f($0) }')
    'awk indirect calls (`@name`) can run any function, system() included'
"""

from __future__ import annotations

import re

_KEYWORDS = frozenset({"BEGIN", "END", "BEGINFILE", "ENDFILE", "function", "func", "if", "else", "while", "for",
                       "do", "break", "continue", "next", "nextfile", "exit", "return", "delete", "in", "getline",
                       "print", "printf"})
_TOKEN = re.compile(r"""
    (?P<space>[ \t]+|\\\n)
  | (?P<newline>\n)
  | (?P<comment>\#[^\n]*)
  | (?P<string>"(?:[^"\\\n]|\\.)*")
  | (?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|0[xX][0-9a-fA-F]+)
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<field>\$)
  | (?P<op>\|\||\|&|\||&&|>>|>=|<=|==|!=|!~|\+\+|--|\+=|-=|\*=|/=|%=|\^=|\*\*=|\*\*|[-+*%^!<>=~?:,;{}()\[\]@])
  | (?P<slash>/)
""", re.X)


def refusal(program: str) -> str | None:
    try:
        _check(program)
    except ValueError as error:
        return str(error)
    return None


def _check(program: str) -> None:
    if re.search(r"\bsystem\b", program):  # even inside a string or regex: a tokeniser slip must not hide it
        raise ValueError("awk `system()` runs a command")
    i, n = 0, len(program)
    previous = ""  # the last significant token's kind: decides whether / starts a regex
    parens = 0
    in_print = False  # inside print/printf up to the end of the statement: `>` there redirects
    print_parens = 0
    while i < n:
        if program[i] == "/" and previous not in ("operand",):
            i = _regex(program, i)
            previous = "operand"
            continue
        m = _TOKEN.match(program, i)
        if not m:
            raise ValueError(f"the awk program has `{program[i]}` where this reader expects a token")
        kind, text = m.lastgroup, m.group()
        i = m.end()
        if kind in ("space", "comment"):
            continue
        if kind == "newline" or text in (";", "{", "}"):
            in_print = False
            previous = ""
            continue
        if kind == "name":
            if text == "system":
                raise ValueError("awk `system()` runs a command")
            if text in ("print", "printf"):
                in_print, print_parens = True, parens
            previous = "keyword" if text in _KEYWORDS and text != "getline" else "operand"
            continue
        if kind in ("string", "number"):
            previous = "operand"
            continue
        if kind == "field":
            previous = "field"
            continue
        if text == "@":
            raise ValueError("awk indirect calls (`@name`) can run any function, system() included")
        if text in ("|", "|&"):
            raise ValueError("awk pipes (`|`) run commands")
        if text in (">", ">>") and in_print and parens == print_parens:
            raise ValueError("awk output redirection (`print > file`) writes files")
        if text == "(" or text == "[":
            parens += 1
        elif text == ")" or text == "]":
            parens -= 1
        previous = "operand" if text in (")", "]", "++", "--") else "operator"


def _regex(program: str, i: int) -> int:
    """Skip a regex literal /.../ starting at ``i`` (brackets may hold a slash); the index after it."""
    j, bracket = i + 1, False
    while j < len(program):
        c = program[j]
        if c == "\n":
            break
        if c == "\\":
            j += 2
            continue
        if bracket:
            if c == "]":
                bracket = False
        elif c == "[":
            bracket = True
            if program.startswith("^]", j + 1):
                j += 2
            elif program.startswith("]", j + 1):
                j += 1
        elif c == "/":
            return j + 1
        j += 1
    raise ValueError("the awk program has an unterminated regular expression")
