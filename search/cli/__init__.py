"""The command line: `search`, its commands and the options they share."""

from search.cli.commands import cli

__all__ = ["cli"]
