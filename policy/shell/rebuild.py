"""Rebuild a vetted command from its structure: every literal quoted by Bastion, only the allowed
expansions left for bash, joined by the operators the policy allowed. The agent's text is never run.

The rebuilt text is parsed again and must have the same shape as the original (``rebuild`` raises
otherwise), so a quoting mistake here cannot change what runs.
"""

from __future__ import annotations

import shlex

from bastion.policy.shell.analyze import analyse_shell
from bastion.policy.shell.facts import Command, Node, Redirect, ShellAnalysis
from bastion.policy.shell.words import ARITH, CMDSUB, GLOB, LIT, PARAM, PARAM_OP, PROCSUB, TILDE, Word


class RebuildError(ValueError):
    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint


def rebuild(analysis: ShellAnalysis) -> str:
    if analysis.structure is None:
        raise RebuildError("nothing to rebuild")
    builder = _Builder(analysis)
    text = builder.node(analysis.structure) + builder.bodies()
    again = analyse_shell(text)
    if again.error is not None or again.shape() != analysis.shape():
        raise RebuildError("the rebuilt command does not parse back to the vetted structure")
    return text


class _Builder:
    def __init__(self, analysis: ShellAnalysis) -> None:
        self.analysis = analysis
        self.substitutions = dict(analysis.substitutions)
        self.pending: list[tuple[str, str]] = []  # here-document (delimiter, body) waiting for the line's end

    def bodies(self) -> str:
        """The here-document bodies of the line just ended, each closed by its delimiter."""
        out = "".join(f"\n{body}{delimiter}" for delimiter, body in self.pending)
        self.pending = []
        return out

    def node(self, node: Node) -> str:
        if node.kind == "command":
            return self.command(self.analysis.commands[node.index])
        if node.kind in ("list", "pipeline"):
            out = []
            for i, item in enumerate(node.items):
                out.append(self.node(item))
                if i < len(node.ops):
                    op = node.ops[i]
                    out.append(self.bodies() + "\n" if op == "newline" else f" {op} ")
            return "".join(out).rstrip(" ")
        if node.kind == "for" and node.items:
            inner = self.node(node.items[0]).rstrip()
            words = " ".join(self.word(w) for w in node.words)
            return f"for {node.name} in {words} ; do {inner if inner.endswith((';', '&')) else inner + ' ;'} done"
        if node.kind == "while" and node.items:
            body = self.node(node.items[1]).rstrip()
            condition = self.node(node.items[0]).rstrip()
            condition = condition if condition.endswith((";", "&")) else condition + " ;"
            return f"{node.ops[0]} {condition} do {body if body.endswith((';', '&')) else body + ' ;'} done"
        if node.kind == "case":
            return self.case(node)
        if node.kind == "test":
            return self.test(node)
        if node.kind == "arithmetic" and node.ops:
            return f"(( {node.ops[0]} ))"  # only integers, known variables and operators (policy.shell.arithmetic)
        if node.kind == "if" and node.items:
            out = []
            for keyword, item in zip(node.ops, node.items, strict=True):
                inner = self.node(item).rstrip()
                out.append(f"{keyword} {inner if inner.endswith((';', '&')) else inner + ' ;'}")
            return " ".join(out) + " fi"
        if node.kind == "subshell":
            return f"( {self.node(node.items[0])} )"
        if node.kind == "group":
            inner = self.node(node.items[0]).rstrip()
            return f"{{ {inner if inner.endswith((';', '&')) else inner + ' ;'} }}"
        if node.kind in ("while", "until", "for"):
            raise RebuildError(f"this `{node.kind}` loop is not run by Bastion: only `for NAME in WORDS; do ...; done` "
                               "and `... | while read NAME; do ...; done` are (a loop with another condition may never end)",
                               "Loop over the words themselves (`for f in *.py; do ...; done`, `for i in {1..5}; do ...; "
                               "done`) or pipe lines into `while read -r line; do ...; done`.")
        raise RebuildError(f"`{node.kind}` blocks are not run by Bastion")

    def case(self, node: Node) -> str:
        """``case WORD in PATTERN|PATTERN) BODY ;; ... esac``: patterns keep their globs, the rest quoted."""
        header = self.analysis.commands[node.index].argv
        out = [f"case {self.word(header[1])} in"]
        at = 2
        for count, body in zip(node.ops, node.items, strict=True):
            patterns = header[at : at + int(count)]
            at += int(count)
            inner = self.node(body).rstrip() if body.items or body.kind != "list" else ""
            out.append(f"{' | '.join(self.word(p) for p in patterns)} ) {inner} ;;")
        return " ".join(out) + " esac"

    def test(self, node: Node) -> str:
        """``[[ ... ]]``: operators as written, operands quoted (a pattern keeps its globs), a regex as
        written (policy.shell.analyze accepts only one with nothing quoted or expanded)."""
        argv = self.analysis.commands[node.index].argv
        out = ["[["]
        for role, word in zip(node.ops, argv[1:-1], strict=True):
            out.append(word.value if role in ("op", "regex") else self.word(word))
        return " ".join(out) + " ]]"

    def command(self, command: Command) -> str:
        if command.context == "while-read" and command.assignments == ("IFS=",):
            return "IFS= " + " ".join(self.word(w) for w in command.argv)
        if command.assignments:
            raise RebuildError("environment assignments are not run by Bastion")
        parts = [self.word(w) for w in command.argv]
        parts += [self.redirect(r) for r in command.redirects]
        return " ".join(parts)

    def redirect(self, redirect: Redirect) -> str:
        fd = "" if redirect.fd is None else str(redirect.fd)
        if redirect.dup is not None:
            return f"{fd}{redirect.op}{redirect.dup}"
        if redirect.target is None:
            raise RebuildError("here-documents are not run by Bastion")
        if redirect.op in ("<<", "<<-"):
            # Always quoted: the body is delivered exactly as vetted, nothing in it expands.
            body = redirect.target.value
            lines = set(body.split("\n"))
            delimiter = next(d for d in (f"BASTION_EOF{k or ''}" for k in range(len(lines) + 2)) if d not in lines
                             and "\t" + d not in lines)
            self.pending.append((delimiter, body))
            return f"{fd}{redirect.op}'{delimiter}'"
        return f"{fd}{redirect.op} {self.word(redirect.target)}"

    def word(self, word: Word) -> str:
        kinds = {s.kind for s in word.segments}
        quoted_subs = all(s.quoted for s in word.segments if s.kind == CMDSUB)
        if CMDSUB in kinds and quoted_subs and not kinds & {GLOB, TILDE, PROCSUB}:
            return self.double_quoted(word)
        out = []
        for segment in word.segments:
            if segment.kind == LIT:
                out.append(shlex.quote(segment.text) if segment.text else "''")
            elif segment.kind in (GLOB, TILDE):
                out.append(segment.text)
            elif segment.kind in (PARAM, PARAM_OP):
                # Double-quoted: one word, never globbed; an operator's operands are plain
                # (policy.shell.parameter), so they mean the same inside the quotes.
                out.append(f'"${{{segment.text}}}"')
            elif segment.kind == CMDSUB:
                inner = f"$({self.node(self.substitutions[segment.start])})"
                out.append(f'"{inner}"' if segment.quoted else inner)  # unquoted output splits, as written
            elif segment.kind == PROCSUB:
                opener = self.analysis.text[segment.start]
                out.append(f"{opener}({self.node(self.substitutions[segment.start])})")
            elif segment.kind == ARITH:
                out.append(f"$(({segment.text}))")  # vetted: integers, known variables, operators
            else:
                raise RebuildError(f"`{segment.kind}` expansions are not run by Bastion")
        return "".join(out) or "''"

    def double_quoted(self, word: Word) -> str:
        """A word with a command substitution, as one double-quoted string (no splitting, no globbing)."""
        out = ['"']
        for segment in word.segments:
            if segment.kind == LIT:
                out.append("".join("\\" + c if c in '\\$`"' else c for c in segment.text))
            elif segment.kind in (PARAM, PARAM_OP):
                out.append(f"${{{segment.text}}}")
            elif segment.kind == CMDSUB:
                out.append(f"$({self.node(self.substitutions[segment.start])})")
            elif segment.kind == ARITH:
                out.append(f"$(({segment.text}))")
            else:
                raise RebuildError(f"`{segment.kind}` expansions are not run by Bastion")
        out.append('"')
        return "".join(out)
