"""One trial: suggest, guard the cost, build, fit with pruning, and record what happened."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

import numpy as np
import optuna

from search.define.anatomy import Size, describe
from search.define.datasets import Split
from search.define.presets import Preset, Rung
from search.define.space import Config, suggest
from search.errors import Log, first_line
from search.run import interrupt
from search.store.trials import INTERRUPTED, ORIGIN, RESUMES
from search.train.runtime import available_memory, is_oom
from search.train.training import History, build_and_fit

if TYPE_CHECKING:
    import keras

# What a trial writes as it trains; a retried trial clears what it inherited.
RUN_RECORD: dict[str, Any] = {
    "epochs_trained": 0,
    "best_epoch": None,
    "val_loss": None,
    "val_accuracy": None,
    "seconds_per_epoch": None,
    "curves": {},
    "reason": "",
    "rungs": [],
}
MEMORY_SHARE = 0.5  # a trial may plan to use at most this share of the available memory


def rung_step(preset: Preset, k: int) -> int:
    """The step at which rung k (from 0) reports: where the pruner's own rung k lies."""
    return int(preset.pruner_reduction**k)


def rung_images(rung: Rung, images: int) -> int:
    """How many of the first training images rung `rung` trains on: the same for every trial.
    A preset's rungs hold at least preset_checks.MIN_RUNG_IMAGES; one made in code, one."""
    return max(1, round(rung.share * images))


def reject(trial: optuna.Trial, reason: str) -> NoReturn:
    """End a trial before training, as pruned, with the reason on record."""
    trial.set_user_attr("reason", reason)
    raise optuna.TrialPruned(reason)


def trial_seed(preset: Preset, number: int) -> int:
    return preset.seed * 100_003 + number


def record_epoch(trial: optuna.Trial, history: History, epoch: int) -> None:
    """Store the trial's record after an epoch, so a pruned or interrupted trial keeps it too."""
    if not all(math.isfinite(v) for v in (history.loss[-1], history.val_loss[-1])):
        trial.set_user_attr(
            "reason",
            f"the loss became NaN or infinite at epoch {epoch + 1}; "
            "the learning rate is likely too high",
        )
    best = history.best_epoch
    trial.set_user_attr("epochs_trained", epoch + 1)
    trial.set_user_attr("best_epoch", best)
    trial.set_user_attr("val_loss", history.val_loss[best - 1])
    trial.set_user_attr("val_accuracy", history.val_accuracy[best - 1])
    trial.set_user_attr("seconds_per_epoch", round(float(np.mean(history.seconds)), 2))
    trial.set_user_attr("curves", history.as_dict())


@dataclass
class Objective:
    """Callable for study.optimize. Data is loaded once per worker and shared by its trials."""

    preset: Preset
    data: Split
    log: Log = print

    def __call__(self, trial: optuna.Trial) -> float | tuple[float, float]:
        config = suggest(trial, self.preset.space)
        # A continuation trains on with its first look's seed: one climb, one seed.
        seed = trial_seed(self.preset, int(trial.user_attrs.get(ORIGIN, trial.number)))
        self.start_record(trial, config, seed)
        cost = self.guard(trial, config)
        try:
            history = self.train(trial, config, seed)
        except KeyboardInterrupt:  # the trial fails; a resume queues an enqueued run again
            with contextlib.suppress(Exception):  # the stop matters more than its reason
                trial.set_user_attr("reason", INTERRUPTED)
            raise
        if trial.user_attrs.get("reason") or not history.val_loss:
            reject(trial, trial.user_attrs.get("reason") or "no epoch finished")
        best_loss = history.val_loss[history.best_epoch - 1]
        if self.preset.multi_objective:
            return best_loss, float(cost.params)
        return best_loss

    @staticmethod
    def start_record(trial: optuna.Trial, config: Config, seed: int) -> None:
        if any(key in trial.user_attrs for key in RUN_RECORD):
            # A retry of a trial whose worker died inherits its user attributes (a reason
            # too); its own record starts empty.
            for key, empty in RUN_RECORD.items():
                trial.set_user_attr(key, empty)
        trial.set_user_attr("architecture", describe(config))
        trial.set_user_attr("seed", seed)
        trial.set_user_attr("config", config.to_json())

    def guard(self, trial: optuna.Trial, config: Config) -> Size:
        """Reject, before training, a network that cannot be built or costs too much."""
        cost, reason = self.preset.screen(config)
        if cost is None:  # it cannot be built, so no size is recorded
            reject(trial, reason or "impossible network")
        trial.set_user_attr("params", cost.params)
        trial.set_user_attr("mflops", round(cost.flops / 1e6, 3))
        if reason:
            reject(trial, reason)
        need, available = cost.training_bytes(config.batch_size), available_memory()
        if available and need > MEMORY_SHARE * available:
            reject(
                trial,
                f"training would need about {need / 2**30:.1f} GiB, more than "
                f"{MEMORY_SHARE:.0%} of the {available / 2**30:.1f} GiB available",
            )
        return cost

    def callbacks(self, trial: optuna.Trial, pruned: bool) -> list[keras.callbacks.Callback]:
        """Early stopping, the interrupt check, and pruning on val_loss if `pruned` (one
        objective only)."""
        import keras
        from optuna_integration import KerasPruningCallback

        stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=self.preset.patience)
        if self.preset.multi_objective or not pruned:
            return [stop, interrupt.keras_callback()]
        return [stop, interrupt.keras_callback(), KerasPruningCallback(trial, "val_loss")]

    def train(self, trial: optuna.Trial, config: Config, seed: int) -> History:
        """The ladder's rungs, each judged by the pruner, then the full run; a continuation
        takes over the rungs of the trial it goes on from and climbs from the next."""
        climbed = self.carry_over(trial)
        for k, rung in enumerate(self.preset.rungs):
            if k < climbed:
                continue
            history = self.fit(trial, config, seed, rung, f"rung {k + 1}/{self.ladder} ")
            if trial.user_attrs.get("reason") or not history.val_loss:
                return history  # diverged or stopped: rejected as a full run would be
            self.record_rung(trial, rung, history)
            trial.report(history.val_loss[history.best_epoch - 1], rung_step(self.preset, k))
            if trial.should_prune():
                raise optuna.TrialPruned(f"stopped after rung {k + 1}")
        label = f"rung {self.ladder}/{self.ladder} " if self.preset.rungs else ""
        return self.fit(trial, config, seed, None, label)

    def carry_over(self, trial: optuna.Trial) -> int:
        """Report, as its own, the rungs of the trial a continuation goes on from, without
        training them again; return how many. A first look has none."""
        if RESUMES not in trial.user_attrs:
            return 0
        before = trial.study.get_trials(deepcopy=False)[int(trial.user_attrs[RESUMES])]
        rungs = [
            {**r, "from": r.get("from", before.number)}
            for r in before.user_attrs.get("rungs") or []
        ]
        for k, record in enumerate(rungs):
            trial.report(float(record["val_loss"]), rung_step(self.preset, k))
        trial.set_user_attr("rungs", rungs)
        first = trial.user_attrs.get(ORIGIN, before.number)
        self.log(
            f"  trial {trial.number} continues #{before.number} (first look #{first}) "
            f"after rung {len(rungs)}/{self.ladder}"
        )
        return len(rungs)

    @property
    def ladder(self) -> int:
        """The rungs a trial climbs, its full run the last."""
        return len(self.preset.rungs) + 1

    @staticmethod
    def record_rung(trial: optuna.Trial, rung: Rung, history: History) -> None:
        best = history.best_epoch - 1
        done = [
            *(trial.user_attrs.get("rungs") or []),
            {
                "share": rung.share,
                "epochs": len(history.val_loss),
                "val_loss": history.val_loss[best],
                "val_accuracy": history.val_accuracy[best],
                "seconds": round(sum(history.seconds), 1),
            },
        ]
        trial.set_user_attr("rungs", done)

    def fit(
        self, trial: optuna.Trial, config: Config, seed: int, rung: Rung | None, label: str
    ) -> History:
        """One complete run, a rung's or the full one; a failure is recorded, then raised.

        The full run of a trial without rungs is pruned epoch by epoch on val_loss; a rung's
        schedule decays within its own epochs on its share of the images."""
        epochs = rung.epochs if rung else self.preset.epochs
        images = rung_images(rung, len(self.data.x_train)) if rung else len(self.data.x_train)

        def on_epoch(history: History, epoch: int) -> None:
            record_epoch(trial, history, epoch)
            self.log(
                f"  trial {trial.number} {label}epoch {epoch + 1}/{epochs}: "
                f"val_loss {history.val_loss[-1]:.4f}  val_accuracy "
                f"{history.val_accuracy[-1]:.4f}  ({history.seconds[-1]:.1f} s)"
            )

        callbacks = self.callbacks(trial, pruned=not self.preset.rungs)
        try:
            _, history = build_and_fit(
                self.preset,
                config,
                self.data.x_train[:images],
                self.data.y_train[:images],
                seed=seed,
                epochs=epochs,
                validation=(self.data.x_val, self.data.y_val),
                callbacks=callbacks,
                on_epoch=on_epoch,
            )
        except (optuna.TrialPruned, KeyboardInterrupt):
            raise
        except Exception as e:
            # Recorded where the dashboard and `status` show it; the worker goes on (FAIL).
            kind = "out of memory" if is_oom(e) else type(e).__name__
            trial.set_user_attr("reason", f"training failed: {kind}: {first_line(e)}"[:500])
            raise
        return history
