"""The report's figures of the search, drawn from its stored trials alone.

Each fig_* function returns a matplotlib Figure, or raises Skip with the reason it cannot be
drawn for this study; `document` saves them and writes REPORT.md beside them. The final
model's figures are in `final_figures`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import matplotlib

matplotlib.use("Agg")  # files only: no display is needed, and none is opened

import matplotlib.pyplot as plt  # noqa: E402  (after the backend is chosen)
import numpy as np  # noqa: E402
import optuna  # noqa: E402
from matplotlib.collections import LineCollection  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from optuna.trial import FrozenTrial, TrialState  # noqa: E402

from search.report.analysis import complete, count, value_target  # noqa: E402
from search.store.trials import FINISHED, METRIC, best  # noqa: E402

FEW_FOR_IMPORTANCE = 20  # below this, PED-ANOVA's top 10 % is one or two trials
FAR_BELOW = 20  # percentage points under the best: drawn on the floor of the size plot
DPI = 110
RIGHT, WRONG = "#1a7f37", "#cf222e"
COMPLETED = "#1f77b4"

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


class Skip(Exception):
    """A figure that cannot be drawn for this study; the message goes into REPORT.md."""


@contextmanager
def style(size: tuple[float, float]) -> Iterator[None]:
    """One look for every figure; restores the global style Optuna's plots change in place."""
    with matplotlib.rc_context(), warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        # Optuna's notes on thin data (a regime with one trial, an axis with one value); the
        # figures say how many trials they rest on.
        warnings.simplefilter("ignore", UserWarning)
        plt.style.use("ggplot")
        plt.rcParams["figure.figsize"] = size
        yield


def save(fig: Figure, path: Path) -> None:
    """Write the figure as a PNG and free it, whether or not the write succeeds."""
    try:
        fig.savefig(path, dpi=DPI, bbox_inches="tight")
    finally:
        plt.close(fig)


def _log_if_wide(ax: Any, values: list[float]) -> None:
    finite = [v for v in values if v is not None and math.isfinite(v) and v > 0]
    if finite and max(finite) / min(finite) > 4:
        ax.set_yscale("log")


# ---------------------------------------------------------------------------------------------
# The search
# ---------------------------------------------------------------------------------------------
def fig_history(study: optuna.Study) -> Figure:
    if not complete(study):
        raise Skip("no trial has completed yet")
    with style((9, 5)):
        ax = optuna.visualization.matplotlib.plot_optimization_history(
            study, target=value_target, target_name=METRIC
        )
        # Optuna plots completed trials only; the pruned ones show where the search went too.
        pruned = [
            t
            for t in study.get_trials(deepcopy=False, states=(TrialState.PRUNED,))
            if t.user_attrs.get("val_loss") is not None
        ]
        if pruned:
            ax.scatter(
                [t.number for t in pruned],
                [t.user_attrs["val_loss"] for t in pruned],
                marker="x",
                color=WRONG,
                alpha=0.8,
                label="pruned trial (best val_loss before it was stopped)",
            )
        handles, labels = ax.get_legend_handles_labels()
        names = {METRIC: "completed trial", "Best Value": "best so far"}
        ax.legend(
            handles, [names.get(label, label) for label in labels], loc="upper right", fontsize=9
        )
        ax.set_title(f"Optimisation history: {METRIC} of each trial and the best so far")
        ax.set_xlabel("trial number")
        ax.set_ylabel(f"{METRIC} (lower is better)")
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        _log_if_wide(
            ax,
            [value_target(t) for t in complete(study)]
            + [t.user_attrs["val_loss"] for t in pruned],
        )
        return ax.figure  # type: ignore[return-value]


def _epochs(trial: FrozenTrial) -> tuple[list[int], list[float]]:
    """A trial's val_loss after each epoch, counted from 1 (the pruning callback's step 0)."""
    steps = sorted(trial.intermediate_values)
    return [s + 1 for s in steps], [trial.intermediate_values[s] for s in steps]


def _draw_trials(ax: Any, trials: list[FrozenTrial]) -> list[float]:
    """Each trial's epochs, coloured by its state, the lab's dashed; the values drawn."""
    values: list[float] = []
    for t in trials:
        x, y = _epochs(t)
        values += y
        lab = "baseline" in t.user_attrs
        color = {TrialState.COMPLETE: COMPLETED, TrialState.PRUNED: WRONG}.get(t.state, "grey")
        ax.plot(x, y, color=color, alpha=0.6, lw=1.2, marker=".", ls="--" if lab else "-")
        if t.state == TrialState.PRUNED:
            ax.plot(x[-1], y[-1], marker="X", ms=9, color=WRONG, ls="none")
        if lab:
            ax.annotate(
                t.user_attrs["baseline"],
                (x[-1], y[-1]),
                xytext=(4, 0),
                textcoords="offset points",
                fontsize=8,
                va="center",
            )
    return values


def _intermediate_legend(trials: list[FrozenTrial], top: FrozenTrial | None) -> list[Any]:
    def n(*states: TrialState) -> int:
        return sum(1 for t in trials if t.state in states)

    handles = [
        plt.Line2D(
            [], [], color=COMPLETED, marker=".", label=f"completed ({n(TrialState.COMPLETE)})"
        ),
        plt.Line2D(
            [],
            [],
            color=WRONG,
            marker="X",
            label=f"pruned ({n(TrialState.PRUNED)}), stopped at the X",
        ),
        plt.Line2D([], [], color="black", ls="--", lw=1, label="the lab's configurations"),
    ]
    if n(TrialState.RUNNING, TrialState.FAIL, TrialState.WAITING):
        handles.append(plt.Line2D([], [], color="grey", marker=".", label="running or failed"))
    if top is not None:
        handles.append(
            plt.Line2D(
                [], [], color="black", lw=2.5, marker="o", label=f"best trial #{top.number}"
            )
        )
    return handles


def fig_intermediate(study: optuna.Study) -> Figure:
    # Drawn here rather than with Optuna's plot_intermediate_values, which colours trials alike
    # whatever their state: the point of this figure is to show the pruned ones cut short.
    trials = [t for t in study.get_trials(deepcopy=False) if t.intermediate_values]
    if not trials:
        raise Skip("no trial has finished an epoch yet")
    top = best(study)
    with style((10, 5.5)):
        fig, ax = plt.subplots()
        values = _draw_trials(ax, trials)
        if top is not None:
            ax.plot(*_epochs(top), color="black", lw=2.5, marker="o")
        ax.legend(handles=_intermediate_legend(trials, top), loc="upper right", fontsize=9)
        ax.set_title(f"{METRIC} after every epoch of every trial (what the pruner saw)")
        ax.set_xlabel("epoch")
        ax.set_ylabel(METRIC)
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
        _log_if_wide(ax, values)
        return fig


def fig_importances(study: optuna.Study) -> Figure:
    done = complete(study)
    if len(done) < 2:
        raise Skip(
            f"parameter importances need at least 2 completed trials; this study has {len(done)}"
        )
    if len({tuple(sorted(t.params.items())) for t in done}) < 2:
        raise Skip("every completed trial has the same parameters, so none can matter more")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        importances = optuna.importance.get_param_importances(study, target=value_target)
    equal = [str(w.message) for w in caught if "will be equal" in str(w.message)]
    if not importances or not any(v > 0 for v in importances.values()) or equal:
        # PED-ANOVA compares the top 10 % of trials with the rest: too few trials give nothing.
        raise Skip(
            f"too few completed trials ({len(done)}) for PED-ANOVA, Optuna's default "
            "importance evaluator, to tell the parameters apart"
        )
    with style((9, max(4.0, 0.35 * len(importances) + 1.5))):
        ax = optuna.visualization.matplotlib.plot_param_importances(
            study, target=value_target, target_name=METRIC
        )
        title = f"Parameter importances for {METRIC}, PED-ANOVA on {len(done)} completed trials"
        if len(done) < FEW_FOR_IMPORTANCE:
            title += "\n(few trials: a hint, not a finding)"
        ax.set_title(title, loc="left")
        legend = ax.get_legend()
        if legend:
            legend.remove()  # one objective: the legend only repeats the title
        return ax.figure  # type: ignore[return-value]


def fig_parallel(study: optuna.Study) -> Figure:
    done = complete(study)
    if len(done) < 2:
        raise Skip(
            f"a parallel-coordinate plot needs at least 2 completed trials; this study "
            f"has {len(done)}"
        )
    names = sorted({p for t in done for p in t.params})
    if not names:
        raise Skip("the trials have no searched parameters")
    with style((max(10.0, 1.1 * len(names) + 2), 6)):
        ax = optuna.visualization.matplotlib.plot_parallel_coordinate(
            study, target=value_target, target_name=METRIC
        )
        for lines in cast(list[LineCollection], ax.collections):
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
        ax.set_title(
            f"Parallel coordinates: each line a completed trial, coloured by {METRIC} "
            "(dark: best); None: layer absent",
            y=1.03,
        )
        for label in ax.get_xticklabels():
            label.set_rotation(30)
            label.set_horizontalalignment("right")
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


def _accuracy(trial: FrozenTrial) -> float:
    return 100 * float(trial.user_attrs["val_accuracy"])


def _floor(trials: list[FrozenTrial], top: float) -> float:
    """The lowest accuracy the size plot shows; trials below it are drawn on this line."""
    # Trials that barely learned (a starved learning rate, pruned at once) would squash the
    # rest against the top; they are drawn on the floor of the plot instead, and counted.
    near = [_accuracy(t) for t in trials if _accuracy(t) >= top - FAR_BELOW]
    return min(near) - max(1.0, 0.1 * (top - min(near)))


def _draw_sizes(ax: Any, trials: list[FrozenTrial], floor: float) -> None:
    """Completed and pruned trials by size and accuracy, the lab's runs circled and named."""

    def y(t: FrozenTrial) -> float:
        return max(_accuracy(t), floor)

    for state, color, marker, label in (
        (TrialState.COMPLETE, COMPLETED, "o", "completed"),
        (TrialState.PRUNED, WRONG, "x", "pruned (accuracy when stopped)"),
    ):
        group = [t for t in trials if t.state == state]
        if group:
            ax.scatter(
                [t.user_attrs["params"] for t in group],
                [y(t) for t in group],
                color=color,
                marker=marker,
                s=45,
                alpha=0.8,
                label=label,
                zorder=3,
            )
    lab = [t for t in trials if "baseline" in t.user_attrs]
    if lab:
        ax.scatter(
            [t.user_attrs["params"] for t in lab],
            [y(t) for t in lab],
            s=170,
            facecolors="none",
            edgecolors="black",
            lw=1.5,
            zorder=4,
            label="the lab's configurations",
        )
        for t in lab:
            ax.annotate(
                t.user_attrs["baseline"],
                (t.user_attrs["params"], y(t)),
                xytext=(9, -4),
                textcoords="offset points",
                fontsize=8,
                va="top",
            )


def _size_axis(ax: Any) -> None:
    """Parameters on a log scale with round ticks."""
    ax.set_xscale("log")
    lo, hi = ax.get_xlim()
    # Round sizes (30 K, 50 K, 100 K, ...) rather than powers of ten: a study's models
    # usually span less than a decade.
    ax.set_xticks(
        [t for t in (m * 10**k for k in range(1, 10) for m in (1, 2, 3, 5)) if lo <= t <= hi]
    )
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(_thousands))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("parameters (log scale)")


def fig_size(study: optuna.Study) -> Figure:
    trials = [
        t
        for t in study.get_trials(deepcopy=False, states=FINISHED)
        if t.user_attrs.get("val_accuracy") is not None and t.user_attrs.get("params")
    ]
    if not trials:
        raise Skip("no trial has finished an epoch yet")
    winner = best(study)
    top = max(_accuracy(t) for t in trials)
    floor = _floor(trials, top)
    with style((9, 5.5)):
        fig, ax = plt.subplots()
        _draw_sizes(ax, trials, floor)
        if winner is not None:
            ax.scatter(
                [winner.user_attrs["params"]],
                [_accuracy(winner)],
                marker="*",
                s=340,
                color="gold",
                edgecolors="black",
                zorder=5,
                label=f"best trial #{winner.number} ({winner.user_attrs['architecture']})",
            )
        below = [t for t in trials if _accuracy(t) < floor]
        if below:
            ax.axhline(floor, color="grey", lw=0.8, ls=":")
            ax.annotate(
                f"{count(len(below), 'trial')} below {floor:.1f} % drawn on this line",
                (0.01, floor),
                xycoords=("axes fraction", "data"),
                xytext=(0, 4),
                textcoords="offset points",
                fontsize=8,
                color="dimgrey",
            )
        _size_axis(ax)
        ax.set_ylabel("val_accuracy at the best epoch (%)")
        ax.set_ylim(floor - 0.5, top + 0.15 * (top - floor) + 0.3)
        ax.set_title("Validation accuracy against model size")
        ax.legend(fontsize=8, loc="lower right")
        return fig


def _thousands(x: float, _pos: int) -> str:
    return f"{x / 1e6:g} M" if x >= 1e6 else f"{x / 1e3:g} K" if x >= 1e3 else f"{x:g}"
