"""What every layer shares: the one error type the CLI turns into a sentence, the log line's
type, and constants more than one module needs."""

from __future__ import annotations

import os
from collections.abc import Callable

Log = Callable[[str], None]  # where a module's lines for a person go: print, click.echo, a pipe
ENV_DEBUG = "SEARCH_DEBUG"  # set by `search --debug`: full tracebacks, TensorFlow's start-up notes
TRAIN_IMAGES = 60_000  # every dataset here has 60,000 training images (and 10,000 test images)


class SearchError(Exception):
    """A mistake the user can fix. The message is one sentence that says what to do.

    The CLI prints it and exits 1; anything else is a bug and says so.
    """


def first_line(error: BaseException | str, default: str = "") -> str:
    """The first line of an exception's message (library messages run on for pages).

    `default` stands in for an empty message; an exception's type name is a good one.
    """
    text = str(error).strip()
    return text.splitlines()[0] if text else default


def debugging() -> bool:
    """Whether `search --debug` (or SEARCH_DEBUG) asked for everything, tracebacks included."""
    return bool(os.environ.get(ENV_DEBUG))
