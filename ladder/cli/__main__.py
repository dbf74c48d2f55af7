"""`python -m ladder.cli`: the `ladder` command."""
from ladder.cli.app import main

main()
