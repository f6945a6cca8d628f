"""Shell analysis and rules: bash text → facts (tree-sitter-bash for structure, our own word lexer for
quoting and expansions), decided by shell rules. Pure: no I/O."""
