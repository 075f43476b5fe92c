"""Ctrl-C and SIGTERM stop at once, and a stop is never lost, wherever the signal lands."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time

import numpy as np
import pytest

from search.run import interrupt
from search.train.runtime import configure
from tests.helpers import swallow_an_interrupt


def test_sigterm_is_an_interrupt_inside_and_as_it_was_outside() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(KeyboardInterrupt):
        with interrupt.sigterm_as_interrupt():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(10)  # the handler raises at once
    assert signal.getsignal(signal.SIGTERM) is before
    assert not interrupt.requested()  # the next run starts afresh
    seen: list[object] = []

    def elsewhere() -> None:  # only the main thread may set handlers: it changes nothing
        with interrupt.sigterm_as_interrupt():
            seen.append(signal.getsignal(signal.SIGTERM))

    thread = threading.Thread(target=elsewhere)
    thread.start()
    thread.join()
    assert seen == [before]


def test_a_deferred_stop_is_raised_by_check_and_never_inside_the_code_it_interrupts() -> None:
    # Where trials write to the storage, a raise mid-write could leave SQLite's lock held.
    before = signal.getsignal(signal.SIGTERM)
    with interrupt.sigterm_as_interrupt(deferred=True):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.5)  # the handler ran here, and raised nothing
        assert interrupt.requested()
        with pytest.raises(KeyboardInterrupt):
            interrupt.check()
    assert signal.getsignal(signal.SIGTERM) is before
    assert not interrupt.requested()


def test_ctrl_c_takes_the_same_path_and_an_ignored_one_stays_ignored() -> None:
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt), interrupt.sigterm_as_interrupt():
            assert signal.getsignal(signal.SIGINT) is signal.getsignal(signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(10)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        with interrupt.sigterm_as_interrupt():
            assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


def test_an_interrupt_swallowed_by_a_finaliser_is_quiet_and_raised_again_by_check(
    capfd: pytest.CaptureFixture[str],
) -> None:
    hook = sys.unraisablehook
    with interrupt.sigterm_as_interrupt():
        swallow_an_interrupt()  # returns: Python swallowed the raise
        assert interrupt.requested()
        with pytest.raises(KeyboardInterrupt):
            interrupt.check()
    assert sys.unraisablehook is hook
    assert "Exception ignored" not in capfd.readouterr().err
    interrupt.check()  # outside, nothing is pending


def test_training_stops_before_the_next_batch_once_a_stop_was_swallowed() -> None:
    configure()
    import keras

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile(optimizer="sgd", loss="mse")
    x, y = np.zeros((64, 4), "float32"), np.zeros((64, 2), "float32")
    batches: list[int] = []
    counted = keras.callbacks.LambdaCallback(on_train_batch_end=lambda b, logs: batches.append(b))
    callbacks = [interrupt.keras_callback(), counted]
    with interrupt.sigterm_as_interrupt():
        model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=callbacks)
        assert len(batches) == 8  # without a stop, every batch trains
        swallow_an_interrupt()
        with pytest.raises(KeyboardInterrupt):
            model.fit(x, y, batch_size=8, epochs=1, verbose=0, callbacks=callbacks)
    assert len(batches) == 8  # not one batch trained after the stop
