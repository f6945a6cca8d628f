"""One shell rule against one analysed command text → an Outcome. Checks run in CHECKS order; the
first prohibition or gap wins (policy.outcome.first_outcome)."""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterator
from fnmatch import fnmatchcase
from itertools import product

from bastion.policy.outcome import Outcome, first_outcome
from bastion.policy.shell import parameter, programs
from bastion.policy.shell.analyze import FILE_TESTS
from bastion.policy.shell.facts import Command, Node, ShellAnalysis
from bastion.policy.shell.rules import ShellRule
from bastion.policy.shell import lines, values
from bastion.policy.shell.words import CMDSUB, GLOB, LIT, PARAM, PARAM_COMPLEX, PARAM_OP, PROCSUB, TILDE, Segment, Word

_WRITE_OPS = (">", ">>", ">|", "&>", "&>>", "<>")
_HOME = "/~home"  # how a leading ~ is written in paths checked against deny_paths
# Programs with no option that runs a program or writes a file: a command substitution's output
# (of a command that passes on its own) may become their arguments, options included.
# A `case` word and the operands of [[ ]] are compared, never split, globbed or run: sinks too (their
# arithmetic operators are decided by policy.shell.arithmetic before any rule).
_SUBSTITUTION_SINKS = frozenset({"echo", "cat", "ls", "grep", "egrep", "fgrep", "head", "tail", "wc", "stat",
                                 "du", "basename", "dirname", "realpath", "readlink", "nl", "cut", "cd", "[[", "case"})
# Facts that are parts of a construct, not programs (policy.shell.analyze): `while read`, the word and
# patterns of a `case`, the words of [[ ]].
_STRUCTURAL = frozenset({"while-read", "case", "conditional"})
# Programs that write the files they name: their operands must lie where the rule may write.
_WRITERS = frozenset({"cp", "mv", "rm", "rmdir", "mkdir", "touch", "tee", "ln", "patch"})


def program_name(word: Word, rule: ShellRule) -> tuple[str | None, str | None]:
    """(name, why not) for the program word: an absolute path must lie in an allowed directory."""
    path = word.value
    if "/" not in path:
        return path, None
    if not path.startswith("/"):
        return None, f"`{path}` runs a program by relative path"
    directory, name = posixpath.split(posixpath.normpath(path))
    if directory not in rule.program_dirs:
        return None, f"`{path}` is outside the allowed program directories ({', '.join(rule.program_dirs)})"
    return name, None


def named_command(command: Command, rule: ShellRule) -> str | None:
    """The command prefix the rule names that this command starts with (`python -m pytest`), if any:
    such a command is allowed as the administrator wrote it, interpreter options included."""
    argv = [w.value for w in command.argv]
    if not all(w.literal for w in command.argv[:4]):
        return None
    for entry in rule.programs:
        words = entry.split()
        if len(words) > 1 and argv[: len(words)] == words:
            return entry
    return None


def all_commands(analysis: ShellAnalysis) -> Iterator[Command]:
    """Every command that can run: those written, and those find -exec/-execdir and xargs run
    (checked like any other; their `{}` and appended arguments are the only unknowns)."""
    pending = list(analysis.commands)
    depth = 0
    while pending and depth < 1000:
        command = pending.pop(0)
        depth += 1
        yield command
        name = command.program.value.rsplit("/", 1)[-1] if command.program is not None else ""
        if name in ("find", "gfind", "xargs"):
            inner, _ = programs.embedded(name, command.args)
            pending.extend(Command(argv, context=f"{name}-command") for argv in inner if argv)


def check_operators(rule: ShellRule, analysis: ShellAnalysis, cwd: str) -> Iterator[Outcome | None]:
    """``ls &`` → not covered: background jobs outlive the call."""
    extra = analysis.operators - rule.operators
    if extra:
        op = sorted(extra)[0]
        why = "background jobs outlive the call" if op == "&" else f"the operator `{op}` is not allowed"
        yield Outcome("none", f"{rule.id}:operator", why, hint=f"Allowed operators: {' '.join(sorted(rule.operators))}.")


def check_constructs(rule: ShellRule, analysis: ShellAnalysis, cwd: str) -> Iterator[Outcome | None]:
    """``for f in *; do ...; done`` → not covered unless the rule allows `for`."""
    extra = analysis.constructs - rule.constructs
    if extra:
        name = sorted(extra)[0]
        yield Outcome("none", f"{rule.id}:construct", f"{name.replace('-', ' ')} is not allowed by rule `{rule.id}`",
                      hint="Send plain commands joined by | && || ; instead.")


def check_programs(rule: ShellRule, analysis: ShellAnalysis, cwd: str) -> Iterator[Outcome | None]:
    """``rm -rf /`` → not covered: `rm` is not in the rule's programs; ``env rm`` → denied outright."""
    for command in all_commands(analysis):
        if command.program is None or command.context in _STRUCTURAL:
            continue  # read as a whole (policy.shell.analyze: while_loop, case, test)
        if not command.program.literal or command.program.ansi_c:
            yield Outcome("none", f"{rule.id}:program", f"the program name `{command.program.value}` is computed at run time",
                          hint="Write the program's name literally.")
            continue
        name, why = program_name(command.program, rule)
        if name is None:
            yield Outcome("none", f"{rule.id}:program", why or "", hint=f"Use the program's bare name. {_programs_hint(rule)}")
            continue
        if name in programs.LAUNCHERS:
            yield Outcome("deny", f"{rule.id}:launcher", f"`{name}` {programs.LAUNCHERS[name]}; it is never allowed",
                          hint=_LAUNCHER_HINTS.get(name, "Run the program it would start directly."))
        elif name in rule.deny_programs:
            yield Outcome("deny", f"{rule.id}:deny-program", f"`{name}` is denied by rule `{rule.id}`")
        elif name in rule.review_programs:
            yield Outcome("review", f"{rule.id}:review-program", f"`{name}` needs approval under rule `{rule.id}`")
        elif name not in rule.programs and named_command(command, rule) is None:
            yield Outcome("none", f"{rule.id}:program", f"`{name}` is not a program rule `{rule.id}` allows",
                          hint=_program_hint(name, rule))


_LAUNCHER_HINTS = {"less": "Read with `head -n 100 FILE`, `sed -n '100,200p' FILE` or `cat FILE`.",
                   "more": "Read with `head -n 100 FILE` or `cat FILE`.",
                   "vi": "Read with `cat FILE`; edits are not run by Bastion.", "vim": "Read with `cat FILE`.",
                   "man": "Try `PROGRAM --help`.", "env": "Drop `env` and run the program directly.",
                   "timeout": "Drop `timeout`: every call has a time limit already.",
                   "time": "Drop `time`: every result says how long the call took.",
                   "nohup": "Drop `nohup`; background jobs are not run."}
# What to use instead of programs agents reach for, under a read-only rule.
_INSTEAD = {"python": "Interpreters run only where the connection names them (e.g. `python -m pytest`).",
            "bash": "Send the commands themselves, joined by | && || ; (no `bash -c`).",
            "sh": "Send the commands themselves, joined by | && || ; (no `sh -c`).",
            "less": "Read with `head -n 100 FILE` or `sed -n '100,200p' FILE`.",
            "rm": "This connection is read-only.", "mv": "This connection is read-only.",
            "cp": "This connection is read-only.", "touch": "This connection is read-only.",
            "tee": "This connection is read-only; drop `| tee FILE`.",
            "curl": "There is no network inside the sandbox.", "wget": "There is no network inside the sandbox."}


def _program_hint(name: str, rule: ShellRule) -> str:
    if name in ("python3", "python2") or name in programs.INTERPRETERS and name not in _INSTEAD:
        name = "python"
    head = _INSTEAD.get(name, "")
    return (head + " " if head else "") + _programs_hint(rule)


def _programs_hint(rule: ShellRule) -> str:
    return f"Programs allowed here: {', '.join(sorted(rule.programs)) or 'none'}."


def check_cd(rule: ShellRule, analysis: ShellAnalysis, cwd: str) -> Iterator[Outcome | None]:
    """``cd src && grep -n x *.py`` → covered: `cd` to a literal directory inside the workspace, as an
    item of a list (never alone, in a pipeline or in a substitution); ``cd ~``, ``cd /etc`` → not covered."""
    if "cd" not in rule.programs:
        return
    listed = set(_list_items(analysis.structure)) if analysis.structure is not None else set()
    for index, command in enumerate(analysis.commands):
        if command.program is None or command.program.value != "cd":
            continue
        args = [w for w in command.args if w.value != "--"]
        if len(args) != 1 or not args[0].literal or args[0].value.startswith("-"):
            yield Outcome("none", f"{rule.id}:cd", "`cd` takes one literal directory inside the workspace here",
                          hint=f"Write `cd DIR && ...` with DIR inside `{cwd}`, or pass the directory as `cwd`.")
            continue
        target = _cd_target(args[0].value, cwd)
        if not _inside(target, cwd):
            yield Outcome("none", f"{rule.id}:cd", f"`cd {args[0].value}` leaves the workspace `{cwd}`",
                          hint=f"Stay inside `{cwd}`: use relative paths or the `cwd` argument.")
        elif index not in listed:
            yield Outcome("none", f"{rule.id}:cd", "`cd` does something only before another command (`cd DIR && ls`)",
                          hint=f"Pass the directory as `cwd` (`{args[0].value}`), or write `cd {args[0].value} && COMMAND`.")


def _list_items(node: Node) -> Iterator[int]:
    """Commands that are direct items of a list (cd there changes the directory for what follows)."""
    if node.kind == "list":
        for item in node.items:
            if item.kind == "command":
                yield item.index
            else:
                yield from _list_items(item)
    elif node.kind in ("subshell", "group"):
        yield from _list_items(node.items[0])


def _cd_target(path: str, cwd: str) -> str:
    return posixpath.normpath(posixpath.join(cwd, path))


def _inside(path: str, root: str) -> bool:
    root = root.rstrip("/") or "/"
    return path == root or path.startswith(root + "/") or root == "/"


def _directories(analysis: ShellAnalysis, cwd: str) -> list[str]:
    """The working directories commands of this text may run in: ``cwd`` and every `cd` target."""
    out = [cwd]
    for command in analysis.commands:
        if command.program is not None and command.program.value == "cd":
            args = [w for w in command.args if w.value != "--"]
            if len(args) == 1 and args[0].literal:
                out.append(_cd_target(args[0].value, cwd))
    return out


def check_arguments(rule: ShellRule, analysis: ShellAnalysis, cwd: str) -> Iterator[Outcome | None]:
    """``find . -delete`` → not covered: that option changes files; ``git push`` → not an allowed subcommand;
    ``sed -n '1,50p' f`` → covered, ``sed '1e id' f`` → not covered."""
    writes = rule.redirects == "write"
    for command in all_commands(analysis):
        if command.program is None or named_command(command, rule) is not None:
            continue
        name, _ = program_name(command.program, rule)
        check: programs.Check | None
        if name == "git":
            check = programs.git(rule.git_subcommands)
        elif name in ("sed", "gsed") and writes:
            check = programs.sed(write=True)
        else:
            check = programs.CHECKS.get(name or "")
        why = check(command.args) if check is not None else None
        if why:
            yield Outcome("none", f"{rule.id}:argument", why, hint=_argument_hint(name or "", why, rule))


def _argument_hint(name: str, why: str, rule: ShellRule) -> str:
    """What would pass instead, concretely."""
    if name in ("sed", "gsed"):
        if "-i" in why:
            return "This rule is read-only: print the lines instead, e.g. `sed -n '1,50p' FILE` or `head -n 50 FILE`."
        return ("Print-only sed scripts pass: `sed -n '1,50p' FILE` (or `head -n 50 FILE`), `sed -n '/re/p' FILE`, "
                "`sed 's/a/b/g' FILE`; no e, w, W, r, R commands or s///e, s///w flags.")
    if name in ("awk", "gawk", "mawk", "nawk"):
        return ("awk programs that compute and print pass, e.g. `awk '/re/ {print NR\": \"$0}' FILE`; "
                "no system(), pipes, `print > file`, command getline or @indirect calls.")
    if name in ("find", "gfind"):
        return ("`find DIR -name '*.py' -exec grep -l PATTERN {} +` passes when the -exec command passes on its own; "
                "-delete, -ok and -fprint do not.")
    if name == "xargs":
        return "`xargs grep -l PATTERN` passes (options -0 -n -I -L -r -t -d); the command must pass on its own."
    if name == "git":
        return (f"Read-only git passes: {', '.join('git ' + s for s in sorted(rule.git_subcommands))}; "
                "not --output, --ext-diff, --textconv, --no-index, -c.")
    if name in programs.INTERPRETERS:
        return "Run a script file (`python3 script.py`), or ask for the exact command to be named on the connection."
    return "Drop that option or subcommand."


def check_expansions(rule: ShellRule, analysis: ShellAnalysis, cwd: str) -> Iterator[Outcome | None]:
    """``echo $SECRET`` → not covered: only allow-listed variables expand; ``cat $(...)`` → not covered."""
    for command in analysis.commands:
        name = command.program.value if command.program else ""
        for word in command.args + tuple(r.target for r in command.redirects if r.target):
            for segment in word.segments:
                if segment.kind == PARAM_COMPLEX:
                    yield Outcome("none", f"{rule.id}:expansion", f"`${{{segment.text}}}` is not accepted: "
                                  f"{_complex_reason(segment)}", hint=_PARAMETER_HINT)
                elif segment.kind == PARAM_OP:
                    why = _parameter_refusal(segment, rule, analysis)
                    if why:
                        yield Outcome("none", f"{rule.id}:expansion", why, hint=_PARAMETER_HINT)
                elif segment.kind == PARAM and segment.text not in rule.variables | analysis.loop_variables:
                    yield Outcome("none", f"{rule.id}:expansion", f"the variable `${segment.text}` is not allowed",
                                  hint=f"Variables allowed: {', '.join('$' + v for v in sorted(rule.variables))}.")
                elif segment.kind in (CMDSUB, PROCSUB) and name not in _SUBSTITUTION_SINKS:
                    yield Outcome("none", f"{rule.id}:expansion",
                                  f"the output of a {segment.kind.replace('-', ' ')} cannot be checked as an argument of `{name}`",
                                  hint="Run the inner command on its own first, then use its result literally.")
        for word in command.args:
            if word.glob_option and command.context not in _STRUCTURAL:  # patterns there match text, not files
                yield Outcome("none", f"{rule.id}:expansion", f"`{word.value}` could match a file named like an option",
                              hint=f"Start the pattern with `./` (`./{word.value}`).")
            if word.ansi_c and word.value.startswith("-"):
                yield Outcome("none", f"{rule.id}:expansion", f"the option `{word.value}` is spelled with $'...' quoting",
                              hint="Write options plainly.")
        if command.assignments and not rule.allow_assignments and command.context != "while-read":
            yield Outcome("none", f"{rule.id}:assignment", f"environment assignments (`{command.assignments[0]}`) are not allowed")


_PARAMETER_HINT = ("Accepted: ${NAME:-WORD} ${NAME:+WORD} ${NAME:?WORD} ${#NAME} of an allowed variable; "
                   "${f%.py} ${f#./} ${f##*/} ${f%/*} ${f/a/b} ${f^^} ${f:1:3} of a loop variable or $PWD; words of "
                   "letters, digits, ._/,:@%+=- and $NAME.")


def _complex_reason(segment: Segment) -> str:
    parsed = parameter.parse(segment.text, segment.quoted)
    return parsed if isinstance(parsed, str) else "it is not a plain variable"


def _parameter_refusal(segment: Segment, rule: ShellRule, analysis: ShellAnalysis) -> str | None:
    """A ${NAME OP ...} whose variables the rule allows; a value derived from another (trimmed,
    replaced, recased, cut) only from a loop variable or $PWD, whose values the checks can follow
    (policy.shell.values)."""
    e = values.expansion(segment)
    allowed = rule.variables | analysis.loop_variables
    for name in e.variables:
        if name not in allowed:
            return f"the variable `${name}` in `${{{segment.text}}}` is not allowed"
    if e.derived and e.name not in analysis.loop_variables and e.name != "PWD":
        return (f"`${{{segment.text}}}` derives a value from `${e.name}`, which the policy knows only by name "
                "(a part of it could be any path)")
    for word in values.bindings(analysis).get(e.name) or ():
        if not values.same_as_written(e, word):
            return (f"`${{{segment.text}}}` would see `./` before each match of `{word.source}` (Bastion runs "
                    f"`{word.source}` as `{word.value}`, so that no file name reads as an option); "
                    f"loop over `{word.value}` to mean that")
    return None


def check_paths(rule: ShellRule, analysis: ShellAnalysis, cwd: str) -> Iterator[Outcome | None]:
    """``cat /proc/1/environ`` or ``cat ~/.ssh/id_rsa`` → denied outright, however it is spelled
    (``//proc``, ``/dev/fd/../..``, ``/etc/shado?``, ``-f/proc/..``); ``grep -r x /`` or ``grep -r x ~``
    too, because the search would read what is protected. Relative paths are judged from the working
    directory and from every `cd` target in the text."""
    for directory in _directories(analysis, cwd):
        yield from _check_paths(rule, analysis, directory, cwd)


# An argument with more slashes and tildes than this is refused before its paths are judged (each
# may start an attached path, -fPATH: judging is quadratic in them).
MAX_ARGUMENT_SLASHES = 256


def _loop_words(node: Node | None) -> Iterator[Word]:
    """The words of every rebuilt `for` loop: its variable carries them into any argument."""
    if node is not None:
        yield from node.words
        for item in node.items:
            yield from _loop_words(item)


def _check_paths(rule: ShellRule, analysis: ShellAnalysis, cwd: str, workspace: str) -> Iterator[Outcome | None]:
    binds = values.bindings(analysis)
    budget = values.Budget()

    def inside(word: Word) -> bool:
        made = values.forms(word, binds, cwd)
        return not isinstance(made, str) and all(
            all(s.kind in (LIT, GLOB) for s in form.segments)
            and all(p is not None and _inside(p, workspace) for p in _path_forms(form, cwd)) for form in made)

    bound = lines.bounded(analysis, inside)
    fed = lines.fed_xargs(analysis, inside)
    loose = set(lines.read_variables(analysis)) - bound
    for word in (w for tree in values.trees(analysis) for w in _loop_words(tree)):  # `for f in ~/.ssh/*; do`
        why = _protected(rule, word, cwd, False)
        if why:
            yield Outcome("deny" if why[0] else "none", f"{rule.id}:path", why[1],
                          hint=None if why[0] else "Put glob patterns in the last path component only.")
            return
    for index, command in enumerate(all_commands(analysis)):  # the text's own commands first, in order
        long = next((w for w in command.args if w.value.count("/") + w.value.count("~") > MAX_ARGUMENT_SLASHES), None)
        if long is not None:
            yield Outcome("none", f"{rule.id}:path", f"an argument of {len(long.value):,} characters holding "
                          f"{long.value.count('/') + long.value.count('~'):,} slashes or tildes cannot be checked as a path",
                          hint="Send shorter arguments (a pattern file inside the workspace can be read with -f).")
            continue
        words = list(command.args) + [r.target for r in command.redirects
                                      if r.target and r.op not in ("<<", "<<-", "<<<")]  # text, not a path
        if command.context == "case":
            continue  # a word and patterns matched as text
        if command.context == "conditional":  # only the operands of file tests name paths
            words = [w for k, w in enumerate(command.args[1:], 1) if command.args[k - 1].value in FILE_TESTS]
        name = command.program.value.rsplit("/", 1)[-1] if command.program else ""
        recursive = _may_search(name, command.args, binds, cwd)
        if recursive and name != "diff" and sum(not w.value.startswith("-") for w in command.args) <= 1:
            words.append(Word(cwd, (Segment(LIT, cwd),)))  # grep -r PATTERN searches the working directory
        walked: list[Word] = []
        if name in programs.TREE_WALKERS and any(w.value in ("-exec", "-execdir") for w in command.args):
            walked = programs.start_points(command.args) or [Word(cwd, (Segment(LIT, cwd),))]
            words += [w for w in walked if w not in words]
        if name == "xargs":
            inner, _ = programs.embedded("xargs", command.args)
            program = inner[0][0].value if inner and inner[0] else "echo"
            if program not in lines.NON_OPENERS and (index not in fed or not _xargs_placed(command.args, inner)):
                yield Outcome("none", f"{rule.id}:path", f"xargs hands the lines it reads to `{program}` as files: only "
                              "a listing of paths inside the workspace may be, each at the start of an argument", hint=_XARGS_HINT)
                continue
        if name in lines.READERS and command.context not in _STRUCTURAL:
            pattern = next((w for w in command.args if not w.value.startswith("-")), None) if "grep" in name else None
            output = next((w for w in command.args if w is not pattern and _substituted_file(analysis, w, inside)),
                          None)
            if output is not None:
                yield Outcome("none", f"{rule.id}:path", f"`{name}` would read files named by a command's output "
                              f"(`{output.value}`), which is not a listing of paths inside the workspace",
                              hint="Substitute a listing inside the workspace (`wc -l $(git ls-files '*.py')`, "
                                   "`grep -n x $(find src -name '*.py')`), at the start of the argument; "
                                   "or name the files literally.")
                continue
        if name not in lines.NON_OPENERS and command.context not in _STRUCTURAL:
            read = next((w for w in words if lines.uses(w, loose)), None)
            if read is not None:
                yield Outcome("none", f"{rule.id}:path", f"`{read.value}` names a file from a line `while read` got "
                              "from a program the policy cannot bound (it may hold any path)", hint=_READ_HINT)
                continue
            read = next((w for w in words if lines.uses(w, bound) and not lines.placed(w, bound)), None)
            if read is not None:
                yield Outcome("none", f"{rule.id}:path", f"`{read.value}` moves or reshapes a listed path (a `while "
                              "read` line stays inside the workspace only as the start of an argument)", hint=_READ_HINT)
                continue
        for word in words:
            why = _protected_forms(rule, word, binds, cwd, recursive or word in walked, budget)
            if why:
                yield Outcome("deny" if why[0] else "none", f"{rule.id}:path", why[1],
                              hint=None if why[0] else "Put glob patterns in the last path component only.")
                break
        if recursive and name != "diff":
            # A recursive search stays in the workspace (the sandbox shows little else; the intent
            # is the project). The first operand is grep's pattern.
            operands = [w for w in command.args if not w.value.startswith("-")][1:]
            for word in operands:
                made = values.forms(word, binds, cwd)
                outside = [p for f in ([] if isinstance(made, str) else made) for p in _path_forms(f, cwd)
                           if p is not None and not _inside(p, workspace)]
                if outside:
                    yield Outcome("none", f"{rule.id}:path", f"a recursive search of `{word.value}` leaves the workspace",
                                  hint=f"Search inside the workspace, e.g. `{name} -rn PATTERN .`.")
                    break


def _substituted_file(analysis: ShellAnalysis, word: Word, inside: lines.Inside) -> bool:
    """Whether ``word`` takes a command's output that is not a workspace listing standing at its start."""
    for k, segment in enumerate(word.segments):
        if segment.kind == CMDSUB and (k > 0 or not lines.listing(analysis, segment.start, inside)):
            return True
    return False


def _xargs_placed(args: tuple[Word, ...], inner: list[tuple[Word, ...]]) -> bool:
    """Whether xargs reads the listing (not `-a FILE`) and, with -I R (-i, --replace: {}), each word
    holding R starts with it: `cat ~/{}` would move a listed name."""
    texts = [w.value for w in args[: len(args) - len(inner[0])]] if inner else []
    marks = set()
    for i, text in enumerate(texts):
        if text.startswith("--arg") or re.fullmatch(r"-[0rtx]*a.*", text):
            return False  # reads a file's lines, not the listing's
        if text in ("-i", "--replace") or text.startswith(("-i", "--replace=")):
            marks.add(text.partition("=")[2] if text.startswith("--replace=") else text[2:] or "{}")
        elif text.startswith("-I"):
            marks.add(text[2:] or (texts[i + 1] if i + 1 < len(texts) else ""))
    return all(not mark or mark not in w.value or w.value.startswith(mark) for mark in marks
               for command in inner for w in command)


_XARGS_HINT = ("Pipe a listing inside the workspace into xargs: `find DIR -name '*.py' | xargs grep -l PATTERN`, "
               "`git ls-files | xargs wc -l`, `grep -rl PATTERN . | xargs ...`; or name the files literally.")
_READ_HINT = ("Read the lines of a listing inside the workspace: `git ls-files | while read -r f; do ...`, "
              "`find DIR -name '*.py' | while read -r f; do ...`, `grep -rl PATTERN . | while read -r f; do ...`, "
              "with \"$f\" at the start of the argument; or name the files literally.")


def _may_search(name: str, args: tuple[Word, ...], binds: values.Bindings, cwd: str) -> bool:
    """Whether grep (rg, diff ...) may search directories, for every value its words may take: an
    option can come from a loop word, an operator's word (`${HOME:+-r}`), a `while read` line or a
    command substitution (`$(echo -r)`). A word that could become an option and whose value nobody
    bounds counts as a recursion flag: the search is then judged as recursive."""
    if name not in programs.RECURSIVE_READERS:
        return False
    choices: list[list[str]] = []
    count = 1
    for word in args:
        made = values.forms(word, binds, cwd)
        if isinstance(made, str):
            return True
        texts = []
        for form in made:
            unknown = [s for s in form.segments if s.kind not in (LIT, GLOB, TILDE)
                       and not (s.kind == PARAM and s.text in ("HOME", "PWD"))]  # absolute: never an option
            if unknown and (form.value.startswith("-") or form.segments[0] in unknown):
                return True
            texts.append(form.value)
        choices.append(list(dict.fromkeys(texts)))
        count *= len(choices[-1])
        if count > 256:
            return True
    return any(programs.recursive_texts(name, list(texts)) for texts in product(*choices))


def _protected_forms(rule: ShellRule, word: Word, binds: values.Bindings, cwd: str, recursive: bool,
                     budget: values.Budget) -> tuple[bool, str] | None:
    """_protected for every value the word may take (policy.shell.values); a word whose values cannot
    be bounded is not covered."""
    made = values.forms(word, binds, cwd, fold_digits=not any(c.isdigit() for p in rule.deny_paths for c in p))
    if isinstance(made, str):
        return False, made
    if not budget.spend(len(made)):
        return False, f"the text's variables take more than {values.MAX_TOTAL:,} values to check as paths"
    for form in made:
        why = _protected(rule, form, cwd, recursive)
        if why:
            shown = f" (as `{form.value}`)" if form.value != word.value else ""
            return why[0], why[1] + shown
    return None


# Directories a recursive search must not start at or above: they hold other users' and the
# gateway's secrets in places no pattern can list (home directories).
_RECURSION_ROOTS = ("/home", "/root", _HOME)


def _protected(rule: ShellRule, word: Word, cwd: str, recursive: bool) -> tuple[bool, str] | None:
    """(deny outright?, why) when a word may name a protected path."""
    roots = [p.split("*", 1)[0].rstrip("/") for p in rule.deny_paths if p.startswith("/")] + list(_RECURSION_ROOTS)
    for path in _path_forms(word, cwd):
        if path is None:
            return False, f"`{word.value}` has a pattern in a directory name, or `..` after a variable"
        hit = _denied(rule, path)
        if hit:
            return True, f"`{word.value}` names a protected path ({hit})"
        parts = path.split("/")
        for k, part in enumerate(parts[:-1]):
            if GLOB in word.expansions and any(ch in part for ch in "*?["):
                for component in _deny_components(rule):
                    concrete = "/".join(parts[:k] + [component] + parts[k + 1 :])
                    if _glob_matches(component, part) and (_denied(rule, concrete) or
                                                           _denied(rule, "/".join(parts[:k] + [component, "x"]))):
                        return True, f"`{word.value}` could match a protected path ({component})"
        if GLOB in word.expansions:
            directory, pattern = posixpath.split(path)
            for component in _deny_components(rule):
                concrete = posixpath.join(directory, component)
                if _glob_matches(component, pattern) and (_denied(rule, concrete) or _denied(rule, concrete + "/x")):
                    return True, f"`{word.value}` could match a protected path ({component})"
            if recursive and any(_glob_matches(posixpath.basename(r), pattern) and
                                 (posixpath.dirname(r) + "/").startswith(directory.rstrip("/") + "/") for r in roots if r):
                return True, f"a recursive search of `{word.value}` could read protected paths"
        if recursive:
            inside = _denied(rule, path.rstrip("/") + "/x")
            if inside or any((r + "/").startswith(path.rstrip("/") + "/") for r in roots if r):
                return True, f"a recursive search of `{word.value}` would read protected paths"
    return None


def _glob_matches(name: str, pattern: str) -> bool:
    """Whether bash's glob ``pattern`` matches the file name ``name``: a leading dot only explicitly,
    [^...] negates like [!...], and a POSIX class [[:alpha:]] is taken to match any character."""
    if name.startswith(".") and not pattern.startswith("."):
        return False
    pattern = re.sub(r"\[\[:[a-z]+:\]\]", "?", pattern.replace("[^", "[!"))
    pattern = re.sub(r"\[[^\]]*\[:[a-z]+:\][^\]]*\]", "?", pattern)
    return fnmatchcase(name, pattern)


def _denied(rule: ShellRule, path: str) -> str | None:
    return next((p for p in rule.deny_paths if fnmatchcase(path, p)), None)


def _deny_components(rule: ShellRule) -> set[str]:
    """Literal path components of the deny patterns (.ssh, .netrc, shadow, ...): what a glob in a
    last component might match."""
    return {c for p in rule.deny_paths for c in p.split("/") if c and not any(ch in c for ch in "*?[")}


def _path_forms(word: Word, cwd: str) -> Iterator[str | None]:
    """The absolute paths a word may name, before and after normalising (a symlink such as /dev/fd
    makes `..` mean something else than it says); None for a glob in a directory part."""
    text = word.value.replace("${PWD}", cwd).replace("${HOME}", _HOME)
    candidates = [text]
    if "=" in text:
        candidates.append(text.split("=", 1)[1])  # --file=PATH, if=PATH
    elif text.startswith("-") and not text.startswith("--"):
        # -fPATH, -rfPATH: any attached value. A pattern starting with * matches a value at k = 2 as
        # well as later; one anchored at / or ~ needs a value starting there: so only those (linear).
        candidates += [text[k:] for k in range(2, len(text)) if k == 2 or text[k] in "/~"]
    for candidate in candidates:
        if "~" in candidate and any(s.kind == TILDE for s in word.segments):
            candidate = re.sub(r"(^|[=:])~[^/:]*", lambda m: m.group(1) + _HOME, candidate)
        if not candidate or candidate.startswith("-"):
            continue
        absolute = candidate if candidate.startswith("/") else posixpath.join(cwd, candidate)
        if "${" in absolute and "/.." in absolute:
            yield None  # `..` after a variable whose value Bastion does not know
            continue
        if GLOB in word.expansions and any(ch in posixpath.dirname(absolute) for ch in "*?["):
            # A pattern in a directory part (src/*/x.py, pkg/**/*.py) is judged component by component
            # (_protected) when it is relative, without `..` and with nothing else expanded; else refused.
            if candidate.startswith("/") or ".." in candidate.split("/") or word.expansions - {GLOB}:
                yield None
                continue
        yield re.sub("/+", "/", absolute)
        yield re.sub("^/+", "/", posixpath.normpath(absolute))


def check_redirects(rule: ShellRule, analysis: ShellAnalysis, cwd: str) -> Iterator[Outcome | None]:
    """``echo x > file`` → not covered unless `file` is in write_paths (a relative pattern is relative
    to the workspace: `*` is anything in it); ``< file`` needs redirects = read."""
    for directory in _directories(analysis, cwd):
        yield from _check_redirects(rule, analysis, directory, cwd)


def _writable(rule: ShellRule, path: str, workspace: str) -> bool:
    return any(fnmatchcase(path, p if p.startswith("/") else posixpath.join(workspace, p)) for p in rule.write_paths)


def _check_redirects(rule: ShellRule, analysis: ShellAnalysis, cwd: str, workspace: str) -> Iterator[Outcome | None]:
    for command in analysis.commands:
        for redirect in command.redirects:
            if redirect.is_dup or redirect.op in ("<<", "<<-", "<<<"):
                continue  # 2>&1; here-docs and here-strings are constructs
            target = redirect.target
            if target is None or any(s.kind not in (LIT, TILDE) for s in target.segments):
                yield Outcome("none", f"{rule.id}:redirect", "a redirection target must be a plain file name",
                              hint="Write the file name literally.")
                continue
            path = posixpath.normpath(posixpath.join(cwd, target.value))
            if redirect.op in _WRITE_OPS or redirect.writes:
                if not _writable(rule, path, workspace):
                    yield Outcome("none", f"{rule.id}:redirect", f"writing to `{target.value}` is not allowed",
                                  hint=f"Writable paths: {', '.join(rule.write_paths) or 'none'}"
                                       + (" (relative to the workspace)" if any(not p.startswith("/") for p in rule.write_paths) else "")
                                       + "; drop the redirection to get the output back.")
            elif rule.redirects == "none":
                yield Outcome("none", f"{rule.id}:redirect", "input redirection is not allowed by this rule",
                              hint="Name the file as an argument instead (`cat FILE`).")
    if rule.redirects != "write":
        return
    binds = values.bindings(analysis)
    budget = values.Budget()
    for command in all_commands(analysis):
        name = command.program.value.rsplit("/", 1)[-1] if command.program is not None else ""
        if name not in _WRITERS:
            continue
        for word in command.args:
            made = values.forms(word, binds, cwd, fold_digits=not any(c.isdigit() for p in rule.write_paths for c in p))
            if not isinstance(made, str) and not budget.spend(len(made)):
                yield Outcome("none", f"{rule.id}:write-path",
                              f"the text's variables take more than {values.MAX_TOTAL:,} values to check as paths")
                return
            for form in ([] if isinstance(made, str) else made):
                if form.value.startswith("-"):
                    continue  # an option
                # ~ and $HOME are the home directory, $PWD the working directory; another variable
                # stays a name (`${f}`: a bounded `while read` line, policy.shell.lines).
                paths = list(_path_forms(form, cwd))
                if not paths or any(p is None or not _writable(rule, p, workspace) for p in paths):
                    yield Outcome("none", f"{rule.id}:write-path", f"`{name} {word.value}` writes outside the workspace"
                                  + (f" (as `{form.value}`)" if form.value != word.value else ""),
                                  hint=f"Write inside `{workspace}`.")
                    break


CHECKS = (check_operators, check_constructs, check_programs, check_cd, check_arguments, check_expansions, check_paths,
          check_redirects)


def evaluate_shell(rule: ShellRule, analysis: ShellAnalysis, cwd: str) -> Outcome:
    return first_outcome(rule.id, (o for check in CHECKS for o in check(rule, analysis, cwd)))
