"""The tree-sitter-bash front end: one parser per thread, the checks that refuse a tree before it is
walked (error and missing nodes, odd blanks), the node kinds the walker reads as words, and the
repairs of structures that tree-sitter groups differently from bash (`_regroup`, `unterminated`).
The repairs that need the walker's state live beside what they repair (policy.shell.redirections:
redirections after `a && b`, here-document tails; policy.shell.wordwalk: words split at a line
continuation; policy.shell.compound: tokens of [[ ]] with nothing between them)."""

from __future__ import annotations

import threading

import tree_sitter
import tree_sitter_bash

from bastion.policy.shell.facts import Node

_LANGUAGE = tree_sitter.Language(tree_sitter_bash.language())
_LOCAL = threading.local()  # a tree-sitter Parser is not shared between threads

STATEMENT_SEPARATORS = {";": ";", "&": "&", "\n": "newline"}
WORD_KINDS = frozenset({"word", "string", "raw_string", "ansi_c_string", "translated_string", "concatenation",
                        "simple_expansion", "expansion", "command_substitution", "process_substitution",
                        "arithmetic_expansion", "brace_expression", "number", "extglob_pattern"})
HINT_PLAIN = "Send plain commands with literal program names, joined by | && || ; or newlines."
HINTS = {
    "function_definition": "Functions are not accepted (a function name would make a later word an unvetted "
                           "command): write the commands out.",
    "c_style_for_statement": "Write `for i in {1..9}; do ...; done` or `for i in 1 2 3; do ...; done` instead of "
                             "for ((...)).",
    "negated_command": "Drop the `!` and test the status with || or `if ...; then ...; else ...; fi`.",
    "heredoc": "Put the command with the here-document on its own line: `cat <<'EOF' | grep x`, the body on the "
               "lines after it, then EOF.",
}


class Unsupported(Exception):
    """A construct the guard does not accept: the text is refused (`guard:unsupported`) with a hint."""

    def __init__(self, message: str, hint: str = HINT_PLAIN) -> None:
        super().__init__(message)
        self.hint = hint


def parse(text: str) -> tree_sitter.Tree:
    parser = getattr(_LOCAL, "parser", None)
    if parser is None:
        parser = _LOCAL.parser = tree_sitter.Parser(_LANGUAGE)
    return parser.parse(text.encode())


_ODD_BLANKS = {"\r": "a carriage return", "\f": "a form feed", "\v": "a vertical tab"}
_QUOTING = frozenset({"string", "raw_string", "ansi_c_string", "translated_string", "heredoc_body"})


def odd_blank(root: tree_sitter.Node, text: str) -> str | None:
    """A carriage return, form feed or vertical tab that is not inside quotes or a here-document
    (tree-sitter reads them as blanks, bash as word characters)."""
    if not any(c in text for c in _ODD_BLANKS):
        return None
    data = text.encode()
    for at, byte in enumerate(data):
        char = chr(byte)
        if char not in _ODD_BLANKS:
            continue
        node: tree_sitter.Node | None = root.descendant_for_byte_range(at, at + 1)
        while node is not None and node.type not in _QUOTING:
            node = node.parent
        if node is None:
            return _ODD_BLANKS[char]
    return None


def first_error(node: tree_sitter.Node) -> tree_sitter.Node | None:
    if not node.has_error:
        return None
    if node.is_error or node.is_missing:
        return node
    for child in node.children:
        found = first_error(child)
        if found is not None:
            return found
    return node  # has_error with no error child: still refuse


def unterminated(node: Node) -> Node:
    """A list without its trailing ; or newline (a rebuild writes its own)."""
    if node.kind == "list" and node.ops and node.ops[-1] in (";", "newline") and len(node.ops) == len(node.items):
        return Node("list", items=node.items, ops=node.ops[:-1]) if len(node.items) > 1 else node.items[0]
    return node


def regroup(pipeline: Node) -> Node:
    """tree-sitter reads `a && b 2>&1 | c` as (a && b 2>&1) | c; bash's | binds tighter than && and ||:
    a && (b 2>&1 | c). A list can only come first (after it, `|` would have ended the list)."""
    first, rest = pipeline.items[0], pipeline.items[1:]
    if any(item.kind in ("list", "pipeline") for item in rest):
        raise Unsupported("a pipeline of an unexpected shape is not accepted")
    if first.kind == "pipeline":  # (a | b 2>&1) | c
        return Node("pipeline", items=(*first.items, *rest), ops=(*first.ops, *pipeline.ops))
    if first.kind != "list":
        return pipeline
    last = first.items[-1]
    head = last.items if last.kind == "pipeline" else (last,)
    head_ops = last.ops if last.kind == "pipeline" else ()
    inner = regroup(Node("pipeline", items=(*head, *rest), ops=(*head_ops, *pipeline.ops)))
    return Node("list", items=(*first.items[:-1], inner), ops=first.ops)
