"""The golden shell corpus: each command text under the `inspect` preset → expected verdict and rule ids.

The corpus (tests/golden/shell_cases.toml) records what a careful security engineer expects. Where the
guard disagrees today, the case is listed in GUARD_BUGS and runs as xfail(strict=True): the test fails
as soon as the guard is fixed, so the entry must then be removed.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from policy import Identity
from policy.shell.decide import vet_shell_text
from policy.shell.presets import INSPECT
from policy.shell.rules import ShellPolicy

CASES = tomllib.loads((Path(__file__).parent / "golden" / "shell_cases.toml").read_text())["case"]
POLICY = ShellPolicy("golden", (INSPECT,), "/work/project")

_SUBSTITUTION_NEWLINE = ("guard bug: a newline inside $(...) or `...` ends the substitution early (bashlex "
                         "positions); the rest becomes literal text of the outer word, so the commands after the "
                         "newline are never checked (bash runs them; only the rebuild, which runs the guard's "
                         "reading, keeps them from running)")
_NUL = ("guard bug: words.py keeps the NUL that $'\\0'/$'\\x00' decodes to, but bash ends the word there, so "
        "the argument checks see `{}\\x00` while bash passes `{}`")
_ANSI_C = ("guard gap: issue 3 requires ANSI-C quoting that decodes to {} to be denied unless a rule allows "
           "it; the guard decodes and allows it")
_RECURSIVE_HOME = ("guard bug: check_paths only treats absolute deny_paths (/proc, /sys, ...) as roots of a "
                   "recursive grep; */.ssh/*, */.aws/* ... under the searched directory are not considered")

GUARD_BUGS: dict[str, str] = {
    "rm inside a substitution after a newline": _SUBSTITUTION_NEWLINE,
    "rm after a comment inside a substitution": _SUBSTITUTION_NEWLINE,
    "rm on the second line of backticks": _SUBSTITUTION_NEWLINE,
    "rm on the second line of a quoted substitution": _SUBSTITUTION_NEWLINE,
    "line continuation inside a substitution hides find -delete": (
        "guard bug: a backslash-newline inside $(...) shifts bashlex's positions: the guard reads `find . -dele` "
        "and literal `e)`, bash runs `find . -delete`"),
    "NUL escape cuts the word: find -delete": _NUL.format("-delete", "-delete"),
    "hex NUL escape cuts the word: find -exec": _NUL.format("-exec", "-exec"),
    "NUL escape cuts the word: git --ext-diff": _NUL.format("--ext-diff", "--ext-diff"),
    "NUL escape cuts the word: /etc/shadow": _NUL.format("/etc/shadow", "/etc/shadow"),
    "ANSI-C decodes to the program ls": _ANSI_C.format("a program name"),
    "half of a program name in ANSI-C": _ANSI_C.format("a program name"),
    "ANSI-C decodes to an option of ls": _ANSI_C.format("an option"),
    "ANSI-C decodes to echo -n": _ANSI_C.format("an option"),
    "double leading slash before proc": ("guard bug: posixpath.normpath keeps a leading `//`, so "
                                         "`//proc/1/environ` does not match /proc/* (Linux reads /proc/1/environ)"),
    "/dev/fd symlink back into /proc": ("guard bug: paths are normalised lexically; /dev/fd is a symlink to "
                                        "/proc/self/fd, so /dev/fd/../../1/environ is /proc/1/environ"),
    "glob matching /etc/shadow": ("guard bug: a glob in the last path component is matched against deny_paths "
                                  "as text (fnmatch of `/etc/shado?` against `/etc/shadow` fails); bash expands "
                                  "it to /etc/shadow"),
    "glob matching ~/.netrc": "guard bug: as for /etc/shado?, `~/.netr?` is not matched against */.netrc",
    "bracket glob matching ~/.netrc": "guard bug: as for /etc/shado?, `~/.net[r]c` is not matched against */.netrc",
    "grep -f with the file attached": ("guard bug: _path_forms skips every word that starts with `-` unless it has "
                                       "`=`, so a value attached to a short option (-f/proc/1/environ) is never "
                                       "checked"),
    "kubernetes service-account token": ("policy gap: DEFAULT_DENY_PATHS has no /var/run/secrets/* (or "
                                         "/run/secrets/*), where container credentials live"),
    "grep -d recurse x /": ("guard bug: programs.reads_recursively knows -r/-R/--recursive only, not "
                            "`-d recurse` / `--directories=recurse`"),
    "grep --directories=recurse x /": ("guard bug: programs.reads_recursively knows -r/-R/--recursive only, not "
                                       "`-d recurse` / `--directories=recurse`"),
    "grep -r over ~/.ssh": _RECURSIVE_HOME,
    "grep -r over the home directory": _RECURSIVE_HOME,
    "grep -r over /home": _RECURSIVE_HOME,
    "closing stderr": ("guard bug: `2>&-` makes analyze.redirect raise AttributeError (bashlex gives the `-` "
                       "target as a str); vet_shell_text raises instead of deciding"),
    "empty alternative in echo": ("guard bug: brace expansion keeps the empty word of `{,-delete}` (bash drops "
                                  "it), so the rebuild cannot reproduce it and denies (guard:rebuild)"),
    "group of allowed commands": ("guard bug: a list's trailing `;` is kept as an operator, so `{ ls; echo ok; }` "
                                  "rebuilds as `{ ls ; echo ok ;; }` and is denied (guard:rebuild)"),
    "[ is the test builtin, not a glob": ("guard bug: a lone `[` is lexed as a glob and run as `./[`, so the "
                                          "denial says guard:dynamic-program instead of naming the program `[`"),
    "only a comment": ("guard bug: a comment-only text reaches bashlex, which fails with an internal "
                       "AttributeError (guard:parse-error) instead of guard:empty"),
}


def test_corpus_is_large_and_titles_are_unique() -> None:
    titles = [case["title"] for case in CASES]
    assert len(set(titles)) == len(titles), "duplicate titles"
    assert len(set(titles)) >= 150


def test_known_guard_bugs_name_corpus_cases() -> None:
    assert not set(GUARD_BUGS) - {case["title"] for case in CASES}


def _param(case: dict[str, object]) -> object:
    title = str(case["title"])
    marks = [pytest.mark.xfail(strict=True, reason=GUARD_BUGS[title])] if title in GUARD_BUGS else []
    return pytest.param(case, id=title, marks=marks)


@pytest.mark.parametrize("case", [_param(case) for case in CASES])
def test_golden_shell_case(case: dict[str, object]) -> None:
    analysis, decision, rebuilt = vet_shell_text(Identity("golden"), POLICY, str(case["text"]))
    assert (decision.verdict.value, list(decision.rules)) == (case["verdict"], case["rules"]), (
        f"{decision.reason}\nfacts: {analysis.summary()}")
    if decision.allowed:
        assert rebuilt is not None
