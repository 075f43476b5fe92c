"""The report's figures of the final model: its retrain beside its search run, and its test
results. Only these read anything of the test set, through the predictions they are given.
"""

from __future__ import annotations

from typing import Any

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import optuna
from matplotlib.figure import Figure
from optuna.trial import FrozenTrial

from search.report.figures import COMPLETED, RIGHT, WRONG, Skip, style

GRID = 15  # test images in the prediction grid, as in the lab's write-up


def _search_curves(ax: Any, trial: FrozenTrial, key: str, scale: float) -> None:
    """The winning trial's training and validation curves during the search."""
    search = trial.user_attrs.get("curves", {})
    for curve, line, color, what in (
        (key, "o--", COMPLETED, "training"),
        (f"val_{key}", "s-", "#ff7f0e", "validation"),
    ):
        values = search.get(curve)
        if values:
            ax.plot(
                range(1, len(values) + 1),
                [scale * v for v in values],
                line,
                color=color,
                alpha=0.7 if what == "training" else 1.0,
                label=f"search #{trial.number}: {what}",
            )


def _final_curve(ax: Any, record: dict[str, Any], key: str, scale: float) -> None:
    """The final retrain's training curve, and the epoch count it trained for."""
    final = record["history"][key]
    ax.plot(
        range(1, len(final) + 1),
        [scale * v for v in final],
        "o-",
        color="black",
        lw=2,
        label=f"final model: training on {record['train_images']:,} images",
    )
    epochs = record["epochs"]
    ax.axvline(epochs, color="grey", ls=":", label=f"the final model's {epochs} epochs")
    ax.set_xlabel("epoch")
    ax.set_ylabel(key if key == "loss" else f"{key} (%)")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))


def _test_marks(ax: Any, record: dict[str, Any]) -> None:
    ax.plot(
        [record["epochs"]],
        [100 * record["test_accuracy"]],
        marker="*",
        ms=16,
        color="gold",
        mec="black",
        ls="none",
        label=f"final test accuracy {record['test_accuracy']:.2%}",
    )
    ax.axhline(
        100 * record["lab_test_accuracy"],
        color="green",
        ls="--",
        lw=1,
        label=f"the lab's test accuracy {record['lab_test_accuracy']:.2%}",
    )


def fig_curves(study: optuna.Study, record: dict[str, Any]) -> Figure:
    trial = study.get_trials(deepcopy=False)[record["trial"]]
    if not record.get("history", {}).get("loss"):
        raise Skip("the retrain record holds no per-epoch history")
    with style((12, 4.8)):
        fig, (left, right) = plt.subplots(1, 2)
        for ax, key in ((left, "loss"), (right, "accuracy")):
            scale = 1 if key == "loss" else 100
            _search_curves(ax, trial, key, scale)
            _final_curve(ax, record, key, scale)
        _test_marks(right, record)
        left.set_title("Loss per epoch")
        right.set_title("Accuracy per epoch")
        left.legend(fontsize=8, loc="upper right")
        right.legend(fontsize=8, loc="lower right")
        fig.suptitle(
            f"Trial #{trial.number} {record['architecture']}: search run and final retrain",
            fontsize=12,
        )
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
                ax.text(
                    j,
                    i,
                    str(matrix[i, j]),
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if share[i, j] > 0.5 else "black",
                )
    ax.set_xticks(range(k), names, rotation=45, ha="right")
    ax.set_yticks(range(k), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    accuracy = np.trace(matrix) / matrix.sum()
    ax.set_title(f"Confusion matrix on the {matrix.sum():,} test images (accuracy {accuracy:.2%})")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    fig.tight_layout()
    return fig


def fig_predictions(
    images: np.ndarray, y_true: np.ndarray, y_pred: np.ndarray, names: tuple[str, ...]
) -> Figure:
    n = min(GRID, len(images))
    fig, axes = plt.subplots(3, 5, figsize=(11, 7.5))
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        ax.imshow(images[i], cmap="binary")
        right = y_pred[i] == y_true[i]
        ax.set_title(
            f"{names[y_pred[i]]} ({names[y_true[i]]})",
            fontsize=10,
            color=RIGHT if right else WRONG,
        )
    hits = int(np.sum(y_pred[:n] == y_true[:n]))
    fig.suptitle(
        f"The first {n} test images, predicted (true): {hits} of {n} right "
        "(green right, red wrong)",
        fontsize=12,
    )
    fig.tight_layout()
    return fig
