"""Config errors in plain words: `FILE:LINE: key.path: what was found; what is expected`.

pydantic says where (a key path) and what rule failed, in its own words ("Extra inputs are not
permitted"); tomllib says where it noticed a syntax error, which for an unclosed array is where the
file ended. This module turns both into one line per problem that a person can act on:

    bastion.toml:7: connections.demo.pasword_env: unknown key; did you mean `password_env`?
    bastion.toml:12: connections.demo.rules[0].max_rows: found -5; expected a number greater than 0
    bastion.toml:3: not valid TOML: this array is never closed: `groups = ["a", "b"`

Line numbers come from `key_lines`, a small scan of the file's table headers and keys (TOML
parsers keep no positions): good for every key written on its own line, which is how configs are
written; a key it cannot place is reported at its table's line, or without a line.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
from typing import Any

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

Path_ = tuple[str | int, ...]

# Tags pydantic adds to a location for a discriminated union's branch or a validator: not keys.
_CONNECTION_KINDS = ("postgres", "sqlite", "local", "ssh", "container")

_TYPE_NAMES = {
    "int_type": "a whole number", "int_parsing": "a whole number", "int_from_float": "a whole number",
    "float_type": "a number", "float_parsing": "a number", "bool_type": "true or false", "bool_parsing": "true or false",
    "string_type": "a string in quotes", "list_type": "a list, e.g. [\"a\", \"b\"]", "dict_type": "a table",
    "model_type": "a table", "model_attributes_type": "a table",
}


def _split_key(text: str) -> tuple[str, ...]:
    """`a."b.c".d` → ("a", "b.c", "d")."""
    parts, current, quote = [], "", ""
    for ch in text.strip():
        if quote:
            if ch == quote:
                quote = ""
            else:
                current += ch
        elif ch in "\"'":
            quote = ch
        elif ch == ".":
            parts.append(current.strip())
            current = ""
        else:
            current += ch
    parts.append(current.strip())
    return tuple(parts)


def _strip_comment(line: str) -> str:
    quote = ""
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "\"'":
            quote = ch
        elif ch == "#":
            return line[:i]
    return line


def key_lines(text: str) -> dict[Path_, int]:
    """Where each table and key is written: path → 1-based line. Arrays of tables count their
    entries (`[[connections.db.rules]]` twice → ("connections", "db", "rules", 0) and (..., 1))."""
    where: dict[Path_, int] = {}
    table: Path_ = ()
    counts: dict[Path_, int] = {}
    depth = 0  # inside a multi-line array or inline table: its lines hold no keys of the table
    for number, raw in enumerate(text.splitlines(), 1):
        line = _strip_comment(raw).strip()
        if depth > 0:
            depth += line.count("[") + line.count("{") - line.count("]") - line.count("}")
            continue
        if line.startswith("[["):
            path: Path_ = _split_key(line[2:line.find("]]")])
            counts[path] = counts.get(path, -1) + 1
            table = path + (counts[path],)
            where.setdefault(path, number)
            where[table] = number
        elif line.startswith("["):
            path = _split_key(line[1:line.find("]")])
            # a sub-table of the latest entry of an array of tables: [connections.db.rules.x]
            for length in range(len(path) - 1, 0, -1):
                if path[:length] in counts:
                    path = path[:length] + (counts[path[:length]],) + path[length:]
                    break
            table = path
            where.setdefault(table, number)
        elif "=" in line:
            key, _, value = line.partition("=")
            path = table + _split_key(key)
            for length in range(len(table) + 1, len(path) + 1):
                where.setdefault(path[:length], number)
            value = value.strip()
            if value.startswith(("[", "{")):
                depth = value.count("[") + value.count("{") - value.count("]") - value.count("}")
    return where


def line_of(where: dict[Path_, int], path: Path_) -> int | None:
    """The line of ``path``, else of its nearest enclosing key or table that is written down."""
    for length in range(len(path), 0, -1):
        if path[:length] in where:
            return where[path[:length]]
    return None


def _fields_at(model: type[BaseModel], path: Path_) -> set[str]:
    """The keys the config takes in the table at ``path``, for did-you-mean."""
    candidates: list[Any] = [model]
    for part in path:
        following: list[Any] = []
        for candidate in candidates:
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                if isinstance(part, str) and part in candidate.model_fields:
                    following.extend(_unwrap(candidate.model_fields[part].annotation))
            else:
                following.extend(_inner(candidate, part))
        candidates = following
    return {key for candidate in candidates for key in _keys_of(candidate)}


def _keys_of(tp: Any) -> set[str]:
    return set(tp.model_fields) - {"base_dir", "source"} if isinstance(tp, type) and issubclass(tp, BaseModel) else set()


def _unwrap(tp: Any) -> list[Any]:
    """Annotated[X, ...] → X; X | None → X; a union → its members."""
    if tp is None:
        return []
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        return _unwrap(typing.get_args(tp)[0])
    if origin in (typing.Union, types.UnionType):
        return [u for arg in typing.get_args(tp) for u in _unwrap(arg)]
    return [tp]


def _inner(tp: Any, part: str | int) -> list[Any]:
    """What a list's item or a dict's value is."""
    origin = typing.get_origin(tp)
    if origin is list and isinstance(part, int):
        return _unwrap(typing.get_args(tp)[0])
    if origin is dict and not isinstance(part, int):
        return _unwrap(typing.get_args(tp)[1])
    return []


def _clean(loc: tuple[Any, ...]) -> Path_:
    """pydantic's location without the tags it adds for unions and validators."""
    out: list[str | int] = []
    for part in loc:
        if isinstance(part, int):
            out.append(part)
        elif part in _CONNECTION_KINDS and len(out) == 2 and out[0] == "connections":
            continue
        elif str(part).startswith(("function-", "literal[", "list[", "dict[", "str", "float", "int", "bool")) and \
                not re.fullmatch(r"[a-z_]+", str(part)):
            continue
        elif part in ("function-after", "function-before", "function-wrap"):
            continue
        else:
            out.append(str(part))
    return tuple(out)


def dotted(path: Path_) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(top level)"


def _shown(value: Any) -> str:
    if isinstance(value, str):
        return f'"{value}"' if len(value) <= 80 else f'"{value[:77]}…"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return "a table" if isinstance(value, dict) else f"a list of {len(value)}"
    return repr(value)


def _what(item: ErrorDetails, path: Path_, model: type[BaseModel]) -> str:
    """Found and expected, in plain words, for one pydantic error."""
    kind, ctx, value = item["type"], item.get("ctx") or {}, item.get("input")
    found = f"found {_shown(value)}"
    if kind == "extra_forbidden":
        key = str(path[-1])
        known = sorted(_fields_at(model, path[:-1]))
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
        if close:
            return f"unknown key; did you mean `{close[0]}`?"
        return "unknown key; expected one of " + ", ".join(f"`{k}`" for k in known) if known else "unknown key"
    if kind == "missing":
        return "required, but missing"
    if kind in ("literal_error", "enum"):
        expected = str(ctx.get("expected", ""))
        options = re.findall(r"'([^']*)'", expected)
        close = difflib.get_close_matches(str(value), options, n=1, cutoff=0.6) if isinstance(value, str) else []
        return f"{found}; did you mean \"{close[0]}\"?" if close else f"{found}; expected one of {expected}"
    if kind == "union_tag_not_found":
        return "required, but missing; expected one of " + ", ".join(f"'{k}'" for k in _CONNECTION_KINDS)
    if kind == "union_tag_invalid":
        tags = str(ctx.get("expected_tags", ""))
        close = difflib.get_close_matches(str(ctx.get("tag")), re.findall(r"'([^']*)'", tags), n=1, cutoff=0.6)
        return f"found {_shown(ctx.get('tag'))}; " + (f"did you mean \"{close[0]}\"?" if close else f"expected one of {tags}")
    if kind in _TYPE_NAMES:
        return f"{found}; expected {_TYPE_NAMES[kind]}"
    if kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        words = {"greater_than": "greater than", "greater_than_equal": "at least", "less_than": "less than",
                 "less_than_equal": "at most"}[kind]
        bound = next(iter(ctx.values()), "")
        return f"{found}; expected a number {words} {bound}"
    if kind == "string_pattern_mismatch":
        return f"{found}; expected text matching {ctx.get('pattern', '')}"
    if kind in ("value_error", "assertion_error"):
        message = str(ctx.get("error", item["msg"])).removeprefix("Value error, ")
        return message
    return f"{found}; {item['msg'][0].lower()}{item['msg'][1:]}"


def explain(source: str, text: str | None, error: ValidationError, model: type[BaseModel]) -> str:
    """One line per problem: `source:line: key.path: found ...; expected ...`."""
    where = key_lines(text) if text is not None else {}
    lines: list[tuple[int, str]] = []
    for item in error.errors():
        path = _clean(item["loc"])
        if item["type"] in ("union_tag_invalid", "union_tag_not_found"):  # the tag's own key
            path += (str((item.get("ctx") or {}).get("discriminator", "kind")).strip("'"),)
        line = line_of(where, path)
        lines.append((line or 0, f"{source}{f':{line}' if line else ''}: {dotted(path)}: {_what(item, path, model)}"))
    return "\n".join(dict.fromkeys(text for _, text in sorted(lines, key=lambda pair: pair[0])))


def _open_array_before(lines: list[str], number: int) -> int | None:
    """The line of an array still open at line ``number`` (tomllib then reads the next key as a value)."""
    opened, depth = None, 0
    for index in range(min(number - 1, len(lines))):
        line = _strip_comment(lines[index])
        if depth == 0:
            m = re.match(r"""^\s*[\w."'-]+\s*=\s*(\[.*)$""", line)
            if m:
                depth = m.group(1).count("[") - m.group(1).count("]")
                opened = index + 1 if depth > 0 else None
        else:
            depth += line.count("[") - line.count("]")
            if depth <= 0:
                opened, depth = None, 0
    return opened if depth > 0 else None


def toml_error(source: str, text: str, error: Exception) -> str:
    """A TOML syntax error at the line that needs the fix, with that line shown."""
    message = str(error)
    m = re.search(r"\(at line (\d+), column (\d+)\)", message)
    what = re.sub(r"\s*\(at line \d+, column \d+\)", "", message) if m else message
    lines = text.splitlines()
    number = int(m.group(1)) if m else None
    if number is None and "(at end of document)" in message:
        what, number = message.replace(" (at end of document)", ""), len(lines) + 1
    opened = _open_array_before(lines, number) if number and what == "Invalid value" else None
    if opened:  # a key read as the next item of an array left open above it
        number, what = opened, "this array is never closed (a `]` is missing)"
    elif number and what.startswith("Unclosed array"):
        # tomllib notices at the next key (or the end of the file): point at the array's own line.
        opened = _open_array_before(lines, number + 1)
        if opened:
            number, what = opened, "this array is never closed (a `]` is missing)"
    elif number and what.startswith("Unclosed inline table"):
        what = "this inline table is never closed (a `}` is missing; an inline table must fit on one line)"
    elif what.startswith("Illegal character '\\n'"):
        what = "this string is never closed (a `\"` is missing at the end of the line)"
    elif what == "Invalid value":
        what = "the value is not TOML (text needs quotes: kind = \"sqlite\"; lists need brackets)"
    elif what.startswith("Cannot overwrite a value"):
        what = "this key is given twice in the same table"
    shown = lines[number - 1].strip() if number and 0 < number <= len(lines) else ""
    return f"{source}{f':{number}' if number else ''}: not valid TOML: {what}" + (f": `{shown}`" if shown else "")


def locate(source: str, text: str | None, message: str) -> str:
    """A config-level error (raised after the keys validated, e.g. a rule id used twice) at the line
    that holds the value it names in backticks: the last such line, where the clash shows."""
    named = re.search(r"`([^`]+)`", message)
    if text is None or named is None:
        return f"{source}: {message}"
    value = re.escape(named.group(1))
    hits = [n for n, line in enumerate(text.splitlines(), 1) if re.search(rf"""=\s*["']{value}["']""", _strip_comment(line))]
    return f"{source}:{hits[-1]}: {message}" if hits else f"{source}: {message}"
