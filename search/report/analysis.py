"""What a study's trials say, as plain values: the comparison table, pruning's saving, numbers.

Pure functions over stored trials; nothing here draws or writes. `document` puts
these into REPORT.md and `figures` into the figures.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial, TrialState

from search import store
from search.define.presets import Preset
from search.define.space import Config

TOP = 5  # the search's best trials shown beside the lab's runs
LAB = {"rmsprop": "RMSprop", "adam": "Adam", "adamw": "AdamW"}


def complete(study: optuna.Study) -> list[FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def value_target(trial: FrozenTrial) -> float:
    """val_loss, the first objective; a size-aware study also minimises parameters."""
    return float(trial.values[0])


def pruned_by_pruner(trial: FrozenTrial) -> bool:
    """Stopped by the pruner after training; rejections (cost guard, NaN) carry a reason."""
    return (
        trial.state == TrialState.PRUNED
        and "reason" not in trial.user_attrs
        and trial.user_attrs.get("epochs_trained", 0) > 0
    )


def config_of(trial: FrozenTrial) -> Config | None:
    """The trial's network, or None where `search.store.config_of` cannot rebuild it."""
    try:
        return store.config_of(trial)
    except store.StudyError:
        return None


# ---------------------------------------------------------------------------------------------
# Numbers as REPORT.md and the figures write them
# ---------------------------------------------------------------------------------------------
def pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}".replace("%", " %")


def num(value: float | None, spec: str = ".4f") -> str:
    return "-" if value is None else format(value, spec)


def count(n: int, noun: str) -> str:
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def span(seconds: float) -> str:
    """A length of time as REPORT.md gives it: '45 s', '12 min', '1.5 h'.

    (The progress lines plan with `progress.duration`, '3h 05m', rounded down.)
    """
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


# ---------------------------------------------------------------------------------------------
# The comparison table: the lab's runs beside the search's best
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Row:
    """One line of the comparison table."""

    run: str
    layers: str
    filters: str
    kernel: str
    pooling: str
    dropout: str
    dense: str
    val_loss: str
    val_accuracy: str
    params: str
    epochs: str
    other: str

    HEADER = (
        "run",
        "layers",
        "filters",
        "kernel",
        "pooling",
        "dropout",
        "dense",
        "val_loss",
        "val_accuracy",
        "params",
        "epochs trained",
        "other settings",
    )

    def cells(self) -> tuple[str, ...]:
        return (
            self.run,
            self.layers,
            self.filters,
            self.kernel,
            self.pooling,
            self.dropout,
            self.dense,
            self.val_loss,
            self.val_accuracy,
            self.params,
            self.epochs,
            self.other,
        )


def describe_dropout(config: Config) -> str:
    where = {
        "blocks": "after each pooled block",
        "flatten": "after Flatten",
        "both": "after each pooled block and after Flatten",
    }
    if config.dropout == "none" or config.dropout_rate == 0:
        return "none"
    return f"{config.dropout_rate:g} {where[config.dropout]}"


def describe_other(config: Config) -> str:
    """The settings the lab never changed, where this trial differs, and the learning rate."""
    parts = [f"lr {config.learning_rate:.2g}"]
    if config.optimizer != "rmsprop":
        parts.append(LAB.get(config.optimizer, config.optimizer))
    if config.batchnorm:
        parts.append("batch norm")
    if config.padding != "valid":
        parts.append(f"{config.padding} padding")
    if config.augment != "none":
        parts.append(f"augmentation ({config.augment})")
    if config.batch_size != 64:
        parts.append(f"batch {config.batch_size}")
    if config.optimizer == "adamw":
        parts.append(f"weight decay {config.weight_decay:.2g}")
    if config.schedule != "constant":
        parts.append(f"{config.schedule} schedule")
    if config.label_smoothing:
        parts.append(f"label smoothing {config.label_smoothing:g}")
    if config.ema:
        parts.append("weight averaging")
    return ", ".join(parts)


def row(trial: FrozenTrial, config: Config) -> Row:
    a = trial.user_attrs
    if "baseline" in a:
        run = f"lab: {a['baseline']} (#{trial.number})"
    elif "start" in a:
        run = f"start: {a['start']} (#{trial.number})"
    else:
        run = f"search #{trial.number}"
    if trial.state != TrialState.COMPLETE:
        run += f", {trial.state.name.lower()}"
    pools = [str(i) for i, c in enumerate(config.convs, start=1) if c.pool]
    trained = a.get("epochs_trained", 0)
    epochs = f"{trained} (best {a['best_epoch']})" if "best_epoch" in a else str(trained)
    if config.residual:  # a stem, then stages of two-conv blocks
        stages = config.stages
        layers = f"1 + {len(stages)} stages x {stages[0].blocks} blocks"
        filters = "-".join(str(s.width) for s in stages)
        kernel = "3x3"
        pooling = f"between stages, by {config.downsample}" if len(stages) > 1 else "none"
    else:
        layers = str(len(config.convs))
        filters = "-".join(str(c.filters) for c in config.convs)
        kernel = "-".join(f"{c.kernel}x{c.kernel}" for c in config.convs)
        pooling = f"after conv {', '.join(pools)}" if pools else "none"
    return Row(
        run=run,
        layers=layers,
        filters=filters,
        kernel=kernel,
        pooling=pooling,
        dropout=describe_dropout(config),
        dense="-".join(str(u) for u in config.dense),
        val_loss=num(a.get("val_loss")),
        val_accuracy=pct(a.get("val_accuracy")),
        params=num(a.get("params"), ",d"),
        epochs=epochs,
        other=describe_other(config),
    )


def table_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The lab's runs (whatever became of them) and the search's best completed trials."""
    trials = study.get_trials(deepcopy=False)
    # A lab run killed with its worker is retried as a new trial, and one that waited at a
    # rung climbs on in a continuation: show the latest only.
    later = store.continued(trials)
    lab = [
        t
        for t in trials
        if "baseline" in t.user_attrs
        and t.state not in (TrialState.RUNNING, TrialState.FAIL)
        and t.number not in later
    ]
    ours = sorted(
        (t for t in complete(study) if "baseline" not in t.user_attrs), key=value_target
    )[:TOP]
    chosen = [t for t in lab + ours if config_of(t) is not None]

    def key(t: FrozenTrial) -> tuple[int, float]:
        loss = t.user_attrs.get("val_loss")
        # Completed trials rank by their value; the lab's unfinished runs follow.
        return (
            0 if t.state == TrialState.COMPLETE else 1,
            loss if loss is not None and math.isfinite(loss) else math.inf,
        )

    return sorted(chosen, key=key)


def table_rows(study: optuna.Study) -> list[Row]:
    """The rows of the comparison table, in table_trials' order."""
    return [row(t, config) for t in table_trials(study) if (config := config_of(t)) is not None]


# ---------------------------------------------------------------------------------------------
# What pruning saved
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Savings:
    """Epochs the pruner saved, bounded below and above, since a pruned trial's future is unknown.

    Without the pruner, a pruned trial would have trained on until early stopping or the preset's
    epoch limit. The most it could have stopped at is the limit; the earliest is its best epoch so
    far plus the patience, which early stopping reaches if val_loss never improves again.
    """

    pruned: int  # trials the pruner stopped after at least one epoch
    trained_by_pruned: int
    at_least: int
    at_most: int
    seconds_at_least: float
    seconds_at_most: float
    trained_in_all: int  # epochs trained by every trial of the study
    rejected: int  # trials ended before training (impossible network, cost guard, memory)
    epochs_limit: int
    patience: int

    def share(self, saved: int) -> float:
        return saved / (self.trained_in_all + saved) if self.trained_in_all + saved else 0.0


def savings(study: optuna.Study, preset: Preset) -> Savings:
    trials = study.get_trials(deepcopy=False)
    later = store.continued(trials)  # waited at a rung and climbed on: nothing was saved
    pruned = [t for t in trials if pruned_by_pruner(t) and t.number not in later]
    low = high = 0
    low_s = high_s = 0.0
    for t in pruned:
        trained = int(t.user_attrs["epochs_trained"])
        best_epoch = int(t.user_attrs.get("best_epoch", trained))
        earliest = max(0, min(best_epoch + preset.patience, preset.epochs) - trained)
        latest = max(0, preset.epochs - trained)
        per_epoch = float(t.user_attrs.get("seconds_per_epoch", 0.0))
        if rungs := t.user_attrs.get("rungs"):  # stopped at a rung: its full run never began
            earliest, latest = min(1 + preset.patience, preset.epochs), preset.epochs
            per_epoch /= rungs[-1]["share"]  # a full epoch sees 1/share times the images
        low += earliest
        high += latest
        low_s += earliest * per_epoch
        high_s += latest * per_epoch
    rejected = sum(
        1
        for t in trials
        if t.state == TrialState.PRUNED and t.user_attrs.get("epochs_trained", 0) == 0
    )
    return Savings(
        pruned=len(pruned),
        trained_by_pruned=sum(int(t.user_attrs["epochs_trained"]) for t in pruned),
        at_least=low,
        at_most=high,
        seconds_at_least=low_s,
        seconds_at_most=high_s,
        trained_in_all=sum(int(t.user_attrs.get("epochs_trained", 0)) for t in trials),
        rejected=rejected,
        epochs_limit=preset.epochs,
        patience=preset.patience,
    )
