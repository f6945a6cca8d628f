"""The shell presets as agents meet them (issue 14): what `inspect` and `developer` allow of real
work, that every refusal says what would pass, that interpreters run only as named, and that the
guard cannot be used to stall the gateway (budgets, vetting off the event loop)."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import time
from pathlib import Path

import anyio
import pytest

from bastion.policy import Decision, Identity
from bastion.policy.shell.decide import vet_shell_text
from bastion.policy.shell.presets import DEVELOPER, INSPECT, developer
from bastion.policy.shell.rules import ShellPolicy
from bastion.policy.shell.sed import refusal as sed_refusal
from bastion.store import SqliteAuditStore
from bastion.tools.calls import Caller
from bastion.tools.gateway import Gateway
from bastion.tools.guard import Vetted
from tests.conftest import requirement

pytestmark = pytest.mark.anyio

WORKSPACE = "/testbed"
ME = Identity("agent")


def decide(rule, text: str) -> tuple[Decision, str | None]:  # type: ignore[no-untyped-def]
    _, decision, rebuilt = vet_shell_text(ME, ShellPolicy("t", (rule,), WORKSPACE), text)
    return decision, rebuilt


# What agents really run (shapes from the development corpus, /work/shared/corpora), under inspect.
INSPECT_ALLOWS = [
    "cd /testbed && git status",
    "cd /testbed && sed -n '1,50p' src/wcs.py",
    "cd /testbed && grep -rn 'def validate' --include=*.py src/ | head -20",
    "cd /testbed/src && ls -la && cat setup.cfg",
    "find tests -name '*.py' -type f -exec grep -l 'DateTime' {} \\; | head",
    "find . -name '*.py' | xargs grep -l _invoke | head -5",
    "awk '/class DateTime/,/^class [A-Z]/' src/fields.py | grep -n _serialize",
    "grep -n \"'[A-Z][A-Z]'\" filewriter.py | grep -o \"'[A-Z][A-Z]'\" | sort -u",
    "git log --oneline -10 && git diff HEAD~1 --stat",
    "git show HEAD:src/x.py | nl | sed -n '10,40p'",
    "git blame -L 10,20 src/x.py",
    "wc -l src/*.py | sort -n | tail -3",
    "diff -u a.py b.py; cmp a.py b.py",
    "stat setup.py && file setup.py && du -sh . && df -h .",
    "uname -a; date; id; which python",
    "tree -L 2 src | head -50",
    "cut -d: -f1 notes.txt | tr a-z A-Z | uniq -c",
    "git ls-files | grep test_ | wc -l",
    "git remote -v && git describe --tags && git shortlog -sn | head",
    "echo '---' && sed -n '/^def main/,/^def /p' main.py",
]


@requirement("shell:harmless")
@pytest.mark.parametrize("text", INSPECT_ALLOWS)
def test_inspect_allows_what_agents_really_run(text: str) -> None:
    decision, rebuilt = decide(INSPECT, text)
    assert decision.allowed, f"{decision.reason} / {decision.hint}"
    assert rebuilt is not None


# Refusals and the concrete alternative each names.
REFUSALS = [
    ("sed -n '1,50p' f | sed 1eid", "inspect:argument", "sed -n '1,50p' FILE"),
    ("sed -i 's/a/b/' f", "inspect:argument", "head -n 50 FILE"),
    ("cd src", "inspect:cd", "`cwd`"),
    ("cd /etc && cat passwd", "inspect:cd", "`cwd`"),
    ("awk 'BEGIN {system(\"id\")}'", "inspect:argument", "print"),
    ("find . -delete", "inspect:argument", "-exec grep"),
    ("git push origin main", "inspect:argument", "git log"),
    ("git diff --no-index . /etc", "inspect:argument", "--no-index"),
    ("python3 -c 'print(1)'", "inspect:program", "python -m pytest"),
    ("bash -c 'ls'", "inspect:program", "joined by"),
    ("less README.md", "inspect:launcher", "head -n 100"),
    ("rm -rf build", "inspect:program", "read-only"),
    ("ls -*", "inspect:expansion", "./-*"),
    ("echo x > out.txt", "inspect:redirect", "drop the redirection"),
]


@requirement("shell:argument-rules")
@pytest.mark.parametrize(("text", "rule", "hint"), REFUSALS)
def test_every_refusal_says_what_would_pass(text: str, rule: str, hint: str) -> None:
    decision, rebuilt = decide(INSPECT, text)
    assert not decision.allowed and rebuilt is None
    assert decision.rules == (rule,), decision.reason
    assert decision.hint and hint in decision.hint, decision.hint


@requirement("shell:interpreters")
@pytest.mark.parametrize("text", ["python3 -Ic 'import os'", "bash -xc id", "perl -ne 'BEGIN{system(1)}' f",
                                  "node -pe 1", "bash /dev/stdin", "python3 -", "python3 -m http.server",
                                  "printf -v PATH /tmp", "ruby -e 1", "php -r 1", "bash -s", "python3"])
def test_interpreters_do_not_run_inline_code_even_when_named(text: str) -> None:
    rule = developer(frozenset({"python3", "bash", "perl", "node", "ruby", "php", "python -m pytest"}))
    decision, _ = decide(rule, text)
    assert not decision.allowed, f"{text!r} passed"


@requirement("shell:interpreters")
def test_developer_runs_the_named_build_and_test_commands_only() -> None:
    rule = developer(frozenset({"python -m pytest", "make", "npm test", "python"}))
    for text in ["python -m pytest -q tests/test_x.py -k name", "make -j2", "npm test", "python --version",
                 "cd /testbed && python -m pytest tests/ 2>&1 | tail -20"]:
        assert decide(rule, text)[0].allowed, text
    assert decide(rule, "python reproduce.py")[0].allowed  # `python` named: a script file runs
    for text in ["python -c 'print(1)'", "npm install left-pad", "python3 -m pytest", "python -Ic 1", "python -"]:
        assert not decide(rule, text)[0].allowed, text
    assert not decide(DEVELOPER, "python -m pytest")[0].allowed  # nothing named: no interpreter


@requirement("shell:redirects")
def test_developer_writes_inside_the_workspace_only() -> None:
    for text in ["mkdir -p build && touch build/x", "echo x > notes.txt", "sed -i 's/a/b/' src/x.py",
                 "cp a.py b.py", "git apply fix.patch", "echo x | tee out.log"]:
        decision, _ = decide(DEVELOPER, text)
        assert decision.allowed, f"{text}: {decision.reason}"
    for text in ["echo x > /etc/motd", "cp a.py /usr/local/bin/", "rm -rf /", "cd /testbed && echo x > ../x",
                 "rm -rf /tmp/x", "cat > /tmp/x.py <<'EOF'\nx\nEOF",
                 "sed -n 'w /etc/x' f", "git add -A && git commit -m msg"]:
        assert not decide(DEVELOPER, text)[0].allowed, text
    assert not decide(INSPECT, "echo x > notes.txt")[0].allowed


@requirement("shell:brace-expansion")
@pytest.mark.parametrize("text", ["echo {1..9}{1..9}{1..9}{1..9}{1..9}{1..9}{1..9}{1..9}{1..9}",
                                  "echo " + "{a,b}" * 40, "ls {0..9999}{0..9999}", "echo {1..1000}" * 30])
def test_a_brace_bomb_is_refused_quickly_with_a_clear_error(text: str) -> None:
    started = time.perf_counter()
    decision, _ = decide(INSPECT, text)
    assert time.perf_counter() - started < 3.0
    assert decision.rules == ("guard:budget",), decision.reason
    assert "write the words out" in decision.reason or "larger than" in decision.reason


@requirement("shell:brace-expansion")
async def test_shell_vetting_runs_off_the_event_loop(tmp_path: Path) -> None:
    """A slow vet (here: one that sleeps like a budget's worth of work) does not hold other callers:
    a ticker on the event loop keeps running while it is vetted."""
    gateway = Gateway({}, SqliteAuditStore(tmp_path / "audit.db"))
    caller = Caller(ME, {"name": "t", "version": "1"})
    ticks: list[float] = []

    def slow_vet() -> Vetted:
        time.sleep(0.5)
        return Vetted(None, Decision.deny("guard:budget", "too big"))

    async def ticker() -> None:
        for _ in range(20):
            ticks.append(time.perf_counter())
            await anyio.sleep(0.01)

    async def call() -> None:
        with pytest.raises(Exception):
            await gateway.guard.run(caller, "shell_run", "sh", "echo {a,b}", None, what="command", vet=slow_vet,
                                    execute=None, result_record=None)  # type: ignore[arg-type]

    with anyio.fail_after(10):
        async with anyio.create_task_group() as group:
            group.start_soon(call)
            group.start_soon(ticker)
    gaps = [b - a for a, b in zip(ticks, ticks[1:])]
    assert max(gaps) < 0.3, f"the event loop stalled for {max(gaps):.2f} s"


def test_the_development_corpus_figures_hold() -> None:
    """inspect allows at least 95 % of the read-only commands of real agent traffic and none of the
    writes or program runs (tests/bench/bench_shell_presets.py prints the details)."""
    corpus = Path("/work/shared/corpora/agent_shell_dev.jsonl")
    if not corpus.exists():
        pytest.skip("the development corpus is not on this machine")
    rows = [json.loads(line) for line in corpus.read_text().splitlines() if line.strip()]
    policy = ShellPolicy("bench", (INSPECT,), WORKSPACE)
    allowed = {"allow": 0, "deny": 0}
    for row in rows:
        allowed[row["expected"]] += vet_shell_text(ME, policy, row["text"])[1].allowed
    labelled = {k: sum(r["expected"] == k for r in rows) for k in allowed}
    assert allowed["allow"] / labelled["allow"] >= 0.95
    assert allowed["deny"] == 0


def _gnu_sed_sandbox_refuses(script: str) -> bool:
    """Whether GNU sed's own --sandbox mode finds an e, r or w command in ``script`` (compiled, never
    run on anything: the input is empty)."""
    done = subprocess.run(["sed", "--sandbox", "-n", "-e", script, "/dev/null"], capture_output=True, text=True,
                          timeout=10, env={"PATH": "/usr/bin:/bin", "LANG": "C"})
    return "disabled in sandbox mode" in done.stderr


SED_ATTACKS = ["1eid", "$!e id", "s|x|y|e", "s/x/y/w out", "p;w out", "1r /etc/passwd", "R x", "W x",
               "/a/{e id\n}", "s/[/]/x/e", "y/a/b/;e id", "a\\\nx\ne id", "1!e id", "0~1e id", "\\%x%e id",
               "s/a/b/gpe", "1,$ { e id\n }", ":a;e id", "b x;e id", "s/x/y/;s/y/z/w f"]


@requirement("shell:argument-rules")
def test_sed_scripts_bastion_accepts_never_hold_e_r_or_w_for_gnu_sed() -> None:
    """A differential check against GNU sed itself (`sed --sandbox` refuses e, r and w at compile
    time): every script Bastion's reader accepts, from the attacks above, the golden corpus and 3,000
    random ones, compiles under --sandbox; every attack is refused by both."""
    if shutil.which("sed") is None or "GNU" not in subprocess.run(["sed", "--version"], capture_output=True,
                                                                   text=True).stdout:
        pytest.fail("this test needs GNU sed (`apt-get install sed`)")
    rng = random.Random(14)
    alphabet = list("p;{}!/\\ewrRWs|1$,~+aicn\n #:btyqdgGhHxl=") + ["e id", "w f", "s/a/b/", "/x/"]
    scripts = SED_ATTACKS + ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 10))) for _ in range(3000)]
    accepted = [s for s in scripts if sed_refusal(s) is None]
    wrong = [s for s in accepted if _gnu_sed_sandbox_refuses(s)]
    assert not wrong, f"Bastion accepts sed scripts that GNU sed reads as e/r/w: {wrong[:10]}"
    for attack in SED_ATTACKS:
        assert sed_refusal(attack) is not None, attack
        assert _gnu_sed_sandbox_refuses(attack) or attack in ("s/x/y/;s/y/z/w f",), attack
    assert len(accepted) > 300  # the random scripts exercised the reader, not only its refusals


@requirement("shell:brace-expansion")
@pytest.mark.parametrize("text", ["ls -" + "a" * 30_000, "ls -" + "~" * 30_000, "ls -" + "/" * 30_000,
                                  " ".join(["ls -" + "a~" * 128 + "x" * 3000] * 9), "cat " + "a/" * 15_000,
                                  "ls " + "*" * 30_000 + "x", "echo " + "$(echo " * 60 + "x" + ")" * 60])
def test_no_text_under_the_size_limit_holds_the_guard_for_long(text: str) -> None:
    """Texts built to make the analysis or the path checks slow (long attached option values, many
    slashes or tildes, long globs, deep substitutions) are decided within seconds of CPU."""
    started = time.thread_time()
    decide(INSPECT, text)
    assert time.thread_time() - started < 5.0
