"""Copying a study, with all its trials and attributes, from one storage to another.

Optuna's `copy_study` is the model: it creates the study with the same directions, copies the
study's system attributes (where the metric names live) and user attributes (the preset, the
trial total, the retrain result), then each trial as a template (state, parameters and their
distributions, values, intermediate values, user and system attributes, times). What it leaves
out is filled in here:

- A trial RUNNING in the source has no heartbeat in the copy, and Optuna fails only trials
  whose heartbeat went stale, so it would stay RUNNING forever and hold a slot of the total.
  Its worker is not coming: the copy fails it and queues it again, as the storage's own
  heartbeat callback does for a lost worker.
- The copy is made under the lock `search start` creates studies with, and the preset is
  written last: a `search start` on the destination waits for the copy, and a worker that
  joins it waits for the preset (study.load_study), so neither starts on a study whose
  trials are still arriving.
- A copy that fails halfway (Ctrl-C, a lost connection) is deleted, so the same command can
  be run again; nothing but what this command wrote is removed. A copy killed outright
  (SIGKILL), or one that cannot reach its destination to delete what it wrote, leaves a study
  behind; so the copy marks its study as in progress (COPYING) before anything else and clears
  the mark as its last write. A rerun of the same copy, under the lock, finds the mark on a
  study whose copier is gone (it held the lock), deletes it and copies again; a study without
  the mark is never replaced, and `search start` on a marked study says to rerun the copy.
- A progress line every 500 trials.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import socket
import warnings
from dataclasses import dataclass
from typing import Any

import optuna
import sqlalchemy
from optuna.storages._rdb.models import StudyUserAttributeModel
from optuna.trial import TrialState

from search.errors import Log
from search.store import storage as storage_mod
from search.store.study import COPYING, creation_lock, names, resolve
from search.store.trials import StudyError

PRESET = "preset"  # the user attribute that marks a complete study (load_study waits)
PROGRESS_EVERY = 500
RUNNING_REASON = "running in the source storage when the study was copied"


@dataclass(frozen=True)
class Copied:
    """What a copy made: the study's name there, its trial count, the trials queued again."""

    name: str
    source_url: str
    target_url: str
    trials: int
    requeued: tuple[int, ...]


def transfer_study(
    source_url: str | None,
    target_url: str,
    name: str | None,
    *,
    new_name: str | None = None,
    log: Log = print,
) -> Copied:
    """Copy the study `name` from `source_url` to `target_url` (created if missing).

    The source must exist; without a name, its only study is meant. Of the destination's
    studies only what an interrupted copy of it left is replaced. `log` hears what it does.
    """
    source, source_url, found = resolve(source_url, name)
    assert found is not None  # resolve() names one study or raises
    log(f"From: {storage_mod.describe_url(source_url)}")
    log(f"To: {storage_mod.describe_url(target_url)}")
    target = storage_mod.open_storage(target_url)
    new_name = new_name or found
    original = optuna.load_study(study_name=found, storage=source)
    if COPYING in original.user_attrs:
        raise StudyError(
            f"Study '{found}' in {storage_mod.describe_url(source_url)} is itself a copy "
            "that is still running or was interrupted; copy its own source instead."
        )
    # Under the lock `search start` creates studies with: one started on the destination
    # meanwhile waits, then finds the copy whole (it never sees a study without its preset).
    with creation_lock(target, new_name):
        _make_room(target, target_url, new_name, found, log)
        trials = original.get_trials(deepcopy=False)
        log(
            f"Copying study '{found}': {len(trials)} trials ({_counts(trials)}), "
            f"{len(original.user_attrs)} study attributes."
        )
        made = optuna.create_study(
            storage=target, study_name=new_name, directions=original.directions
        )
        try:
            target_id = target.get_study_id_from_name(new_name)
            target.set_study_user_attr(target_id, COPYING, _mark(found, source_url))
            source_id = source.get_study_id_from_name(found)
            requeued = _fill(source, source_id, made, target, trials, log)
            _unmark(target, target_id)  # the last write: the copy is whole
        except BaseException:
            with contextlib.suppress(Exception):  # the error that stopped it is the one told
                optuna.delete_study(study_name=new_name, storage=target)
            raise
    copied = Copied(new_name, source_url, target_url, len(trials), requeued)
    _tell(copied, log)
    return copied


def _make_room(
    target: optuna.storages.RDBStorage, target_url: str, name: str, found: str, log: Log
) -> None:
    """Delete what an interrupted copy of study `found` left as `name`; refuse any other study.

    Call under the creation lock: a copier that left its mark while the lock is free is dead.
    """
    if name not in names(target):
        return
    where = storage_mod.describe_url(target_url)
    mark = optuna.load_study(study_name=name, storage=target).user_attrs.get(COPYING)
    if not isinstance(mark, dict):
        raise StudyError(
            f"A study named '{name}' already exists in {where}; pass --as NEW_NAME to copy "
            "under another name, or copy to another storage."
        )
    if mark.get("study") != found:
        raise StudyError(
            f"A study named '{name}' in {where} is what an interrupted copy of study "
            f"'{mark.get('study')}' from {mark.get('from')} left; rerun that copy, or pass "
            "--as NEW_NAME to copy under another name."
        )
    optuna.delete_study(study_name=name, storage=target)
    log(
        f"Replaced study '{name}': what an interrupted copy of it (by {mark.get('by')}, "
        f"started {mark.get('started')}) left in {where}."
    )


def _mark(found: str, source_url: str) -> dict[str, Any]:
    """The in-progress mark: what is being copied, from where, since when, by whom."""
    path = storage_mod.sqlite_path(source_url)
    return {
        "study": found,
        "from": f"sqlite:///{path}" if path else storage_mod.masked(source_url),
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "by": f"{socket.gethostname()}:{os.getpid()}",
    }


def _unmark(target: optuna.storages.RDBStorage, target_id: int) -> None:
    """Remove the in-progress mark; Optuna can set a study attribute but never delete one."""
    attr = StudyUserAttributeModel
    with target.engine.begin() as connection:
        connection.execute(
            sqlalchemy.delete(attr).where(attr.study_id == target_id, attr.key == COPYING)
        )


def _tell(copied: Copied, log: Log) -> None:
    if copied.requeued:
        log(
            f"Trial(s) {', '.join(f'#{n}' for n in copied.requeued)} were running in the "
            "source: failed in the copy, and queued again."
        )
    log(
        f"Copied study '{copied.name}' with {copied.trials} trials. Continue it there with: "
        f"search worker --study {copied.name} --storage {storage_mod.masked(copied.target_url)}"
    )


def _fill(
    source: optuna.storages.RDBStorage,
    source_id: int,
    made: optuna.Study,
    target: optuna.storages.RDBStorage,
    trials: list[optuna.trial.FrozenTrial],
    log: Log,
) -> tuple[int, ...]:
    """Copy the attributes and trials of the source study into the new, empty study `made`."""
    target_id = target.get_study_id_from_name(made.study_name)
    for key, value in source.get_study_system_attrs(source_id).items():
        target.set_study_system_attr(target_id, key, value)
    attrs = source.get_study_user_attrs(source_id)
    for key, value in attrs.items():
        if key != PRESET:
            target.set_study_user_attr(target_id, key, value)
    running = []
    for done, trial in enumerate(trials, start=1):
        # One template a trial, as copy_study does; trial numbers follow the source's order.
        trial_id = target.create_new_trial(target_id, template_trial=trial)
        if trial.state == TrialState.RUNNING:
            running.append(trial_id)
        if done % PROGRESS_EVERY == 0 and done < len(trials):
            log(f"  {done:,} of {len(trials):,} trials copied")
    requeued = tuple(_requeue(made, target, trial_id) for trial_id in running)
    if PRESET in attrs:
        target.set_study_user_attr(target_id, PRESET, attrs[PRESET])
    return requeued


def _requeue(made: optuna.Study, storage: optuna.storages.RDBStorage, trial_id: int) -> int:
    """Fail a trial that was running in the source, and queue it again; return its number."""
    trial = storage.get_trial(trial_id)
    retry = storage.get_heartbeat_stale_trial_callback()
    if retry is not None:
        with warnings.catch_warnings():  # the retry callback is still flagged experimental
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            retry(made, trial)  # before the reason is set: the retry starts without it
    storage.set_trial_user_attr(trial_id, "reason", RUNNING_REASON)
    storage.set_trial_state_values(trial_id, state=TrialState.FAIL)
    return trial.number


def _counts(trials: list[optuna.trial.FrozenTrial]) -> str:
    states = [t.state.name.lower() for t in trials]
    return ", ".join(f"{states.count(s)} {s}" for s in dict.fromkeys(states)) or "none"
