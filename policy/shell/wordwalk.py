"""Words inside the walk from tree-sitter nodes to facts: argument nodes grouped into the words bash
makes (tree-sitter splits `a\\<newline>b`; nodes with nothing between them are one word), the
substitutions and arithmetic inside them walked as commands and expressions, and then each word's
own source read by policy.shell.words. Also the walker's state and positions, and the simple
command facts every part of the walk appends (command_of, assignments, setters)."""

from __future__ import annotations

import re

import tree_sitter

from bastion.policy.shell import words as w
from bastion.policy.shell.arithmetic import ArithmeticRefusal, Integers
from bastion.policy.shell.facts import Command, Node, Redirect
from bastion.policy.shell.treesitter import WORD_KINDS, Unsupported, unterminated

INTEGER = re.compile(r"-?[0-9]+")
_INSIDE_WORDS = WORD_KINDS | {"string_content", "variable_name", "special_variable_name", "subscript", "regex",
                               "test_operator", "variable_assignment"}
_SUBSTITUTIONS = {"command_substitution": w.CMDSUB, "process_substitution": w.PROCSUB}
# Programs whose arguments name variables they set (a set variable is no longer a known integer).
_SETTERS = frozenset({"read", "printf", "mapfile", "readarray", "getopts", "declare", "typeset", "local", "export",
                      "readonly", "unset", "let"})


class WordWalker:
    """The walker's state and its word-level steps. Statements are walked by the subclass
    (policy.shell.analyze._Walker); substitutions call back into it."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.data = text.encode()
        # byte offset → character offset (tree-sitter counts bytes, words.py characters)
        self.chars: list[int] | None = None
        if not text.isascii():
            self.chars = [0] * (len(self.data) + 1)
            at = 0
            for index, char in enumerate(text):
                for k in range(len(char.encode())):
                    self.chars[at + k] = index
                at += len(char.encode())
            self.chars[at] = len(text)
        self.commands: list[Command] = []
        self.operators: set[str] = set()
        self.constructs: set[str] = set()
        self.substitutions: dict[int, Node] = {}
        self.budget = w.Budget()  # brace expansion and time: a bomb is refused, not expanded
        self.loop_variables: set[str] = set()
        self.loops = 0  # depth inside rebuilt loops and ifs (a here-document there is not accepted)
        self.integers = Integers()
        self.seen: set[int] = set()  # starts of the substitutions and arithmetic expansions walked

    # -- positions and text ------------------------------------------------------------------------
    def pos(self, byte: int) -> int:
        return byte if self.chars is None else self.chars[byte]

    def source(self, node: tree_sitter.Node) -> str:
        return self.text[self.pos(node.start_byte) : self.pos(node.end_byte)]

    def body(self, node: tree_sitter.Node, opener: str, closer: str) -> list[tree_sitter.Node]:
        children = list(node.children)
        if not children or children[0].type != opener or children[-1].type != closer:
            raise Unsupported(f"a `{opener} ... {closer}` block of an unexpected shape is not accepted")
        return children[1:-1]

    def statements(self, children: list[tree_sitter.Node], context: str) -> Node:
        raise NotImplementedError  # policy.shell.analyze._Walker

    def statement(self, node: tree_sitter.Node, context: str) -> Node:
        raise NotImplementedError  # policy.shell.analyze._Walker

    def command(self, node: tree_sitter.Node, context: str, redirects: list[Redirect] | None = None) -> Node:
        raise NotImplementedError  # policy.shell.analyze._Walker

    # -- simple command facts ----------------------------------------------------------------------
    def command_of(self, context: str, argv: tuple[w.Word, ...], assignments: list[str],
                   redirects: list[Redirect]) -> Node:
        self.commands.append(Command(argv, tuple(assignments), tuple(redirects), context))
        return Node("command", index=len(self.commands) - 1)


    def setter(self, argv: tuple[w.Word, ...]) -> None:
        """Programs that set or evaluate variables: what they name is no longer a known integer; `let`
        and `test -v NAME[...]` evaluate arithmetic (policy.shell.arithmetic)."""
        name = argv[0].value
        if name == "let":
            raise ArithmeticRefusal("`let` evaluates its arguments as arithmetic", "Write `(( EXPRESSION ))` instead.")
        if name in ("test", "[") and any(a.value == "-v" for a in argv[1:]):
            raise ArithmeticRefusal("`-v NAME` evaluates an array subscript as arithmetic (`[ -v 'a[$(id)]' ]` runs id)",
                                  "Test the variable with `[ -n \"${NAME+set}\" ]`, or drop the test.")
        if name in _SETTERS:
            for word in argv[1:]:
                self.integers.taint(word.value.split("=", 1)[0])

    def assignment(self, node: tree_sitter.Node, context: str, alone: bool) -> str:
        """NAME=VALUE: the source text (rules refuse assignments unless allowed); substitutions in the
        value are commands too. Alone on its line it sets a shell variable (a known integer when the
        value is a literal integer)."""
        children = [c for c in node.children]
        if not children or children[0].type not in ("variable_name", "subscript"):
            raise Unsupported("an assignment of an unexpected shape is not accepted")
        target = children[0]
        if target.type == "subscript":
            self.subscript(target)
        name = self.source(target.children[0] if target.type == "subscript" else target)
        values = [c for c in children[1:] if c.is_named]
        value_text = "".join(self.source(v) for v in values)
        for value in values:
            if value.type == "array":
                raise Unsupported("array assignments are not accepted")
            self.word_nodes([value], context)
        if alone and target.type == "variable_name" and INTEGER.fullmatch(value_text) \
                and any(c.type == "=" for c in children):
            self.integers.set(name)
        else:
            self.integers.taint(name)
        return self.source(node)


    # -- words -------------------------------------------------------------------------------------
    def argument_words(self, nodes: list[tree_sitter.Node], context: str, pattern: bool = False) -> list[w.Word]:
        """The words bash makes of argument nodes. Nodes with nothing between them are one bash word
        (tree-sitter splits `a\\<newline>b`); a gap must be blanks or line continuations."""
        groups: list[list[tree_sitter.Node]] = []
        for node in nodes:
            if groups:
                gap = self.text[self.pos(groups[-1][-1].end_byte) : self.pos(node.start_byte)]
                joined = gap.replace("\\\n", "")
                if not joined:
                    groups[-1].append(node)
                    continue
                if joined.strip(" \t\n"):
                    raise Unsupported(f"cannot read the words around {gap.strip(' ')[:40]!r}")
            groups.append([node])
        out: list[w.Word] = []
        for group in groups:
            out.extend(self.word_nodes(group, context, pattern))
        return out

    def word_nodes(self, group: list[tree_sitter.Node], context: str, pattern: bool = False) -> list[w.Word]:
        subs: dict[int, tuple[int, str]] = {}
        for node in group:
            self.expansions(node, context, subs, outermost=True)
        start, end = self.pos(group[0].start_byte), self.pos(group[-1].end_byte)
        return w.words(self.text[start:end], start, subs, self.budget, pattern=pattern)

    def expansions(self, node: tree_sitter.Node, context: str, subs: dict[int, tuple[int, str]],
                   outermost: bool) -> None:
        """Walk the substitutions inside a word (their commands are facts) and record, for the word
        lexer, where the outermost ones end."""
        kind = node.type
        if not node.is_named:
            return
        if kind not in _INSIDE_WORDS:
            raise Unsupported(f"bash construct `{kind.replace('_', ' ')}` inside a word is not accepted")
        start, end = self.pos(node.start_byte), self.pos(node.end_byte)
        if kind in _SUBSTITUTIONS:
            sub_kind = _SUBSTITUTIONS[kind]
            self.seen.add(start)
            self.constructs.add(sub_kind)
            if outermost:
                subs[start] = (end, sub_kind)
            self.substitutions[start] = self.substitution(node, sub_kind)
            return
        if kind == "arithmetic_expansion":
            self.seen.add(start)
            self.constructs.add("arithmetic")
            self.integers.expression(node, self.source)
            if outermost:
                subs[start] = (end, w.ARITH)
            return
        if kind == "expansion":
            body = self.source(node)
            if "`" in body:
                raise Unsupported("backticks inside ${...} are not accepted", "Use $(...) instead of backticks.")
            if outermost:
                subs[start] = (end, w.PARAM_COMPLEX)
                outermost = False
        if kind == "subscript":
            self.subscript(node)
        for child in node.children:
            self.expansions(child, context, subs, outermost)
        if kind == "expansion":
            # Every $( or <( in a ${...} must be a substitution the parser walked: bash would run it.
            for m in re.finditer(r"\$\(|[<>]\(", self.source(node)):
                if start + m.start() not in self.seen:
                    raise Unsupported("a substitution the parser did not recognise is not accepted",
                                       "Move the substitution out of ${...}.")

    def subscript(self, node: tree_sitter.Node) -> None:
        """NAME[INDEX]: the index is arithmetic."""
        index = [c for c in node.children[1:] if c.is_named]
        if not (len(index) == 1 and index[0].type == "number") and index:
            for child in index:
                self.integers.expression(child, self.source)

    def substitution(self, node: tree_sitter.Node, kind: str) -> Node:
        children = list(node.children)
        if children and children[0].type == "`":
            if "\\" in self.source(node):
                raise Unsupported("backslashes inside backticks are not accepted", "Use $(...) instead of backticks.")
            inner = children[1:-1]
        elif children and children[0].type in ("$(", "<(", ">("):
            inner = children[1:-1]
        else:
            raise Unsupported("a substitution of an unexpected shape is not accepted")
        with self.integers.scope():
            return unterminated(self.statements(inner, kind))

