"""Pruners: one for searches of a few dozen long trials, one for a ladder of short runs.

Hyperband judges a trial within its bracket and keeps about a third at each rung. With the few
trials a search of hours holds, the first brackets have no peers (a trial at 70 % accuracy once
trained all its epochs), while its rungs stopped networks with batch norm or augmentation
after four epochs, when they still trailed plain networks that learn faster early. Optuna's
percentile and median pruners compare with completed trials only and cut a fixed share, so
slow starters go too.

:class:`Behind` compares a trial with every other trial that has trained as long, as soon as
two have, and stops it only when its best val_loss is a multiple of the best of theirs.

:class:`Ladder` is asynchronous successive halving over a preset's rungs in which a trial
stopped at a rung can climb later, when more peers have made it one of the best (ASHA).
"""

from __future__ import annotations

import math

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.store.trials import INTERRUPTED, ORIGIN, RESUMES

_OTHERS = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)


def _best_by(trial: FrozenTrial, step: int) -> float:
    """The lowest value `trial` reported up to `step` (NaN counts as the worst)."""
    values = [v for s, v in trial.intermediate_values.items() if s <= step]
    finite = [v for v in values if math.isfinite(v)]
    return min(finite) if finite else math.inf


class Behind(optuna.pruners.BasePruner):
    """Prune when a trial's best value so far exceeds `ratio` times the best any other had.

    The comparison is made at each epoch from `min_epochs` on (reported steps count from 0),
    against the best value each other trial had reported by the same epoch, among trials that
    trained at least that long; with fewer than `min_trials` of them, nothing is pruned.
    The values are minimised and positive (a loss).
    """

    def __init__(self, *, ratio: float, min_epochs: int, min_trials: int = 2) -> None:
        if ratio <= 1:
            raise ValueError(f"ratio must exceed 1, got {ratio}")
        self.ratio = ratio
        self.min_epochs = min_epochs
        self.min_trials = min_trials

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None or step + 1 < self.min_epochs:
            return False
        mine = _best_by(trial, step)
        if mine == math.inf:
            return True  # every value so far is NaN or infinite: the network diverged
        others = [
            _best_by(t, step)
            for t in study.get_trials(deepcopy=False, states=_OTHERS)
            if t.number != trial.number and t.last_step is not None and t.last_step >= step
        ]
        if len(others) < self.min_trials:
            return False
        return mine > self.ratio * min(others)


# ---------------------------------------------------------------------------------------------
# The ladder: asynchronous successive halving whose waiting trials climb later (ASHA)
# ---------------------------------------------------------------------------------------------
def origin(trial: FrozenTrial) -> int:
    """The number of the trial whose first look began this configuration's climb."""
    return int(trial.user_attrs.get(ORIGIN, trial.number))


def _loss(value: float) -> float:
    return value if math.isfinite(value) else math.inf


def _best(trial: FrozenTrial) -> float:
    """The value a trial reported last (NaN counts as the worst)."""
    step = trial.last_step
    return math.inf if step is None else _loss(trial.intermediate_values[step])


def rung_values(trials: list[FrozenTrial], step: int) -> dict[int, float]:
    """The value each configuration reported at `step`, one per climb (a continuation repeats
    its first look's values, and counts once)."""
    return {
        origin(t): _loss(t.intermediate_values[step])
        for t in trials
        if t.state in _OTHERS and step in t.intermediate_values
    }


def promotable(values: dict[int, float], climber: int, reduction: int) -> bool:
    """Whether configuration `climber` is among the best 1/reduction of its rung's `values`.

    With fewer than `reduction` values at the rung, none is: a trial waits for peers, where
    Optuna's successive halving promotes the first trial to reach each rung whatever it scored.
    """
    mine = values[climber]
    if mine == math.inf:
        return False
    better = sum(v < mine for v in values.values())
    return better < len(values) // reduction


class Ladder(optuna.pruners.BasePruner):
    """Successive halving over a ladder of complete short runs, asynchronous, as in ASHA.

    A trial reports each rung's best val_loss at that rung's step and climbs on at once if it
    is among the best 1/`reduction` of the configurations that have reached the rung. If not
    it stops there, pruned, and waits: :meth:`due` finds the stopped trials that more peers
    have since made promotable, and the worker loop queues a continuation of each, which
    carries the configuration's rungs over and trains on from the next one. So the first
    trials to reach a rung wait for peers instead of climbing unjudged, and a configuration
    judged early against few is judged again against many.
    """

    def __init__(self, steps: list[int], reduction: int) -> None:
        if reduction < 2:
            raise ValueError(f"reduction must be at least 2, got {reduction}")
        self.steps = list(steps)
        self.reduction = reduction

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        step = trial.last_step
        if step is None or step not in self.steps:
            return False
        values = rung_values(study.get_trials(deepcopy=False, states=_OTHERS), step)
        values[origin(trial)] = _loss(trial.intermediate_values[step])
        return not promotable(values, origin(trial), self.reduction)

    def due(self, trials: list[FrozenTrial]) -> list[FrozenTrial]:
        """The trials stopped at a rung that are promotable now and have no continuation yet,
        best first; trials rejected, diverged or failed are not among them."""
        continued = {
            int(t.user_attrs[RESUMES])
            for t in trials
            if RESUMES in t.user_attrs
            and not (t.state == TrialState.FAIL and t.user_attrs.get("reason") == INTERRUPTED)
        }
        found = []
        for t in trials:
            step = t.last_step
            if (
                t.state != TrialState.PRUNED
                or t.user_attrs.get("reason")
                or t.number in continued
                or step not in self.steps
            ):
                continue
            values = rung_values(trials, step)
            if origin(t) in values and promotable(values, origin(t), self.reduction):
                found.append(t)
        # The highest rung first, since its climb is nearest a result; then the best value.
        return sorted(found, key=lambda t: (-self.steps.index(t.last_step or 0), _best(t)))


def climbs_left(study: optuna.Study) -> bool:
    """Whether a configuration of a ladder study still waits to climb on: a continuation is
    queued, or a trial stopped at a rung is among the best there now (Ladder.due). Such a
    study has work left after its total, which counts configurations."""
    ladder = study.pruner
    if not isinstance(ladder, Ladder):
        return False
    trials = study.get_trials(deepcopy=False)
    queued = any(t.state == TrialState.WAITING and RESUMES in t.user_attrs for t in trials)
    return queued or bool(ladder.due(trials))
