"""sed scripts read the way GNU sed compiles them (compile.c), to tell print-only scripts from the
ones that run programs or touch files by name.

``refusal(script)`` returns why a script is refused, or None when every command in it only prints,
edits the pattern/hold space or branches. Refused however spelled: ``e`` (runs a command), ``w``,
``W`` (write files), ``r``, ``R`` (read files by name), the ``s`` flags ``e`` and ``w``, and any
script this reader cannot follow to its end (fail closed).

    >>> refusal("1,50p") is None
    True
    >>> refusal("1eid")
    'the sed command `e` runs a program'
    >>> refusal("s|x|y|e")
    'the sed flag `s///e` runs the pattern space as a command'
"""

from __future__ import annotations

# Commands that print, edit the pattern or hold space, branch, or quit: nothing else.
_SIMPLE = set("=dDgGhHlnNpPxzFq Q".replace(" ", ""))
_TEXT = set("aic")  # a text, i text, c text: the rest of the line is text
_LABEL = set("btT")  # b label: branch
_REFUSED = {"e": "runs a program", "w": "writes a file", "W": "writes a file", "r": "reads a file by name",
            "R": "reads a file by name"}
_S_FLAGS = set("gpiImM0123456789")


class _Refused(Exception):
    pass


def refusal(script: str, *, write: bool = False) -> str | None:
    """Why ``script`` is not print-only (``write``: ``w`` to a file is accepted), or None."""
    try:
        _Reader(script, write).run()
    except _Refused as error:
        return str(error)
    return None


class _Reader:
    def __init__(self, text: str, write: bool) -> None:
        self.s, self.i, self.depth, self.write = text, 0, 0, write

    def peek(self) -> str:
        return self.s[self.i] if self.i < len(self.s) else ""

    def take(self) -> str:
        c = self.peek()
        self.i += 1
        return c

    def blanks(self, newlines: bool = False) -> None:
        while self.peek() and (self.peek() in " \t" or (newlines and self.peek() in "\n;")):
            self.i += 1

    def run(self) -> None:
        while True:
            self.blanks(newlines=True)
            if not self.peek():
                break
            if self.peek() == "#":
                self.to_line_end()
                continue
            self.addresses()
            self.blanks()
            while self.peek() == "!":
                self.i += 1
                self.blanks()
            self.command()
        if self.depth:
            raise _Refused("the sed script has an unclosed `{`")

    def to_line_end(self) -> str:
        end = self.s.find("\n", self.i)
        end = len(self.s) if end < 0 else end
        text, self.i = self.s[self.i : end], end
        return text

    def number(self) -> bool:
        start = self.i
        while self.peek().isdigit():
            self.i += 1
        return self.i > start

    def address(self) -> bool:
        c = self.peek()
        if c.isdigit():
            self.number()
            if self.peek() == "~":
                self.i += 1
                self.number()
            return True
        if c == "$":
            self.i += 1
            return True
        if c == "/" or c == "\\":
            if c == "\\":
                self.i += 1
                if not self.peek() or self.peek() in "\n\\":
                    raise _Refused("the sed script has an address this reader cannot follow")
            self.delimited(self.take(), regex=True)
            while self.peek() in ("I", "M"):
                self.i += 1
            return True
        return False

    def addresses(self) -> None:
        if not self.address():
            return
        self.blanks()
        if self.peek() == ",":
            self.i += 1
            self.blanks()
            if self.peek() in ("+", "~"):
                self.i += 1
                if not self.number():
                    raise _Refused("the sed script has an address this reader cannot follow")
            elif not self.address():
                raise _Refused("the sed script has an address this reader cannot follow")

    def delimited(self, delimiter: str, regex: bool = False) -> str:
        """Up to the next unescaped ``delimiter`` (match_slash): returns the text, consumes the delimiter.
        In a regular expression a bracket expression is one unit: `s/[/]/x/` replaces a slash."""
        if delimiter in ("\n", "\\", ""):
            raise _Refused("the sed script uses a delimiter this reader cannot follow")
        out: list[str] = []
        while True:
            c = self.take()
            if not c:
                raise _Refused("the sed script has an unterminated regular expression")
            if c == delimiter:
                return "".join(out)
            if c == "[" and regex:
                out.append(c + self.bracket())
            elif c == "\\":
                n = self.take()
                if not n:
                    raise _Refused("the sed script ends inside an escape")
                out.append(n if n == delimiter else c + n)
            elif c == "\n":
                raise _Refused("the sed script has a newline inside a regular expression")
            else:
                out.append(c)

    def bracket(self) -> str:
        """The rest of a bracket expression after its `[`: a leading ^ and ], [:class:], [.x.], [=x=]."""
        start = self.i
        if self.peek() == "^":
            self.i += 1
        if self.peek() == "]":
            self.i += 1
        while True:
            c = self.take()
            if not c or c == "\n":
                raise _Refused("the sed script has an unterminated bracket expression")
            if c == "]":
                return self.s[start : self.i]
            if c == "[" and self.peek() in (":", ".", "="):
                close = self.s.find(self.peek() + "]", self.i + 1)
                if close < 0:
                    raise _Refused("the sed script has an unterminated bracket expression")
                self.i = close + 2

    def end_of_command(self) -> None:
        self.blanks()
        c = self.peek()
        if c in ("", "\n", ";"):
            self.i += bool(c)
        elif c == "}" or c == "#":
            pass
        else:
            raise _Refused(f"the sed script has `{c}` where a command should end")

    def filename_command(self, name: str) -> None:
        if name in ("w", "W") and self.write:
            self.written(self.to_line_end(), f"the sed command `{name}`")
            return
        raise _Refused(f"the sed command `{name}` {_REFUSED[name]}")

    def written(self, filename: str, what: str) -> None:
        """With ``write``: a file sed writes must be relative to the workspace (no ..), or /dev/stdout
        or /dev/stderr."""
        name = filename.strip()
        if not name:
            raise _Refused(f"{what} needs a file name")
        inside = not name.startswith("/") and ".." not in name.split("/")
        if not (inside or name in ("/dev/stdout", "/dev/stderr")):
            raise _Refused(f"{what} writes `{name}`, outside the workspace")

    def command(self) -> None:
        c = self.take()
        if not c:
            raise _Refused("the sed script ends where a command should be")
        if c == "{":
            self.depth += 1
            return
        if c == "}":
            if self.depth == 0:
                raise _Refused("the sed script has an unmatched `}`")
            self.depth -= 1
            self.end_of_command()
            return
        if c in _REFUSED:
            self.filename_command(c)
            return
        if c in _SIMPLE:
            if c in "qQl":
                self.blanks()
                self.number()
            self.end_of_command()
        elif c in _TEXT:
            self.blanks()
            if self.s.startswith("\\\n", self.i):
                self.i += 2  # a\ then the text on the lines that follow
            elif self.peek() == "\\":
                self.i += 1
            while True:  # the text runs to the end of the line; a trailing backslash continues it
                line = self.to_line_end()
                escaped = len(line) - len(line.rstrip("\\"))
                if not (escaped % 2 and self.peek() == "\n"):
                    break
                self.i += 1
        elif c in _LABEL or c == ":":
            # GNU sed ends a label at a blank or `;` and reads on from there: `bd e` is `b d` then `e`.
            self.blanks()
            while self.peek() and self.peek() not in " \t;\n":
                self.i += 1
        elif c == "s":
            self.substitute()
        elif c == "y":
            delimiter = self.take()
            self.delimited(delimiter)
            self.delimited(delimiter)
            self.end_of_command()
        elif c == "v":
            self.to_word_end()
            self.end_of_command()
        else:
            raise _Refused(f"the sed command `{c}` is not one this reader accepts")

    def to_word_end(self) -> None:
        self.blanks()
        while self.peek() and self.peek() not in " \t;\n}":
            self.i += 1

    def substitute(self) -> None:
        delimiter = self.take()
        self.delimited(delimiter, regex=True)
        self.delimited(delimiter)
        while True:
            c = self.peek()
            if c in _S_FLAGS and c:
                self.i += 1
            elif c == "e":
                raise _Refused("the sed flag `s///e` runs the pattern space as a command")
            elif c == "w":
                if not self.write:
                    raise _Refused("the sed flag `s///w` writes a file")
                self.i += 1
                self.written(self.to_line_end(), "the sed flag `s///w`")
                return
            else:
                break
        self.end_of_command()
