"""The report's arithmetic on trials made in memory: no training, no CLI, no storage."""

from __future__ import annotations

from typing import Any

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import FrozenTrial, TrialState

from search.define.anatomy import describe
from search.define.presets import Preset
from search.define.space import Config, Conv, Space
from search.report import analysis
from search.store.trials import best

LAB_9 = Config(convs=(Conv(32, 3, True),), dense=(64,))
STARVED = Config(convs=(Conv(8, 5, True),), dense=(32,), learning_rate=1e-4)
WIDE = Config(
    convs=(Conv(32, 3, True), Conv(64, 3, False)),
    dense=(128, 64),
    dropout="both",
    dropout_rate=0.25,
    batchnorm=True,
    padding="same",
    optimizer="adam",
    learning_rate=0.003,
    batch_size=128,
)
DISTRIBUTIONS = {
    "learning_rate": FloatDistribution(1e-4, 1e-2, log=True),
    "filters_1": CategoricalDistribution((8, 16, 32, 64)),
}
PRESET = Preset(name="unit", dataset="fashion_mnist", space=Space(), epochs=10, patience=2)


def make_trial(
    state: TrialState,
    config: Config | None,
    *,
    losses: tuple[float, ...] = (),
    best_epoch: int | None = None,
    **attrs: Any,
) -> FrozenTrial:
    """A trial as search/run/objective.py records it, having trained one epoch per loss."""
    record: dict[str, Any] = {"epochs_trained": len(losses)}
    if config is not None:
        record.update(
            architecture=describe(config),
            config=config.to_json(),
            seed=7,
            params=10_000 * config.convs[0].filters,
            mflops=1.5,
        )
    if losses:
        best_epoch = best_epoch or 1 + losses.index(min(losses))
        record.update(
            best_epoch=best_epoch,
            val_loss=losses[best_epoch - 1],
            val_accuracy=1 - losses[best_epoch - 1] / 2,
            seconds_per_epoch=3.0,
            curves={"val_loss": list(losses)},
        )
    record.update(attrs)
    params = (
        {"learning_rate": config.learning_rate, "filters_1": config.convs[0].filters}
        if config is not None
        else {}
    )
    return optuna.trial.create_trial(
        state=state,
        value=record.get("val_loss") if state == TrialState.COMPLETE else None,
        params=params,
        distributions={k: DISTRIBUTIONS[k] for k in params},
        user_attrs=record,
        intermediate_values=dict(enumerate(losses)),
    )


def lab_study() -> optuna.Study:
    """Two lab runs, three of the search's, and the three kinds of pruned trial."""
    study = optuna.create_study(direction="minimize")
    for trial in (
        make_trial(TrialState.COMPLETE, LAB_9, losses=(0.5, 0.4, 0.42), baseline="lab test 9"),
        # Stopped by the pruner after 2 of 10 epochs, its best at epoch 1.
        make_trial(TrialState.PRUNED, STARVED, losses=(1.2, 1.3), baseline="starved"),
        make_trial(TrialState.COMPLETE, WIDE, losses=(0.45, 0.31, 0.35)),
        make_trial(TrialState.COMPLETE, LAB_9, losses=(0.6, 0.55)),
        # Rejected with a reason, after one epoch (NaN) and before any (cost guard).
        make_trial(TrialState.PRUNED, WIDE, losses=(0.9,), reason="the loss became NaN"),
        make_trial(TrialState.PRUNED, WIDE, reason="too many parameters"),
        # Pruned before it trained, with no configuration on record.
        make_trial(TrialState.PRUNED, None),
        # Stopped by the pruner after 9 epochs, its best at epoch 8: at most one epoch saved.
        make_trial(TrialState.PRUNED, STARVED, losses=(1.0,) * 7 + (0.8, 0.9)),
    ):
        study.add_trial(trial)
    return study


@pytest.fixture(scope="module")
def study() -> optuna.Study:
    return lab_study()


def test_pruned_by_pruner_tells_the_pruner_from_rejections(study: optuna.Study) -> None:
    trials = study.get_trials()
    assert [analysis.pruned_by_pruner(t) for t in trials] == [
        False,
        True,
        False,
        False,
        False,
        False,
        False,
        True,
    ]
    assert [t.number for t in analysis.complete(study)] == [0, 2, 3]


def test_the_best_trial_is_the_completed_one_of_lowest_val_loss(study: optuna.Study) -> None:
    # Trial 4 reached 0.9 and trial 1 never went below 1.2, but only completed trials count.
    top = best(study)
    assert top is not None and top.number == 2
    assert analysis.value_target(top) == pytest.approx(0.31)
    assert best(optuna.create_study()) is None


def test_config_of_is_lenient_where_the_study_s_parser_raises(study: optuna.Study) -> None:
    trials = study.get_trials()
    assert analysis.config_of(trials[2]) == WIDE
    assert analysis.config_of(trials[6]) is None  # no stored configuration
    broken = optuna.trial.create_trial(
        state=TrialState.COMPLETE, value=0.5, user_attrs={"config": '{"convs": [[32, 3'}
    )
    assert analysis.config_of(broken) is None
    impossible = Config(convs=(Conv(8, 5, True),) * 4)  # 28 px cannot take four 5x5 + pool
    assert analysis.config_of(make_trial(TrialState.PRUNED, impossible)) is None


def test_the_table_shows_the_lab_s_runs_and_the_best_of_the_search(study: optuna.Study) -> None:
    assert [t.number for t in analysis.table_trials(study)] == [2, 0, 3, 1]
    rows = {r.run: r for r in analysis.table_rows(study)}
    assert list(rows) == [
        "search #2",
        "lab: lab test 9 (#0)",
        "search #3",
        "lab: starved (#1), pruned",
    ]
    assert " | ".join(rows["lab: lab test 9 (#0)"].cells()) == (
        "lab: lab test 9 (#0) | 1 | 32 | 3x3 | after conv 1 | none | 64 | 0.4000 | 80.00 % | "
        "320,000 | 3 (best 2) | lr 0.001"
    )
    starved = rows["lab: starved (#1), pruned"]
    assert [starved.kernel, starved.val_loss, starved.epochs] == ["5x5", "1.2000", "2 (best 1)"]
    assert starved.other == "lr 0.0001"
    wide = rows["search #2"]
    assert [wide.layers, wide.filters, wide.pooling, wide.dense] == [
        "2",
        "32-64",
        "after conv 1",
        "128-64",
    ]
    assert wide.dropout == "0.25 after each pooled block and after Flatten"
    assert wide.other == "lr 0.003, Adam, batch norm, same padding, batch 128"


def test_the_table_takes_the_search_s_five_best_only() -> None:
    study = optuna.create_study()
    for i in range(8):
        study.add_trial(make_trial(TrialState.COMPLETE, LAB_9, losses=(1.0 - i / 10,)))
    assert [t.number for t in analysis.table_trials(study)] == [7, 6, 5, 4, 3]


def test_dropout_and_other_settings_are_described() -> None:
    assert analysis.describe_dropout(LAB_9) == "none"
    assert (
        analysis.describe_dropout(Config(convs=LAB_9.convs, dropout="flatten", dropout_rate=0.0))
        == "none"
    )
    assert (
        analysis.describe_dropout(Config(convs=LAB_9.convs, dropout="blocks", dropout_rate=0.3))
        == "0.3 after each pooled block"
    )
    recipe = Config(
        convs=LAB_9.convs,
        augment="flip",
        optimizer="adamw",
        weight_decay=1e-4,
        schedule="cosine",
        label_smoothing=0.1,
    )
    assert analysis.describe_other(recipe) == (
        "lr 0.001, AdamW, augmentation (flip), weight decay 0.0001, cosine schedule, "
        "label smoothing 0.1"
    )


def test_savings_bound_the_epochs_the_pruner_saved(study: optuna.Study) -> None:
    s = analysis.savings(study, PRESET)
    assert (s.pruned, s.trained_by_pruned) == (2, 11)
    # Trial 1: best epoch 1 + patience 2 = 3, trained 2 -> at least 1; limit 10 -> at most 8.
    # Trial 7: best epoch 8 + patience 2 = 10, trained 9 -> at least 1 and at most 1.
    assert (s.at_least, s.at_most) == (2, 9)
    assert (s.seconds_at_least, s.seconds_at_most) == (6.0, 27.0)
    assert s.trained_in_all == 3 + 2 + 3 + 2 + 1 + 0 + 0 + 9
    assert s.rejected == 2  # the cost guard's and the one with no configuration
    assert (s.epochs_limit, s.patience) == (10, 2)
    assert s.share(s.at_most) == pytest.approx(9 / (20 + 9))
    assert analysis.savings(optuna.create_study(), PRESET).share(0) == 0.0


def test_numbers_are_written_as_the_report_writes_them() -> None:
    assert analysis.pct(0.9070) == "90.70 %" and analysis.pct(None) == "-"
    assert analysis.num(0.123456) == "0.1235" and analysis.num(1234567, ",d") == "1,234,567"
    assert analysis.count(1, "epoch") == "1 epoch" and analysis.count(1200, "trial") == (
        "1,200 trials"
    )
    assert [analysis.span(s) for s in (89, 90, 5399, 5400)] == [
        "89 s",
        "2 min",
        "90 min",
        "1.5 h",
    ]
