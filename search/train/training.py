"""Training one model: `fit` on uint8 images, with every epoch's metrics kept in a History."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from search.define.presets import Preset
from search.define.space import Config
from search.train import network

if TYPE_CHECKING:
    import keras

VAL_BATCH = 1024  # validation does no backward pass, so it takes far larger batches


@dataclass
class History:
    """Per-epoch metrics of one fit, kept as plain lists so they can be stored."""

    loss: list[float] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    val_accuracy: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)

    @property
    def best_epoch(self) -> int:
        """1-based epoch with the lowest val_loss (NaN never wins)."""
        losses = [v if math.isfinite(v) else math.inf for v in self.val_loss]
        return int(np.argmin(losses)) + 1

    def as_dict(self) -> dict[str, list[float]]:
        return {
            k: [round(v, 6) for v in getattr(self, k)]
            for k in ("loss", "accuracy", "val_loss", "val_accuracy")
        }


def _recorder(history: History, on_epoch: Callable[[int], None]) -> keras.callbacks.Callback:
    import keras

    class Recorder(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            self._start = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            logs = logs or {}
            history.seconds.append(time.perf_counter() - self._start)
            for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
                if key in logs:
                    getattr(history, key).append(float(logs[key]))
            if not all(math.isfinite(float(v)) for v in logs.values()):
                self.model.stop_training = True
            on_epoch(epoch)

    return Recorder()


def fit(
    model: keras.Model,
    config: Config,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    validation: tuple[np.ndarray, np.ndarray] | None = None,
    callbacks: list[keras.callbacks.Callback] | None = None,
    on_epoch: Callable[[int], None] = lambda epoch: None,
    history: History | None = None,
    patience: int = 3,
) -> History:
    """Train `model` on uint8 images (the model scales them itself); metrics go to `history`.

    The configuration's schedule watches val_loss, or the training loss without validation;
    `patience` is early stopping's, which a reduce-on-plateau schedule stays within.
    """
    history = history if history is not None else History()
    if validation is not None:
        validation = (validation[0], network.targets(config, validation[1], train=False))
    schedule = network.callbacks(
        config, monitor="val_loss" if validation else "loss", patience=patience
    )
    model.fit(
        x,
        network.targets(config, y, train=True),
        batch_size=config.batch_size,
        epochs=epochs,
        validation_data=validation,
        validation_batch_size=VAL_BATCH,
        callbacks=[_recorder(history, on_epoch), *schedule, *(callbacks or [])],
        verbose=0,
    )
    return history


def build_and_fit(
    preset: Preset,
    config: Config,
    x: np.ndarray,
    y: np.ndarray,
    *,
    seed: int,
    epochs: int,
    schedule_epochs: int | None = None,
    validation: tuple[np.ndarray, np.ndarray] | None = None,
    callbacks: list[keras.callbacks.Callback] | None = None,
    on_epoch: Callable[[History, int], None] = lambda history, epoch: None,
    fresh: bool = True,
) -> tuple[keras.Model, History]:
    """A new, seeded model of `config` for `preset`'s dataset, fitted: a trial's training and
    a final model's alike, so that a final model is the network its trial measured.

    `schedule_epochs` (`epochs` by default) is what a cosine schedule decays over. `on_epoch`
    sees the history as each epoch ends. `fresh` clears Keras's session first; an ensemble
    keeps its earlier members alive. Keras must be configured (runtime.configure) already.
    """
    import keras

    if fresh:
        keras.backend.clear_session(free_memory=True)
    keras.utils.set_random_seed(seed)
    model = network.build(
        config,
        flip=preset.flip_ok,
        steps_per_execution=preset.steps_per_execution,
        decay_steps=network.decay_steps(config, len(x), schedule_epochs or epochs),
    )
    history = History()
    try:
        fit(
            model,
            config,
            x,
            y,
            epochs=epochs,
            validation=validation,
            callbacks=callbacks,
            on_epoch=lambda epoch: on_epoch(history, epoch),
            history=history,
            patience=preset.patience,
        )
    except BaseException:
        del model  # the traceback keeps this frame; it need not keep the model too
        raise
    return model, history
