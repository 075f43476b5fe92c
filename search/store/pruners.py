"""A pruner for searches of a few dozen long trials: stop a trial only when it is far behind.

Hyperband judges a trial within its bracket and keeps about a third at each rung. With the few
trials a search of hours holds, the first brackets have no peers (a trial at 70 % accuracy once
trained all its epochs), while its rungs stopped networks with batch norm or augmentation
after four epochs, when they still trailed plain networks that learn faster early. Optuna's
percentile and median pruners compare with completed trials only and cut a fixed share, so
slow starters go too.

:class:`Behind` compares a trial with every other trial that has trained as long, as soon as
two have, and stops it only when its best val_loss is a multiple of the best of theirs.
"""

from __future__ import annotations

import math

import optuna
from optuna.trial import FrozenTrial, TrialState

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
