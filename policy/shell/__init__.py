"""Shell analysis and rules: bash text → facts (bashlex for structure, our own word lexer for
quoting and expansions), decided by shell rules. Pure: no I/O."""
