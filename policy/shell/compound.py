"""Compound commands in the walk: `for`, `while`/`until`, `if`, `case`, `[ ]` and `[[ ]]`, `(( ))`.
Which of them Bastion rebuilds and runs, and which stay facts only, is decided here (docs/shell.md,
"Constructs and what is checked in them")."""

from __future__ import annotations

import re

import tree_sitter

from bastion.policy.shell import words as w
from bastion.policy.shell.arithmetic import ARITHMETIC_TEST_OPERATORS, ArithmeticRefusal
from bastion.policy.shell.facts import Command, Node
from bastion.policy.shell.redirections import RedirectWalker
from bastion.policy.shell.treesitter import WORD_KINDS, Unsupported, unterminated
from bastion.policy.shell.wordwalk import INTEGER

_NAME = re.compile(r"[a-z_][a-z0-9_]*")  # loop and read variables: never PATH, IFS or a program's setting
_TEST_METACHARACTERS = frozenset({"(", ")", "&&", "||", "<", ">"})
# File tests of [[ ]] and test: their operand is a path (policy.shell.evaluate checks it as one).
FILE_TESTS = frozenset({"-a", "-b", "-c", "-d", "-e", "-f", "-g", "-h", "-k", "-p", "-r", "-s", "-u", "-w", "-x",
                        "-G", "-L", "-N", "-O", "-S", "-ef", "-nt", "-ot"})


class CompoundWalker(RedirectWalker):
    def for_loop(self, node: tree_sitter.Node, context: str) -> Node:
        """``for name in WORDS; do BODY; done`` with a lower-case name (it cannot replace PATH, IFS or
        any variable the shell or a program reads) → a `for` node Bastion rebuilds; other shapes
        (``for f; do``) stay facts, never rebuilt."""
        children = list(node.children)
        if children[0].type != "for":
            raise Unsupported(f"`{children[0].type}` loops are not accepted", "Write `for NAME in WORDS; do ...; done`.")
        self.constructs.add("for")
        name_node = next((c for c in children if c.type == "variable_name"), None)
        group = children[-1]
        if name_node is None or group.type != "do_group":
            raise Unsupported("a for loop of an unexpected shape is not accepted")
        name = self.source(name_node)
        has_in = any(c.type == "in" for c in children)
        values_nodes = [c for c in children[children.index(name_node) + 1 : -1] if c.is_named and c.type != "comment"]
        values = self.argument_words(values_nodes, context)
        literal_integers = has_in and all(v.literal and INTEGER.fullmatch(v.value) for v in values)
        if literal_integers:
            self.integers.set(name)
        else:
            self.integers.taint(name)
        rebuilt = has_in and _NAME.fullmatch(name) is not None
        if rebuilt:
            self.loop_variables.add(name)
        self.loops += 1
        try:
            inner = self.statements(self.body(group, "do", "done"), context)
        finally:
            self.loops -= 1
        if not rebuilt:
            return Node("for")
        return Node("for", items=(unterminated(inner),), name=name, words=tuple(values))

    def while_loop(self, node: tree_sitter.Node, context: str) -> Node:
        """``... | while [IFS=] read [-r] name...; do BODY; done`` with lower-case names → a `while`
        node Bastion rebuilds (the names are loop variables). Other while and until loops are facts
        (their commands are checked) that are never rebuilt: nothing bounds them but the timeout."""
        children = list(node.children)
        keyword = children[0].type
        group = children[-1]
        if keyword not in ("while", "until") or group.type != "do_group":
            raise Unsupported(f"a {keyword} loop of an unexpected shape is not accepted")
        self.constructs.add(keyword)
        start = len(self.commands)
        condition = unterminated(self.statements(children[1:-1], context))
        if keyword == "while" and condition.kind == "command" and len(self.commands) == start + 1:
            read = self.commands[start]
            argv = [word.value for word in read.argv]
            names = [a for a in argv[1:] if a != "-r"]
            if argv and argv[0] == "read" and all(word.literal for word in read.argv) and not read.redirects \
                    and read.assignments in ((), ("IFS=",)) and names \
                    and all(_NAME.fullmatch(name) for name in names):
                self.commands[start] = Command(read.argv, read.assignments, (), "while-read")
                self.loop_variables.update(names)
        self.loops += 1
        try:
            body = unterminated(self.statements(self.body(group, "do", "done"), context))
        finally:
            self.loops -= 1
        if self.commands[start].context != "while-read":
            return Node(keyword)  # facts only: Bastion does not run a loop that may never end
        return Node("while", items=(condition, body), ops=(keyword,))

    def if_clause(self, node: tree_sitter.Node, context: str) -> Node:
        """``if LIST; then LIST; [elif LIST; then LIST;]... [else LIST;] fi`` → an `if` node (its
        keywords in ``ops``, one before each item)."""
        self.constructs.add("if")
        keywords: list[str] = []
        parts: list[list[tree_sitter.Node]] = []

        def collect(children: list[tree_sitter.Node]) -> None:
            for child in children:
                if child.type in ("if", "then", "elif", "else"):
                    keywords.append(child.type)
                    parts.append([])
                elif child.type in ("elif_clause", "else_clause"):
                    collect(list(child.children))
                elif child.type == "fi":
                    continue
                elif parts:
                    parts[-1].append(child)
                else:
                    raise Unsupported("an if of an unexpected shape is not accepted")

        collect(list(node.children))
        self.loops += 1  # a here-document's body would have to follow the whole `if`: not accepted
        try:
            items = tuple(unterminated(self.statements(part, context)) for part in parts)
        finally:
            self.loops -= 1
        return Node("if", items=items, ops=tuple(keywords))

    def case(self, node: tree_sitter.Node, context: str) -> Node:
        """``case WORD in PATTERN|PATTERN) LIST ;; ... esac``: the word and the patterns are the
        arguments of a `case` fact (checked like any words); each branch's commands are checked."""
        self.constructs.add("case")
        children = list(node.children)
        subject = [c for c in children[1 : next(i for i, c in enumerate(children) if c.type == "in")] if c.is_named]
        words = self.argument_words(subject, context, pattern=True)
        if len(words) != 1:
            raise Unsupported("`case` takes one word")
        header = [w.Word("case", (w.Segment(w.LIT, "case"),)), words[0]]
        bodies: list[Node] = []
        shapes: list[str] = []
        self.loops += 1
        try:
            for item in (c for c in children if c.type == "case_item"):
                parts = list(item.children)
                close = next((i for i, c in enumerate(parts) if c.type == ")"), None)
                if close is None:
                    raise Unsupported("a case branch of an unexpected shape is not accepted")
                if parts and parts[0].type == "(":
                    raise Unsupported("a case pattern opened with `(` is not accepted", "Write `PATTERN)`.")
                # PATTERN|PATTERN: tree-sitter may split one pattern (`*"x"`) into several nodes.
                patterns: list[list[tree_sitter.Node]] = [[]]
                for part in parts[:close]:
                    if part.type == "|":
                        patterns.append([])
                    elif part.is_named and part.type != "comment":
                        patterns[-1].append(part)
                    else:
                        raise Unsupported(f"`{part.type}` in a case pattern is not accepted")
                count = 0
                for pattern in patterns:
                    if not pattern:
                        raise Unsupported("an empty case pattern is not accepted")
                    made = self.argument_words(pattern, context, pattern=True)
                    if len(made) != 1:
                        raise Unsupported("a case pattern must be one word")
                    header.append(made[0])
                    count += 1
                ending = parts[-1].type if parts[-1].type in (";;", ";&", ";;&") else ""
                if ending != ";;" and item is not [c for c in children if c.type == "case_item"][-1]:
                    raise Unsupported(f"case branches ending in `{ending or '?'}` are not accepted", "End each branch with ;;.")
                statements = [c for c in parts[close + 1 :] if c.type not in (";;", ";&", ";;&")]
                with self.integers.scope():
                    body = unterminated(self.statements(statements, context)) if any(
                        c.is_named and c.type != "comment" for c in statements) else Node("list")
                bodies.append(body)
                shapes.append(str(count))
        finally:
            self.loops -= 1
        head = self.command_of("case", tuple(header), [], [])
        return Node("case", index=head.index, items=tuple(bodies), ops=tuple(shapes))

    def test(self, node: tree_sitter.Node, context: str) -> Node:
        """``[ ... ]`` is the program `[` (its words as bash splits them); ``[[ ... ]]`` a
        `conditional` fact: a command `[[` whose words are operators or operands (Node.ops)."""
        children = list(node.children)
        opener, closer = children[0].type, children[-1].type
        if (opener, closer) == ("[", "]"):
            tokens = self.test_tokens(children[1:-1])
            argv = [w.Word("[", (w.Segment(w.LIT, "["),))]
            argv += self.argument_words([t for _, t in tokens], context)
            argv.append(w.Word("]", (w.Segment(w.LIT, "]"),)))
            self.setter(tuple(argv))
            return self.command_of(context, tuple(argv), [], [])
        if (opener, closer) != ("[[", "]]"):
            raise Unsupported("a test of an unexpected shape is not accepted")
        self.constructs.add("conditional")
        groups = self.test_words(self.test_tokens(children[1:-1]))
        argv = [w.Word("[[", (w.Segment(w.LIT, "[["),))]
        roles: list[str] = []
        for k, group in enumerate(groups):
            first, last = group[0][1], group[-1][1]
            start, end = self.pos(first.start_byte), self.pos(last.end_byte)
            text = self.text[start:end]
            if len(group) == 1 and group[0][0] == "op":
                if text in ("-v", "-R"):
                    raise ArithmeticRefusal(f"`[[ {text} NAME ]]` evaluates an array subscript as arithmetic",
                                          "Test the variable with `[[ -n ${NAME+set} ]]`.")
                argv.append(w.Word(text, (w.Segment(w.LIT, text),)))
                roles.append("op")
            elif k > 0 and roles[-1] == "op" and argv[-1].value == "=~":
                argv.append(self.regex(text))
                roles.append("regex")
            else:
                made = self.word_nodes([node for _, node in group], context, pattern=True)
                if len(made) != 1:
                    raise Unsupported("a [[ ]] operand must be one word")
                argv.append(made[0])
                roles.append("word")
        # Arithmetic operators evaluate both operands as expressions.
        for k, group in enumerate(groups):
            if roles[k] == "op" and argv[k + 1].value in ARITHMETIC_TEST_OPERATORS:
                for side in (k - 1, k + 1):
                    if 0 <= side < len(groups) and roles[side] != "op":
                        if len(groups[side]) != 1:
                            raise ArithmeticRefusal(f"`{argv[side + 1].source}` is used in arithmetic, where bash "
                                                  "evaluates its value as an expression")
                        self.integers.operand(groups[side][0][1], self.source)
        argv.append(w.Word("]]", (w.Segment(w.LIT, "]]"),)))
        head = self.command_of("conditional", tuple(argv), [], [])
        return Node("test", index=head.index, ops=tuple(roles))

    def test_words(self, tokens: list[tuple[str, tree_sitter.Node]]) -> list[list[tuple[str, tree_sitter.Node]]]:
        """Tokens with nothing between them are one bash word (tree-sitter reads `~/x` in [[ ]] as
        the operator ~ before /x); only the metacharacters ( ) && || < > stand alone."""
        groups: list[list[tuple[str, tree_sitter.Node]]] = []
        for role, node in tokens:
            if groups:
                previous = groups[-1][-1][1]
                gap = self.text[self.pos(previous.end_byte) : self.pos(node.start_byte)].replace("\\\n", "")
                alone = {previous.type, node.type} & _TEST_METACHARACTERS and not (
                    previous.is_named and node.is_named)
                if not gap and not alone:
                    groups[-1].append((role, node))
                    continue
                if gap.strip(" \t\n"):
                    raise Unsupported(f"cannot read the words around {gap.strip(' ')[:40]!r}")
            groups.append([(role, node)])
        return groups

    def test_tokens(self, nodes: list[tree_sitter.Node]) -> list[tuple[str, tree_sitter.Node]]:
        """A test expression flattened in source order: ("op", operator) and ("word"|"regex", operand)."""
        out: list[tuple[str, tree_sitter.Node]] = []
        for node in nodes:
            if node.type in ("binary_expression", "unary_expression", "parenthesized_expression"):
                out.extend(self.test_tokens(list(node.children)))
            elif not node.is_named or node.type == "test_operator":
                out.append(("op", node))
            elif node.type == "regex":
                out.append(("regex", node))
            elif node.type in WORD_KINDS:
                out.append(("word", node))
            elif node.type == "comment":
                continue
            else:
                raise Unsupported(f"bash construct `{node.type.replace('_', ' ')}` in a test is not accepted")
        return out

    def regex(self, text: str) -> w.Word:
        """The right side of =~, taken as written: only when nothing in it is quoted or expands (a
        quoted part matches literally, an expansion runs)."""
        if re.search(r"""['"`\\]|\$[A-Za-z_{(0-9@*#?$!-]""", text):
            raise Unsupported("a regular expression with quotes, backslashes or expansions is not accepted",
                               "Write the regular expression plainly after =~, or compare with == and a pattern.")
        return w.Word(text, (w.Segment(w.LIT, text),))

    def arithmetic_command(self, node: tree_sitter.Node) -> Node:
        """``(( EXPRESSION ))``: decided by policy.shell.arithmetic, rebuilt as written."""
        inner = self.body(node, "((", "))")
        self.constructs.add("arithmetic")
        for child in inner:
            if child.is_named:
                self.integers.expression(child, self.source)
            elif child.type != ",":
                raise Unsupported(f"`{child.type}` in (( )) is not accepted")
        start, end = self.pos(node.start_byte) + 2, self.pos(node.end_byte) - 2
        return Node("arithmetic", ops=(self.text[start:end].strip(),))
