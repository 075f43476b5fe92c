"""A study's trials and its run records: counts, the trained, the best, the trial total and
the deadline, and the network a trial trained.

Reads and writes a study that exists; creating, resuming and opening one is study.py's.
"""

from __future__ import annotations

import copy
import time
import warnings
from collections.abc import Iterable

import optuna
import sqlalchemy
from optuna.storages import RDBStorage
from optuna.storages._heartbeat import is_heartbeat_enabled
from optuna.storages._rdb.models import TrialHeartbeatModel
from optuna.trial import FrozenTrial, TrialState

from search.define.anatomy import impossible
from search.define.space import Config
from search.errors import SearchError

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
METRIC = "val_loss"  # the objective: the best epoch's validation loss, minimised
MAX_TOTAL = 100_000  # the trial total of a search bounded by --hours alone
# A trial's recorded reason when Ctrl-C or SIGTERM stopped it (objective.py).
INTERRUPTED = "stopped by Ctrl-C or SIGTERM before it finished"
# A trial that goes on climbing a preset's ladder from where an earlier one stopped (a
# continuation, pruners.Ladder) holds the number of that trial, and of its climb's first look.
RESUMES = "resumes"
ORIGIN = "origin"


class StudyError(SearchError):
    """The study does not exist, or does not match what the user asked for."""


def set_total(study: optuna.Study, total: int) -> None:
    """Record the study's trial total, so workers that join it know when to stop."""
    if study.user_attrs.get("trials") != total:
        study.set_user_attr("trials", total)


def stored_total(study: optuna.Study) -> int:
    total = study.user_attrs.get("trials")
    if not isinstance(total, int):
        raise StudyError(
            f"Study '{study.study_name}' has no trial total yet; run 'search start "
            "--trials N' for it once."
        )
    return total


def counts(study: optuna.Study) -> dict[str, int]:
    result = {state.name: 0 for state in TrialState}
    for trial in study.get_trials(deepcopy=False):
        result[trial.state.name] += 1
    return result


def trained(trial: FrozenTrial) -> bool:
    """Whether a trial counts toward the total: it ended after at least one epoch.

    A configuration rejected before training (impossible, over a budget) is recorded, as
    pruned with its reason, but does not count.
    """
    if trial.state == TrialState.COMPLETE:
        return True
    epochs = trial.user_attrs.get("epochs_trained") or 0
    return trial.state == TrialState.PRUNED and (epochs > 0 or bool(trial.intermediate_values))


def first_look(trial: FrozenTrial) -> bool:
    """Whether a trial began a configuration's climb: a continuation does not count toward
    the total, which counts configurations."""
    return RESUMES not in trial.user_attrs


def counted(trials: Iterable[FrozenTrial]) -> int:
    """The trials among `trials` that count toward the study's total (see trained())."""
    return sum(trained(t) and first_look(t) for t in trials)


def finished(study: optuna.Study) -> int:
    """The trials that count toward the study's total (see trained())."""
    return counted(study.get_trials(deepcopy=False, states=FINISHED))


def continued(trials: Iterable[FrozenTrial]) -> set[int]:
    """The trials a continuation goes on from: a later trial holds their configuration's
    climb, and reports show that one."""
    return {int(t.user_attrs[RESUMES]) for t in trials if RESUMES in t.user_attrs}


def set_deadline(study: optuna.Study, hours: float | None) -> None:
    """No new trial starts `hours` from now, in any worker of the study; None: no limit."""
    deadline = time.time() + hours * 3600 if hours else None
    study.set_user_attr("deadline", deadline)


def time_is_up(study: optuna.Study) -> bool:
    deadline = study.user_attrs.get("deadline")
    return deadline is not None and time.time() >= deadline


def best(study: optuna.Study) -> FrozenTrial | None:
    """The completed trial of lowest val_loss (the first objective).

    In a multi-objective study this trial is always on the Pareto front: nothing beats its
    val_loss.
    """
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return min(done, key=lambda t: t.values[0]) if done else None


def pareto(study: optuna.Study) -> list[FrozenTrial]:
    """The Pareto front of val_loss against parameters, by val_loss; empty for one objective."""
    if len(study.directions) < 2:
        return []
    return sorted(study.best_trials, key=lambda t: t.values[0])


def recover(study: optuna.Study) -> list[int]:
    """Fail the trials of dead workers (silent for the grace period); return their numbers.

    The storage's RetryHeartbeatStaleTrialCallback queues a retry of each (storage.py).
    """
    trials = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    running = {t.number for t in trials}
    if not running:
        return []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
        _fail_unbeaten(study, trials)
    failed = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))}
    return sorted(running & failed)


def _unbeaten(storage: RDBStorage, trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """The running trials older than the grace period that never sent a heartbeat.

    Optuna's stale check skips a trial without a heartbeat row, so a worker killed between
    ask() and its first beat would leave its trial RUNNING, holding a slot, for good. Ages
    are by this machine's clock against the starting worker's (datetime_start), as the
    database clock is not in UTC on every backend.
    """
    assert storage.heartbeat_interval is not None
    grace = storage.grace_period or 2 * storage.heartbeat_interval  # Optuna's own default
    now = time.time()
    old = [t for t in trials if t.datetime_start and now - t.datetime_start.timestamp() > grace]
    if not old:
        return []
    with storage.scoped_session() as session:
        beating = set(
            session.scalars(
                sqlalchemy.select(TrialHeartbeatModel.trial_id).where(
                    TrialHeartbeatModel.trial_id.in_([t._trial_id for t in old])
                )
            )
        )
    return [t for t in old if t._trial_id not in beating]


def _fail_unbeaten(study: optuna.Study, trials: list[FrozenTrial]) -> None:
    """Fail the trials of workers that died before their first heartbeat, as Optuna's
    fail_stale_trials fails a stale one, so that the same retry callback queues them."""
    storage = study._storage  # Optuna's cache around the RDB storage: writes go through it
    rdb = getattr(storage, "_backend", storage)
    if not isinstance(rdb, RDBStorage) or not is_heartbeat_enabled(rdb):
        return
    failed = []
    for trial in _unbeaten(rdb, trials):
        try:
            if storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL):
                failed.append(trial._trial_id)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # its worker was alive after all and finished it, or another worker failed it
    callback = rdb.get_heartbeat_stale_trial_callback()
    if callback is not None:
        for trial_id in failed:
            callback(study, copy.deepcopy(storage.get_trial(trial_id)))


def config_of(trial: FrozenTrial) -> Config:
    """The network a trial trained, rebuilt from its stored configuration."""
    try:
        config = Config.from_json(trial.user_attrs["config"])
    except (KeyError, TypeError, ValueError) as e:
        raise StudyError(
            f"Trial #{trial.number}'s architecture cannot be rebuilt: its stored configuration "
            f"is missing or from an older version ({type(e).__name__}: {e})."
        ) from None
    reason = impossible(config)
    if reason:
        raise StudyError(f"Trial #{trial.number}'s architecture cannot be rebuilt: {reason}.")
    return config
