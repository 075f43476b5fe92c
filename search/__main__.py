"""`python -m search` runs the command line, as the `search` script does."""

from search.cli import cli

cli(prog_name="search")
