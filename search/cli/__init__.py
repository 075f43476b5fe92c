"""The command line: `search`, its commands and the options they share."""

from search.cli import results  # noqa: F401  (registers retrain-best, dashboard and report)
from search.cli.commands import cli

__all__ = ["cli"]
