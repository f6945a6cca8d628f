"""What the shell analyser knows about a command text: immutable facts."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from bastion.policy.shell.words import Word


@dataclass(frozen=True)
class Redirect:
    op: str  # > >> < <> >| &> &>> >& <& << <<- <<<
    fd: int | None  # the redirected descriptor, when written (2> ...)
    target: Word | None  # a file (or here-string) word
    dup: int | str | None = None  # 2>&1 → 1; >&- → "-"

    @property
    def writes(self) -> bool:
        return self.op in (">", ">>", ">|", "&>", "&>>", "<>") or (self.op == ">&" and self.target is not None)

    @property
    def is_dup(self) -> bool:
        return self.dup is not None


@dataclass(frozen=True)
class Command:
    """One simple command, after brace expansion and quote removal."""

    argv: tuple[Word, ...]
    assignments: tuple[str, ...] = ()
    redirects: tuple[Redirect, ...] = ()
    # Where it sits: "top", "command-substitution", "process-substitution"; or what it is: "while-read",
    # "case" (the word and patterns of a case), "conditional" (the words of [[ ]]).
    context: str = "top"

    @property
    def program(self) -> Word | None:
        return self.argv[0] if self.argv else None

    @property
    def args(self) -> tuple[Word, ...]:
        return self.argv[1:]

    def summary(self) -> dict[str, object]:
        out: dict[str, object] = {"argv": [w.value for w in self.argv]}
        if self.assignments:
            out["assignments"] = list(self.assignments)
        if self.redirects:
            out["redirects"] = [f"{r.fd if r.fd is not None else ''}{r.op}{r.target.value if r.target else r.dup}"
                                for r in self.redirects]
        if self.context != "top":
            out["context"] = self.context
        dynamic = sorted({e for w in self.argv for e in w.expansions})
        if dynamic:
            out["expansions"] = dynamic
        return out


@dataclass(frozen=True)
class Node:
    """The command's structure, for rebuilding it: ``command`` (index into commands), ``list`` and
    ``pipeline`` (items joined by ops), ``subshell`` and ``group`` (one item), ``for``, ``while`` (ops:
    while or until; items: condition, body), ``if`` (ops: keywords), ``case`` (index: the `case` fact
    holding the word and patterns; ops: patterns per branch; items: branch bodies), ``test`` (index:
    the `[[` fact; ops: each word's role), ``arithmetic`` (ops: the expression), or an unrebuildable kind."""

    kind: str
    index: int = -1
    items: tuple[Node, ...] = ()
    ops: tuple[str, ...] = ()
    # `for`: the loop variable and the words it takes (after brace expansion).
    name: str = ""
    words: tuple[Word, ...] = ()


def word_shape(word: Word) -> tuple[tuple[str, str], ...]:
    """A word as compared after rebuilding: segment kinds and texts (substitutions by kind only)."""
    return tuple((s.kind, "" if s.kind in ("command-substitution", "process-substitution") else s.text)
                 for s in word.segments)


@dataclass(frozen=True)
class ShellAnalysis:
    text: str
    commands: tuple[Command, ...] = ()
    operators: frozenset[str] = frozenset()  # | |& && || ; & newline
    constructs: frozenset[str] = frozenset()  # subshell group for while until if function arithmetic heredoc ...
    error: str | None = None
    error_rule: str | None = None
    error_hint: str | None = None  # what would pass instead, when the text was refused before any rule
    structure: Node | None = None
    # Absolute start offset of each command/process substitution → its structure.
    substitutions: tuple[tuple[int, Node], ...] = ()
    # Variables set by a rebuilt `for` loop to one of its vetted words.
    loop_variables: frozenset[str] = frozenset()

    def read_variables(self) -> Iterator[str]:
        """The variables each `while read` sets (a value that arrives at run time, one line each)."""
        for command in self.commands:
            if command.context == "while-read":
                yield from (word.value for word in command.args if word.value != "-r")

    def shape(self) -> tuple[object, ...]:
        """Everything that must survive a rebuild unchanged."""
        commands = tuple(
            (tuple(word_shape(w) for w in c.argv), c.assignments,
             tuple((r.op, r.fd, word_shape(r.target) if r.target else None, r.dup) for r in c.redirects), c.context)
            for c in self.commands)
        return commands, self.operators, self.constructs, tuple(_loops(self.structure)), self.loop_variables

    def summary(self) -> dict[str, object]:
        out: dict[str, object] = {"commands": [c.summary() for c in self.commands]}
        if self.operators:
            out["operators"] = sorted(self.operators)
        if self.constructs:
            out["constructs"] = sorted(self.constructs)
        if self.error:
            out["error"] = self.error
        return out


def _loops(node: Node | None) -> list[object]:
    """Each `for` loop's variable and words and each `if`'s keywords, in order: a rebuild must keep
    them too."""
    if node is None:
        return []
    out: list[object] = []
    if node.kind == "for":
        out.append((node.name, tuple(word_shape(w) for w in node.words)))
    elif node.kind in ("if", "while", "case", "test", "arithmetic"):
        out.append((node.kind, node.ops, len(node.items)))
    for item in node.items:
        out.extend(_loops(item))
    return out
