"""The pruners: "behind" stops a trial only when it is far behind others that trained as
long; the ladder (asha) lets the first trials at a rung wait for peers and climb later."""

from __future__ import annotations

import math

import optuna
import pytest

from search.store.pruners import Behind, Ladder, promotable
from search.store.trials import INTERRUPTED


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


# ---------------------------------------------------------------------------------------------
# The ladder (asha): trials wait at a rung for peers, and climb later when they are among the best
# ---------------------------------------------------------------------------------------------
def look(study: optuna.Study, value: float, **attrs: object) -> optuna.trial.FrozenTrial:
    """A trial that reported `value` at the first rung (step 1); it climbs to its full run
    (complete) where the ladder keeps it, else it stops there (pruned)."""
    trial = study.ask()
    for key, v in attrs.items():
        trial.set_user_attr(key, v)
    trial.report(value, 1)
    if trial.should_prune():
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    else:
        study.tell(trial, value)
    return study.get_trials(deepcopy=False)[trial.number]


def test_the_first_trials_at_a_rung_wait_for_peers_and_the_best_climb_later() -> None:
    ladder = Ladder([1, 3], reduction=3)
    s = optuna.create_study(pruner=ladder)
    PRUNED, COMPLETE = optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.COMPLETE
    # Optuna's successive halving would promote the first trial, unjudged; here it waits.
    first = look(s, 0.50)
    assert first.state == PRUNED
    assert look(s, 0.90).state == PRUNED  # two at the rung: still no third to beat
    assert ladder.due(s.get_trials()) == []  # nor is the first one due: too few peers
    assert look(s, 0.40).state == COMPLETE  # the best of three climbs at once
    assert ladder.due(s.get_trials()) == []  # 0.50 is second of three: one in three climbs
    for value in (0.80, 0.70):
        assert look(s, value).state == PRUNED  # third and fourth of five
    assert look(s, 0.95).state == PRUNED
    # Six at the rung: one in three of six is two, and the first is now second.
    assert [t.number for t in ladder.due(s.get_trials())] == [first.number]
    # Its continuation repeats its value at the rung, and counts as the same configuration.
    resumed = look(s, 0.50, resumes=first.number, origin=first.number)
    assert resumed.state == COMPLETE
    assert ladder.due(s.get_trials()) == []
    # A continuation stopped by Ctrl-C leaves the climb to be queued again; one that failed
    # for a reason of its own (a training error) does not, or it would fail again and again.
    s2 = optuna.create_study(pruner=Ladder([1], reduction=3))
    waiting = look(s2, 0.1)
    for value in (0.5, 0.6):
        look(s2, value)
    (due,) = Ladder([1], reduction=3).due(s2.get_trials())
    assert due.number == waiting.number
    cut = s2.ask()
    cut.set_user_attr("resumes", waiting.number)
    cut.set_user_attr("reason", INTERRUPTED)
    s2.tell(cut, state=optuna.trial.TrialState.FAIL)
    assert [t.number for t in Ladder([1], reduction=3).due(s2.get_trials())] == [waiting.number]
    broke = s2.ask()
    broke.set_user_attr("resumes", waiting.number)
    broke.set_user_attr("reason", "training failed: ValueError: no")
    s2.tell(broke, state=optuna.trial.TrialState.FAIL)
    assert Ladder([1], reduction=3).due(s2.get_trials()) == []


def test_a_rejected_or_diverged_trial_never_climbs_and_nan_counts_as_the_worst() -> None:
    ladder = Ladder([1], reduction=2)
    s = optuna.create_study(pruner=ladder)
    diverged = look(s, math.nan)
    assert diverged.state == optuna.trial.TrialState.PRUNED
    rejected = look(s, 0.2, reason="over the budget")  # a reason rules it out of climbing
    assert rejected.state == optuna.trial.TrialState.COMPLETE  # best of two: kept at once
    look(s, 0.3)
    look(s, 0.4)
    due = [t.number for t in ladder.due(s.get_trials())]
    assert diverged.number not in due and due == [2]  # 0.3: second of four, in the best half
    assert promotable({0: math.inf, 1: 0.5}, 1, 2) and not promotable({0: math.inf, 1: 0.5}, 0, 2)
