"""`python -m bastion.server` runs the `bastion` command."""

from bastion.server.cli import main

main()
