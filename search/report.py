"""`search report`: figures of a study and REPORT.md, the search set beside the lab's own runs.

The search figures come from the stored trials alone. Only after `retrain-best` does the report
read the test set, to draw the saved final model's confusion matrix and a grid of its
predictions; the search itself never does.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display is needed, and none is opened

import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
import numpy as np  # noqa: E402
import optuna  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from optuna.trial import FrozenTrial, TrialState  # noqa: E402

from search import datasets  # noqa: E402
from search import storage as storage_mod  # noqa: E402
from search.errors import SearchError  # noqa: E402
from search.presets import Preset  # noqa: E402
from search.runtime import Log  # noqa: E402
from search.space import Config  # noqa: E402
from search.study import FINISHED, METRIC, counts  # noqa: E402

TOP = 5  # the search's best trials shown beside the lab's runs
FEW_FOR_IMPORTANCE = 20  # below this, PED-ANOVA's top 10 % is one or two trials
FAR_BELOW = 20  # percentage points under the best: drawn on the floor of the size plot
GRID = 15  # test images in the prediction grid, as in the lab's write-up
DPI = 110
LAB = {"rmsprop": "RMSprop", "adam": "Adam"}
RIGHT, WRONG = "#1a7f37", "#cf222e"

# File names, in the order REPORT.md shows them.
HISTORY = "optimization_history.png"
INTERMEDIATE = "intermediate_values.png"
IMPORTANCES = "param_importances.png"
PARALLEL = "parallel_coordinate.png"
SIZE = "accuracy_vs_params.png"
CURVES = "final_training_curves.png"
CONFUSION = "confusion_matrix.png"
PREDICTIONS = "test_predictions.png"
SEARCH_FIGURES = (HISTORY, INTERMEDIATE, IMPORTANCES, PARALLEL, SIZE)
FINAL_FIGURES = (CURVES, CONFUSION, PREDICTIONS)


class ReportError(SearchError):
    """The report cannot be written; the message says why."""


class Skip(Exception):
    """A figure that cannot be drawn for this study; the message goes into REPORT.md."""


@dataclass
class Report:
    folder: Path
    markdown: Path
    figures: list[Path] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # file name -> why it is not drawn


def default_dir(study_name: str) -> Path:
    """storage/reports/STUDY/, with the study name made safe as a folder name."""
    return storage_mod.home() / "reports" / storage_mod.safe_name(study_name)


# ---------------------------------------------------------------------------------------------
# What the trials say
# ---------------------------------------------------------------------------------------------
def complete(study: optuna.Study) -> list[FrozenTrial]:
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))


def pruned_by_pruner(trial: FrozenTrial) -> bool:
    """Stopped by the pruner after training; rejections (cost guard, NaN) carry a reason."""
    return (trial.state == TrialState.PRUNED and "reason" not in trial.user_attrs
            and trial.user_attrs.get("epochs_trained", 0) > 0)


def config_of(trial: FrozenTrial) -> Config | None:
    try:
        return Config.from_json(trial.user_attrs["config"])
    except (KeyError, TypeError, ValueError):
        return None


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}".replace("%", " %")


def _num(value: float | None, spec: str = ".4f") -> str:
    return "-" if value is None else format(value, spec)


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

    HEADER = ("run", "layers", "filters", "kernel", "pooling", "dropout", "dense", "val_loss",
              "val_accuracy", "params", "epochs trained", "other settings")

    def cells(self) -> tuple[str, ...]:
        return (self.run, self.layers, self.filters, self.kernel, self.pooling, self.dropout,
                self.dense, self.val_loss, self.val_accuracy, self.params, self.epochs,
                self.other)


def describe_dropout(config: Config) -> str:
    where = {"blocks": "after each pooled block", "flatten": "after Flatten",
             "both": "after each pooled block and after Flatten"}
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
    if config.augment:
        parts.append("augmentation")
    if config.batch_size != 64:
        parts.append(f"batch {config.batch_size}")
    return ", ".join(parts)


def row(trial: FrozenTrial, config: Config) -> Row:
    a = trial.user_attrs
    if "baseline" in a:
        run = f"lab: {a['baseline']} (#{trial.number})"
    else:
        run = f"search #{trial.number}"
    if trial.state != TrialState.COMPLETE:
        run += f", {trial.state.name.lower()}"
    pools = [str(i) for i, c in enumerate(config.convs, start=1) if c.pool]
    trained = a.get("epochs_trained", 0)
    epochs = f"{trained} (best {a['best_epoch']})" if "best_epoch" in a else str(trained)
    return Row(
        run=run,
        layers=str(len(config.convs)),
        filters="-".join(str(c.filters) for c in config.convs),
        kernel="-".join(f"{c.kernel}x{c.kernel}" for c in config.convs),
        pooling=f"after conv {', '.join(pools)}" if pools else "none",
        dropout=describe_dropout(config),
        dense="-".join(str(u) for u in config.dense),
        val_loss=_num(a.get("val_loss")),
        val_accuracy=_pct(a.get("val_accuracy")),
        params=_num(a.get("params"), ",d"),
        epochs=epochs,
        other=describe_other(config),
    )


def table_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The lab's runs (whatever became of them) and the search's best completed trials."""
    trials = study.get_trials(deepcopy=False)
    # A lab run killed with its worker is retried as a new trial: show the retry only.
    lab = [t for t in trials if "baseline" in t.user_attrs
           and t.state not in (TrialState.RUNNING, TrialState.FAIL)]
    ours = sorted((t for t in complete(study) if "baseline" not in t.user_attrs),
                  key=_value_target)[:TOP]
    chosen = [t for t in lab + ours if config_of(t) is not None]

    def key(t: FrozenTrial) -> tuple[int, float]:
        loss = t.user_attrs.get("val_loss")
        # Completed trials rank by their value; the lab's unfinished runs follow.
        return (0 if t.state == TrialState.COMPLETE else 1,
                loss if loss is not None and math.isfinite(loss) else math.inf)

    return sorted(chosen, key=key)


def markdown_table(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(Row.HEADER) + " |",
             "|" + "|".join("---:" if h in ("layers", "val_loss", "val_accuracy", "params")
                            else "---" for h in Row.HEADER) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in r.cells()) + " |" for r in rows]
    return "\n".join(lines)


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
    pruned = [t for t in study.get_trials(deepcopy=False) if pruned_by_pruner(t)]
    low = high = 0
    low_s = high_s = 0.0
    for t in pruned:
        trained = int(t.user_attrs["epochs_trained"])
        best_epoch = int(t.user_attrs.get("best_epoch", trained))
        earliest = min(best_epoch + preset.patience, preset.epochs)
        per_epoch = float(t.user_attrs.get("seconds_per_epoch", 0.0))
        low += max(0, earliest - trained)
        high += max(0, preset.epochs - trained)
        low_s += max(0, earliest - trained) * per_epoch
        high_s += max(0, preset.epochs - trained) * per_epoch
    trials = study.get_trials(deepcopy=False)
    rejected = sum(1 for t in trials if t.state == TrialState.PRUNED
                   and t.user_attrs.get("epochs_trained", 0) == 0)
    return Savings(
        pruned=len(pruned),
        trained_by_pruned=sum(int(t.user_attrs["epochs_trained"]) for t in pruned),
        at_least=low, at_most=high, seconds_at_least=low_s, seconds_at_most=high_s,
        trained_in_all=sum(int(t.user_attrs.get("epochs_trained", 0)) for t in trials),
        rejected=rejected, epochs_limit=preset.epochs, patience=preset.patience,
    )


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}" + ("" if n == 1 else "s")


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


# ---------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------
@contextmanager
def _style(size: tuple[float, float]) -> Iterator[None]:
    """One look for every figure; restores the global style Optuna's plots change in place."""
    with matplotlib.rc_context(), warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # Optuna's notes on thin data (a regime with one trial, an axis with one value); the
        # figures say how many trials they rest on.
        warnings.simplefilter("ignore", UserWarning)
        plt.style.use("ggplot")
        plt.rcParams["figure.figsize"] = size
        yield


def _value_target(trial: FrozenTrial) -> float:
    """val_loss, the first objective; a size-aware study also minimises parameters."""
    return float(trial.values[0])


def fig_history(study: optuna.Study) -> Figure:
    if not complete(study):
        raise Skip("no trial has completed yet")
    with _style((9, 5)):
        ax = optuna.visualization.matplotlib.plot_optimization_history(
            study, target=_value_target, target_name=METRIC)
        # Optuna plots completed trials only; the pruned ones show where the search went too.
        pruned = [t for t in study.get_trials(deepcopy=False, states=(TrialState.PRUNED,))
                  if t.user_attrs.get("val_loss") is not None]
        if pruned:
            ax.scatter([t.number for t in pruned], [t.user_attrs["val_loss"] for t in pruned],
                       marker="x", color=WRONG, alpha=0.8,
                       label="pruned trial (best val_loss before it was stopped)")
        handles, labels = ax.get_legend_handles_labels()
        names = {METRIC: "completed trial", "Best Value": "best so far"}
        ax.legend(handles, [names.get(label, label) for label in labels], loc="upper right",
                  fontsize=9)
        ax.set_title(f"Optimisation history: {METRIC} of each trial and the best so far")
        ax.set_xlabel("trial number")
        ax.set_ylabel(f"{METRIC} (lower is better)")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        _log_if_wide(ax, [_value_target(t) for t in complete(study)]
                     + [t.user_attrs["val_loss"] for t in pruned])
        return ax.figure  # type: ignore[return-value]


def _log_if_wide(ax: Any, values: list[float]) -> None:
    finite = [v for v in values if v is not None and math.isfinite(v) and v > 0]
    if finite and max(finite) / min(finite) > 4:
        ax.set_yscale("log")


def fig_intermediate(study: optuna.Study) -> Figure:
    # Drawn here rather than with Optuna's plot_intermediate_values, which colours trials alike
    # whatever their state: the point of this figure is to show the pruned ones cut short.
    trials = [t for t in study.get_trials(deepcopy=False) if t.intermediate_values]
    if not trials:
        raise Skip("no trial has finished an epoch yet")
    done = complete(study)
    best = min(done, key=_value_target) if done else None
    with _style((10, 5.5)):
        fig, ax = plt.subplots()
        values: list[float] = []
        for t in trials:
            steps = sorted(t.intermediate_values)
            x = [s + 1 for s in steps]  # the pruning callback reports epoch 0 as step 0
            y = [t.intermediate_values[s] for s in steps]
            values += y
            lab = "baseline" in t.user_attrs
            color = {TrialState.COMPLETE: "#1f77b4", TrialState.PRUNED: WRONG}.get(t.state,
                                                                                  "grey")
            ax.plot(x, y, color=color, alpha=0.6, lw=1.2, marker=".", ls="--" if lab else "-")
            if t.state == TrialState.PRUNED:
                ax.plot(x[-1], y[-1], marker="X", ms=9, color=WRONG, ls="none")
            if lab:
                ax.annotate(t.user_attrs["baseline"], (x[-1], y[-1]), xytext=(4, 0),
                            textcoords="offset points", fontsize=8, va="center")
        if best is not None:
            steps = sorted(best.intermediate_values)
            ax.plot([s + 1 for s in steps], [best.intermediate_values[s] for s in steps],
                    color="black", lw=2.5, marker="o")
        def n(*states: TrialState) -> int:
            return sum(1 for t in trials if t.state in states)

        handles = [
            plt.Line2D([], [], color="#1f77b4", marker=".",
                       label=f"completed ({n(TrialState.COMPLETE)})"),
            plt.Line2D([], [], color=WRONG, marker="X",
                       label=f"pruned ({n(TrialState.PRUNED)}), stopped at the X"),
            plt.Line2D([], [], color="black", ls="--", lw=1, label="the lab's configurations"),
        ]
        if n(TrialState.RUNNING, TrialState.FAIL, TrialState.WAITING):
            handles.append(plt.Line2D([], [], color="grey", marker=".", label="running or failed"))
        if best is not None:
            handles.append(plt.Line2D([], [], color="black", lw=2.5, marker="o",
                                      label=f"best trial #{best.number}"))
        ax.legend(handles=handles, loc="upper right", fontsize=9)
        ax.set_title(f"{METRIC} after every epoch of every trial (what the pruner saw)")
        ax.set_xlabel("epoch")
        ax.set_ylabel(METRIC)
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        _log_if_wide(ax, values)
        return fig


def fig_importances(study: optuna.Study) -> Figure:
    done = complete(study)
    if len(done) < 2:
        raise Skip(f"parameter importances need at least 2 completed trials; this study has "
                   f"{len(done)}")
    if len({tuple(sorted(t.params.items())) for t in done}) < 2:
        raise Skip("every completed trial has the same parameters, so none can matter more")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        importances = optuna.importance.get_param_importances(study, target=_value_target)
    equal = [str(w.message) for w in caught if "will be equal" in str(w.message)]
    if not importances or not any(v > 0 for v in importances.values()) or equal:
        # PED-ANOVA compares the top 10 % of trials with the rest: too few trials give nothing.
        raise Skip(f"too few completed trials ({len(done)}) for PED-ANOVA, Optuna's default "
                   "importance evaluator, to tell the parameters apart")
    with _style((9, max(4.0, 0.35 * len(importances) + 1.5))):
        ax = optuna.visualization.matplotlib.plot_param_importances(
            study, target=_value_target, target_name=METRIC)
        title = f"Parameter importances for {METRIC}, PED-ANOVA on {len(done)} completed trials"
        if len(done) < FEW_FOR_IMPORTANCE:
            title += "\n(few trials: a hint, not a finding)"
        ax.set_title(title, loc="left")
        if ax.get_legend():
            ax.get_legend().remove()  # one objective: the legend only repeats the title
        return ax.figure  # type: ignore[return-value]


def fig_parallel(study: optuna.Study) -> Figure:
    done = complete(study)
    if len(done) < 2:
        raise Skip(f"a parallel-coordinate plot needs at least 2 completed trials; this study "
                   f"has {len(done)}")
    names = sorted({p for t in done for p in t.params})
    if not names:
        raise Skip("the trials have no searched parameters")
    with _style((max(10.0, 1.1 * len(names) + 2), 6)):
        ax = optuna.visualization.matplotlib.plot_parallel_coordinate(
            study, target=_value_target, target_name=METRIC)
        for lines in ax.collections:
            # Optuna's Blues fades the worst trials to white; viridis keeps every line visible.
            lines.set_cmap("viridis")
            lines.set_linewidth(2)
            # Optuna draws in trial order; drawing the best last keeps it on top where lines
            # share values.
            order = np.argsort(np.asarray(lines.get_array()))[::-1]
            lines.set_segments([lines.get_segments()[i] for i in order])
            lines.set_array(np.asarray(lines.get_array())[order])
        # Trials at an axis's extremes run along the frame and vanish; pad every axis alike
        # (each in its own scale) so the lines clear it and still meet the tick labels.
        colorbars = {c.colorbar.ax for c in ax.collections if c.colorbar is not None}
        for axis in ax.figure.axes:
            if axis not in colorbars:
                _pad(axis, 0.04)
                if axis is not ax:
                    axis.grid(False)  # each axis's own grid would paint over the lines
        ax.set_title(f"Parallel coordinates: each line a completed trial, coloured by {METRIC} "
                     "(dark: best); None: layer absent", y=1.03)
        for label in ax.get_xticklabels():
            label.set_rotation(30)
            label.set_ha("right")
        return ax.figure  # type: ignore[return-value]


def _pad(axis: Any, share: float) -> None:
    lo, hi = axis.get_ylim()
    if axis.get_yscale() == "log":
        lo, hi = math.log10(lo), math.log10(hi)
        margin = share * (hi - lo)
        axis.set_ylim(10 ** (lo - margin), 10 ** (hi + margin))
    else:
        margin = share * (hi - lo)
        axis.set_ylim(lo - margin, hi + margin)


def fig_size(study: optuna.Study) -> Figure:
    trials = [t for t in study.get_trials(deepcopy=False, states=FINISHED)
              if t.user_attrs.get("val_accuracy") is not None and t.user_attrs.get("params")]
    if not trials:
        raise Skip("no trial has finished an epoch yet")
    done = complete(study)
    best = min(done, key=_value_target) if done else None

    def acc(t: FrozenTrial) -> float:
        return 100 * float(t.user_attrs["val_accuracy"])

    top = max(acc(t) for t in trials)
    # Trials that barely learned (a starved learning rate, pruned at once) would squash the
    # rest against the top; they are drawn on the floor of the plot instead, and counted.
    near = [acc(t) for t in trials if acc(t) >= top - FAR_BELOW]
    floor = min(near) - max(1.0, 0.1 * (top - min(near)))

    def y(t: FrozenTrial) -> float:
        return max(acc(t), floor)

    with _style((9, 5.5)):
        fig, ax = plt.subplots()
        for state, color, marker, label in (
            (TrialState.COMPLETE, "#1f77b4", "o", "completed"),
            (TrialState.PRUNED, WRONG, "x", "pruned (accuracy when stopped)"),
        ):
            group = [t for t in trials if t.state == state]
            if group:
                ax.scatter([t.user_attrs["params"] for t in group], [y(t) for t in group],
                           color=color, marker=marker, s=45, alpha=0.8, label=label, zorder=3)
        lab = [t for t in trials if "baseline" in t.user_attrs]
        if lab:
            ax.scatter([t.user_attrs["params"] for t in lab], [y(t) for t in lab], s=170,
                       facecolors="none", edgecolors="black", lw=1.5, zorder=4,
                       label="the lab's configurations")
            for t in lab:
                ax.annotate(t.user_attrs["baseline"], (t.user_attrs["params"], y(t)),
                            xytext=(9, -4), textcoords="offset points", fontsize=8, va="top")
        if best is not None:
            ax.scatter([best.user_attrs["params"]], [acc(best)], marker="*", s=340,
                       color="gold", edgecolors="black", zorder=5,
                       label=f"best trial #{best.number} ({best.user_attrs['architecture']})")
        below = [t for t in trials if acc(t) < floor]
        if below:
            ax.axhline(floor, color="grey", lw=0.8, ls=":")
            ax.annotate(f"{_count(len(below), 'trial')} below {floor:.1f} % drawn on this line",
                        (0.01, floor), xycoords=("axes fraction", "data"), xytext=(0, 4),
                        textcoords="offset points", fontsize=8, color="dimgrey")
        ax.set_xscale("log")
        lo, hi = ax.get_xlim()
        # Round sizes (30 K, 50 K, 100 K, ...) rather than powers of ten: a study's models
        # usually span less than a decade.
        ax.set_xticks([t for t in (m * 10 ** k for k in range(1, 10) for m in (1, 2, 3, 5))
                       if lo <= t <= hi])
        ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(_thousands))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("parameters (log scale)")
        ax.set_ylabel("val_accuracy at the best epoch (%)")
        ax.set_ylim(floor - 0.5, top + 0.15 * (top - floor) + 0.3)
        ax.set_title("Validation accuracy against model size")
        ax.legend(fontsize=8, loc="lower right")
        return fig


def _thousands(x: float, _pos: int) -> str:
    return f"{x / 1e6:g} M" if x >= 1e6 else f"{x / 1e3:g} K" if x >= 1e3 else f"{x:g}"


def fig_curves(study: optuna.Study, record: dict[str, Any]) -> Figure:
    trial = study.get_trials(deepcopy=False)[record["trial"]]
    search = trial.user_attrs.get("curves", {})
    final = record.get("history", {})
    if not final.get("loss"):
        raise Skip("the retrain record holds no per-epoch history")
    epochs = record["epochs"]
    with _style((12, 4.8)):
        fig, (left, right) = plt.subplots(1, 2)
        for ax, key, name in ((left, "loss", "loss"), (right, "accuracy", "accuracy")):
            scale = 1 if key == "loss" else 100
            if search.get(key):
                n = len(search[key])
                ax.plot(range(1, n + 1), [scale * v for v in search[key]], "o--",
                        color="#1f77b4", alpha=0.7, label=f"search #{trial.number}: training")
            if search.get(f"val_{key}"):
                n = len(search[f"val_{key}"])
                ax.plot(range(1, n + 1), [scale * v for v in search[f"val_{key}"]], "s-",
                        color="#ff7f0e", label=f"search #{trial.number}: validation")
            ax.plot(range(1, len(final[key]) + 1), [scale * v for v in final[key]], "o-",
                    color="black", lw=2,
                    label=f"final model: training on {record['train_images']:,} images")
            ax.axvline(epochs, color="grey", ls=":",
                       label=f"best epoch {epochs} (the final model's length)")
            ax.set_xlabel("epoch")
            ax.set_ylabel(name if key == "loss" else f"{name} (%)")
            ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        right.plot([epochs], [100 * record["test_accuracy"]], marker="*", ms=16, color="gold",
                   mec="black", ls="none",
                   label=f"final test accuracy {record['test_accuracy']:.2%}")
        right.axhline(100 * record["lab_test_accuracy"], color="green", ls="--", lw=1,
                      label=f"the lab's test accuracy {record['lab_test_accuracy']:.2%}")
        left.set_title("Loss per epoch")
        right.set_title("Accuracy per epoch")
        left.legend(fontsize=8, loc="upper right")
        right.legend(fontsize=8, loc="lower right")
        fig.suptitle(f"Trial #{trial.number} {record['architecture']}: search run and final "
                     "retrain", fontsize=12)
        fig.tight_layout()
        return fig


def fig_confusion(y_true: np.ndarray, y_pred: np.ndarray, names: tuple[str, ...]) -> Figure:
    k = len(names)
    matrix = np.zeros((k, k), dtype=int)
    np.add.at(matrix, (y_true, y_pred), 1)
    share = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(8.5, 7.5))
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            if matrix[i, j]:
                ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if share[i, j] > 0.5 else "black")
    ax.set_xticks(range(k), names, rotation=45, ha="right")
    ax.set_yticks(range(k), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    accuracy = np.trace(matrix) / matrix.sum()
    ax.set_title(f"Confusion matrix on the {matrix.sum():,} test images "
                 f"(accuracy {accuracy:.2%})")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    fig.tight_layout()
    return fig


def fig_predictions(images: np.ndarray, y_true: np.ndarray, y_pred: np.ndarray,
                    names: tuple[str, ...]) -> Figure:
    n = min(GRID, len(images))
    fig, axes = plt.subplots(3, 5, figsize=(11, 7.5))
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        ax.imshow(images[i], cmap="binary")
        right = y_pred[i] == y_true[i]
        ax.set_title(f"{names[y_pred[i]]} ({names[y_true[i]]})", fontsize=10,
                     color=RIGHT if right else WRONG)
    hits = int(np.sum(y_pred[:n] == y_true[:n]))
    fig.suptitle(f"The first {n} test images, predicted (true): {hits} of {n} right "
                 "(green right, red wrong)", fontsize=12)
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------
def _save(fig: Figure, path: Path) -> None:
    try:
        fig.savefig(path, dpi=DPI, bbox_inches="tight")
    finally:
        plt.close(fig)


def _predict(record: dict[str, Any], dataset: str, data_dir: str | None, log: Log
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The saved final model's predictions on the test set; the only read of it here."""
    from search.runtime import configure

    path = Path(record["model_path"])
    if not path.is_file():
        raise Skip(f"the final model is not at {path}; rerun 'search retrain-best'")
    log(f"  reading the test set to test {path.name} for the final model's figures")
    configure()
    import keras

    try:
        model = keras.models.load_model(path)
    except Exception as e:  # Keras reports a damaged file in several exception types
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise Skip(f"the final model at {path} cannot be read ({first}); rerun 'search "
                   "retrain-best'") from None
    try:
        x_test, y_test = datasets.load_test(dataset, Path(data_dir) if data_dir else None)
    except datasets.DataError as e:
        raise Skip(f"the test set cannot be read: {e}") from None
    probabilities = model.predict(x_test, batch_size=1024, verbose=0)
    return x_test, y_test.astype(int), np.argmax(probabilities, axis=1)


def write(study: optuna.Study, preset: Preset, out_dir: Path, *, data_dir: str | None = None,
          log: Log = print) -> Report:
    """Draw every figure that the study's state allows and write REPORT.md beside them."""
    trials = study.get_trials(deepcopy=False)
    if not any(t.intermediate_values or t.state == TrialState.COMPLETE for t in trials):
        raise ReportError(f"Study '{study.study_name}' has no trial that trained an epoch yet; "
                          "run 'search start' first.")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ReportError(f"Cannot create the report folder {out_dir}: {e.strerror}.") from None
    report = Report(folder=out_dir, markdown=out_dir / "REPORT.md")

    def skip(name: str, why: str) -> None:
        why = why.rstrip(".")  # REPORT.md and the log add their own full stop
        report.skipped[name] = why
        (out_dir / name).unlink(missing_ok=True)  # a figure from an earlier report would mislead
        log(f"  {name}: not drawn, {why}")

    def draw(name: str, make: Callable[[], Figure]) -> None:
        path = out_dir / name
        try:
            fig = make()
        except Skip as why:
            skip(name, str(why))
            return
        try:
            _save(fig, path)
        except OSError as e:
            raise ReportError(f"Cannot write {path}: {e.strerror}.") from None
        report.figures.append(path)
        log(f"  {name}")

    draw(HISTORY, lambda: fig_history(study))
    draw(INTERMEDIATE, lambda: fig_intermediate(study))
    draw(IMPORTANCES, lambda: fig_importances(study))
    draw(PARALLEL, lambda: fig_parallel(study))
    draw(SIZE, lambda: fig_size(study))

    record = study.user_attrs.get("retrain")
    test_note = ""
    if record:
        names = datasets.info(preset.dataset).class_names
        draw(CURVES, lambda: fig_curves(study, record))
        try:
            x_test, y_test, y_pred = _predict(record, preset.dataset, data_dir, log)
        except Skip as why:
            skip(CONFUSION, str(why))
            skip(PREDICTIONS, str(why))
        else:
            draw(CONFUSION, lambda: fig_confusion(y_test, y_pred, names))
            draw(PREDICTIONS, lambda: fig_predictions(x_test, y_test, y_pred, names))
            again = float(np.mean(y_pred == y_test))
            if abs(again - record["test_accuracy"]) > 5e-4:
                test_note = (f" The saved model scores {again:.2%} now, not the recorded "
                             f"{record['test_accuracy']:.2%}: the model file has changed since.")
    else:
        for name in FINAL_FIGURES:
            skip(name, f"the study has not been retrained; run 'search retrain-best --study "
                 f"{study.study_name}' and then this report again")

    text = markdown(study, preset, report, record, test_note)
    try:
        report.markdown.write_text(text)
    except OSError as e:
        raise ReportError(f"Cannot write {report.markdown}: {e.strerror}.") from None
    return report


CAPTIONS = {
    HISTORY: "Optimisation history: each completed trial's val_loss and the best so far.",
    INTERMEDIATE: "val_loss after every epoch of every trial; pruned trials end at a red X.",
    IMPORTANCES: "Which parameters mattered most for val_loss (Optuna's PED-ANOVA).",
    PARALLEL: "Parallel coordinates: every completed trial's parameters, coloured by val_loss.",
    SIZE: "Validation accuracy against parameter count; the lab's runs are circled.",
    CURVES: "The final model: the winning trial's training and validation curves during the "
            "search, and the retrain on all training images.",
    CONFUSION: "Confusion matrix of the final model on the test set.",
    PREDICTIONS: "The first 15 test images, titled predicted (true), green when right and red "
                 "when wrong.",
}


def markdown(study: optuna.Study, preset: Preset, report: Report,
             record: dict[str, Any] | None, test_note: str) -> str:
    n = counts(study)
    done = complete(study)
    best = min(done, key=_value_target) if done else None
    train_images = preset.train_size or 60_000 - preset.val_size
    state_line = ", ".join(f"{v} {k.lower()}" for k, v in n.items() if v)
    out: list[str] = [
        f"# Study `{study.study_name}`",
        "",
        f"Dataset **{preset.dataset}**, preset `{preset.name}`, "
        + ("objectives val_loss and parameters, no pruning. " if preset.multi_objective
           else f"pruner {preset.pruner}. ")
        + f"Each trial trained on {train_images:,} images and validated on the first "
        f"{preset.val_size:,} training images, for at most {preset.epochs} epochs with early "
        f"stopping (patience {preset.patience}). The objective is the best epoch's {METRIC}, "
        "minimised.",
        "",
        f"Trials: {state_line}. Written {datetime.now(UTC):%Y-%m-%d %H:%M} UTC.",
    ]
    if n["RUNNING"]:
        out.append(f"{_count(n['RUNNING'], 'trial')} still running: this is a snapshot.")
    if best is not None:
        a = best.user_attrs
        out += ["", f"**Best trial: #{best.number}** `{a.get('architecture', '')}`, {METRIC} "
                f"{_value_target(best):.4f}, val_accuracy {_pct(a.get('val_accuracy'))}, "
                f"{a.get('params', 0):,} parameters, best epoch {a.get('best_epoch')}."]

    out += ["", "## The search against the lab's configurations", ""]
    chosen = table_trials(study)
    if chosen:
        out += [
            f"The lab's own configurations ran in this study as its first trials, on the same "
            f"data and budget as every other trial, so each row is measured the same way. Rows "
            f"are the lab's runs and the search's {TOP} best completed trials, by {METRIC}. "
            "val_loss and val_accuracy are at each trial's best epoch; for a pruned trial, at "
            "its best epoch before it was stopped.",
            "",
            markdown_table([row(t, config_of(t)) for t in chosen]),  # type: ignore[arg-type]
        ]
    else:
        out.append("No trial has a stored configuration yet.")

    s = savings(study, preset)
    out += ["", "## What pruning saved", ""]
    if s.pruned:
        head = (f"The pruner stopped **{_count(s.pruned, 'trial')}** after "
                f"{_count(s.trained_by_pruned, 'epoch')} in all; the study trained "
                f"{_count(s.trained_in_all, 'epoch')} in all. Without the pruner, each of these "
                f"trials would have trained on until early stopping (patience {s.patience}) or "
                f"the limit of {s.epochs_limit} epochs. Where they would have stopped is "
                "unknown, so the saving is bounded: at least the epochs up to each trial's "
                "earliest possible early stop (its best epoch so far plus the patience, had "
                "val_loss never improved again), at most the epochs up to the limit.")
        if s.at_least == s.at_most:
            tail = (f"Here both bounds agree: pruning saved **{_count(s.at_most, 'epoch')}**, "
                    f"{s.share(s.at_most):.0%} of the epochs the study would otherwise have "
                    f"trained (about {_duration(s.seconds_at_most)}")
        else:
            tail = (f"Pruning saved at least **{_count(s.at_least, 'epoch')}** and at most "
                    f"**{_count(s.at_most, 'epoch')}**, {s.share(s.at_least):.0%} to "
                    f"{s.share(s.at_most):.0%} of the epochs the study would otherwise have "
                    f"trained (about {_duration(s.seconds_at_least)} to "
                    f"{_duration(s.seconds_at_most)}")
        out.append(f"{head} {tail} at those trials' own measured seconds per epoch).")
    else:
        out.append(f"The pruner stopped no trial after training began "
                   f"({_count(s.trained_in_all, 'epoch')} trained in all), so it saved nothing "
                   "here.")
    if s.rejected:
        out += ["", f"Besides, {_count(s.rejected, 'configuration')} ended before training (an "
                "impossible network, the cost guard or memory), each of which would otherwise "
                f"have trained for up to {s.epochs_limit} epochs; these are not counted above."]

    out += ["", "## Final test accuracy", ""]
    lab = datasets.info(preset.dataset).lab_test_accuracy
    if record:
        delta = (record["test_accuracy"] - lab) * 100
        out.append(
            f"Trial #{record['trial']} `{record['architecture']}` ({record['params']:,} "
            f"parameters), retrained from scratch on {record['train_images']:,} training images "
            f"for {record['epochs']} epochs (seed {record['seed']}), then tested once on the "
            f"test set:\n\n"
            f"| | test accuracy |\n|---|---:|\n"
            f"| this study's final model | **{_pct(record['test_accuracy'])}** |\n"
            f"| the lab's final model | {_pct(lab)} |\n\n"
            f"That is {delta:+.2f} points against the lab (test loss {record['test_loss']:.4f})."
            + test_note
        )
        if record["train_images"] < 60_000:
            out.append(f"\nThe lab trained its final model on all 60,000 training images; this "
                       f"one saw {record['train_images']:,}, as the preset asks.")
    else:
        out.append(f"Not retrained yet: run `search retrain-best --study {study.study_name}` "
                   f"and then this report again. The lab's final test accuracy was {_pct(lab)}.")

    out += ["", "## Figures", ""]
    for name in SEARCH_FIGURES + FINAL_FIGURES:
        if name in report.skipped:
            out.append(f"- `{name}` is not drawn: {report.skipped[name]}.")
        else:
            out += [f"### {CAPTIONS[name]}", "", f"![{CAPTIONS[name]}]({name})", ""]
    return "\n".join(out).rstrip() + "\n"
