"""Stopping on Ctrl-C or SIGTERM at once, and surely.

A signal handler that raises KeyboardInterrupt stops training mid-epoch, which is what a
user pressing Ctrl-C wants. But Python runs the handler wherever the main thread is, and an
exception raised inside a garbage collector's callback or a `__del__` is swallowed: it is
printed as "Exception ignored in ..." with a traceback, and the program goes on. A worker
that lost its interrupt that way would train to the end of the search. So the handler also
sets a flag, the swallowed report is kept quiet, and `check()` raises the interrupt again at
points where it cannot be lost: before each trial and before each batch.

Code that writes to the storage between those points defers the raise to them altogether
(`sigterm_as_interrupt(deferred=True)`). An interrupt raised inside a database call can leave
a cursor open, held by the traceback's frames; on SQLite its read lock then blocks this same
process's next write, the one that records the trial as failed, and the worker never exits.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import keras

_requested = False


def requested() -> bool:
    """Whether a stop was asked for inside `sigterm_as_interrupt`."""
    return _requested


def check() -> None:
    """Raise KeyboardInterrupt if a stop was asked for, even one whose raise was swallowed."""
    if _requested:
        raise KeyboardInterrupt


def _handler(signum: int, frame: object) -> None:
    global _requested
    _requested = True
    raise KeyboardInterrupt


def _record(signum: int, frame: object) -> None:
    global _requested
    _requested = True


def _quiet(previous: Any) -> Any:
    def hook(unraisable: Any) -> None:
        if _requested and unraisable.exc_type is KeyboardInterrupt:
            return  # our own interrupt, raised inside a GC callback; check() raises it again
        previous(unraisable)

    return hook


@contextmanager
def sigterm_as_interrupt(*, deferred: bool = False) -> Iterator[None]:
    """SIGTERM ends the program the way Ctrl-C does, so a running trial is not left RUNNING.

    A Ctrl-C that would raise KeyboardInterrupt goes through the same handler; an ignored
    SIGINT stays ignored, as `nohup` and `&` expect. Outside the main thread nothing changes.
    With `deferred`, the handler only records the stop and the next `check()` raises it: for
    code that checks at least every second or so and writes to the storage in between.
    """
    global _requested
    handler = _record if deferred else _handler
    try:
        previous_term = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    previous_int = signal.getsignal(signal.SIGINT)
    if previous_int is signal.default_int_handler:
        signal.signal(signal.SIGINT, handler)
    previous_hook = sys.unraisablehook
    sys.unraisablehook = _quiet(previous_hook)
    _requested = False
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous_term)
        if previous_int is signal.default_int_handler:
            signal.signal(signal.SIGINT, previous_int)
        sys.unraisablehook = previous_hook
        _requested = False


def keras_callback() -> keras.callbacks.Callback:
    """A callback that stops training before the next batch once a stop was asked for.

    It hooks the batch *begin*: a batch-end hook would make Keras turn every step's metrics
    into Python numbers, a device sync per step.
    """
    import keras

    class Check(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch: int, logs: object = None) -> None:
            check()

        def on_test_batch_begin(self, batch: int, logs: object = None) -> None:
            check()

    return Check()
