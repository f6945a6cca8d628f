"""What a `while read` variable may hold: the lines the loop reads, bounded by the program that wrote them.

`... | while read -r f; do cat "$f"; done` reads whatever the left side prints: `printf '%s\\n'
/etc/shadow` as well as `git ls-files`. A read variable is *bounded* only where the loop reads, as
its one variable, the lines of a program that lists paths inside directories the policy judged
(policy.shell.evaluate passes ``inside``): `find DIRS` (printing paths only), `git ls-files`, `grep -l`
/ `-L` / `-rl`, or a plain `ls`, possibly through filters that pass lines on unchanged (sort, uniq,
head, tail, grep reading its input). Every other read variable holds any text: used in a word that
names a file it is refused (policy.shell.evaluate). A bounded one must start its word (or follow
relative literal text): `~/$f` or `/$f` would put a workspace name under another directory.

Left to the sandbox: a file name holding a newline splits into lines (`find` and `ls` print names as
they are), so a workspace where `x<newline>/etc` exists lists `/etc/...`; git quotes such names."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

from bastion.policy.shell.facts import Node, ShellAnalysis
from bastion.policy.shell.words import LIT, PARAM, PARAM_OP, Word

# Filters whose output lines are some of their input lines, unchanged.
_FILTERS = frozenset({"sort", "uniq", "head", "tail", "tac"})
# find actions that print something other than the paths found.
_FIND_PRINTS = frozenset({"-printf", "-fprintf", "-ls", "-fls", "-exec", "-execdir", "-ok", "-okdir", "-fprint",
                          "-fprint0"})
_LS_OPTIONS = re.compile(r"-[1AtrSXvU]+")
_GIT_LS_FILES = frozenset({"-c", "--cached", "-m", "--modified", "-o", "--others", "--exclude-standard", "-d",
                           "--deleted", "--"})
_GREP_NAMES = re.compile(r"-[a-zA-Z]*[lL][a-zA-Z]*|--files-with(out)?-match(es)?")
# Programs that never open the files their arguments name (a read variable may hold anything there).
NON_OPENERS = frozenset({"echo", "printf", "basename", "dirname", "test", "[", "true", "false", "expr", "seq"})

Inside = Callable[[Word], bool]  # whether every path a word may name lies inside the workspace


def read_variables(analysis: ShellAnalysis) -> dict[str, bool]:
    """Each `while read` variable → whether a loop over listed paths binds it (every loop naming it)."""
    return dict.fromkeys(analysis.read_variables(), False)


def fed_xargs(analysis: ShellAnalysis, inside: Inside) -> set[int]:
    """The xargs commands (by index) whose input is a workspace path listing: the only ones whose
    appended arguments may name files (`find . -name '*.py' | xargs grep -l x`)."""
    out = set()
    for pipeline in _pipelines(analysis):
        for k, item in enumerate(pipeline.items):
            if item.kind == "command" and k > 0 and _lists_paths(analysis, pipeline.items[:k], inside):
                program = analysis.commands[item.index].program
                if program is not None and program.value == "xargs":
                    out.add(item.index)
    return out


# Programs that read the contents of the files their operands name (a substitution's output there is
# a file only where it is a workspace listing).
READERS = frozenset({"cat", "grep", "egrep", "fgrep", "head", "tail", "wc", "nl", "cut"})


def listing(analysis: ShellAnalysis, start: int, inside: Inside) -> bool:
    """Whether the command substitution starting at ``start`` prints a workspace path listing."""
    node = dict(analysis.substitutions).get(start)
    if node is None:
        return False
    return _lists_paths(analysis, tuple(node.items) if node.kind == "pipeline" else (node,), inside)


def bounded(analysis: ShellAnalysis, inside: Inside) -> set[str]:
    """The read variables whose every loop reads, as its only variable, a workspace path listing."""
    verdicts: dict[str, list[bool]] = {}
    for pipeline in _pipelines(analysis):
        for k, item in enumerate(pipeline.items):
            if item.kind != "while" or not item.items or item.items[0].kind != "command":
                continue
            read = analysis.commands[item.items[0].index]
            if read.context != "while-read":
                continue
            names = [w.value for w in read.args if w.value != "-r"]
            listed = len(names) == 1 and k > 0 and _lists_paths(analysis, pipeline.items[:k], inside)
            for name in names:
                verdicts.setdefault(name, []).append(listed)
    return {name for name, seen in verdicts.items() if seen and all(seen)}


def _pipelines(analysis: ShellAnalysis) -> Iterator[Node]:
    def walk(node: Node) -> Iterator[Node]:
        if node.kind == "pipeline":
            yield node
        for item in node.items:
            yield from walk(item)

    if analysis.structure is not None:
        yield from walk(analysis.structure)
    for _, node in analysis.substitutions:
        yield from walk(node)


def _lists_paths(analysis: ShellAnalysis, before: tuple[Node, ...], inside: Inside) -> bool:
    """Whether the commands before the loop print paths inside the workspace and nothing else."""
    for node in reversed(before):
        if node.kind != "command":
            return False
        command = analysis.commands[node.index]
        if command.program is None or not command.program.literal or command.redirects:
            return False
        name = command.program.value
        args = command.args
        if name in ("grep", "egrep", "fgrep") and _filters(args):
            continue
        if name in _FILTERS:
            if any(not w.literal or not (w.value.startswith("-") or w.value.isdigit()) for w in args):
                return False  # a file operand: its lines, not the listing's
            continue
        return _lister(name, args, inside)
    return False


def _filters(args: tuple[Word, ...]) -> bool:
    """grep PATTERN reading its input: one operand, no option that prints anything but the lines."""
    operands = [w for w in args if not w.value.startswith("-")]
    return len(operands) == 1 and all(w.value in ("-v", "-i", "-E", "-F", "-w", "-x", "-e") for w in args
                                      if w.value.startswith("-"))


def _names_only(args: tuple[Word, ...]) -> bool:
    """grep -l / -L / --files-with-matches: it prints file names, nothing of their lines."""
    texts = [w.value for w in args]
    return any(_GREP_NAMES.fullmatch(t) for t in texts) and \
        not any(t.startswith(("-o", "-c", "--only", "--count")) for t in texts)


def _lister(name: str, args: tuple[Word, ...], inside: Inside) -> bool:
    if any(not w.literal and not (w.expansions <= {"glob"}) for w in args):
        return False
    texts = [w.value for w in args]
    if name in ("find", "gfind"):
        from bastion.policy.shell import programs  # programs imports words only

        run, why = programs.embedded(name, args)
        # -exec grep -l PATTERN {} prints the names find found (those that match).
        if why or any(not c or c[0].value not in ("grep", "egrep", "fgrep") or not _names_only(c[1:])
                      or any(w.value != "{}" for w in [w for w in c[1:] if not w.value.startswith("-")][1:])
                      for c in run):
            return False
        prints = _FIND_PRINTS - ({"-exec", "-execdir"} if run else set())
        if any(t in prints for t in texts) or (texts and texts[0] in ("-L", "-H")) or "-follow" in texts:
            return False
        starts = []
        for word in args:
            if word.value.startswith(("-", "(", "!", ")")):
                break
            starts.append(word)
        return all(inside(w) for w in starts)
    if name == "git":
        if not texts or texts[0] != "ls-files":
            return False
        return all(t in _GIT_LS_FILES or not t.startswith("-") for t in texts[1:]) and \
            all(inside(w) for w in args[1:] if not w.value.startswith("-"))
    if name in ("grep", "egrep", "fgrep"):
        if not _names_only(args):
            return False
        operands = [w for w in args if not w.value.startswith("-")]
        return len(operands) >= 1 and all(inside(w) for w in operands)
    if name == "ls":
        return all(_LS_OPTIONS.fullmatch(t) for t in texts if t.startswith("-")) and \
            all(inside(w) for w in args if not w.value.startswith("-"))
    return False


def uses(word: Word, names: set[str] | frozenset[str]) -> bool:
    """Whether the word's value depends on one of the read variables ``names``."""
    from bastion.policy.shell import values  # values imports words only; kept local to stay acyclic

    for segment in word.segments:
        if segment.kind == PARAM and segment.text in names:
            return True
        if segment.kind == PARAM_OP and set(values.expansion(segment).variables) & names:
            return True
    return False


def placed(word: Word, names: set[str]) -> bool:
    """Whether each bounded read variable in ``word`` starts it, or follows relative literal text
    without `..`, and is used as itself or trimmed at its end or up to a slash (`${f%.py}`, `${f#./}`,
    `${f##*/}`): a name the listing printed stays inside the directory it was listed from."""
    from bastion.policy.shell import values

    before = ""
    for segment in word.segments:
        mine = (segment.kind == PARAM and segment.text in names) or \
            (segment.kind == PARAM_OP and values.expansion(segment).name in names)
        if mine:
            if before.startswith(("/", "~", "\0")) or ".." in before.split("/"):
                return False
            if segment.kind == PARAM_OP:
                e = values.expansion(segment)
                find = e.operands[0] if e.operands else ""
                if not (e.op in ("%", "%%") or (e.op in ("#", "##") and find.endswith("/"))):
                    return False
        elif segment.kind == LIT:
            before += segment.text
        else:
            before = "\0" + before  # expanded text before the variable: not relative literal text
    return True
