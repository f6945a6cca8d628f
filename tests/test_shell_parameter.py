"""Parameter expansions with an operator (`${x:-w}`, `${f%.py}`, `${#x}`, ...), grounded in real bash.

- policy.shell.parameter.apply computes what bash 5.2 computes, for every operator and many values;
- for a loop over a pattern, the value policy.shell.values derives (`${f%.py}` of `./*.py` is `./*`)
  holds every result bash makes from files that match it;
- each refused shape that runs code does so in bash (a marker program in a scratch directory), and
  is refused by the guard with the reason; the others are refused for what they would do;
- allowed texts run rebuilt and print (or leave on disk) exactly what the agent's own text does.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from bastion.policy import Identity
from bastion.policy.shell import parameter, values
from bastion.policy.shell.analyze import analyse_shell
from bastion.policy.shell.decide import vet_shell_text
from bastion.policy.shell.presets import DEVELOPER, INSPECT
from bastion.policy.shell.rules import ShellPolicy, ShellRule
from bastion.policy.shell.words import GLOB, LIT, Word
from tests.conftest import requirement

ME = Identity("agent")
BASH = shutil.which("bash")


def _bash(text: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    if BASH is None:
        pytest.fail("these tests need bash on PATH: `apt-get install -y bash`")
    return subprocess.run([BASH, "--noprofile", "--norc", "-c", text], cwd=cwd, capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "HOME": "/root", **(env or {})}, timeout=20)


def vet(text: str, rule: ShellRule = INSPECT, cwd: str = "/testbed") -> tuple[bool, tuple[str, ...], str, str | None]:
    _, decision, rebuilt = vet_shell_text(ME, ShellPolicy("t", (rule,), cwd), text)
    return decision.allowed, decision.rules, f"{decision.reason} / {decision.hint}", rebuilt


VALUES = ["", "a", "./a.b.py", "/root", "abcabc", "A.bC", "src/pkg/mod.py", "a/b/", ".hidden", "x-y_z.tar.gz"]
BODIES = ["x:-d", "x-d", "x:+a", "x+a", "x:?m", "#x", "x#*.", "x##*.", "x%.*", "x%%.*", "x#./", "x##*/", "x%/*",
          "x%%/*", "x#*/", "x%.py", "x%%b*", "x/a/b", "x//a/b", "x/#a/b", "x/%c/Z", "x/a", "x//?/-", "x/b*/Q",
          "x^", "x^^", "x,", "x,,", "x^^a", "x,,?", "x:1", "x:1:2", "x: -2", "x:1:-1", "x:0:0", "x: -10", "x:10",
          "x:2:100", "x/./:", "x##a*c", "x%%c*", "x#?"]


@requirement("shell:variables")
@pytest.mark.parametrize("value", VALUES)
def test_apply_computes_what_bash_computes(tmp_path: Path, value: str) -> None:
    wrong = []
    for body in BODIES:
        if body.startswith("x:?") and not value:
            continue  # bash stops with the message: nothing is computed
        parsed = parameter.parse(body, True)
        assert isinstance(parsed, parameter.Expansion), (body, parsed)
        done = subprocess.run([BASH or "bash", "--noprofile", "--norc", "-c", f'x="$1"; printf %s "${{{body}}}"', "_",
                               value], capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"}, timeout=10)
        ours = parameter.apply(parsed, value, tuple(parsed.words))
        theirs = done.stdout if done.returncode == 0 else ""  # an error (substring < 0): nothing runs
        if ours != theirs:
            wrong.append((body, ours, theirs, done.stderr.strip()))
    assert not wrong, f"value {value!r}: (body, ours, bash's, stderr): {wrong}"


def _loop_word(pattern: str) -> Word:
    structure = analyse_shell(f"for f in {pattern}; do echo $f; done").structure
    assert structure is not None and structure.kind == "for", pattern
    return structure.words[0]


def _fits(form: Word, text: str) -> bool:
    """Whether ``text`` is a match of the pathname pattern ``form`` (globs never match `/`)."""
    regex = []
    for segment in form.segments:
        if segment.kind == LIT:
            regex.append(re.escape(segment.text))
        elif segment.text == "*":
            regex.append("[^/]*")
        elif segment.text == "?":
            regex.append("[^/]")
        else:
            raise AssertionError(f"unexpected segment {segment}")
    return re.fullmatch("".join(regex), text) is not None


FILES = ["a.py", "b.c.py", "x-y.py", "Ab.PY", "py.py", "mod.tar.gz", "src/one.py", "src/t.w.py", "src/A.py"]
PATTERNS = ["*.py", "src/*.py", "*", "./*.py", "*.tar.gz", "src/*", "*.P?"]
OPS = ["%.py", "%.*", "%%.*", "#./", "##*/", "%/*", "%%/*", "#*/", "^^", ",,", "^", ",", "%%.py", "##./", "%%*",
       "##*", "#*.", "%y", "##*.", "#src/", "%%/"]


@requirement("shell:variables")
@pytest.mark.parametrize("pattern", PATTERNS)
def test_a_value_derived_from_a_loop_over_a_pattern_holds_what_bash_makes(tmp_path: Path, pattern: str) -> None:
    for name in FILES:
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text("")
    word = _loop_word(pattern)
    rebuilt = "".join(s.text for s in word.segments)  # the loop as Bastion runs it (./*.py)
    checked = 0
    for op in OPS:
        segment = analyse_shell(f'for f in a; do echo "${{f{op}}}"; done').commands[0].args[0].segments[0]
        e = values.expansion(segment)
        derived = values._derived_pattern(e, word.segments)
        if derived is None:
            continue  # refused as a path: nothing to hold
        form = Word("", derived)
        made = _bash(f'for f in {rebuilt}; do printf "%s\\0" "${{f{op}}}"; done', tmp_path).stdout.split("\0")[:-1]
        assert made, (pattern, op)
        outside = [m for m in made if not _fits(form, m)]
        assert not outside, f"{pattern} {op}: bash made {outside}, outside the derived pattern {form.value!r}"
        checked += 1
        if word.dot_slash and values.same_as_written(e, word):
            # What the agent's own loop (over `*.py`, not `./*.py`) makes: the same, or with ./ before it.
            meant = _bash(f'for f in {pattern}; do printf "%s\\0" "${{f{op}}}"; done', tmp_path).stdout.split("\0")[:-1]
            differ = [(m, r) for m, r in zip(meant, made, strict=True) if r not in (m, "./" + m)]
            assert not differ, f"{pattern} {op}: (meant, ran) {differ}"
    assert checked >= 8, f"only {checked} operators were bounded for {pattern}"


# Refused shapes that run code in bash: {M} is the marker program.
RUNS_CODE = [
    ("prompt expansion runs the substitutions in a value", "echo ${HOME@P}", {"HOME": "$({M})"}, "@P"),
    ("an offset is arithmetic over a variable's value", "echo ${HOME:USER}", {"USER": "a[$({M})]"}, "arithmetic"),
    ("a length is arithmetic too", "echo ${HOME:1:USER}", {"USER": "a[$({M})]"}, "arithmetic"),
    ("indirection evaluates the named variable's subscript", "echo ${!USER}", {"USER": "a[$({M})]"}, "indirection"),
]


@requirement("shell:variables")
@pytest.mark.parametrize(("title", "text", "env", "reason"), RUNS_CODE, ids=[r[0] for r in RUNS_CODE])
def test_operators_that_run_code_are_refused(tmp_path: Path, title: str, text: str, env: dict[str, str],
                                             reason: str) -> None:
    marker = tmp_path / "marker"
    marker.write_text(f"#!/bin/sh\necho ran >> {tmp_path / 'ran.log'}\n")
    marker.chmod(0o755)
    _bash(text, tmp_path, {k: v.replace("{M}", str(marker)) for k, v in env.items()})
    assert (tmp_path / "ran.log").exists(), f"bash did not run the marker for {text!r}: the shape is not grounded"
    allowed, rules, why, _ = vet(text)
    assert not allowed and rules == ("inspect:expansion",), why
    assert reason in why, why


REFUSED = [
    ("echo ${HOME:=/}", "inspect:expansion", "assigns"),
    ("cat ${HOME%root}etc/shadow", "inspect:expansion", "derives a value from `$HOME`"),
    ("echo ${SECRET:-x}", "inspect:expansion", "`$SECRET`"),
    ("echo ${HOME:-$SECRET}", "inspect:expansion", "`$SECRET`"),
    ("echo ${HOME:-~}", "inspect:expansion", "characters other than"),
    ("for f in a; do echo ${f/a/<&>}; done", "inspect:expansion", "characters other than"),
    ("echo ${HOME:-a b}", "inspect:expansion", "characters other than"),
    ("echo ${1:-x}", "inspect:expansion", "positional and special"),
    ("for f in a; do echo ${f:010}; done", "inspect:expansion", "literal integer"),
    ("echo ${x:-$(rm -rf /)}", "inspect:program", "`rm`"),
    ("cat ${HOME:-/etc/shadow}", "inspect:path", "/etc/shadow"),
    ("for d in /; do cat ${d}proc/1/environ; done", "inspect:path", "/proc/1/environ"),
    ("echo $(for d in /; do cat ${d}proc/1/environ; done)", "inspect:path", "/proc/1/environ"),
    ("echo $(for f in /etc/shadow; do cat $f; done)", "inspect:path", "/etc/shadow"),
    ("cat ${d}/etc/shadow; for d in x; do echo $d; done", "inspect:path", "/etc/shadow"),
    ("for f in /root; do cat ${f%root}etc/shadow; done", "inspect:path", "/etc/shadow"),
    ("for f in /etc/x; do cat ${f/x/shadow}; done", "inspect:path", "/etc/shadow"),
    ("for f in /PROC/1/ENVIRON; do cat ${f,,}; done", "inspect:path", "/proc/1/environ"),
    ("for f in /PRO?; do ls ${f,,}; done", "inspect:path", "could match a protected path"),
    ("for f in *.py; do cat ${f/a/b}; done", "inspect:path", "cannot be bounded"),
    ("for f in *.py; do ${f%.py}; done", "guard:dynamic-program", "computed at run time"),
    # Bastion runs `*.py` as `./*.py`: where that ./ would change the result, the agent is told.
    ("for f in *.py; do echo ${#f}; done", "inspect:expansion", "loop over `./*.py`"),
    ("for f in *.py; do echo ${f%%.*}; done", "inspect:expansion", "loop over `./*.py`"),
    ("for f in *.py; do echo ${f%/*}; done", "inspect:expansion", "loop over `./*.py`"),
    ("for f in *.py; do echo ${f^}; done", "inspect:expansion", "loop over `./*.py`"),
    ("for f in *.py; do echo ${f#.}; done", "inspect:expansion", "loop over `./*.py`"),
    ("for f in *.py; do find . -name ${f#./}; done", "inspect:argument", "could become an option"),
]


@requirement("shell:variables")
@pytest.mark.parametrize(("text", "rule", "reason"), REFUSED)
def test_operators_whose_result_the_policy_cannot_bound_are_refused(text: str, rule: str, reason: str) -> None:
    allowed, rules, why, _ = vet(text)
    assert not allowed and rules == (rule,), why
    assert reason in why, why


def test_writes_through_a_derived_name_stay_in_the_workspace() -> None:
    allowed, rules, why, _ = vet('for f in *.py; do cp "$f" /etc/"${f#./}"; done', DEVELOPER)
    assert not allowed and rules == ("developer:write-path",), why
    allowed, rules, why, _ = vet("for f in /etc/x; do rm $f; done", DEVELOPER)
    assert not allowed and rules == ("developer:write-path",), why


# Allowed: each runs rebuilt in real bash and prints what the agent's own text prints.
ALLOWED = [
    'for f in *.py; do echo "${f%.py}.txt"; done',
    'echo "${HOME:-/tmp}" ${#HOME} ${HOME:+set} "${USER:-nobody}"',
    'for f in src/*.py; do echo "${f##*/}" "${f%/*}" "${f#./}" "${f%.*}"; done',
    'for f in *.py; do echo ${f^^} "${f#./}" "${f##*.}"; done',
    'for f in ./*.py; do echo ${f^} "${f%%.*}" ${#f}; done',
    "echo ${PWD##*/} ${PWD%/*}",
    "cat list | while read -r l; do echo \"${l%.py}\" ${l/a/b}; done",
    "for f in a.py b.py; do echo ${f/a/b} ${f:1:2} ${f: -2} ${f//./_}; done",
    'for f in *.py; do echo "${f:-none found}"; done',
]


@requirement("shell:variables", "shell:rebuild")
@pytest.mark.parametrize("text", ALLOWED)
def test_allowed_operators_run_the_same_rebuilt(tmp_path: Path, text: str) -> None:
    for name in ("a.py", "b.c.py", "src/one.py", "src/t.w.py"):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text("")
    (tmp_path / "list").write_text("x.py\nab.py\n")
    allowed, _, why, rebuilt = vet(text, cwd=str(tmp_path))
    assert allowed and rebuilt is not None, why
    env = {"USER": "agent", "PWD": str(tmp_path)}
    original, again = _bash(text, tmp_path, env), _bash(rebuilt, tmp_path, env)
    assert original.returncode == 0 and original.stdout.strip(), original.stderr
    if "for f in *" in text:  # Bastion runs `*.py` as `./*.py`: the same files, printed with ./
        assert again.stdout.replace("./", "") == original.stdout.replace("./", ""), rebuilt
        assert again.stdout != original.stdout
    else:
        assert again.stdout == original.stdout, rebuilt


@requirement("shell:variables", "shell:rebuild")
def test_developer_renames_files_with_a_trimmed_name(tmp_path: Path) -> None:
    text = 'for f in *.py; do mv "$f" "${f%.py}.txt"; done'
    allowed, _, why, rebuilt = vet(text, DEVELOPER, cwd=str(tmp_path))
    assert allowed and rebuilt is not None, why
    results = []
    for run in (text, rebuilt):
        work = tmp_path / str(len(results))
        work.mkdir()
        for name in ("a.py", "b.c.py", "keep.md"):
            (work / name).write_text(name)
        assert _bash(run, work).returncode == 0
        results.append(sorted((p.name, p.read_text()) for p in work.iterdir()))
    assert results[0] == results[1] == [("a.txt", "a.py"), ("b.c.txt", "b.c.py"), ("keep.md", "keep.md")]


def test_loop_variables_are_judged_by_each_loop_word() -> None:
    """values.forms puts each loop word in place of its variable (a `while read` one stays opaque)."""
    analysis = analyse_shell("for d in / src; do cat ${d}x; done; cat l | while read -r f; do cat $f; done")
    binds = values.bindings(analysis)
    assert binds["f"] is None and binds["d"] is not None
    made = values.forms(analysis.commands[0].args[0], binds, "/w")
    assert not isinstance(made, str) and sorted(w.value for w in made) == ["/x", "srcx"]
    # Used outside its loop (here before it), the variable may also be unset.
    analysis = analyse_shell("cat ${d}x; for d in a; do echo $(cat $d); done")
    binds = values.bindings(analysis)
    made = values.forms(analysis.commands[0].args[0], binds, "/w")
    assert not isinstance(made, str) and sorted(w.value for w in made) == ["ax", "x"]
    # A command in a substitution inside the loop is inside it: the variable is set there.
    analysis = analyse_shell("for d in a; do echo $(cat $d); done")
    made = values.forms(analysis.commands[0].args[0], values.bindings(analysis), "/w")
    assert not isinstance(made, str) and [w.value for w in made] == ["a"], analysis.summary()
    assert [s.kind for s in _loop_word("*.py").segments] == [LIT, GLOB, LIT]


def test_a_long_integer_loop_is_judged_once_per_shape() -> None:
    """Integer loop words stand for one another where no deny or write pattern holds a digit, so a
    loop over {1..300} is not refused for having more values than the path check takes."""
    allowed, _, why, _ = vet("for i in {1..300}; do cat x$i.txt; done")
    assert allowed, why
    allowed, rules, why, _ = vet("for i in 7; do cat /proc/$i/environ; done")
    assert not allowed and rules == ("inspect:path",), why
    allowed, rules, why, _ = vet("for i in 1 2; do cat ${i#1}/etc/shadow; done")  # derived: never folded
    assert not allowed and rules == ("inspect:path",), why
    names = " ".join(f"n{k}" for k in range(300))
    allowed, _, why, _ = vet(f"for n in {names}; do cat $n; done")
    assert allowed, why
    allowed, rules, why, _ = vet(f"for n in {names}; do for m in {names}; do cat $n$m; done; done")
    assert not allowed and rules == ("inspect:path",) and "more than 1024 values" in why, why
    # Each word may stay under the cap while the text repeats it: the whole text has a budget too.
    allowed, rules, why, _ = vet(f"for n in {names}; do cat {' '.join(['$n'] * 80)}; done")
    assert not allowed and rules == ("inspect:path",) and "more than 20,000 values" in why, why
