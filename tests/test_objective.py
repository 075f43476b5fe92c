"""One trial: the cost guard, the record it keeps, and a real (tiny) training run.

Trials here are real Optuna trials on an SQLite file: asked for, or run by study.optimize
from an enqueued configuration, as a worker runs them.
"""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState

from search.define import presets
from search.define.anatomy import describe, size
from search.define.datasets import Split
from search.define.presets import Preset
from search.define.space import Config, Conv, to_params
from search.run.objective import RUN_RECORD, Objective, record_epoch, trial_seed
from search.train.training import History
from tests.helpers import db_url, write_preset

LAB_9 = Config(convs=(Conv(32, 3, True),), dense=(64,))  # 347,146 parameters


@pytest.fixture
def tiny(tmp_path: Path) -> Preset:
    return presets.load_preset(write_preset(tmp_path))


@pytest.fixture
def sqlite(private_storage: Path) -> str:
    private_storage.mkdir()
    return db_url(private_storage)


def stored(study: optuna.Study, trial: optuna.Trial) -> FrozenTrial:
    """The trial as the storage holds it, read back."""
    return study.get_trials()[trial.number]


def objective(preset: Preset, data: Split, lines: list[str] | None = None) -> Objective:
    return Objective(preset, data, log=(lines if lines is not None else []).append)


def test_an_impossible_network_is_pruned_with_its_reason_before_it_is_counted(
    tiny: Preset, sqlite: str, small_split: Split
) -> None:
    study = optuna.create_study(storage=sqlite)
    trial = study.ask()
    five_by_five = Config(convs=tuple(Conv(8, 5, True) for _ in range(3)))
    with pytest.raises(optuna.TrialPruned):
        objective(tiny, small_split).guard(trial, five_by_five)
    study.tell(trial, state=TrialState.PRUNED)
    record = stored(study, trial)
    assert record.user_attrs["reason"] == (
        "impossible network: conv 3 has a 5x5 kernel but its input map is only 4x4"
    )
    assert "params" not in record.user_attrs  # a size would be meaningless


@pytest.mark.parametrize(
    ("budget", "config", "reason"),
    [
        ({"max_params": 100_000}, LAB_9, "347,146 parameters exceed the budget of 100,000"),
        ({"max_mflops": 1}, LAB_9, "MFLOPs exceed the budget of 1 MFLOPs"),
        (
            {},
            dataclasses.replace(LAB_9, batch_size=10_000_000),
            "training would need about .* GiB, more than 50% of the .* GiB available",
        ),
    ],
    ids=["params", "mflops", "memory"],
)
def test_a_network_over_budget_is_pruned_untrained_with_its_reason(
    tiny: Preset,
    sqlite: str,
    small_split: Split,
    budget: dict[str, int],
    config: Config,
    reason: str,
) -> None:
    study = optuna.create_study(storage=sqlite)
    trial = study.ask()
    with pytest.raises(optuna.TrialPruned, match=reason):
        objective(dataclasses.replace(tiny, **budget), small_split).guard(trial, config)
    study.tell(trial, state=TrialState.PRUNED)
    record = stored(study, trial)
    assert re.fullmatch(f".*{reason}.*", record.user_attrs["reason"])
    # Its size is on record, as the reason quotes it; nothing was trained.
    assert record.user_attrs["params"] == size(config).params
    assert record.user_attrs["mflops"] == round(size(config).flops / 1e6, 3)
    assert not record.intermediate_values


def test_a_network_within_budget_passes_the_guard_with_its_size(
    tiny: Preset, sqlite: str, small_split: Split
) -> None:
    trial = optuna.create_study(storage=sqlite).ask()
    cost = objective(tiny, small_split).guard(trial, LAB_9)
    assert cost == size(LAB_9) and cost.params == 347_146
    assert trial.user_attrs["params"] == 347_146 and "reason" not in trial.user_attrs


def test_each_epoch_is_recorded_and_a_nan_loss_names_the_epoch(sqlite: str) -> None:
    study = optuna.create_study(storage=sqlite)
    trial = study.ask()
    history = History(
        loss=[0.9, 0.6],
        accuracy=[0.6, 0.7],
        val_loss=[0.7, 0.5],
        val_accuracy=[0.75, 0.8],
        seconds=[2.0, 3.0],
    )
    record_epoch(trial, history, 1)
    attrs = trial.user_attrs
    assert (
        attrs["epochs_trained"],
        attrs["best_epoch"],
        attrs["val_loss"],
        attrs["val_accuracy"],
        attrs["seconds_per_epoch"],
    ) == (2, 2, 0.5, 0.8, 2.5)
    assert attrs["curves"] == history.as_dict() and "reason" not in attrs

    history.loss.append(math.nan)
    for key, value in (
        ("accuracy", 0.1),
        ("val_loss", math.nan),
        ("val_accuracy", 0.1),
        ("seconds", 1.0),
    ):
        getattr(history, key).append(value)
    record_epoch(trial, history, 2)
    attrs = trial.user_attrs
    assert attrs["reason"] == (
        "the loss became NaN or infinite at epoch 3; the learning rate is likely too high"
    )
    assert (attrs["epochs_trained"], attrs["best_epoch"], attrs["val_loss"]) == (3, 2, 0.5)


def test_a_retried_trial_starts_its_own_record(tiny: Preset, sqlite: str) -> None:
    study = optuna.create_study(storage=sqlite)
    fresh = study.ask()
    Objective.start_record(fresh, LAB_9, 11)
    assert set(fresh.user_attrs) == {"architecture", "seed", "config"}
    assert fresh.user_attrs["architecture"] == "C32k3-P-F-D64"
    assert Config.from_json(fresh.user_attrs["config"]) == LAB_9

    retry = study.ask()  # what a retry inherits from the trial of a worker that died
    for key, value in (
        ("epochs_trained", 2),
        ("val_loss", 0.4),
        ("reason", "lost"),
        ("curves", {"loss": [1.0]}),
    ):
        retry.set_user_attr(key, value)
    Objective.start_record(retry, LAB_9, 12)
    assert {k: retry.user_attrs[k] for k in RUN_RECORD} == RUN_RECORD
    assert retry.user_attrs["seed"] == 12
    assert trial_seed(tiny, 5) == tiny.seed * 100_003 + 5


def test_a_trial_trains_reports_every_epoch_and_learns(
    tiny: Preset, sqlite: str, small_split: Split
) -> None:
    preset = dataclasses.replace(tiny, epochs=2, patience=2)
    study = optuna.create_study(storage=sqlite)
    study.enqueue_trial(to_params(LAB_9, preset.space))
    lines: list[str] = []
    study.optimize(objective(preset, small_split, lines), n_trials=1)
    trial = study.trials[0]
    attrs = trial.user_attrs
    assert trial.state == TrialState.COMPLETE, attrs.get("reason")
    assert trial.value == attrs["val_loss"]
    assert attrs["val_loss"] == pytest.approx(min(attrs["curves"]["val_loss"]), abs=1e-6)
    assert attrs["val_accuracy"] > 0.5  # chance is 0.1
    assert attrs["architecture"] == describe(LAB_9) and attrs["params"] == 347_146
    assert attrs["seed"] == trial_seed(preset, 0) and attrs["epochs_trained"] == 2
    # The network it trained, as suggested (no dropout, so no rate), to rebuild it later.
    assert Config.from_json(attrs["config"]) == dataclasses.replace(LAB_9, dropout_rate=0.0)
    assert sorted(trial.intermediate_values) == [0, 1]  # val_loss went to the pruner
    assert [line.split(":")[0] for line in lines] == ["  trial 0 epoch 1/2", "  trial 0 epoch 2/2"]


def test_a_size_aware_trial_returns_its_val_loss_and_its_size_unpruned(
    tiny: Preset, sqlite: str, small_split: Split
) -> None:
    preset = dataclasses.replace(tiny, epochs=1, objective="val_loss+params")
    study = optuna.create_study(storage=sqlite, directions=preset.directions)
    starved = preset.baselines[1].config
    study.enqueue_trial(to_params(starved, preset.space))
    study.optimize(objective(preset, small_split), n_trials=1)
    trial = study.trials[0]
    assert trial.state == TrialState.COMPLETE
    assert trial.values == [trial.user_attrs["val_loss"], float(size(starved).params)]
    assert not trial.intermediate_values  # Optuna cannot prune two objectives


def test_a_training_failure_is_recorded_then_fails_the_trial(
    tiny: Preset, sqlite: str, small_split: Split
) -> None:
    # Labels outside the ten classes: TensorFlow refuses them in the first batch.
    broken = Split(
        small_split.x_train[:256],
        np.full(256, 200, dtype=np.uint8),
        small_split.x_val[:256],
        small_split.y_val[:256],
    )
    preset = dataclasses.replace(tiny, epochs=1)
    study = optuna.create_study(storage=sqlite)
    study.enqueue_trial(to_params(LAB_9, preset.space))
    study.optimize(objective(preset, broken), n_trials=1, catch=(Exception,))
    trial = study.trials[0]
    assert trial.state == TrialState.FAIL
    assert trial.user_attrs["reason"].startswith("training failed: InvalidArgumentError: ")
    assert len(trial.user_attrs["reason"]) <= 500
