"""What a word may be at run time, for the checks that judge it as a path (policy.shell.evaluate).

A variable of a rebuilt `for` loop takes one of the loop's words (checked on their own too), so a
word using it is judged once per loop word: `for d in /; do cat ${d}proc/1/environ; done` is
`/proc/1/environ`. A `while read` variable may hold anything: it stays opaque (`${line}`), as do the
allow-listed variables (HOME and PWD are placed by policy.shell.evaluate._path_forms).

A parameter expansion with an operator (policy.shell.parameter) yields, per value: the value or its
word (`${x:-w}`, `${x:?w}`), the word or nothing (`${x:+w}`), digits (`${#x}`), or a value derived
from the variable's (trimmed, replaced, recased, cut). A derived value is computed exactly from a
literal loop word or the working directory; from a loop word with a pattern (`*.py`, run as `./*.py`)
only where the result is again a pattern bash's matches must fit (`${f%.py}` of `./*.py` is `./*`;
a pattern cannot match `/`, so `${f##*/}` and `${f%/*}` cut at a slash the word shows): otherwise
the word is refused as a path nobody can bound."""

from __future__ import annotations

import re
from collections.abc import Iterator
from functools import lru_cache
from itertools import product

from bastion.policy.shell import parameter
from bastion.policy.shell.facts import Node, ShellAnalysis
from bastion.policy.shell.words import GLOB, LIT, PARAM, PARAM_OP, Segment, Word

Bindings = dict[str, "tuple[Word, ...] | None"]  # None: any value
MAX_FORMS = 1024  # values of one word
MAX_TOTAL = 20_000  # values of all the words of one text, per check (each costs a path check)


class Budget:
    """How many values one check may still judge: a text that repeats `$n` of a long loop must not
    make the gateway judge millions of paths."""

    def __init__(self, total: int = MAX_TOTAL) -> None:
        self.left = total

    def spend(self, count: int) -> bool:
        self.left -= count
        return self.left >= 0


def trees(analysis: ShellAnalysis) -> list[Node]:
    """The text's structure and the structure of every command and process substitution in it."""
    return ([analysis.structure] if analysis.structure is not None else []) + [n for _, n in analysis.substitutions]


def bindings(analysis: ShellAnalysis) -> Bindings:
    """Each loop variable's possible values: the words of every `for` loop naming it (and nothing, where
    a command outside such a loop uses it: before the loop it is unset), or None (any value) when a
    `while read` sets it."""
    out: dict[str, tuple[Word, ...] | None] = {}
    inside: dict[str, set[int]] = {}
    subs = dict(analysis.substitutions)

    def commands(node: Node) -> set[int]:
        found = {node.index} if node.index >= 0 else set()
        for item in node.items:
            found |= commands(item)
        for index in list(found):  # and the commands of the substitutions in them
            for word in _words(analysis, index):
                for segment in word.segments:
                    if segment.start in subs:
                        found |= commands(subs[segment.start])
        return found

    def walk(node: Node) -> None:
        if node.kind == "for" and node.name:
            known = out.get(node.name, ())
            out[node.name] = None if known is None else known + node.words
            inside.setdefault(node.name, set()).update(commands(node))
        for item in node.items:
            walk(item)

    for tree in trees(analysis):
        walk(tree)
    for index in range(len(analysis.commands)):
        for name in {n for word in _words(analysis, index) for n in _names(word)}:
            known = out.get(name)
            if known is not None and index not in inside.get(name, set()) and _UNSET not in known:
                out[name] = known + (_UNSET,)
    for name in analysis.read_variables():
        out[name] = None
    return out


_UNSET = Word("", (Segment(LIT, ""),))
_INTEGER_WORD = (Segment(LIT, "0"),)


def _integer(segments: tuple[Segment, ...]) -> bool:
    return len(segments) == 1 and segments[0].kind == LIT and re.fullmatch(r"-?[0-9]+", segments[0].text) is not None


def _words(analysis: ShellAnalysis, index: int) -> list[Word]:
    command = analysis.commands[index]
    return list(command.argv) + [r.target for r in command.redirects if r.target is not None]


def _names(word: Word) -> Iterator[str]:
    for segment in word.segments:
        if segment.kind == PARAM:
            yield segment.text
        elif segment.kind == PARAM_OP:
            yield from expansion(segment).variables


@lru_cache(maxsize=1024)
def expansion(segment: Segment) -> parameter.Expansion:
    parsed = parameter.parse(segment.text, segment.quoted)
    if isinstance(parsed, str):  # words.lex makes a PARAM_OP segment only of what parses
        raise ValueError(parsed)
    return parsed


def forms(word: Word, binds: Bindings, cwd: str, fold_digits: bool = False) -> list[Word] | str:
    """The words ``word`` may be at run time (patterns and opaque variables kept), or why that
    cannot be bounded. ``fold_digits``: the caller's patterns hold no digit, so integer loop words
    (`for i in {1..500}`) all judge alike and stand for one another as `0`."""
    if not any(s.kind in (PARAM, PARAM_OP) for s in word.segments):
        return [word]
    choices: list[list[tuple[Segment, ...]]] = []
    count = 1
    for segment in word.segments:
        options = _segment_forms(segment, binds, cwd)
        if isinstance(options, str):
            return options
        if fold_digits and segment.kind == PARAM:
            options = list(dict.fromkeys(_INTEGER_WORD if _integer(o) else o for o in options))
        choices.append(options)
        count *= len(options)
        if count > MAX_FORMS:
            return f"`{word.value}` may take more than {MAX_FORMS} values to check as a path"
    return [Word(word.source, tuple(s for part in combination for s in part)) for combination in product(*choices)]


def _values(name: str, binds: Bindings, segment: Segment) -> list[tuple[Segment, ...]]:
    words = binds.get(name)
    if words is None:
        return [(segment,)]  # opaque: HOME, PWD, USER, a `while read` variable
    return [w.segments for w in words] or [()]


def _segment_forms(segment: Segment, binds: Bindings, cwd: str) -> list[tuple[Segment, ...]] | str:
    if segment.kind == PARAM:
        return _values(segment.text, binds, segment)
    if segment.kind != PARAM_OP:
        return [(segment,)]
    e = expansion(segment)
    plain = Segment(PARAM, e.name, segment.quoted)
    if e.op == "len":
        return [(Segment(LIT, "0"),)]
    if not e.derived:
        mine = _values(e.name, binds, plain)
        if e.op.endswith("?"):
            return mine  # the value, or bash stops with the message
        theirs = _word_forms(e.words[0], binds)
        return mine + theirs if e.op.endswith("-") else [()] + theirs
    if e.name == "PWD" and e.name not in binds:
        return [(Segment(LIT, text),) for text in _apply(e, cwd, binds)]
    words = binds.get(e.name)
    if words is None:
        return [(segment,)]  # derived from a value nobody bounds: bounded no better than the variable
    out: list[tuple[Segment, ...]] = []
    for word in words:
        if word.literal:
            out += [(Segment(LIT, text),) for text in _apply(e, word.value, binds)]
            continue
        derived = _derived_pattern(e, word.segments)
        if derived is None:
            return (f"`${{{segment.text}}}` of the loop word `{word.value}` cannot be bounded as a path "
                    f"(a pattern's matches can be cut anywhere)")
        out.append(derived)
    return out


def _word_forms(text: str, binds: Bindings) -> list[tuple[Segment, ...]]:
    """An operand word (letters, digits, ._/,:@%+=-, quoted blanks and $NAME): literal text and
    variables, each variable by its values."""
    choices: list[list[tuple[Segment, ...]]] = []
    for m in re.finditer(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?|[^$]+", text):
        if m.group(1):
            choices.append(_values(m.group(1), binds, Segment(PARAM, m.group(1))))
        else:
            choices.append([(Segment(LIT, m.group()),)])
    return [tuple(s for part in combination for s in part) for combination in product(*choices)]


def _apply(e: parameter.Expansion, value: str, binds: Bindings) -> list[str]:
    """Exact results, one per value of the replacement word: a variable nobody bounds stays in it as
    `${NAME}` (the path check reads `${HOME}` as the home directory), its literal text around it kept
    (`${f/x/$HOME/.ssh/id_rsa}` is `${HOME}/.ssh/id_rsa`, not an unknown)."""
    choices = [[_text(form) for form in _word_forms(w, binds)] for w in e.words]
    return list(dict.fromkeys(parameter.apply(e, value, words) for words in product(*choices)))


def _text(form: tuple[Segment, ...]) -> str:
    return "".join(f"${{{s.text}}}" if s.kind == PARAM else s.text for s in form)


def _derived_pattern(e: parameter.Expansion, segments: tuple[Segment, ...]) -> tuple[Segment, ...] | None:
    """``e`` applied to every match of a pathname pattern (literal text and globs, which never match
    `/`), as a pattern again; None where the result depends on what the globs matched."""
    if any(s.kind not in (LIT, GLOB) for s in segments):
        return None
    parts = list(segments)
    find = e.operands[0] if e.operands else ""
    if e.op in ("#", "##") and parts[0].kind == GLOB and find[:1] in (".", "/"):
        return segments  # a match never starts with `.` (globs skip dot files) or `/`: unchanged
    if find in ("*/", "/*") and e.op in ("#", "##", "%", "%%"):
        return _at_slash(e.op, find, parts)
    head, tail = (parts[:-1], parts[-1].text) if parts[-1].kind == LIT else (parts, None)
    rest, lead = (parts[1:], parts[0].text) if parts[0].kind == LIT else (parts, None)
    match = re.compile("".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in find),
                       re.DOTALL).fullmatch
    fixed = "*" not in find  # every match has len(find) characters
    if e.op in ("%", "%%", "#", "##") and (fixed or e.op in ("%", "#")):
        suffix = e.op[0] == "%"
        text = (tail if suffix else lead) or ""

        def cut(n: int) -> tuple[Segment, ...]:
            if suffix:
                return tuple(head) + ((Segment(LIT, text[: len(text) - n]),) if tail is not None else ())
            return ((Segment(LIT, text[n:]),) if lead is not None else ()) + tuple(rest)

        # Ends this short lie in the literal text every match starts or ends with.
        lengths = [len(find)] if fixed else list(range(len(text) + 1))
        for n in lengths:
            if n <= len(text) and match(text[len(text) - n:] if suffix else text[:n]):
                return cut(n)
        return segments if fixed and len(find) <= len(text) else None
    if e.op in ("%%", "##") and find == "*":
        return (Segment(LIT, ""),)
    if e.op == "%%" and len(find) == 2 and find[1] == "*" and find[0] not in "*?" and find[0] in (lead or ""):
        return (Segment(LIT, (lead or "")[: (lead or "").index(find[0])]),)  # from the first `c`, shown literally
    if e.op == "##" and len(find) == 2 and find[0] == "*" and find[1] not in "*?" and find[1] in (tail or ""):
        return (Segment(LIT, (tail or "")[(tail or "").rindex(find[1]) + 1:]),)  # after the last `c`
    if parameter.case_changes(e) and not any(s.kind == GLOB and s.text.startswith("[") for s in segments):
        every = e.op in ("^^", ",,")
        change = str.upper if e.op[0] == "^" else str.lower
        fits = re.compile("." if find in ("", "?") else re.escape(find)).fullmatch
        out = []
        for k, s in enumerate(parts):
            if s.kind == LIT and (every or k == 0):
                text = "".join(change(c) if c.isascii() and fits(c) and (every or i == 0) else c
                               for i, c in enumerate(s.text))
                out.append(Segment(LIT, text, s.quoted))
            else:
                out.append(s)
        return tuple(out)
    return None


def _at_slash(op: str, find: str, parts: list[Segment]) -> tuple[Segment, ...]:
    """`${f##*/}`, `${f#*/}`, `${f%/*}`, `${f%%/*}` of a pattern: globs never match `/`, so the first
    and last slash of every match are the pattern's own literal ones."""
    slashes = [(k, i) for k, s in enumerate(parts) if s.kind == LIT for i, c in enumerate(s.text) if c == "/"]
    if not slashes:
        return tuple(parts)  # no match: unchanged
    last = op in ("##", "%")
    k, i = slashes[-1] if last else slashes[0]
    if op in ("#", "##"):
        return (Segment(LIT, parts[k].text[i + 1:]), *parts[k + 1:])
    return (*parts[:k], Segment(LIT, parts[k].text[:i]))


def same_as_written(e: parameter.Expansion, word: Word) -> bool:
    """Whether ``e`` of a variable looping over ``word`` gives what the agent meant although Bastion
    runs the word with ./ before its leading glob (`*.py` as `./*.py`, so that no match reads as an
    option): true where the operator only touches the end (`${f%.py}`, `${f%.*}`, `${f##*/}`), strips
    exactly that ./ (`${f#./}`) or recases every letter; false for `${#f}`, `${f%%.*}`, `${f%/*}`,
    `${f^}`, a substring ..., which would count or cut the ./."""
    if not word.dot_slash or e.op in ("^^", ",,") or not (e.derived or e.op == "len"):
        return True
    if e.op in ("len", ":"):
        return False  # counts or cuts the ./
    find = e.operands[0] if e.operands else ""
    stripped = word.segments[1:]
    derived = _derived_pattern(e, word.segments)
    if derived is None:
        return True  # refused as a path anyway (policy.shell.evaluate)
    if e.op == "%" or (e.op == "%%" and "*" not in find):  # the same cut at the end, after the ./
        bare = _derived_pattern(e, stripped)
        shown = "".join(s.text for s in derived)
        return bare is not None and shown in ("".join(s.text for s in bare), "./" + "".join(s.text for s in bare))
    if e.op == "##" and len(find) == 2 and find[0] == "*" and find[1] != "/" and find[1] in word.segments[-1].text:
        return word.segments[-1].kind == LIT
    if e.op == "##" and find == "*/":
        return sum(s.text.count("/") for s in word.segments if s.kind == LIT) == 1
    if e.op in ("#", "##") and find[:1] in (".", "/"):
        shown = "".join(s.text for s in derived)
        return shown in ("".join(s.text for s in stripped), "".join(s.text for s in word.segments))
    return False
