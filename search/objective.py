"""One trial: suggest, guard the cost, build, fit with pruning, and record what happened."""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import optuna

from search.datasets import Split
from search.presets import Preset
from search.space import Config, build, describe, impossible, size, suggest

if TYPE_CHECKING:
    import keras

Log = Callable[[str], None]
VAL_BATCH = 1024  # validation does no backward pass, so it takes far larger batches


@contextmanager
def quiet_stderr() -> Iterator[None]:
    """Silence file descriptor 2 while TF's C++ start-up notes (CUDA probing, oneDNN) print.

    TF_CPP_MIN_LOG_LEVEL does not reach the lines logged before absl initialises. Python
    exceptions still propagate and print after the descriptor is restored.
    """
    if os.environ.get("SEARCH_DEBUG"):
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def configure_tensorflow(threads: int | None = None) -> None:
    """Import TF quietly and, for worker processes, pin its thread pools."""
    with quiet_stderr():
        import keras  # noqa: F401  (imports TF under the silenced descriptor)
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
    try:
        if threads:
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(threads)
        for gpu in gpus:
            tf.config.experimental.set_memory_growth(gpu, True)
    except RuntimeError:
        pass  # the runtime is already initialised (a second call in one process)


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
        return {k: [round(v, 6) for v in getattr(self, k)]
                for k in ("loss", "accuracy", "val_loss", "val_accuracy")}


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
) -> History:
    """Train `model` on uint8 images (the model scales them itself); metrics go to `history`."""
    history = history if history is not None else History()
    model.fit(
        x, y,
        batch_size=config.batch_size,
        epochs=epochs,
        validation_data=validation,
        validation_batch_size=VAL_BATCH,
        callbacks=[_recorder(history, on_epoch), *(callbacks or [])],
        verbose=0,
    )
    return history


# What a trial writes as it trains; a retried trial clears what it inherited.
RUN_RECORD: dict[str, Any] = {
    "epochs_trained": 0, "best_epoch": None, "val_loss": None, "val_accuracy": None,
    "seconds_per_epoch": None, "curves": {}, "reason": "",
}
MEMORY_SHARE = 0.5  # a trial may plan to use at most this share of the available memory


def available_memory() -> int | None:
    """MemAvailable from /proc/meminfo in bytes, or None where that file does not exist."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _is_oom(error: Exception) -> bool:
    return isinstance(error, MemoryError) or type(error).__name__ == "ResourceExhaustedError"


def reject(trial: optuna.Trial, reason: str) -> None:
    """End a trial before training, as pruned, with the reason on record."""
    trial.set_user_attr("reason", reason)
    raise optuna.TrialPruned(reason)


def trial_seed(preset: Preset, number: int) -> int:
    return preset.seed * 100_003 + number


@dataclass
class Objective:
    """Callable for study.optimize. Data is loaded once per worker and shared by its trials."""

    preset: Preset
    data: Split
    flip: bool
    log: Log = print

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, float]:
        import keras
        from optuna_integration import KerasPruningCallback

        config = suggest(trial, self.preset.space)
        seed = trial_seed(self.preset, trial.number)
        if "epochs_trained" in trial.user_attrs:
            # A retry of a trial whose worker died inherits its user attributes; its own
            # record starts empty.
            for key, empty in RUN_RECORD.items():
                trial.set_user_attr(key, empty)
        for key, value in {
            "architecture": describe(config),
            "seed": seed,
            "config": config.to_json(),
        }.items():
            trial.set_user_attr(key, value)
        reason = impossible(config)
        if reason:  # its size would be meaningless: the map shrinks below zero
            reject(trial, f"impossible network: {reason}")
        cost = size(config)
        trial.set_user_attr("params", cost.params)
        trial.set_user_attr("mflops", round(cost.flops / 1e6, 3))
        if self.preset.max_params and cost.params > self.preset.max_params:
            reject(trial, f"{cost.params:,} parameters exceed the budget of "
                          f"{self.preset.max_params:,}")
        if self.preset.max_mflops and cost.flops / 1e6 > self.preset.max_mflops:
            reject(trial, f"{cost.flops / 1e6:,.1f} MFLOPs exceed the budget of "
                          f"{self.preset.max_mflops:,} MFLOPs")

        need, available = cost.training_bytes(config.batch_size), available_memory()
        if available and need > MEMORY_SHARE * available:
            reject(trial, f"training would need about {need / 2**30:.1f} GiB, more than "
                          f"{MEMORY_SHARE:.0%} of the {available / 2**30:.1f} GiB available")

        keras.backend.clear_session(free_memory=True)
        keras.utils.set_random_seed(seed)
        model = build(config, flip=self.flip, steps_per_execution=self.preset.steps_per_execution)
        history = History()

        def on_epoch(epoch: int) -> None:
            if not all(math.isfinite(v) for v in (history.loss[-1], history.val_loss[-1])):
                trial.set_user_attr("reason", f"the loss became NaN or infinite at epoch "
                                    f"{epoch + 1}; the learning rate is likely too high")
            # Stored every epoch, so a pruned or interrupted trial keeps its record too.
            best = history.best_epoch
            trial.set_user_attr("epochs_trained", epoch + 1)
            trial.set_user_attr("best_epoch", best)
            trial.set_user_attr("val_loss", history.val_loss[best - 1])
            trial.set_user_attr("val_accuracy", history.val_accuracy[best - 1])
            trial.set_user_attr("seconds_per_epoch", round(float(np.mean(history.seconds)), 2))
            trial.set_user_attr("curves", history.as_dict())
            self.log(
                f"  trial {trial.number} epoch {epoch + 1}/{self.preset.epochs}: "
                f"val_loss {history.val_loss[-1]:.4f}  val_accuracy "
                f"{history.val_accuracy[-1]:.4f}  ({history.seconds[-1]:.1f} s)"
            )

        callbacks = [
            keras.callbacks.EarlyStopping(monitor="val_loss", patience=self.preset.patience)
        ]
        if not self.preset.multi_objective:  # Optuna cannot prune multi-objective studies
            callbacks.append(KerasPruningCallback(trial, "val_loss"))
        try:
            fit(
                model, config, self.data.x_train, self.data.y_train,
                epochs=self.preset.epochs,
                validation=(self.data.x_val, self.data.y_val),
                callbacks=callbacks,
                on_epoch=on_epoch,
                history=history,
            )
        except (optuna.TrialPruned, KeyboardInterrupt):
            raise
        except Exception as e:
            # Recorded where the dashboard and `status` show it; the worker goes on (FAIL).
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            kind = "out of memory" if _is_oom(e) else type(e).__name__
            trial.set_user_attr("reason", f"training failed: {kind}: {first}"[:500])
            raise
        finally:
            del model
        if trial.user_attrs.get("reason") or not history.val_loss:
            reject(trial, trial.user_attrs.get("reason") or "no epoch finished")
        best_loss = history.val_loss[history.best_epoch - 1]
        if self.preset.multi_objective:
            return best_loss, float(cost.params)
        return best_loss


def summary(trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    """The fields `status` and the progress lines show for one trial."""
    attrs = trial.user_attrs
    return {
        "number": trial.number,
        "state": trial.state.name,
        "val_loss": attrs.get("val_loss"),
        "val_accuracy": attrs.get("val_accuracy"),
        "params": attrs.get("params"),
        "epochs": attrs.get("epochs_trained") or 0,
        "seconds": (trial.duration.total_seconds() if trial.duration else None),
        "architecture": attrs.get("architecture", ""),
        "reason": attrs.get("reason") or "",
    }
