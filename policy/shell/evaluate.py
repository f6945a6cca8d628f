"""One shell rule against one analysed command text → an Outcome. Checks run in CHECKS order; the
first prohibition or gap wins (policy.outcome.first_outcome)."""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterator
from fnmatch import fnmatchcase

from bastion.policy.outcome import Outcome, first_outcome
from bastion.policy.shell import programs
from bastion.policy.shell.facts import ShellAnalysis
from bastion.policy.shell.rules import ShellRule
from bastion.policy.shell.words import CMDSUB, GLOB, LIT, PARAM, PARAM_COMPLEX, PROCSUB, TILDE, Segment, Word

_WRITE_OPS = (">", ">>", ">|", "&>", "&>>", "<>")
_HOME = "/~home"  # how a leading ~ is written in paths checked against deny_paths
# Programs that neither open files nor take options from a command substitution's output.
_SUBSTITUTION_SINKS = frozenset({"echo"})


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
    """``rm -rf /`` → not covered: `rm` is not in the rule's programs; ``xargs rm`` → denied outright."""
    for command in analysis.commands:
        if command.program is None:
            continue
        name, why = program_name(command.program, rule)
        if name is None:
            yield Outcome("none", f"{rule.id}:program", why or "", hint=_programs_hint(rule))
            continue
        if name in programs.LAUNCHERS:
            yield Outcome("deny", f"{rule.id}:launcher", f"`{name}` {programs.LAUNCHERS[name]}; it is never allowed")
        elif name in rule.deny_programs:
            yield Outcome("deny", f"{rule.id}:deny-program", f"`{name}` is denied by rule `{rule.id}`")
        elif name in rule.review_programs:
            yield Outcome("review", f"{rule.id}:review-program", f"`{name}` needs approval under rule `{rule.id}`")
        elif name not in rule.programs:
            yield Outcome("none", f"{rule.id}:program", f"`{name}` is not a program rule `{rule.id}` allows",
                          hint=_programs_hint(rule))


def _programs_hint(rule: ShellRule) -> str:
    return f"Programs allowed here: {', '.join(sorted(rule.programs)) or 'none'}."


def check_arguments(rule: ShellRule, analysis: ShellAnalysis, cwd: str) -> Iterator[Outcome | None]:
    """``find . -delete`` → not covered: that option changes files; ``git push`` → not an allowed subcommand."""
    for command in analysis.commands:
        if command.program is None:
            continue
        name, _ = program_name(command.program, rule)
        check = programs.git(rule.git_subcommands) if name == "git" else programs.CHECKS.get(name or "")
        why = check(command.args) if check else None
        if why:
            yield Outcome("none", f"{rule.id}:argument", why, hint="Drop that option or subcommand.")


def check_expansions(rule: ShellRule, analysis: ShellAnalysis, cwd: str) -> Iterator[Outcome | None]:
    """``echo $SECRET`` → not covered: only allow-listed variables expand; ``cat $(...)`` → not covered."""
    for command in analysis.commands:
        name = command.program.value if command.program else ""
        for word in command.args + tuple(r.target for r in command.redirects if r.target):
            for segment in word.segments:
                if segment.kind == PARAM_COMPLEX:
                    yield Outcome("none", f"{rule.id}:expansion", f"`${{{segment.text}}}` is not a plain variable",
                                  hint=f"Variables allowed: {', '.join('$' + v for v in sorted(rule.variables))}.")
                elif segment.kind == PARAM and segment.text not in rule.variables:
                    yield Outcome("none", f"{rule.id}:expansion", f"the variable `${segment.text}` is not allowed",
                                  hint=f"Variables allowed: {', '.join('$' + v for v in sorted(rule.variables))}.")
                elif segment.kind in (CMDSUB, PROCSUB) and name not in _SUBSTITUTION_SINKS:
                    yield Outcome("none", f"{rule.id}:expansion",
                                  f"the output of a {segment.kind.replace('-', ' ')} cannot be checked as an argument of `{name}`",
                                  hint="Run the inner command on its own first, then use its result literally.")
        for word in command.args:
            if word.ansi_c and word.value.startswith("-"):
                yield Outcome("none", f"{rule.id}:expansion", f"the option `{word.value}` is spelled with $'...' quoting",
                              hint="Write options plainly.")
        if command.assignments and not rule.allow_assignments:
            yield Outcome("none", f"{rule.id}:assignment", f"environment assignments (`{command.assignments[0]}`) are not allowed")


def check_paths(rule: ShellRule, analysis: ShellAnalysis, cwd: str) -> Iterator[Outcome | None]:
    """``cat /proc/1/environ`` or ``cat ~/.ssh/id_rsa`` → denied outright, however it is spelled
    (``//proc``, ``/dev/fd/../..``, ``/etc/shado?``, ``-f/proc/..``); ``grep -r x /`` or ``grep -r x ~``
    too, because the search would read what is protected."""
    for command in analysis.commands:
        words = list(command.args) + [r.target for r in command.redirects if r.target]
        name = command.program.value.rsplit("/", 1)[-1] if command.program else ""
        recursive = programs.reads_recursively(name, command.args)
        if recursive and sum(not w.value.startswith("-") for w in command.args) <= 1:
            words.append(Word(cwd, (Segment(LIT, cwd),)))  # grep -r PATTERN searches the working directory
        for word in words:
            why = _protected(rule, word, cwd, recursive)
            if why:
                yield Outcome("deny" if why[0] else "none", f"{rule.id}:path", why[1],
                              hint=None if why[0] else "Put glob patterns in the last path component only.")
                break


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
        candidates += [text[k:] for k in range(2, len(text))]  # -fPATH, -rfPATH: any attached value
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
            yield None
            continue
        yield re.sub("/+", "/", absolute)
        yield re.sub("^/+", "/", posixpath.normpath(absolute))


def check_redirects(rule: ShellRule, analysis: ShellAnalysis, cwd: str) -> Iterator[Outcome | None]:
    """``echo x > file`` → not covered unless `file` is in write_paths; ``< file`` needs redirects = read."""
    for command in analysis.commands:
        for redirect in command.redirects:
            if redirect.is_dup or redirect.op in ("<<", "<<-", "<<<"):
                continue  # 2>&1; here-docs and here-strings are constructs
            target = redirect.target
            if target is None or any(s.kind not in (LIT, TILDE) for s in target.segments):
                yield Outcome("none", f"{rule.id}:redirect", "a redirection target must be a plain file name")
                continue
            path = posixpath.normpath(posixpath.join(cwd, target.value))
            if redirect.op in _WRITE_OPS or redirect.writes:
                if not any(fnmatchcase(path, p) for p in rule.write_paths):
                    yield Outcome("none", f"{rule.id}:redirect", f"writing to `{target.value}` is not allowed",
                                  hint=f"Writable paths: {', '.join(rule.write_paths) or 'none'}.")
            elif rule.redirects == "none":
                yield Outcome("none", f"{rule.id}:redirect", "input redirection is not allowed by this rule")


CHECKS = (check_operators, check_constructs, check_programs, check_arguments, check_expansions, check_paths,
          check_redirects)


def evaluate_shell(rule: ShellRule, analysis: ShellAnalysis, cwd: str) -> Outcome:
    return first_outcome(rule.id, (o for check in CHECKS for o in check(rule, analysis, cwd)))
