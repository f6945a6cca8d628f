"""Shell text → ShellAnalysis. tree-sitter-bash gives the structure (policy.shell.treesitter);
the walk turns its nodes into facts: statements, lists, pipelines and simple commands here,
compound commands in policy.shell.compound, redirections and here-documents in
policy.shell.redirections, words and the expansions inside them in policy.shell.wordwalk (each
word's source then read by policy.shell.words, bash's own quoting, expansions and brace expansion).
Anything tree-sitter marks as an error or a missing token, and any node kind not handled, fails
closed with a hint.

Arithmetic is a code-execution channel in bash (a variable's value is evaluated as an expression:
`x='a[$(id)]'; (( x ))` runs `id`), so policy.shell.arithmetic decides every arithmetic context."""

from __future__ import annotations

from functools import lru_cache

import tree_sitter

from bastion.policy.shell import words as w
from bastion.policy.shell.arithmetic import ArithmeticRefusal
from bastion.policy.shell.compound import FILE_TESTS, CompoundWalker
from bastion.policy.shell.facts import Node, Redirect, ShellAnalysis
from bastion.policy.shell.treesitter import (HINT_PLAIN, HINTS, STATEMENT_SEPARATORS, WORD_KINDS, Unsupported,
                                             first_error, odd_blank, parse, regroup, unterminated)

__all__ = ["FILE_TESTS", "analyse_shell"]


def analyse_shell(text: str) -> ShellAnalysis:
    """Facts of a shell command text, cached by text (big texts are not cached)."""
    return _analyse_cached.__wrapped__(text) if len(text) > 16 * 1024 else _analyse_cached(text)


@lru_cache(maxsize=4096)
def _analyse_cached(text: str) -> ShellAnalysis:
    if all(not line.strip() or line.strip().startswith("#") for line in text.splitlines()):
        return ShellAnalysis(text, error="the command is empty", error_rule="guard:empty")
    if "\x00" in text:
        return ShellAnalysis(text, error="the command holds a NUL byte", error_rule="guard:parse-error")
    tree = parse(text)
    walker = _Walker(text)
    odd = odd_blank(tree.root_node, text)
    if odd is not None:
        return ShellAnalysis(text, error=f"the command holds {odd} outside quotes (bash reads it as part of a word, "
                             "not as a blank)", error_rule="guard:parse-error",
                             error_hint="Use spaces, tabs and newlines (\\n, not \\r\\n) between words.")
    broken = first_error(tree.root_node)
    if broken is not None:
        at = walker.pos(broken.start_byte)
        line = text.count("\n", 0, at) + 1
        what = f"`{broken.type}` is missing" if broken.is_missing else \
            f"cannot parse `{text[at : walker.pos(broken.end_byte)][:60]}`"
        return ShellAnalysis(text, error=f"cannot parse this command: {what} (line {line})",
                             error_rule="guard:parse-error", error_hint=HINT_PLAIN)
    try:
        structure = walker.statements(tree.root_node.children, "top")
        walker.integers.verify()
    except w.BudgetError as error:
        return ShellAnalysis(text, error=str(error), error_rule="guard:budget")
    except ArithmeticRefusal as error:
        return ShellAnalysis(text, error=str(error), error_rule="guard:arithmetic", error_hint=error.hint)
    except Unsupported as error:
        return ShellAnalysis(text, error=str(error), error_rule="guard:unsupported", error_hint=error.hint)
    except w.WordError as error:
        return ShellAnalysis(text, error=str(error), error_rule="guard:unsupported", error_hint=HINT_PLAIN)
    except RecursionError:
        return ShellAnalysis(text, error="the command is nested too deeply", error_rule="guard:parse-error")
    except Exception as error:  # an unexpected tree shape: refuse, never guess
        return ShellAnalysis(text, error=f"cannot analyse this command ({type(error).__name__})",
                             error_rule="guard:parse-error", error_hint=HINT_PLAIN)
    return ShellAnalysis(text, tuple(walker.commands), frozenset(walker.operators), frozenset(walker.constructs),
                         structure=structure, substitutions=tuple(walker.substitutions.items()),
                         loop_variables=frozenset(walker.loop_variables))


class _Walker(CompoundWalker):
    """Statements, lists, pipelines and simple commands."""

    def statements(self, children: list[tree_sitter.Node], context: str) -> Node:
        """A sequence of statements joined by ; & or newlines (program, do-group, braces, bodies)."""
        items: list[Node] = []
        ops: list[str] = []
        for child in children:
            if child.type == "comment":
                continue
            if not child.is_named:
                op = STATEMENT_SEPARATORS.get(child.type)
                if op is None:
                    raise Unsupported(f"`{child.type}` is not accepted here")
                if len(ops) == len(items):
                    raise Unsupported(f"an empty command before `{child.type}` is not accepted")
                ops.append(op)
                continue
            if len(ops) < len(items):
                ops.append("newline")  # statements on lines of their own
            items.append(self.statement(child, context))
        if not items:
            raise Unsupported("an empty command list is not accepted")
        for k, op in enumerate(ops):
            if not (k == len(ops) - 1 and len(ops) == len(items) and op in (";", "newline")):
                self.operators.add(op)  # a trailing ; or newline only ends the list
        if len(items) == 1 and not ops:
            return items[0]
        return Node("list", items=tuple(items), ops=tuple(ops))

    def statement(self, node: tree_sitter.Node, context: str) -> Node:
        kind = node.type
        if kind == "command":
            return self.command(node, context)
        if kind in ("variable_assignment", "variable_assignments"):
            assignments = [node] if kind == "variable_assignment" else [c for c in node.children if c.is_named]
            return self.command_of(context, (), [self.assignment(a, context, alone=True) for a in assignments], [])
        if kind in ("declaration_command", "unset_command"):
            return self.declaration(node, context)
        if kind == "redirected_statement":
            return self.redirected(node, context)
        if kind == "list":
            return self.flat(node, context, ("&&", "||"), "list")
        if kind == "pipeline":
            return self.pipeline(node, context)
        if kind == "subshell":
            self.constructs.add("subshell")
            with self.integers.scope():
                inner = self.statements(self.body(node, "(", ")"), context)
            return Node("subshell", items=(unterminated(inner),))
        if kind == "compound_statement":
            first = node.children[0].type if node.children else ""
            if first == "((":
                return self.arithmetic_command(node)
            self.constructs.add("group")
            return Node("group", items=(unterminated(self.statements(self.body(node, "{", "}"), context)),))
        if kind == "for_statement":
            return self.for_loop(node, context)
        if kind == "while_statement":
            return self.while_loop(node, context)
        if kind == "if_statement":
            return self.if_clause(node, context)
        if kind == "case_statement":
            return self.case(node, context)
        if kind == "test_command":
            return self.test(node, context)
        if kind == "file_redirect":  # `$(< FILE)`, or a redirection alone
            return self.command_of(context, (), [], [self.redirect(node, context)])
        raise Unsupported(f"bash construct `{kind.replace('_', ' ')}` is not accepted", HINTS.get(kind, HINT_PLAIN))

    def flat(self, node: tree_sitter.Node, context: str, operators: tuple[str, ...], kind: str) -> Node:
        """`a && b || c` → one list (bash's && and || are left-associative and of equal precedence)."""
        items: list[Node] = []
        ops: list[str] = []
        for child in node.children:
            if child.type == "comment":
                continue
            if not child.is_named:
                if child.type not in operators:
                    raise Unsupported(f"`{child.type}` is not accepted here")
                self.operators.add(child.type)
                ops.append(child.type)
            elif child.type == node.type == "list":
                inner = self.flat(child, context, operators, kind)
                items.extend(inner.items)
                ops.extend(inner.ops)
            else:
                items.append(self.statement(child, context))
        if len(items) != len(ops) + 1:
            raise Unsupported(f"a `{kind}` of an unexpected shape is not accepted")
        return Node(kind, items=tuple(items), ops=tuple(ops))

    def pipeline(self, node: tree_sitter.Node, context: str) -> Node:
        # Each element runs in a subshell of its own: what it sets does not reach the others.
        with self.integers.scope():
            pipeline = self.flat(node, context, ("|", "|&"), "pipeline")
        return regroup(pipeline)

    def command(self, node: tree_sitter.Node, context: str, redirects: list[Redirect] | None = None) -> Node:
        assignments: list[str] = []
        redirects = list(redirects or [])
        arguments: list[tree_sitter.Node] = []
        for child in node.children:
            if child.type == "variable_assignment":
                assignments.append(self.assignment(child, context, alone=False))
            elif child.type in ("file_redirect", "herestring_redirect"):
                redirects.append(self.redirect(child, context))
            elif child.type == "command_name":
                if len(child.children) != 1:
                    raise Unsupported("a command name of an unexpected shape is not accepted")
                arguments.append(child.children[0])
            elif child.type in WORD_KINDS or child.type == "$":  # `$` before a string: $"locale text"
                arguments.append(child)
            elif child.type == "comment":
                continue
            else:
                raise Unsupported(f"bash construct `{child.type.replace('_', ' ')}` in a command is not accepted")
        argv = tuple(self.argument_words(arguments, context))
        if argv and argv[0].literal:
            self.setter(argv)
        return self.command_of(context, argv, assignments, redirects)


    def declaration(self, node: tree_sitter.Node, context: str) -> Node:
        """declare, local, export, readonly, typeset, unset: a command of that name (the rules decide);
        `-i` makes every later assignment arithmetic, so it is refused."""
        argv: list[w.Word] = []
        assignments: list[tree_sitter.Node] = []
        arguments: list[tree_sitter.Node] = []
        keyword = ""
        for child in node.children:
            if not child.is_named:
                keyword = keyword or child.type
            elif child.type == "variable_assignment":
                assignments.append(child)
                arguments.append(child)
            elif child.type in WORD_KINDS or child.type == "variable_name":
                arguments.append(child)
            else:
                raise Unsupported(f"bash construct `{child.type.replace('_', ' ')}` in `{keyword}` is not accepted")
        argv.append(w.Word(keyword, (w.Segment(w.LIT, keyword),)))
        argv.extend(self.argument_words(arguments, context))
        if any(a.value.startswith("-") and "i" in a.value for a in argv[1:]):
            raise ArithmeticRefusal(f"`{keyword} -i` makes assignments arithmetic", "Drop `-i`.")
        for word in argv[1:]:
            self.integers.taint(word.value.split("=", 1)[0])
        return self.command_of(context, tuple(argv), [], [])

