"""The report's figures on studies made in memory: what each draws, and when it cannot."""

from __future__ import annotations

from collections.abc import Iterator

import matplotlib.pyplot as plt
import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from search.report import figures
from search.report.figures import Skip
from tests.test_analysis import LAB_9, lab_study, make_trial


@pytest.fixture(autouse=True)
def close_figures() -> Iterator[None]:
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def study() -> optuna.Study:
    return lab_study()


def legend_texts(ax: plt.Axes) -> list[str]:
    legend = ax.get_legend()
    assert legend is not None
    return [t.get_text() for t in legend.get_texts()]


def test_history_marks_the_pruned_trials_beside_the_completed(study: optuna.Study) -> None:
    ax = figures.fig_history(study).axes[0]
    assert ax.get_xlabel() == "trial number" and ax.get_ylabel() == "val_loss (lower is better)"
    labels = legend_texts(ax)
    assert labels[0] == "completed trial"
    assert labels[-1] == "pruned trial (best val_loss before it was stopped)"
    pruned = ax.collections[-1]
    assert np.asarray(pruned.get_offsets()).tolist() == [[1, 1.2], [4, 0.9], [7, 0.8]]


def test_intermediate_counts_the_trials_and_draws_the_best_on_top(study: optuna.Study) -> None:
    fig = figures.fig_intermediate(study)
    ax = fig.axes[0]
    assert legend_texts(ax) == [
        "completed (3)",
        "pruned (3), stopped at the X",
        "the lab's configurations",
        "best trial #2",
    ]
    assert ax.get_yscale() == "log"  # 0.31 to 1.3: more than four times over
    best_line = [line for line in ax.get_lines() if line.get_linewidth() == 2.5]
    assert [np.asarray(line.get_xdata()).tolist() for line in best_line] == [[1, 2, 3]]
    annotations = [t.get_text() for t in ax.texts]
    assert annotations == ["lab test 9", "starved"]


def test_size_plot_stars_the_best_and_floors_the_trials_far_below(study: optuna.Study) -> None:
    ax = figures.fig_size(study).axes[0]
    assert ax.get_xscale() == "log" and ax.get_title() == "Validation accuracy against model size"
    labels = legend_texts(ax)
    assert labels[-1].startswith("best trial #2 (C32k3s-BN-P")
    # Accuracies 84.5, 80 and 72.5 % set the floor at 72.5 - 1.2; 60, 55 and 40 % lie on it.
    assert "3 trials below 71.3 % drawn on this line" in [t.get_text() for t in ax.texts]
    assert ax.get_ylim()[0] == pytest.approx(71.3 - 0.5)


def test_the_figures_skip_a_study_too_small_to_draw() -> None:
    small = optuna.create_study()
    small.add_trial(make_trial(TrialState.PRUNED, LAB_9, reason="too many parameters"))
    for draw, why in (
        (figures.fig_history, "no trial has completed yet"),
        (figures.fig_intermediate, "no trial has finished an epoch yet"),
        (figures.fig_size, "no trial has finished an epoch yet"),
    ):
        with pytest.raises(Skip, match=why):
            draw(small)
    small.add_trial(make_trial(TrialState.COMPLETE, LAB_9, losses=(0.5,)))
    with pytest.raises(Skip, match="need at least 2 completed trials; this study has 1"):
        figures.fig_importances(small)
    with pytest.raises(Skip, match="needs at least 2 completed trials; this study has 1"):
        figures.fig_parallel(small)
