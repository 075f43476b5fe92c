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
  be run again; nothing but what this command wrote is removed. (A copy killed outright, by
  SIGKILL, leaves a study without its preset; `optuna delete-study` removes it.)
- A progress line every 500 trials.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass

import optuna
from optuna.trial import TrialState

from search.errors import Log
from search.store import storage as storage_mod
from search.store.study import creation_lock, names, resolve
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

    The source must exist; without a name, its only study is meant. A study of the same name
    in the destination is never overwritten. What it does goes to `log`, passwords masked.
    """
    source, source_url, found = resolve(source_url, name)
    assert found is not None  # resolve() names one study or raises
    log(f"From: {storage_mod.describe_url(source_url)}")
    log(f"To: {storage_mod.describe_url(target_url)}")
    target = storage_mod.open_storage(target_url)
    new_name = new_name or found
    original = optuna.load_study(study_name=found, storage=source)
    # Under the lock `search start` creates studies with: one started on the destination
    # meanwhile waits, then finds the copy whole (it never sees a study without its preset).
    with creation_lock(target, new_name):
        if new_name in names(target):
            raise StudyError(
                f"A study named '{new_name}' already exists in "
                f"{storage_mod.describe_url(target_url)}; pass --as NEW_NAME to copy under "
                "another name, or copy to another storage."
            )
        trials = original.get_trials(deepcopy=False)
        log(
            f"Copying study '{found}': {len(trials)} trials ({_counts(trials)}), "
            f"{len(original.user_attrs)} study attributes."
        )
        made = optuna.create_study(
            storage=target, study_name=new_name, directions=original.directions
        )
        try:
            source_id = source.get_study_id_from_name(found)
            requeued = _fill(source, source_id, made, target, trials, log)
        except BaseException:
            with contextlib.suppress(Exception):  # the error that stopped it is the one told
                optuna.delete_study(study_name=new_name, storage=target)
            raise
    copied = Copied(new_name, source_url, target_url, len(trials), requeued)
    _tell(copied, log)
    return copied


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
