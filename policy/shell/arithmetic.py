"""Arithmetic as bash evaluates it, decided by one rule.

In `(( ))`, `$(( ))`, `let`, array subscripts and the arithmetic operators of `[[ ]]` (-eq -ne -lt -le
-gt -ge), bash evaluates a variable's *value* as an expression, recursively: `x='a[$(id)]'; (( x ))`
or `[[ $x -eq 1 ]]` runs `id`, and `for n in $(cat f); do (( n > 1 )); done` runs whatever the file
holds. The rule: a variable may appear in an arithmetic context only when the text itself has given
it a value known to be an integer before that point, and nothing in the text sets it otherwise:

- a literal integer assignment alone on its line (`n=5`);
- an arithmetic result (`(( n = i + 1 ))`, `(( n++ ))`), itself made of known integers;
- a `for` loop over literal integers or a `{1..9}` range.

Everything else there (a variable from the environment, a loop over other words, `read`, a command
substitution, a quoted string, a subscript) is refused with the reason. A pipeline element, a
subshell and a substitution run in a child shell: what they set is forgotten after them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from tree_sitter import Node as TSNode

ARITHMETIC_TEST_OPERATORS = frozenset({"-eq", "-ne", "-lt", "-le", "-gt", "-ge"})
_ASSIGN = frozenset({"=", "+=", "-=", "*=", "/=", "%=", "<<=", ">>=", "&=", "^=", "|="})
_NAME = re.compile(r"[a-z_][a-z0-9_]*")
_ANY_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NUMBER = re.compile(r"[0-9]+|0[xX][0-9a-fA-F]+|[0-9]+#[0-9A-Za-z@_]+")
HINT = ("Give the variable an integer in the same text first (`for n in {1..9}; do ...`, `n=5`, `(( n = 1 ))`), "
        "write the number itself, or compare as text with [[ $x == 1 ]].")


class ArithmeticRefusal(ValueError):
    def __init__(self, message: str, hint: str = HINT) -> None:
        super().__init__(message)
        self.hint = hint


def _unknown(what: str) -> ArithmeticRefusal:
    return ArithmeticRefusal(f"{what} is used in arithmetic, where bash evaluates its value as an expression "
                           "(a value such as a[$(id)] runs a program); only variables this text sets to integers "
                           "may appear there")


class Integers:
    """Which variables hold integers the text itself gave them, at the point the walk has reached."""

    def __init__(self) -> None:
        self.known: set[str] = set()
        self.tainted: set[str] = set()  # set to something else anywhere in the text
        self.used: set[str] = set()

    def set(self, name: str) -> None:
        if _NAME.fullmatch(name) and name not in self.tainted:
            self.known.add(name)

    def taint(self, name: str) -> None:
        self.tainted.add(name)
        self.known.discard(name)

    @contextmanager
    def scope(self) -> Iterator[None]:
        """A child shell (subshell, pipeline element, substitution): its assignments do not last."""
        saved = set(self.known)
        try:
            yield
        finally:
            self.known = saved

    def verify(self) -> None:
        """After the walk: a variable used as an integer must not be set otherwise anywhere (a loop
        may run the other assignment before the use on its next turn)."""
        for name in sorted(self.used & self.tainted):
            raise _unknown(f"the variable `{name}`, which this text also sets to a non-integer,")

    def use(self, name: str) -> None:
        if name not in self.known:
            raise _unknown(f"the variable `{name}`")
        self.used.add(name)

    def operand(self, node: TSNode, source: Callable[[TSNode], str]) -> None:
        """An operand of [[ A -eq B ]]: a literal integer, a known integer variable ($n, "$n", ${n},
        or a bare name), or an arithmetic expansion."""
        kind, text = node.type, source(node)
        if kind == "number" or (kind == "word" and re.fullmatch(r"-?[0-9]+", text)):
            return
        if kind == "word" and _ANY_NAME.fullmatch(text):
            self.use(text)
            return
        if kind == "string":
            inner = [c for c in node.children if c.is_named]
            if len(inner) == 1 and inner[0].type in ("simple_expansion", "expansion", "arithmetic_expansion"):
                self.operand(inner[0], source)
                return
        if kind in ("simple_expansion", "expansion", "arithmetic_expansion"):
            self.expression(node, source)
            return
        raise _unknown(f"`{text}`")

    def expression(self, node: TSNode, source: Callable[[TSNode], str]) -> None:
        """Validate an arithmetic expression tree (in evaluation order: a right side before the
        assignment it feeds)."""
        kind = node.type
        if not node.is_named:
            return
        text = source(node)
        if kind == "number":
            if not _NUMBER.fullmatch(text):
                raise ArithmeticRefusal(f"the number `{text}` is not accepted in arithmetic", "Write plain integers.")
            return
        if kind in ("variable_name", "word"):
            if _NUMBER.fullmatch(text):
                return
            if not _ANY_NAME.fullmatch(text):
                raise _unknown(f"`{text}`")
            self.use(text)
            return
        if kind == "simple_expansion":
            name = [c for c in node.children if c.is_named]
            if len(name) != 1 or name[0].type != "variable_name":
                raise _unknown(f"`{text}`")
            self.use(source(name[0]))
            return
        if kind == "expansion":
            inner = [c for c in node.children if not (c.type in ("${", "}"))]
            if len(inner) != 1 or inner[0].type != "variable_name":
                raise _unknown(f"`{text}`")
            self.use(source(inner[0]))
            return
        if kind == "arithmetic_expansion":
            if node.children and node.children[0].type == "$[":
                raise ArithmeticRefusal("old-style arithmetic $[ ] is not accepted", "Write $(( EXPRESSION )).")
            for child in node.children:
                if child.is_named:
                    self.expression(child, source)
                elif child.type not in ("$((", "))", ","):
                    raise ArithmeticRefusal(f"`{child.type}` in $(( )) is not accepted", "Write $(( EXPRESSION )).")
            return
        children = list(node.children)
        ops = [c.type for c in children if not c.is_named]
        if kind == "binary_expression" and len(children) == 3 and ops and ops[0] in _ASSIGN:
            target, op, value = children
            self.expression(value, source)
            self.assign(target, source, reads=op.type != "=")
            return
        if kind in ("postfix_expression", "unary_expression") and ops and ops[0] in ("++", "--"):
            (target,) = [c for c in children if c.is_named]
            self.assign(target, source, reads=True)
            return
        if kind in ("binary_expression", "unary_expression", "parenthesized_expression", "ternary_expression"):
            for child in children:
                self.expression(child, source)
            return
        raise ArithmeticRefusal(f"`{text}` is not accepted in arithmetic (only integers, variables this text "
                              "set to integers, and operators)", HINT)

    def assign(self, target: TSNode, source: Callable[[TSNode], str], reads: bool) -> None:
        name = source(target)
        if target.type not in ("variable_name", "word") or not _NAME.fullmatch(name):
            raise ArithmeticRefusal(f"assigning to `{name}` in arithmetic is not accepted",
                                  "Assign to a lower-case variable name (`(( n = 1 ))`).")
        if reads:
            self.use(name)
        if name in self.tainted:
            raise _unknown(f"the variable `{name}`, which this text also sets to a non-integer,")
        self.known.add(name)
        self.used.add(name)
