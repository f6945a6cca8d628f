"""`python -m server` runs the `bastion` command."""

from server.cli import main

main()
