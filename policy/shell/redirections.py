"""Redirections in the walk, and tree-sitter's readings of them that bash does not share: a
redirection hung on a whole list (`a && b 2>&1` is b's), and what follows a here-document's
delimiter on its line, which tree-sitter puts inside the here-document node (`cat <<'EOF' | grep x`
is a pipeline)."""

from __future__ import annotations

import re
from dataclasses import replace

import tree_sitter

from bastion.policy.shell import words as w
from bastion.policy.shell.facts import Node, Redirect
from bastion.policy.shell.treesitter import HINTS, WORD_KINDS, Unsupported, regroup
from bastion.policy.shell.wordwalk import WordWalker


class RedirectWalker(WordWalker):
    def redirected(self, node: tree_sitter.Node, context: str) -> Node:
        children = [c for c in node.children if c.type != "comment"]
        body, redirects = children[0], children[1:]
        if body.type not in ("command", "list", "pipeline"):
            if body.type in ("while_statement", "for_statement", "subshell", "compound_statement", "if_statement",
                             "case_statement"):
                raise Unsupported("redirections on a ( ... ) or { ... } block or a loop are not accepted",
                                   "Pipe into it instead (`cat FILE | while read -r line; do ...; done`).")
            raise Unsupported(f"a redirection on `{body.type.replace('_', ' ')}` is not accepted")
        heredoc = [r for r in redirects if r.type == "heredoc_redirect"]
        if heredoc and (len(heredoc) > 1 or redirects[-1] is not heredoc[0]):
            raise Unsupported("more than one here-document on a line is not accepted", HINTS["heredoc"])
        own = [self.redirect(r, context) for r in (redirects[:-1] if heredoc else redirects)]
        tail: list[tree_sitter.Node] = []
        if heredoc:
            document, more, tail = self.heredoc(heredoc[0], context)
            own += [document, *more]
        if body.type == "command":
            first = self.command(body, context, own)
        else:
            # tree-sitter hangs `a && b 2>&1` on the whole list; in bash the redirection is b's.
            first = self.redirect_last(self.statement(body, context), own)
        return self.continuation(first, tail, context)

    def redirect_last(self, node: Node, redirects: list[Redirect]) -> Node:
        last = node
        while last.kind in ("list", "pipeline") and last.items:
            last = last.items[-1]
        if last.kind != "command":
            raise Unsupported("redirections on a ( ... ) or { ... } block or a loop are not accepted",
                               "Pipe into it instead (`cat FILE | while read -r line; do ...; done`).")
        command = self.commands[last.index]
        self.commands[last.index] = replace(command, redirects=command.redirects + tuple(redirects))
        return node

    def heredoc(self, node: tree_sitter.Node, context: str) -> tuple[Redirect, list[Redirect], list[tree_sitter.Node]]:
        """`cmd <<'EOF' [more redirections] [| next ...]` → (the document, the redirections after it,
        the rest of the line): tree-sitter puts what follows the delimiter on its line inside the
        here-document node; it becomes the rest of the pipeline or list (continuation)."""
        if context != "top" or self.loops:
            raise Unsupported("a here-document inside a substitution, a loop or an if is not accepted",
                               HINTS["heredoc"])
        self.constructs.add("heredoc")
        children = list(node.children)
        op = children[0].type
        start = next((c for c in children if c.type == "heredoc_start"), None)
        end = next((c for c in children if c.type == "heredoc_end"), None)
        if op not in ("<<", "<<-") or start is None or end is None:
            raise Unsupported("a here-document without its end line is not accepted", HINTS["heredoc"])
        raw = self.source(start)
        delimiter = re.sub(r"""['"\\]""", "", raw)
        quoted = raw != delimiter
        if not re.fullmatch(r"[A-Za-z0-9_]+", delimiter) or self.source(end) != delimiter:
            raise Unsupported(f"the here-document delimiter `{raw}` is not accepted", "Use a plain word: <<'EOF'.")
        tail = [c for c in children[children.index(start) + 1 :] if c.type not in ("heredoc_body", "heredoc_end")]
        # The body: from the line after the command's line to the line holding the delimiter.
        line_end = self.text.find("\n", self.pos(start.end_byte))
        if tail:
            line_end = self.text.find("\n", self.pos(tail[-1].end_byte))
        end_at = self.pos(end.start_byte)
        line_start = self.text.rfind("\n", 0, end_at) + 1
        if line_end < 0 or line_start <= line_end or self.text[line_start:end_at].strip("\t" if op == "<<-" else ""):
            raise Unsupported(f"the here-document (<<{delimiter}) does not end with its delimiter line",
                               HINTS["heredoc"])
        after = self.text[self.pos(end.end_byte) : self.pos(end.end_byte) + 1]
        if after not in ("", "\n"):
            raise Unsupported(f"the here-document (<<{delimiter}) does not end with its delimiter line",
                               HINTS["heredoc"])
        text = self.text[line_end + 1 : line_start]
        lines = text.split("\n")[:-1]
        if any((line.lstrip("\t") if op == "<<-" else line) == delimiter for line in lines):
            raise Unsupported("a here-document ends before the parser thought", HINTS["heredoc"])
        if not quoted and any(c in text for c in "$`\\"):
            # An unquoted here-document expands its body: its substitutions would run unchecked.
            raise Unsupported(f"a here-document (<<{delimiter}) that expands $, backticks or backslashes is not "
                               f"accepted", f"Quote its delimiter (<<'{delimiter}').")
        fd = None
        document = Redirect(op, fd, w.Word(text, (w.Segment(w.LIT, text, True),)))
        # Redirections of the same command written after the delimiter, then the rest of the line.
        more: list[Redirect] = []
        k = 0
        while k < len(tail) and tail[k].type in ("file_redirect", "herestring_redirect"):
            more.append(self.redirect(tail[k], context))
            k += 1
        return document, more, tail[k:]

    def continuation(self, first: Node, rest: list[tree_sitter.Node], context: str) -> Node:
        """The statement with the here-document, then `| cmd ...` or `&& cmd` after it on its line."""
        if not rest:
            return first
        if rest[0].type == "pipeline" and rest[0].children and rest[0].children[0].type in ("|", "|&"):
            op = rest[0].children[0].type
            self.operators.add(op)
            others = rest[0].children[1:]
            if len(rest) != 1 or len(others) != 1:
                raise Unsupported("a here-document followed by this is not accepted", HINTS["heredoc"])
            tail = self.statement(others[0], context)
            if tail.kind == "list":  # `cat <<EOF | grep x && ls`: the pipe binds tighter
                return Node("list", items=(self.continued(first, op, tail.items[0]), *tail.items[1:]), ops=tail.ops)
            return self.continued(first, op, tail)
        if len(rest) == 2 and not rest[0].is_named and rest[0].type in ("&&", "||") and rest[1].is_named:
            self.operators.add(rest[0].type)
            tail = self.statement(rest[1], context)
            items = tail.items if tail.kind == "list" else (tail,)
            ops = tail.ops if tail.kind == "list" else ()
            return Node("list", items=(first, *items), ops=(rest[0].type, *ops))
        raise Unsupported("a here-document followed by this on its line is not accepted", HINTS["heredoc"])

    @staticmethod
    def continued(first: Node, op: str, tail: Node) -> Node:
        items = tail.items if tail.kind == "pipeline" else (tail,)
        ops = tail.ops if tail.kind == "pipeline" else ()
        return regroup(Node("pipeline", items=(first, *items), ops=(op, *ops)))

    def redirect(self, node: tree_sitter.Node, context: str) -> Redirect:
        fd: int | None = None
        op = ""
        targets: list[tree_sitter.Node] = []
        for child in node.children:
            if child.type == "file_descriptor":
                fd = int(self.source(child))
            elif not child.is_named:
                op = child.type
            elif child.type in WORD_KINDS:
                targets.append(child)
            else:
                raise Unsupported(f"bash construct `{child.type.replace('_', ' ')}` in a redirection is not accepted")
        if op in (">&-", "<&-"):
            return Redirect(op[:2], fd, None, dup="-")
        if node.type == "herestring_redirect":
            op = "<<<"
            self.constructs.add("herestring")
        if op in (">&", "<&") and len(targets) == 1:
            target = self.source(targets[0])
            if target.isdigit():
                return Redirect(op, fd, None, dup=int(target))
            if target == "-":
                return Redirect(op, fd, None, dup="-")
        if op not in (">", ">>", ">|", "&>", "&>>", "<>", "<", ">&", "<&", "<<<") or not targets:
            raise Unsupported(f"the redirection `{self.source(node)}` is not accepted")
        words = self.argument_words(targets, context)
        if len(words) != 1:
            raise Unsupported("a redirection target must be one word")
        return Redirect(op, fd, words[0])

