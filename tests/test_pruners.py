"""The "behind" pruner: a trial stops only when it is far behind others that trained as long."""

from __future__ import annotations

import math

import optuna
import pytest

from search.store.pruners import Behind


def curve(study: optuna.Study, values: list[float]) -> optuna.trial.Trial:
    """A trial that reported `values`, one an epoch (steps from 0), and is still running."""
    trial = study.ask()
    for step, value in enumerate(values):
        trial.report(value, step)
    return trial


def done(study: optuna.Study, values: list[float]) -> None:
    trial = curve(study, values)
    study.tell(trial, min(values))


@pytest.fixture
def study() -> optuna.Study:
    s = optuna.create_study(pruner=Behind(ratio=1.5, min_epochs=3))
    done(s, [0.60, 0.40, 0.30, 0.28, 0.27])  # best by the 3rd epoch: 0.30
    done(s, [0.50, 0.45, 0.35, 0.33])  # best by the 3rd epoch: 0.35
    return s


def test_a_trial_far_behind_its_peers_stops_from_the_first_epoch_judged(
    study: optuna.Study,
) -> None:
    far = curve(study, [1.8, 1.3])
    assert not far.should_prune()  # the 2nd epoch is before min_epochs
    far.report(1.2, 2)
    assert far.should_prune()  # 1.2 > 1.5 x 0.30


def test_a_slow_starter_close_behind_trains_on(study: optuna.Study) -> None:
    slow = curve(study, [0.9, 0.6, 0.41])  # 0.41 <= 1.5 x 0.30
    assert not slow.should_prune()
    slow.report(0.46, 3)  # worse this epoch, but its best (0.41 <= 1.5 x 0.28) is what counts
    assert not slow.should_prune()


def test_it_compares_only_with_trials_that_trained_as_long(study: optuna.Study) -> None:
    late = curve(study, [0.9, 0.8, 0.7, 0.6, 0.5])
    # By the 5th epoch only the first trial is there (0.27): one peer is too few to judge by.
    assert not late.should_prune()
    done(study, [0.9, 0.5, 0.4, 0.3, 0.26])
    assert late.should_prune()  # 0.5 > 1.5 x 0.26, with two peers of five epochs


def test_a_trial_whose_loss_is_not_a_number_stops(study: optuna.Study) -> None:
    assert curve(study, [math.nan, math.nan, math.nan]).should_prune()
    assert not curve(study, [math.nan, 0.5, 0.4]).should_prune()  # a finite best counts


def test_the_ratio_must_exceed_one() -> None:
    with pytest.raises(ValueError, match="ratio must exceed 1"):
        Behind(ratio=1.0, min_epochs=3)
