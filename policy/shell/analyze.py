"""Shell text → ShellAnalysis. bashlex (a port of bash's own parser) gives the structure; words are
read by policy.shell.words. Anything bashlex cannot parse, or a node kind not handled here, denies."""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

import bashlex

from bastion.policy.shell import words as w
from bastion.policy.shell.facts import Command, Node, Redirect, ShellAnalysis

_SUBSTITUTIONS = {"commandsubstitution": w.CMDSUB, "processsubstitution": w.PROCSUB}
_COMPOUND = {"for": "for", "while": "while", "until": "until", "if": "if", "function": "function"}


class _Unsupported(Exception):
    pass


_DELIMITER = re.compile(r"""(-?)([ \t]*)(?:'([A-Za-z0-9_]+)'|"([A-Za-z0-9_]+)"|\\([A-Za-z0-9_]+))""")


def _for_bashlex(text: str) -> str:
    """The text as bashlex can parse it, same length up to a final newline (offsets stay valid).
    bashlex compares a quoted here-document delimiter (<<'EOF', <<"EOF", <<\\EOF) with its quotes
    and never finds the end; bash takes the unquoted word. Outside quotes and comments, the quotes of
    such delimiters become spaces (the walker still reads the original text to know it was quoted),
    and a text that ends on a delimiter line gets the newline bashlex needs."""
    if "<<" not in text:
        return text
    out = list(text)
    i, n, quote = 0, len(text), ""
    pending: list[tuple[str, bool]] = []
    while i < n:
        c = text[i]
        if quote == "'":
            quote = "" if c == "'" else quote
        elif c == "\\":
            i += 1
        elif quote == '"':
            quote = "" if c == '"' else quote
        elif c in "'\"":
            quote = c
        elif c == "#" and (i == 0 or text[i - 1] in " \t\n;&|()"):
            while i < n and text[i] != "\n":
                i += 1
            continue
        elif text.startswith("<<", i) and not text.startswith("<<<", i):
            m = _DELIMITER.match(text, i + 2)
            word = re.match(r"-?[ \t]*([A-Za-z0-9_]+)", text[i + 2 :])
            if m:
                for k in range(m.start(2) + len(m.group(2)), m.end()):
                    if text[k] in "'\"\\":
                        out[k] = " "
                pending.append((m.group(3) or m.group(4) or m.group(5), m.group(1) == "-"))
                i = m.end()
                continue
            if word:
                pending.append((word.group(1), text[i + 2] == "-"))
        elif c == "\n" and pending:
            # Skip the bodies: their quotes are text, not syntax.
            i += 1
            for delimiter, tabs in pending:
                while i < n:
                    end = text.find("\n", i)
                    end = n if end < 0 else end
                    line = text[i:end]
                    i = end + 1
                    if (line.lstrip("\t") if tabs else line) == delimiter:
                        break
            pending = []
            continue
        i += 1
    rewritten = "".join(out)
    return rewritten if rewritten.endswith("\n") else rewritten + "\n"


def analyse_shell(text: str) -> ShellAnalysis:
    """Facts of a shell command text, cached by text (big texts are not cached)."""
    return _analyse_cached.__wrapped__(text) if len(text) > 16 * 1024 else _analyse_cached(text)


@lru_cache(maxsize=4096)
def _analyse_cached(text: str) -> ShellAnalysis:
    if all(not line.strip() or line.strip().startswith("#") for line in text.splitlines()):
        return ShellAnalysis(text, error="the command is empty", error_rule="guard:empty")
    try:
        trees = bashlex.parse(_for_bashlex(text))
    except NotImplementedError as error:
        return ShellAnalysis(text, error=f"bash construct not accepted: {error}", error_rule="guard:unsupported")
    except Exception as error:  # bashlex raises ParsingError and, on odd input, others
        return ShellAnalysis(text, error=f"cannot parse this command: {str(error).splitlines()[0][:160]}",
                             error_rule="guard:parse-error")
    walker = _Walker(text)
    try:
        items = tuple(walker.node(tree, "top") for tree in trees)
    except w.BudgetError as error:
        return ShellAnalysis(text, error=str(error), error_rule="guard:budget")
    except (_Unsupported, w.WordError) as error:
        return ShellAnalysis(text, error=str(error), error_rule="guard:unsupported")
    except RecursionError:
        return ShellAnalysis(text, error="the command is nested too deeply", error_rule="guard:parse-error")
    except Exception as error:  # an unexpected parser shape: refuse, never guess
        return ShellAnalysis(text, error=f"cannot analyse this command ({type(error).__name__})",
                             error_rule="guard:parse-error")
    operators = set(walker.operators)
    if len(items) > 1:
        operators.add("newline")
    structure = items[0] if len(items) == 1 else Node("list", items=items, ops=("newline",) * (len(items) - 1))
    return ShellAnalysis(text, tuple(walker.commands), frozenset(operators), frozenset(walker.constructs),
                         structure=structure, substitutions=tuple(walker.substitutions.items()),
                         loop_variables=frozenset(walker.loop_variables))


def _unterminated(node: Node) -> Node:
    """A list without its trailing ; or newline (a rebuild writes its own)."""
    if node.kind == "list" and node.ops and node.ops[-1] in (";", "newline") and len(node.ops) == len(node.items):
        return Node("list", items=node.items, ops=node.ops[:-1]) if len(node.items) > 1 else node.items[0]
    return node


class _Walker:
    def __init__(self, text: str) -> None:
        self.text = text
        self.commands: list[Command] = []
        self.operators: set[str] = set()
        self.constructs: set[str] = set()
        self.substitutions: dict[int, Node] = {}
        self.base = 0  # offset of the text bashlex is walking inside self.text (substitutions)
        self.budget = w.Budget()  # brace expansion and time: a bomb is refused, not expanded
        self.loop_variables: set[str] = set()
        self.loops = 0  # depth inside rebuilt loops

    def inner(self, start: int, end: int, kind: str) -> Node:
        """A substitution's own text, parsed on its own: bashlex's nested parse can stop early (at a
        newline inside backticks, say), and what it drops would run unchecked."""
        opener = 1 if self.text[start] == "`" else 2
        closer = "`" if opener == 1 else ")"
        if self.text[end - 1 : end] != closer:
            # bashlex ended the substitution early (a newline or a line continuation inside it).
            raise _Unsupported("a substitution spanning lines is not accepted; put it on one line")
        source = self.text[start + opener : end - 1]
        if opener == 1 and "\\" in source:
            raise _Unsupported("backslashes inside backticks are not accepted; use $(...)")
        try:
            trees = bashlex.parse(source)
        except NotImplementedError as error:
            raise _Unsupported(f"bash construct not accepted: {error}") from error
        outer = self.base
        self.base = start + opener
        try:
            items = tuple(self.node(tree, kind) for tree in trees)
        finally:
            self.base = outer
        if len(items) > 1:
            self.operators.add("newline")
        return items[0] if len(items) == 1 else Node("list", items=items, ops=("newline",) * (len(items) - 1))

    def node(self, node: Any, context: str) -> Node:
        kind = node.kind
        if kind == "command":
            return self.command(node, context)
        if kind in ("list", "pipeline"):
            items: list[Node] = []
            ops: list[str] = []
            for k, part in enumerate(node.parts):
                if part.kind in ("operator", "pipe"):
                    op = part.op if part.kind == "operator" else part.pipe
                    op = "newline" if op == "\n" else op
                    if not (k == len(node.parts) - 1 and op in (";", "newline")):
                        self.operators.add(op)  # a trailing ; or newline only ends the list
                    ops.append(op)
                else:
                    items.append(self.node(part, context))
            return Node(kind, items=tuple(items), ops=tuple(ops))
        if kind == "compound":
            if self.text[self.base + node.pos[0] : self.base + node.pos[0] + 2] == "((":
                raise _Unsupported("arithmetic commands (( ... )) are not accepted")
            if getattr(node, "redirects", None):
                raise _Unsupported("redirections on a ( ... ) or { ... } block or a loop are not accepted; pipe into "
                                   "it instead (`cat FILE | while read -r line; do ...; done`)")
            opener = next((p.word for p in node.list if p.kind == "reservedword"), "")
            if not opener and len(node.list) == 1 and node.list[0].kind in _COMPOUND:
                return self.node(node.list[0], context)  # bashlex wraps loops and ifs in a compound
            wrap = {"(": "subshell", "{": "group"}.get(opener)
            if wrap is None:
                raise _Unsupported(f"bash block `{opener}` is not accepted")
            self.constructs.add(wrap)
            inner = [self.node(p, context) for p in node.list if p.kind != "reservedword"]
            if len(inner) != 1:
                raise _Unsupported("an empty or ambiguous ( ... ) block is not accepted")
            return Node(wrap, items=(inner[0],))
        if kind == "for":
            loop = self.for_loop(node, context)
            if loop is not None:
                return loop
        if kind == "if":
            branch = self.if_clause(node, context)
            if branch is not None:
                return branch
        if kind == "while":
            loop = self.while_read(node, context)
            if loop is not None:
                return loop
        if kind in _COMPOUND:
            # Loops, conditionals and functions: their commands are facts (and are checked), but
            # Bastion does not rebuild them, so they never run unless a rule allows the construct.
            self.constructs.add(_COMPOUND[kind])
            for part in node.parts:
                if part.kind == "word":
                    self.words(part, context)
                elif part.kind in ("list", "pipeline", "command", "compound") or part.kind in _COMPOUND:
                    self.node(part, context)
            return Node(_COMPOUND[kind])
        raise _Unsupported(f"bash construct `{kind}` is not accepted")

    def for_loop(self, node: Any, context: str) -> Node | None:
        """``for name in WORDS; do BODY; done`` with a lower-case name (it cannot replace PATH, IFS or
        any variable the shell or a program reads) → a `for` node Bastion rebuilds; None for other
        shapes (they stay facts, never rebuilt)."""
        parts = list(node.parts)
        kinds = [(p.kind, getattr(p, "word", None)) for p in parts]
        if len(parts) < 5 or kinds[0] != ("reservedword", "for") or parts[1].kind != "word" \
                or kinds[2] != ("reservedword", "in") or kinds[-1] != ("reservedword", "done"):
            return None
        name = parts[1].word
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", name) or self.text[self.base + parts[1].pos[0] : self.base + parts[1].pos[1]] != name:
            return None
        i, values = 3, []
        while i < len(parts) and parts[i].kind == "word":
            values.extend(self.words(parts[i], context))
            i += 1
        while i < len(parts) and parts[i].kind == "reservedword" and parts[i].word in (";", "\n"):
            i += 1
        if i + 2 != len(parts) - 1 or kinds[i] != ("reservedword", "do"):
            return None
        body = parts[i + 1]
        if body.kind not in ("list", "pipeline", "command", "compound", "for"):
            return None
        self.constructs.add("for")
        self.loop_variables.add(name)
        self.loops += 1
        try:
            inner = self.node(body, context)
        finally:
            self.loops -= 1
        return Node("for", items=(_unterminated(inner),), name=name, words=tuple(values))

    def while_read(self, node: Any, context: str) -> Node | None:
        """``... | while [IFS=] read [-r] name...; do BODY; done`` with lower-case names → a `while`
        node Bastion rebuilds; the names are loop variables. None for other shapes (`while true`)."""
        parts = list(node.parts)
        words = [(p.kind, getattr(p, "word", None)) for p in parts]
        if context != "top" or len(parts) != 5 or words[0] != ("reservedword", "while") \
                or words[2] != ("reservedword", "do") or words[4] != ("reservedword", "done") \
                or parts[3].kind not in ("list", "pipeline", "command", "compound"):
            return None
        start = len(self.commands)
        condition = _unterminated(self.node(parts[1], context))
        if condition.kind != "command" or condition.index != start or len(self.commands) != start + 1:
            del self.commands[start:]  # walked again as a plain, unrebuilt `while`
            return None
        read = self.commands[start]
        argv = [word.value for word in read.argv]
        names = [a for a in argv[1:] if a != "-r"]
        if not argv or argv[0] != "read" or not all(word.literal for word in read.argv) or read.redirects \
                or read.assignments not in ((), ("IFS=",)) or not names \
                or not all(re.fullmatch(r"[a-z_][a-z0-9_]*", name) for name in names):
            del self.commands[start:]
            return None
        self.commands[start] = Command(read.argv, read.assignments, (), "while-read")
        self.constructs.add("while")
        self.loop_variables.update(names)
        self.loops += 1
        try:
            body = _unterminated(self.node(parts[3], context))
        finally:
            self.loops -= 1
        return Node("while", items=(condition, body))

    def if_clause(self, node: Any, context: str) -> Node | None:
        """``if LIST; then LIST; [elif LIST; then LIST;]... [else LIST;] fi`` → an `if` node Bastion
        rebuilds (its keywords in ``ops``, one before each item); None for other shapes."""
        parts = list(node.parts)
        if not parts or (parts[0].kind, getattr(parts[0], "word", None)) != ("reservedword", "if") \
                or (parts[-1].kind, getattr(parts[-1], "word", None)) != ("reservedword", "fi"):
            return None
        keywords: list[str] = []
        bodies: list[Any] = []  # bashlex nodes (bashlex has no type hints)
        expected: tuple[str, ...] = ("if",)
        for part in parts[:-1]:
            if part.kind == "reservedword":
                if part.word not in expected or len(keywords) != len(bodies):
                    return None
                keywords.append(part.word)
                expected = {"if": ("then",), "elif": ("then",), "then": ("elif", "else"), "else": ()}[part.word]
            elif part.kind in ("list", "pipeline", "command", "compound") and len(bodies) == len(keywords) - 1:
                bodies.append(part)
            else:
                return None
        if len(bodies) != len(keywords) or keywords[-1] not in ("then", "else"):
            return None
        self.constructs.add("if")
        self.loops += 1  # a here-document's body would have to follow the whole `if`: not accepted
        try:
            items = tuple(_unterminated(self.node(body, context)) for body in bodies)
        finally:
            self.loops -= 1
        return Node("if", items=items, ops=tuple(keywords))

    def words(self, node: Any, context: str) -> list[w.Word]:
        subs: dict[int, tuple[int, str]] = {}
        for part in getattr(node, "parts", []) or []:
            if part.kind in _SUBSTITUTIONS:
                sub_kind = _SUBSTITUTIONS[part.kind]
                start, end = self.base + part.pos[0], self.base + part.pos[1]
                subs[start] = (end, sub_kind)
                self.constructs.add(sub_kind)
                self.substitutions[start] = self.inner(start, end, sub_kind)
            elif part.kind not in ("parameter", "tilde"):
                raise _Unsupported(f"bash construct `{part.kind}` inside a word is not accepted")
        start, end = self.base + node.pos[0], self.base + node.pos[1]
        return w.words(self.text[start:end], start, subs, self.budget)

    def command(self, node: Any, context: str) -> Node:
        argv: list[w.Word] = []
        assignments: list[str] = []
        redirects: list[Redirect] = []
        for part in node.parts:
            if part.kind == "word":
                argv.extend(self.words(part, context))
            elif part.kind == "assignment":
                self.words(part, context)  # substitutions in the value are commands too
                assignments.append(part.word)
            elif part.kind == "redirect":
                redirects.append(self.redirect(part, context))
            else:
                raise _Unsupported(f"bash construct `{part.kind}` in a command is not accepted")
        self.commands.append(Command(tuple(argv), tuple(assignments), tuple(redirects), context))
        return Node("command", index=len(self.commands) - 1)

    def redirect(self, node: Any, context: str) -> Redirect:
        op = node.type
        fd = node.input if isinstance(getattr(node, "input", None), int) else None
        if op in ("<<", "<<-"):
            if context != "top" or self.loops:
                raise _Unsupported("a here-document inside a substitution, a loop or an if is not accepted; "
                                   "write it as a command of its own")
            self.constructs.add("heredoc")
            value = getattr(getattr(node, "heredoc", None), "value", None)
            delimiter = getattr(node.output, "word", "") if not isinstance(node.output, int) else ""
            if value is None or not delimiter:
                raise _Unsupported("a here-document Bastion cannot read is not accepted")
            lines = value.split("\n")
            if lines[-1] != delimiter:
                raise _Unsupported(f"the here-document (<<{delimiter}) does not end with its delimiter line")
            body = "".join(line + "\n" for line in lines[:-1])
            quoted = any(q in self.text[self.base + node.pos[0] : self.base + node.pos[1]] for q in "'\"\\")
            if not quoted and any(c in body for c in "$`\\"):
                # An unquoted here-document expands its body: its substitutions would run unchecked.
                raise _Unsupported(f"a here-document (<<{delimiter}) that expands $, backticks or backslashes is not "
                                   f"accepted; quote its delimiter (<<'{delimiter}')")
            return Redirect(op, fd, w.Word(body, (w.Segment(w.LIT, body, True),)))
        output = node.output
        if isinstance(output, int):
            return Redirect(op, fd, None, dup=output)
        if op in (">&", "<&") and (output == "-" or getattr(output, "word", None) == "-"):
            return Redirect(op, fd, None, dup="-")
        if isinstance(output, str):
            raise _Unsupported(f"redirection target `{output}` is not accepted")
        targets = self.words(output, context)
        if len(targets) != 1:
            raise _Unsupported("a redirection target must be one word")
        if op == "<<<":
            self.constructs.add("herestring")
        return Redirect(op, fd, targets[0])
