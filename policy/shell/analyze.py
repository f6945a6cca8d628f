"""Shell text → ShellAnalysis. tree-sitter-bash gives the structure; words are read by
policy.shell.words (bash's own quoting, expansions and brace expansion). Anything tree-sitter marks
as an error or a missing token, and any node kind not handled here, fails closed with a hint.

Arithmetic is a code-execution channel in bash (a variable's value is evaluated as an expression:
`x='a[$(id)]'; (( x ))` runs `id`), so policy.shell.arithmetic decides every arithmetic context."""

from __future__ import annotations

import re
import threading
from dataclasses import replace
from functools import lru_cache

import tree_sitter
import tree_sitter_bash

from bastion.policy.shell import words as w
from bastion.policy.shell.arithmetic import ARITHMETIC_TEST_OPERATORS, ArithmeticRefusal, Integers
from bastion.policy.shell.facts import Command, Node, Redirect, ShellAnalysis

_LANGUAGE = tree_sitter.Language(tree_sitter_bash.language())
_LOCAL = threading.local()  # a tree-sitter Parser is not shared between threads
_NAME = re.compile(r"[a-z_][a-z0-9_]*")  # loop and read variables: never PATH, IFS or a program's setting
_INTEGER = re.compile(r"-?[0-9]+")

_STATEMENT_SEPARATORS = {";": ";", "&": "&", "\n": "newline"}
_WORD_KINDS = frozenset({"word", "string", "raw_string", "ansi_c_string", "translated_string", "concatenation",
                         "simple_expansion", "expansion", "command_substitution", "process_substitution",
                         "arithmetic_expansion", "brace_expression", "number", "extglob_pattern"})
_INSIDE_WORDS = _WORD_KINDS | {"string_content", "variable_name", "special_variable_name", "subscript", "regex",
                                "test_operator", "variable_assignment"}
_TEST_METACHARACTERS = frozenset({"(", ")", "&&", "||", "<", ">"})
_SUBSTITUTIONS = {"command_substitution": w.CMDSUB, "process_substitution": w.PROCSUB}
# Constructs that are facts only: the commands in them are checked, but Bastion does not run them.
_HINT_PLAIN = "Send plain commands with literal program names, joined by | && || ; or newlines."
_HINTS = {
    "function_definition": "Functions are not accepted (a function name would make a later word an unvetted "
                           "command): write the commands out.",
    "c_style_for_statement": "Write `for i in {1..9}; do ...; done` or `for i in 1 2 3; do ...; done` instead of "
                             "for ((...)).",
    "negated_command": "Drop the `!` and test the status with || or `if ...; then ...; else ...; fi`.",
    "heredoc": "Put the command with the here-document on its own line: `cat <<'EOF' | grep x`, the body on the "
               "lines after it, then EOF.",
}
# Programs whose arguments name variables they set (a set variable is no longer a known integer).
_SETTERS = frozenset({"read", "printf", "mapfile", "readarray", "getopts", "declare", "typeset", "local", "export",
                      "readonly", "unset", "let"})
# File tests of [[ ]] and test: their operand is a path (policy.shell.evaluate checks it as one).
FILE_TESTS = frozenset({"-a", "-b", "-c", "-d", "-e", "-f", "-g", "-h", "-k", "-p", "-r", "-s", "-u", "-w", "-x",
                        "-G", "-L", "-N", "-O", "-S", "-ef", "-nt", "-ot"})


class _Unsupported(Exception):
    def __init__(self, message: str, hint: str = _HINT_PLAIN) -> None:
        super().__init__(message)
        self.hint = hint


def _parser() -> tree_sitter.Parser:
    parser = getattr(_LOCAL, "parser", None)
    if parser is None:
        parser = _LOCAL.parser = tree_sitter.Parser(_LANGUAGE)
    return parser


def analyse_shell(text: str) -> ShellAnalysis:
    """Facts of a shell command text, cached by text (big texts are not cached)."""
    return _analyse_cached.__wrapped__(text) if len(text) > 16 * 1024 else _analyse_cached(text)


@lru_cache(maxsize=4096)
def _analyse_cached(text: str) -> ShellAnalysis:
    if all(not line.strip() or line.strip().startswith("#") for line in text.splitlines()):
        return ShellAnalysis(text, error="the command is empty", error_rule="guard:empty")
    if "\x00" in text:
        return ShellAnalysis(text, error="the command holds a NUL byte", error_rule="guard:parse-error")
    tree = _parser().parse(text.encode())
    walker = _Walker(text)
    odd = _odd_blank(tree.root_node, text)
    if odd is not None:
        return ShellAnalysis(text, error=f"the command holds {odd} outside quotes (bash reads it as part of a word, "
                             "not as a blank)", error_rule="guard:parse-error",
                             error_hint="Use spaces, tabs and newlines (\\n, not \\r\\n) between words.")
    broken = _first_error(tree.root_node)
    if broken is not None:
        at = walker.pos(broken.start_byte)
        line = text.count("\n", 0, at) + 1
        what = f"`{broken.type}` is missing" if broken.is_missing else \
            f"cannot parse `{text[at : walker.pos(broken.end_byte)][:60]}`"
        return ShellAnalysis(text, error=f"cannot parse this command: {what} (line {line})",
                             error_rule="guard:parse-error", error_hint=_HINT_PLAIN)
    try:
        structure = walker.statements(tree.root_node.children, "top")
        walker.integers.verify()
    except w.BudgetError as error:
        return ShellAnalysis(text, error=str(error), error_rule="guard:budget")
    except ArithmeticRefusal as error:
        return ShellAnalysis(text, error=str(error), error_rule="guard:arithmetic", error_hint=error.hint)
    except _Unsupported as error:
        return ShellAnalysis(text, error=str(error), error_rule="guard:unsupported", error_hint=error.hint)
    except w.WordError as error:
        return ShellAnalysis(text, error=str(error), error_rule="guard:unsupported", error_hint=_HINT_PLAIN)
    except RecursionError:
        return ShellAnalysis(text, error="the command is nested too deeply", error_rule="guard:parse-error")
    except Exception as error:  # an unexpected tree shape: refuse, never guess
        return ShellAnalysis(text, error=f"cannot analyse this command ({type(error).__name__})",
                             error_rule="guard:parse-error", error_hint=_HINT_PLAIN)
    return ShellAnalysis(text, tuple(walker.commands), frozenset(walker.operators), frozenset(walker.constructs),
                         structure=structure, substitutions=tuple(walker.substitutions.items()),
                         loop_variables=frozenset(walker.loop_variables))


_ODD_BLANKS = {"\r": "a carriage return", "\f": "a form feed", "\v": "a vertical tab"}
_QUOTING = frozenset({"string", "raw_string", "ansi_c_string", "translated_string", "heredoc_body"})


def _odd_blank(root: tree_sitter.Node, text: str) -> str | None:
    """A carriage return, form feed or vertical tab that is not inside quotes or a here-document."""
    if not any(c in text for c in _ODD_BLANKS):
        return None
    data = text.encode()
    for at, byte in enumerate(data):
        char = chr(byte)
        if char not in _ODD_BLANKS:
            continue
        node: tree_sitter.Node | None = root.descendant_for_byte_range(at, at + 1)
        while node is not None and node.type not in _QUOTING:
            node = node.parent
        if node is None:
            return _ODD_BLANKS[char]
    return None


def _first_error(node: tree_sitter.Node) -> tree_sitter.Node | None:
    if not node.has_error:
        return None
    if node.is_error or node.is_missing:
        return node
    for child in node.children:
        found = _first_error(child)
        if found is not None:
            return found
    return node  # has_error with no error child: still refuse


def _unterminated(node: Node) -> Node:
    """A list without its trailing ; or newline (a rebuild writes its own)."""
    if node.kind == "list" and node.ops and node.ops[-1] in (";", "newline") and len(node.ops) == len(node.items):
        return Node("list", items=node.items, ops=node.ops[:-1]) if len(node.items) > 1 else node.items[0]
    return node


def _regroup(pipeline: Node) -> Node:
    """tree-sitter reads `a && b 2>&1 | c` as (a && b 2>&1) | c; bash's | binds tighter than && and ||:
    a && (b 2>&1 | c). A list can only come first (after it, `|` would have ended the list)."""
    first, rest = pipeline.items[0], pipeline.items[1:]
    if any(item.kind in ("list", "pipeline") for item in rest):
        raise _Unsupported("a pipeline of an unexpected shape is not accepted")
    if first.kind == "pipeline":  # (a | b 2>&1) | c
        return Node("pipeline", items=(*first.items, *rest), ops=(*first.ops, *pipeline.ops))
    if first.kind != "list":
        return pipeline
    last = first.items[-1]
    head = last.items if last.kind == "pipeline" else (last,)
    head_ops = last.ops if last.kind == "pipeline" else ()
    inner = _regroup(Node("pipeline", items=(*head, *rest), ops=(*head_ops, *pipeline.ops)))
    return Node("list", items=(*first.items[:-1], inner), ops=first.ops)


class _Walker:
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

    # -- statements --------------------------------------------------------------------------------
    def statements(self, children: list[tree_sitter.Node], context: str) -> Node:
        """A sequence of statements joined by ; & or newlines (program, do-group, braces, bodies)."""
        items: list[Node] = []
        ops: list[str] = []
        for child in children:
            if child.type == "comment":
                continue
            if not child.is_named:
                op = _STATEMENT_SEPARATORS.get(child.type)
                if op is None:
                    raise _Unsupported(f"`{child.type}` is not accepted here")
                if len(ops) == len(items):
                    raise _Unsupported(f"an empty command before `{child.type}` is not accepted")
                ops.append(op)
                continue
            if len(ops) < len(items):
                ops.append("newline")  # statements on lines of their own
            items.append(self.statement(child, context))
        if not items:
            raise _Unsupported("an empty command list is not accepted")
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
            return Node("subshell", items=(_unterminated(inner),))
        if kind == "compound_statement":
            first = node.children[0].type if node.children else ""
            if first == "((":
                return self.arithmetic_command(node)
            self.constructs.add("group")
            return Node("group", items=(_unterminated(self.statements(self.body(node, "{", "}"), context)),))
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
        raise _Unsupported(f"bash construct `{kind.replace('_', ' ')}` is not accepted", _HINTS.get(kind, _HINT_PLAIN))

    def body(self, node: tree_sitter.Node, opener: str, closer: str) -> list[tree_sitter.Node]:
        children = list(node.children)
        if not children or children[0].type != opener or children[-1].type != closer:
            raise _Unsupported(f"a `{opener} ... {closer}` block of an unexpected shape is not accepted")
        return children[1:-1]

    def flat(self, node: tree_sitter.Node, context: str, operators: tuple[str, ...], kind: str) -> Node:
        """`a && b || c` → one list (bash's && and || are left-associative and of equal precedence)."""
        items: list[Node] = []
        ops: list[str] = []
        for child in node.children:
            if child.type == "comment":
                continue
            if not child.is_named:
                if child.type not in operators:
                    raise _Unsupported(f"`{child.type}` is not accepted here")
                self.operators.add(child.type)
                ops.append(child.type)
            elif child.type == node.type == "list":
                inner = self.flat(child, context, operators, kind)
                items.extend(inner.items)
                ops.extend(inner.ops)
            else:
                items.append(self.statement(child, context))
        if len(items) != len(ops) + 1:
            raise _Unsupported(f"a `{kind}` of an unexpected shape is not accepted")
        return Node(kind, items=tuple(items), ops=tuple(ops))

    def pipeline(self, node: tree_sitter.Node, context: str) -> Node:
        # Each element runs in a subshell of its own: what it sets does not reach the others.
        with self.integers.scope():
            pipeline = self.flat(node, context, ("|", "|&"), "pipeline")
        return _regroup(pipeline)

    # -- simple commands ---------------------------------------------------------------------------
    def command_of(self, context: str, argv: tuple[w.Word, ...], assignments: list[str],
                   redirects: list[Redirect]) -> Node:
        self.commands.append(Command(argv, tuple(assignments), tuple(redirects), context))
        return Node("command", index=len(self.commands) - 1)

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
                    raise _Unsupported("a command name of an unexpected shape is not accepted")
                arguments.append(child.children[0])
            elif child.type in _WORD_KINDS or child.type == "$":  # `$` before a string: $"locale text"
                arguments.append(child)
            elif child.type == "comment":
                continue
            else:
                raise _Unsupported(f"bash construct `{child.type.replace('_', ' ')}` in a command is not accepted")
        argv = tuple(self.argument_words(arguments, context))
        if argv and argv[0].literal:
            self.setter(argv)
        return self.command_of(context, argv, assignments, redirects)

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
            raise _Unsupported("an assignment of an unexpected shape is not accepted")
        target = children[0]
        if target.type == "subscript":
            self.subscript(target)
        name = self.source(target.children[0] if target.type == "subscript" else target)
        values = [c for c in children[1:] if c.is_named]
        value_text = "".join(self.source(v) for v in values)
        for value in values:
            if value.type == "array":
                raise _Unsupported("array assignments are not accepted")
            self.word_nodes([value], context)
        if alone and target.type == "variable_name" and _INTEGER.fullmatch(value_text) \
                and any(c.type == "=" for c in children):
            self.integers.set(name)
        else:
            self.integers.taint(name)
        return self.source(node)

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
            elif child.type in _WORD_KINDS or child.type == "variable_name":
                arguments.append(child)
            else:
                raise _Unsupported(f"bash construct `{child.type.replace('_', ' ')}` in `{keyword}` is not accepted")
        argv.append(w.Word(keyword, (w.Segment(w.LIT, keyword),)))
        argv.extend(self.argument_words(arguments, context))
        if any(a.value.startswith("-") and "i" in a.value for a in argv[1:]):
            raise ArithmeticRefusal(f"`{keyword} -i` makes assignments arithmetic", "Drop `-i`.")
        for word in argv[1:]:
            self.integers.taint(word.value.split("=", 1)[0])
        return self.command_of(context, tuple(argv), [], [])

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
                    raise _Unsupported(f"cannot read the words around {gap.strip(' ')[:40]!r}")
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
            raise _Unsupported(f"bash construct `{kind.replace('_', ' ')}` inside a word is not accepted")
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
                raise _Unsupported("backticks inside ${...} are not accepted", "Use $(...) instead of backticks.")
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
                    raise _Unsupported("a substitution the parser did not recognise is not accepted",
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
                raise _Unsupported("backslashes inside backticks are not accepted", "Use $(...) instead of backticks.")
            inner = children[1:-1]
        elif children and children[0].type in ("$(", "<(", ">("):
            inner = children[1:-1]
        else:
            raise _Unsupported("a substitution of an unexpected shape is not accepted")
        with self.integers.scope():
            return _unterminated(self.statements(inner, kind))

    # -- redirections ------------------------------------------------------------------------------
    def redirected(self, node: tree_sitter.Node, context: str) -> Node:
        children = [c for c in node.children if c.type != "comment"]
        body, redirects = children[0], children[1:]
        if body.type not in ("command", "list", "pipeline"):
            if body.type in ("while_statement", "for_statement", "subshell", "compound_statement", "if_statement",
                             "case_statement"):
                raise _Unsupported("redirections on a ( ... ) or { ... } block or a loop are not accepted",
                                   "Pipe into it instead (`cat FILE | while read -r line; do ...; done`).")
            raise _Unsupported(f"a redirection on `{body.type.replace('_', ' ')}` is not accepted")
        heredoc = [r for r in redirects if r.type == "heredoc_redirect"]
        if heredoc and (len(heredoc) > 1 or redirects[-1] is not heredoc[0]):
            raise _Unsupported("more than one here-document on a line is not accepted", _HINTS["heredoc"])
        own = [self.redirect(r, context) for r in (redirects[:-1] if heredoc else redirects)]
        tail: list[tree_sitter.Node] = []
        if heredoc:
            document, more, tail = self.heredoc(heredoc[0], context)
            own += [document, *more]
        if body.type == "command":
            first = self.command(body, context, own)
        else:
            # tree-sitter hangs `a && b 2>&1` on the whole list; in bash the redirection is b's.
            first = self.redirect_last(self.statement(body, context), own)
        return self.continuation(first, tail, context)

    def redirect_last(self, node: Node, redirects: list[Redirect]) -> Node:
        last = node
        while last.kind in ("list", "pipeline") and last.items:
            last = last.items[-1]
        if last.kind != "command":
            raise _Unsupported("redirections on a ( ... ) or { ... } block or a loop are not accepted",
                               "Pipe into it instead (`cat FILE | while read -r line; do ...; done`).")
        command = self.commands[last.index]
        self.commands[last.index] = replace(command, redirects=command.redirects + tuple(redirects))
        return node

    def heredoc(self, node: tree_sitter.Node, context: str) -> tuple[Redirect, list[Redirect], list[tree_sitter.Node]]:
        """`cmd <<'EOF' [more redirections] [| next ...]` → (the document, the redirections after it,
        the rest of the line): tree-sitter puts what follows the delimiter on its line inside the
        here-document node; it becomes the rest of the pipeline or list (continuation)."""
        if context != "top" or self.loops:
            raise _Unsupported("a here-document inside a substitution, a loop or an if is not accepted",
                               _HINTS["heredoc"])
        self.constructs.add("heredoc")
        children = list(node.children)
        op = children[0].type
        start = next((c for c in children if c.type == "heredoc_start"), None)
        end = next((c for c in children if c.type == "heredoc_end"), None)
        if op not in ("<<", "<<-") or start is None or end is None:
            raise _Unsupported("a here-document without its end line is not accepted", _HINTS["heredoc"])
        raw = self.source(start)
        delimiter = re.sub(r"""['"\\]""", "", raw)
        quoted = raw != delimiter
        if not re.fullmatch(r"[A-Za-z0-9_]+", delimiter) or self.source(end) != delimiter:
            raise _Unsupported(f"the here-document delimiter `{raw}` is not accepted", "Use a plain word: <<'EOF'.")
        tail = [c for c in children[children.index(start) + 1 :] if c.type not in ("heredoc_body", "heredoc_end")]
        # The body: from the line after the command's line to the line holding the delimiter.
        line_end = self.text.find("\n", self.pos(start.end_byte))
        if tail:
            line_end = self.text.find("\n", self.pos(tail[-1].end_byte))
        end_at = self.pos(end.start_byte)
        line_start = self.text.rfind("\n", 0, end_at) + 1
        if line_end < 0 or line_start <= line_end or self.text[line_start:end_at].strip("\t" if op == "<<-" else ""):
            raise _Unsupported(f"the here-document (<<{delimiter}) does not end with its delimiter line",
                               _HINTS["heredoc"])
        after = self.text[self.pos(end.end_byte) : self.pos(end.end_byte) + 1]
        if after not in ("", "\n"):
            raise _Unsupported(f"the here-document (<<{delimiter}) does not end with its delimiter line",
                               _HINTS["heredoc"])
        text = self.text[line_end + 1 : line_start]
        lines = text.split("\n")[:-1]
        if any((line.lstrip("\t") if op == "<<-" else line) == delimiter for line in lines):
            raise _Unsupported("a here-document ends before the parser thought", _HINTS["heredoc"])
        if not quoted and any(c in text for c in "$`\\"):
            # An unquoted here-document expands its body: its substitutions would run unchecked.
            raise _Unsupported(f"a here-document (<<{delimiter}) that expands $, backticks or backslashes is not "
                               f"accepted", f"Quote its delimiter (<<'{delimiter}').")
        fd = None
        document = Redirect(op, fd, w.Word(text, (w.Segment(w.LIT, text, True),)))
        # Redirections of the same command written after the delimiter, then the rest of the line.
        more: list[Redirect] = []
        k = 0
        while k < len(tail) and tail[k].type in ("file_redirect", "herestring_redirect"):
            more.append(self.redirect(tail[k], context))
            k += 1
        return document, more, tail[k:]

    def continuation(self, first: Node, rest: list[tree_sitter.Node], context: str) -> Node:
        """The statement with the here-document, then `| cmd ...` or `&& cmd` after it on its line."""
        if not rest:
            return first
        if rest[0].type == "pipeline" and rest[0].children and rest[0].children[0].type in ("|", "|&"):
            op = rest[0].children[0].type
            self.operators.add(op)
            others = rest[0].children[1:]
            if len(rest) != 1 or len(others) != 1:
                raise _Unsupported("a here-document followed by this is not accepted", _HINTS["heredoc"])
            tail = self.statement(others[0], context)
            if tail.kind == "list":  # `cat <<EOF | grep x && ls`: the pipe binds tighter
                return Node("list", items=(self.continued(first, op, tail.items[0]), *tail.items[1:]), ops=tail.ops)
            return self.continued(first, op, tail)
        if len(rest) == 2 and not rest[0].is_named and rest[0].type in ("&&", "||") and rest[1].is_named:
            self.operators.add(rest[0].type)
            tail = self.statement(rest[1], context)
            items = tail.items if tail.kind == "list" else (tail,)
            ops = tail.ops if tail.kind == "list" else ()
            return Node("list", items=(first, *items), ops=(rest[0].type, *ops))
        raise _Unsupported("a here-document followed by this on its line is not accepted", _HINTS["heredoc"])

    @staticmethod
    def continued(first: Node, op: str, tail: Node) -> Node:
        items = tail.items if tail.kind == "pipeline" else (tail,)
        ops = tail.ops if tail.kind == "pipeline" else ()
        return _regroup(Node("pipeline", items=(first, *items), ops=(op, *ops)))

    def redirect(self, node: tree_sitter.Node, context: str) -> Redirect:
        fd: int | None = None
        op = ""
        targets: list[tree_sitter.Node] = []
        for child in node.children:
            if child.type == "file_descriptor":
                fd = int(self.source(child))
            elif not child.is_named:
                op = child.type
            elif child.type in _WORD_KINDS:
                targets.append(child)
            else:
                raise _Unsupported(f"bash construct `{child.type.replace('_', ' ')}` in a redirection is not accepted")
        if op in (">&-", "<&-"):
            return Redirect(op[:2], fd, None, dup="-")
        if node.type == "herestring_redirect":
            op = "<<<"
            self.constructs.add("herestring")
        if op in (">&", "<&") and len(targets) == 1:
            target = self.source(targets[0])
            if target.isdigit():
                return Redirect(op, fd, None, dup=int(target))
            if target == "-":
                return Redirect(op, fd, None, dup="-")
        if op not in (">", ">>", ">|", "&>", "&>>", "<>", "<", ">&", "<&", "<<<") or not targets:
            raise _Unsupported(f"the redirection `{self.source(node)}` is not accepted")
        words = self.argument_words(targets, context)
        if len(words) != 1:
            raise _Unsupported("a redirection target must be one word")
        return Redirect(op, fd, words[0])

    # -- compound commands -------------------------------------------------------------------------
    def for_loop(self, node: tree_sitter.Node, context: str) -> Node:
        """``for name in WORDS; do BODY; done`` with a lower-case name (it cannot replace PATH, IFS or
        any variable the shell or a program reads) → a `for` node Bastion rebuilds; other shapes
        (``for f; do``) stay facts, never rebuilt."""
        children = list(node.children)
        if children[0].type != "for":
            raise _Unsupported(f"`{children[0].type}` loops are not accepted", "Write `for NAME in WORDS; do ...; done`.")
        self.constructs.add("for")
        name_node = next((c for c in children if c.type == "variable_name"), None)
        group = children[-1]
        if name_node is None or group.type != "do_group":
            raise _Unsupported("a for loop of an unexpected shape is not accepted")
        name = self.source(name_node)
        has_in = any(c.type == "in" for c in children)
        values_nodes = [c for c in children[children.index(name_node) + 1 : -1] if c.is_named and c.type != "comment"]
        values = self.argument_words(values_nodes, context)
        literal_integers = has_in and all(v.literal and _INTEGER.fullmatch(v.value) for v in values)
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
        return Node("for", items=(_unterminated(inner),), name=name, words=tuple(values))

    def while_loop(self, node: tree_sitter.Node, context: str) -> Node:
        """``... | while [IFS=] read [-r] name...; do BODY; done`` with lower-case names → a `while`
        node Bastion rebuilds (the names are loop variables). Other while and until loops are facts
        (their commands are checked) that are never rebuilt: nothing bounds them but the timeout."""
        children = list(node.children)
        keyword = children[0].type
        group = children[-1]
        if keyword not in ("while", "until") or group.type != "do_group":
            raise _Unsupported(f"a {keyword} loop of an unexpected shape is not accepted")
        self.constructs.add(keyword)
        start = len(self.commands)
        condition = _unterminated(self.statements(children[1:-1], context))
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
            body = _unterminated(self.statements(self.body(group, "do", "done"), context))
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
                    raise _Unsupported("an if of an unexpected shape is not accepted")

        collect(list(node.children))
        self.loops += 1  # a here-document's body would have to follow the whole `if`: not accepted
        try:
            items = tuple(_unterminated(self.statements(part, context)) for part in parts)
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
            raise _Unsupported("`case` takes one word")
        header = [w.Word("case", (w.Segment(w.LIT, "case"),)), words[0]]
        bodies: list[Node] = []
        shapes: list[str] = []
        self.loops += 1
        try:
            for item in (c for c in children if c.type == "case_item"):
                parts = list(item.children)
                close = next((i for i, c in enumerate(parts) if c.type == ")"), None)
                if close is None:
                    raise _Unsupported("a case branch of an unexpected shape is not accepted")
                if parts and parts[0].type == "(":
                    raise _Unsupported("a case pattern opened with `(` is not accepted", "Write `PATTERN)`.")
                # PATTERN|PATTERN: tree-sitter may split one pattern (`*"x"`) into several nodes.
                patterns: list[list[tree_sitter.Node]] = [[]]
                for part in parts[:close]:
                    if part.type == "|":
                        patterns.append([])
                    elif part.is_named and part.type != "comment":
                        patterns[-1].append(part)
                    else:
                        raise _Unsupported(f"`{part.type}` in a case pattern is not accepted")
                count = 0
                for pattern in patterns:
                    if not pattern:
                        raise _Unsupported("an empty case pattern is not accepted")
                    made = self.argument_words(pattern, context, pattern=True)
                    if len(made) != 1:
                        raise _Unsupported("a case pattern must be one word")
                    header.append(made[0])
                    count += 1
                ending = parts[-1].type if parts[-1].type in (";;", ";&", ";;&") else ""
                if ending != ";;" and item is not [c for c in children if c.type == "case_item"][-1]:
                    raise _Unsupported(f"case branches ending in `{ending or '?'}` are not accepted", "End each branch with ;;.")
                statements = [c for c in parts[close + 1 :] if c.type not in (";;", ";&", ";;&")]
                with self.integers.scope():
                    body = _unterminated(self.statements(statements, context)) if any(
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
            raise _Unsupported("a test of an unexpected shape is not accepted")
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
                    raise _Unsupported("a [[ ]] operand must be one word")
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
                    raise _Unsupported(f"cannot read the words around {gap.strip(' ')[:40]!r}")
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
            elif node.type in _WORD_KINDS:
                out.append(("word", node))
            elif node.type == "comment":
                continue
            else:
                raise _Unsupported(f"bash construct `{node.type.replace('_', ' ')}` in a test is not accepted")
        return out

    def regex(self, text: str) -> w.Word:
        """The right side of =~, taken as written: only when nothing in it is quoted or expands (a
        quoted part matches literally, an expansion runs)."""
        if re.search(r"""['"`\\]|\$[A-Za-z_{(0-9@*#?$!-]""", text):
            raise _Unsupported("a regular expression with quotes, backslashes or expansions is not accepted",
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
                raise _Unsupported(f"`{child.type}` in (( )) is not accepted")
        start, end = self.pos(node.start_byte) + 2, self.pos(node.end_byte) - 2
        return Node("arithmetic", ops=(self.text[start:end].strip(),))
