"""The final model's figures: its curves beside its search run, and its test results."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import optuna
import pytest
from matplotlib.image import imread
from optuna.trial import TrialState

from search.report import figures, final_figures
from search.report.figures import Skip
from tests.test_analysis import LAB_9, make_trial


@pytest.fixture(autouse=True)
def close_figures() -> Iterator[None]:
    yield
    plt.close("all")


def test_the_curves_need_the_retrain_s_history() -> None:
    small = optuna.create_study()
    small.add_trial(make_trial(TrialState.COMPLETE, LAB_9, losses=(0.5,)))
    with pytest.raises(Skip, match="no per-epoch history"):
        final_figures.fig_curves(small, {"trial": 0, "epochs": 1, "history": {}})


def test_the_final_model_s_figures_count_right_and_wrong(tmp_path: Path) -> None:
    names = tuple(f"class {i}" for i in range(10))
    y_true = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9] * 2)
    y_pred = y_true.copy()
    y_pred[:5] = 9  # five wrong, the first five
    confusion = final_figures.fig_confusion(y_true, y_pred, names)
    assert confusion.axes[0].get_title() == (
        "Confusion matrix on the 20 test images (accuracy 75.00%)"
    )
    images = np.zeros((20, 28, 28))
    grid = final_figures.fig_predictions(images, y_true, y_pred, names)
    assert grid.get_suptitle().startswith("The first 15 test images, predicted (true): 10 of 15")
    assert grid.axes[0].get_title() == "class 9 (class 0)"
    assert grid.axes[0].title.get_color() == figures.WRONG
    figures.save(grid, tmp_path / "grid.png")
    height, width = imread(tmp_path / "grid.png").shape[:2]
    assert height > 300 and width > 400
    assert plt.fignum_exists(grid.number) is False  # save frees the figure
