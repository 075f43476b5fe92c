"""`search report`: figures of a study and REPORT.md, the search set beside the lab's own runs.

The search figures come from the stored trials alone. Only after `retrain-best` does the report
read the test set, to draw the saved final model's confusion matrix and a grid of its
predictions; the search itself never does.

What the trials say is worked out in `search.report.analysis`, and the figures are drawn in
`search.report.figures`; this module writes them and REPORT.md into the report folder.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import optuna
from optuna.trial import TrialState

from search.define import datasets
from search.define.presets import Preset
from search.errors import TRAIN_IMAGES, Log, SearchError, first_line
from search.report.analysis import (
    TOP,
    Row,
    count,
    pct,
    savings,
    span,
    table_rows,
    value_target,
)
from search.report.figures import (
    CONFUSION,
    CURVES,
    FINAL_FIGURES,
    HISTORY,
    IMPORTANCES,
    INTERMEDIATE,
    PARALLEL,
    PREDICTIONS,
    SEARCH_FIGURES,
    SIZE,
    Skip,
    fig_history,
    fig_importances,
    fig_intermediate,
    fig_parallel,
    fig_size,
    save,
)
from search.report.final_figures import fig_confusion, fig_curves, fig_predictions
from search.store import storage as storage_mod
from search.store.trials import METRIC, best, counts

if TYPE_CHECKING:
    from matplotlib.figure import Figure


class ReportError(SearchError):
    """The report cannot be written; the message says why."""


@dataclass
class Report:
    folder: Path
    markdown: Path
    figures: list[Path] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # file name -> why it is not drawn


def report_dir(study_name: str) -> Path:
    """storage/reports/STUDY/, with the study name made safe as a folder name."""
    return storage_mod.home() / "reports" / storage_mod.safe_name(study_name)


# ---------------------------------------------------------------------------------------------
# The figures, drawn into the report folder
# ---------------------------------------------------------------------------------------------
@dataclass
class _Canvas:
    """The report being written: each figure is drawn into its folder, or said to be skipped."""

    report: Report
    log: Log

    def skip(self, name: str, why: str) -> None:
        why = why.rstrip(".")  # REPORT.md and the log add their own full stop
        self.report.skipped[name] = why
        # A figure from an earlier report would mislead.
        (self.report.folder / name).unlink(missing_ok=True)
        self.log(f"  {name}: not drawn, {why}")

    def draw(self, name: str, make: Callable[[], Figure]) -> None:
        path = self.report.folder / name
        try:
            fig = make()
        except Skip as why:
            self.skip(name, str(why))
            return
        try:
            save(fig, path)
        except OSError as e:
            raise ReportError(f"Cannot write {path}: {e.strerror}.") from None
        self.report.figures.append(path)
        self.log(f"  {name}")


def _predict(
    record: dict[str, Any], dataset: str, data_dir: Path | None, log: Log
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The saved final model's predictions on the test set; the only read of it here."""
    from search.train.network import load_model

    path = Path(record["model_path"])
    if not path.is_file():
        raise Skip(f"the final model is not at {path}; rerun 'search retrain-best'")
    log(f"  reading the test set to test {path.name} for the final model's figures")
    try:
        model = load_model(path)
    except Exception as e:  # Keras reports a damaged file in several exception types
        raise Skip(
            f"the final model at {path} cannot be read "
            f"({first_line(e, type(e).__name__)}); rerun 'search retrain-best'"
        ) from None
    try:
        x_test, y_test = datasets.load_test(dataset, data_dir)
    except datasets.DataError as e:
        raise Skip(f"the test set cannot be read: {e}") from None
    probabilities = model.predict(x_test, batch_size=1024, verbose=0)
    return x_test, y_test.astype(int), np.argmax(probabilities, axis=1)


def _draw_search(canvas: _Canvas, study: optuna.Study) -> None:
    canvas.draw(HISTORY, lambda: fig_history(study))
    canvas.draw(INTERMEDIATE, lambda: fig_intermediate(study))
    canvas.draw(IMPORTANCES, lambda: fig_importances(study))
    canvas.draw(PARALLEL, lambda: fig_parallel(study))
    canvas.draw(SIZE, lambda: fig_size(study))


def _draw_final(
    canvas: _Canvas,
    study: optuna.Study,
    preset: Preset,
    record: dict[str, Any] | None,
    data_dir: Path | None,
) -> str:
    """The final model's figures; returns a note for REPORT.md if its file scores otherwise."""
    if not record:
        for name in FINAL_FIGURES:
            canvas.skip(
                name,
                f"the study has not been retrained; run 'search retrain-best "
                f"--study {study.study_name}' and then this report again",
            )
        return ""
    names = datasets.info(preset.dataset).class_names
    canvas.draw(CURVES, lambda: fig_curves(study, record))
    try:
        x_test, y_test, y_pred = _predict(record, preset.dataset, data_dir, canvas.log)
    except Skip as why:
        canvas.skip(CONFUSION, str(why))
        canvas.skip(PREDICTIONS, str(why))
        return ""
    canvas.draw(CONFUSION, lambda: fig_confusion(y_test, y_pred, names))
    canvas.draw(PREDICTIONS, lambda: fig_predictions(x_test, y_test, y_pred, names))
    again = float(np.mean(y_pred == y_test))
    if abs(again - record["test_accuracy"]) > 5e-4:
        return (
            f" The saved model scores {again:.2%} now, not the recorded "
            f"{record['test_accuracy']:.2%}: the model file has changed since."
        )
    return ""


def write_report(
    study: optuna.Study,
    preset: Preset,
    out_dir: Path,
    *,
    data_dir: Path | None = None,
    log: Log = print,
) -> Report:
    """Draw every figure that the study's state allows and write REPORT.md beside them."""
    trials = study.get_trials(deepcopy=False)
    if not any(t.intermediate_values or t.state == TrialState.COMPLETE for t in trials):
        raise ReportError(
            f"Study '{study.study_name}' has no trial that trained an epoch yet; "
            "run 'search start' first."
        )
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ReportError(f"Cannot create the report folder {out_dir}: {e.strerror}.") from None
    report = Report(folder=out_dir, markdown=out_dir / "REPORT.md")
    canvas = _Canvas(report, log)
    _draw_search(canvas, study)
    record = study.user_attrs.get("retrain")
    test_note = _draw_final(canvas, study, preset, record, data_dir)
    text = markdown(study, preset, report, record, test_note)
    try:
        report.markdown.write_text(text)
    except OSError as e:
        raise ReportError(f"Cannot write {report.markdown}: {e.strerror}.") from None
    return report


# ---------------------------------------------------------------------------------------------
# REPORT.md, a section a function
# ---------------------------------------------------------------------------------------------
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


def markdown(
    study: optuna.Study,
    preset: Preset,
    report: Report,
    record: dict[str, Any] | None,
    test_note: str,
) -> str:
    out = (
        _summary(study, preset)
        + _table_section(study)
        + _pruning_section(study, preset)
        + _test_section(study, preset, record, test_note)
        + _ensemble_section(study.user_attrs.get("ensemble"))
        + _ensemble_section(study.user_attrs.get("ensemble_best"))
        + _figures_section(report)
    )
    return "\n".join(out).rstrip() + "\n"


def _section(title: str, body: list[str]) -> list[str]:
    return ["", f"## {title}", "", *body]


def _summary(study: optuna.Study, preset: Preset) -> list[str]:
    """The title, how every trial was trained, the trials' states and the best trial."""
    n = counts(study)
    train_images = preset.train_size or TRAIN_IMAGES - preset.val_size
    state_line = ", ".join(f"{v} {k.lower()}" for k, v in n.items() if v)
    out: list[str] = [
        f"# Study `{study.study_name}`",
        "",
        f"Dataset **{preset.dataset}**, preset `{preset.name}`, "
        + (
            "objectives val_loss and parameters, no pruning. "
            if preset.multi_objective
            else f"pruner {preset.pruner}. "
        )
        + f"Each trial trained on {train_images:,} images and validated on the first "
        f"{preset.val_size:,} training images, for at most {preset.epochs} epochs with early "
        f"stopping (patience {preset.patience}). The objective is the best epoch's {METRIC}, "
        "minimised.",
        "",
        f"Trials: {state_line}. Written {datetime.now(UTC):%Y-%m-%d %H:%M} UTC.",
    ]
    if n["RUNNING"]:
        out.append(f"{count(n['RUNNING'], 'trial')} still running: this is a snapshot.")
    top = best(study)
    if top is not None:
        a = top.user_attrs
        out += [
            "",
            f"**Best trial: #{top.number}** `{a.get('architecture', '')}`, {METRIC} "
            f"{value_target(top):.4f}, val_accuracy {pct(a.get('val_accuracy'))}, "
            f"{a.get('params', 0):,} parameters, best epoch {a.get('best_epoch')}.",
        ]
    return out


def markdown_table(rows: list[Row]) -> str:
    lines = [
        "| " + " | ".join(Row.HEADER) + " |",
        "|"
        + "|".join(
            "---:" if h in ("layers", "val_loss", "val_accuracy", "params") else "---"
            for h in Row.HEADER
        )
        + "|",
    ]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in r.cells()) + " |" for r in rows]
    return "\n".join(lines)


def _table_section(study: optuna.Study) -> list[str]:
    rows = table_rows(study)
    if not rows:
        body = ["No trial has a stored configuration yet."]
    else:
        body = [
            f"The lab's own configurations ran in this study as its first trials, on the same "
            f"data and budget as every other trial, so each row is measured the same way. Rows "
            f"are the lab's runs and the search's {TOP} best completed trials, by {METRIC}. "
            "val_loss and val_accuracy are at each trial's best epoch; for a pruned trial, at "
            "its best epoch before it was stopped.",
            "",
            markdown_table(rows),
        ]
    return _section("The search against the lab's configurations", body)


def _pruning_section(study: optuna.Study, preset: Preset) -> list[str]:
    s = savings(study, preset)
    if not s.pruned:
        body = [
            f"The pruner stopped no trial after training began "
            f"({count(s.trained_in_all, 'epoch')} trained in all), so it saved nothing here."
        ]
    else:
        head = (
            f"The pruner stopped **{count(s.pruned, 'trial')}** after "
            f"{count(s.trained_by_pruned, 'epoch')} in all; the study trained "
            f"{count(s.trained_in_all, 'epoch')} in all. Without the pruner, each of these "
            f"trials would have trained on until early stopping (patience {s.patience}) or "
            f"the limit of {s.epochs_limit} epochs. Where they would have stopped is "
            "unknown, so the saving is bounded: at least the epochs up to each trial's "
            "earliest possible early stop (its best epoch so far plus the patience, had "
            "val_loss never improved again), at most the epochs up to the limit."
        )
        if s.at_least == s.at_most:
            tail = (
                f"Here both bounds agree: pruning saved **{count(s.at_most, 'epoch')}**, "
                f"{s.share(s.at_most):.0%} of the epochs the study would otherwise have "
                f"trained (about {span(s.seconds_at_most)}"
            )
        else:
            tail = (
                f"Pruning saved at least **{count(s.at_least, 'epoch')}** and at most "
                f"**{count(s.at_most, 'epoch')}**, {s.share(s.at_least):.0%} to "
                f"{s.share(s.at_most):.0%} of the epochs the study would otherwise have "
                f"trained (about {span(s.seconds_at_least)} to "
                f"{span(s.seconds_at_most)}"
            )
        body = [f"{head} {tail} at those trials' own measured seconds per epoch)."]
    if s.rejected:
        body += [
            "",
            f"Besides, {count(s.rejected, 'configuration')} ended before training (an "
            "impossible network, the cost guard or memory), each of which would otherwise "
            f"have trained for up to {s.epochs_limit} epochs; these are not counted above.",
        ]
    return _section("What pruning saved", body)


def _test_section(
    study: optuna.Study, preset: Preset, record: dict[str, Any] | None, test_note: str
) -> list[str]:
    lab = datasets.info(preset.dataset).lab_test_accuracy
    if not record:
        return _section(
            "Final test accuracy",
            [
                f"Not retrained yet: run `search retrain-best --study {study.study_name}` and "
                f"then this report again. The lab's final test accuracy was {pct(lab)}."
            ],
        )
    delta = (record["test_accuracy"] - lab) * 100
    body = [
        f"Trial #{record['trial']} `{record['architecture']}` ({record['params']:,} "
        f"parameters), retrained from scratch on {record['train_images']:,} training images "
        f"for {record['epochs']} epochs (seed {record['seed']}), then tested once on the "
        f"test set:\n\n"
        f"| | test accuracy |\n|---|---:|\n"
        f"| this study's final model | **{pct(record['test_accuracy'])}** |\n"
        f"| the lab's final model | {pct(lab)} |\n\n"
        f"That is {delta:+.2f} points against the lab (test loss {record['test_loss']:.4f})."
        + test_note
    ]
    if record["train_images"] < TRAIN_IMAGES:
        body.append(
            f"\nThe lab trained its final model on all {TRAIN_IMAGES:,} training images; "
            f"this one saw {record['train_images']:,}, as the preset asks."
        )
    return _section("Final test accuracy", body)


def _ensemble_section(record: dict[str, Any] | None) -> list[str]:
    """`retrain-best --ensemble K`: each member's test accuracy beside the average's."""
    if not record:
        return []
    lines = ["| model | params | epochs | test accuracy |", "|---|---:|---:|---:|"]
    for m in record["members"]:
        seed = f", seed {m['seed']}" if "seed" in m else ""  # recorded since --members
        lines.append(
            f"| trial #{m['trial']} `{m['architecture']}`{seed} | {m['params']:,} | "
            f"{m['epochs']} | {pct(m['test_accuracy'])} |"
        )
    lines.append(
        f"| **the ensemble** (softmax averaged) | {record['params']:,} | | "
        f"**{pct(record['test_accuracy'])}** |"
    )
    k = len(record["members"])
    budget = record.get("max_params")
    fit = f" whose parameters fit {budget:,} together" if budget else ""
    who = (
        f"The best trial, trained {k} times with {k} seeds"
        + (f" (its copies fit {budget:,} parameters together)" if budget else "")
        if record.get("members_of") == "best"
        else f"The {k} best distinct trials{fit}"
    )
    title = f"Ensemble of {k}" + (" seeds" if record.get("members_of") == "best" else "")
    return _section(
        title,
        [
            f"{who}, retrained and tested as above; the saved model averages their outputs.",
            "",
            *lines,
        ],
    )


def _figures_section(report: Report) -> list[str]:
    body: list[str] = []
    for name in SEARCH_FIGURES + FINAL_FIGURES:
        if name in report.skipped:
            body.append(f"- `{name}` is not drawn: {report.skipped[name]}.")
        else:
            body += [f"### {CAPTIONS[name]}", "", f"![{CAPTIONS[name]}]({name})", ""]
    return _section("Figures", body)
