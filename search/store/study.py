"""Studies: create or resume one from a preset, with the lab's runs enqueued, or open one.

What a study's trials hold, and its trial total and deadline, is trials.py's.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass

import optuna
from optuna.trial import TrialState

from search.define import presets
from search.define.presets import ENQUEUED, Baseline, Preset
from search.define.space import to_params
from search.store import storage as storage_mod
from search.store.pruners import Behind, Ladder
from search.store.trials import (
    INTERRUPTED,
    MAX_TOTAL,
    StudyError,
    finished,
    recover,
    set_deadline,
    set_total,
    time_is_up,
)


def sampler(preset: Preset, worker: int = 0) -> optuna.samplers.BaseSampler:
    """Seeded TPE; "tpe-grouped" models each group of parameters that occur together.

    The space is conditional (a fifth conv's kernel exists only in five-conv networks), and
    plain multivariate TPE models only the parameters every trial has.
    """
    # Each worker gets its own seed so parallel workers do not suggest the same configuration.
    seed = preset.seed + worker
    if preset.sampler == "tpe-grouped":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.TPESampler(
                seed=seed, n_startup_trials=preset.startup_trials, multivariate=True, group=True
            )
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=preset.startup_trials)


def pruner(preset: Preset) -> optuna.pruners.BasePruner:
    if preset.multi_objective:
        return optuna.pruners.NopPruner()  # Optuna does not prune multi-objective studies
    if preset.rungs and preset.pruner != "none":
        # Rung k reports at step reduction**k (objective.rung_step), where the pruner's own
        # rung k lies: each of its judgements falls on one of the ladder's rungs.
        steps = [preset.pruner_reduction**k for k in range(len(preset.rungs))]
        if preset.pruner == "asha":
            return Ladder(steps, preset.pruner_reduction)
        if preset.pruner == "hyperband":
            return optuna.pruners.HyperbandPruner(
                min_resource=1,
                max_resource=preset.pruner_reduction ** (len(preset.rungs) - 1),
                reduction_factor=preset.pruner_reduction,
            )
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=1, reduction_factor=preset.pruner_reduction
        )
    if preset.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=preset.pruner_min_epochs,
            max_resource=preset.epochs,
            reduction_factor=preset.pruner_reduction,
        )
    if preset.pruner == "sha":
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=preset.pruner_min_epochs, reduction_factor=preset.pruner_reduction
        )
    if preset.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1)
    if preset.pruner == "behind":
        return Behind(ratio=preset.pruner_ratio, min_epochs=preset.pruner_min_epochs)
    return optuna.pruners.NopPruner()


def stored_preset(study: optuna.Study) -> Preset:
    text = study.user_attrs.get("preset")
    if text is None and COPYING in study.user_attrs:
        raise unfinished_copy(study.study_name, study.user_attrs[COPYING], live=True)
    if text is None:
        raise StudyError(
            f"Study '{study.study_name}' was not made by 'search start', or its 'search start' "
            "was stopped while creating it: rerun that command, which finishes the creation."
        )
    try:
        return presets.from_json(text)
    except (ValueError, KeyError, TypeError) as e:
        raise StudyError(
            f"Study '{study.study_name}' was made by an incompatible version of search ({e})."
        ) from None


def names(storage: optuna.storages.BaseStorage) -> list[str]:
    return [s.study_name for s in storage.get_all_studies()]


def _no_study(name: str, available: list[str]) -> StudyError:
    return StudyError(
        f"No study named '{name}' in this storage (studies: {', '.join(available) or 'none yet'})."
    )


def load_study(
    storage: optuna.storages.BaseStorage, name: str, *, worker: int = 0
) -> tuple[optuna.Study, Preset]:
    """An existing study and the preset it was made with."""
    if name not in names(storage):
        raise _no_study(name, names(storage))
    # A `search start` creating the study writes its preset last; readers do not take the
    # creation lock (see _creating), so wait a moment for it.
    for _ in range(50):
        study = optuna.load_study(study_name=name, storage=storage)
        if "preset" in study.user_attrs:
            break
        time.sleep(0.2)
    preset = stored_preset(study)
    study = optuna.load_study(
        study_name=name, storage=storage, sampler=sampler(preset, worker), pruner=pruner(preset)
    )
    return study, preset


# Creating a study takes several writes (the study, its attributes, the lab's runs, and its
# preset last), and Ctrl-C or SIGKILL may stop a `search start` between any two of them. So every
# creation runs under a lock on the storage (storage.exclusive), which a dead holder lets go of:
# whoever holds the lock and finds a study without its preset knows that its creator died
# midway. Such a study never ran a trial, since workers load only studies with a preset, so it
# is deleted (one transaction) and created again, and to the user the study and its preset come
# into being together or not at all. A study without a preset that holds anything search did not
# write at creation (a trial that ran, another attribute) is someone else's and is never deleted.
_CREATION_ATTRS = {"dataset", "objective", "preset_name", "trials"}
# The user attribute a `search copy` marks its destination with until its last write
# (transfer.py): a study that carries it and no preset is a copy that died midway.
COPYING = "copying"


def unfinished_copy(name: str, mark: object, *, live: bool = False) -> StudyError:
    """Why the study `name`, marked by a `search copy`, cannot run: the copy never finished.

    `live`: said without the creation lock, so the copy may still be running."""
    made = mark if isinstance(mark, dict) else {}
    state = "is still running or was interrupted" if live else "was interrupted"
    return StudyError(
        f"Study '{name}' is an unfinished copy: a `search copy` of study "
        f"'{made.get('study', '?')}' from {made.get('from', '?')} into it {state}; "
        f"{'wait for it, or ' if live else ''}rerun that `search copy` command, which "
        "replaces it."
    )


def creation_lock(storage: optuna.storages.RDBStorage, name: str) -> AbstractContextManager[None]:
    """The lock under which study `name` comes into being (`search start`, `search copy`)."""
    return storage_mod.exclusive(storage.url, f"create:{name}", storage.engine)


@contextmanager
def _creating(storage: optuna.storages.RDBStorage, name: str) -> Iterator[None]:
    """Hold the lock under which study `name` is created; undo a creation that died first."""
    with creation_lock(storage, name):
        if name in names(storage):
            found = optuna.load_study(study_name=name, storage=storage)
            if "preset" not in found.user_attrs:
                if COPYING in found.user_attrs:  # its copier held this lock until it died
                    raise unfinished_copy(name, found.user_attrs[COPYING])
                trials = found.get_trials(deepcopy=False)
                if not set(found.user_attrs) <= _CREATION_ATTRS or any(
                    t.state != TrialState.WAITING or not set(ENQUEUED) & set(t.user_attrs)
                    for t in trials
                ):
                    raise StudyError(
                        f"Study '{name}' was not made by 'search start' and holds trials or "
                        "settings of its own; pass --study NEW_NAME to start a new study."
                    )
                optuna.delete_study(study_name=name, storage=storage)
        yield


def _resume(storage: optuna.storages.RDBStorage, name: str, preset: Preset) -> optuna.Study:
    """The existing study `name`, which must search what `preset` searches."""
    study, old = load_study(storage, name)
    if old.dataset != preset.dataset:
        raise StudyError(
            f"Study '{name}' searches {old.dataset}, not {preset.dataset}; pass "
            f"--study NEW_NAME to start a new study."
        )
    if old.fingerprint() != preset.fingerprint():
        changed = ", ".join(old.differences(preset))
        raise StudyError(
            f"Study '{name}' was made with a different preset or search space "
            f"({old.name}; differs in {changed}); pass --study NEW_NAME to start a new "
            "study, or restore the preset to continue this one."
        )
    name_metric(study, preset)
    if old.to_json() != preset.to_json():
        # Only what the fingerprint leaves out differs (budget, trial total, description):
        # record it, so workers that join later use this run's budget.
        study.set_user_attr("preset", preset.to_json())
    return study


def _create(
    storage: optuna.storages.RDBStorage, name: str, preset: Preset, total: int
) -> optuna.Study:
    """The new study `name`, with its total and the preset's own networks enqueued."""
    study = optuna.create_study(
        storage=storage,
        study_name=name,
        directions=preset.directions,
        sampler=sampler(preset),
        pruner=pruner(preset),
    )
    name_metric(study, preset)
    study.set_user_attr("dataset", preset.dataset)
    study.set_user_attr("objective", "minimize " + " and ".join(preset.metric_names))
    study.set_user_attr("preset_name", preset.name)
    set_total(study, total)
    for kind, run in preset.enqueued():
        _enqueue(study, preset, kind, run)
    study.set_user_attr("preset", preset.to_json())  # last: the creation is complete
    return study


def _enqueue(study: optuna.Study, preset: Preset, kind: str, run: Baseline) -> None:
    """Queue one of the preset's own networks, marked with its kind and name."""
    study.enqueue_trial(to_params(run.config, preset.space), user_attrs={kind: run.name})


def name_metric(study: optuna.Study, preset: Preset) -> None:
    """Name the objectives, so optuna-dashboard and plots say val_loss, not "Objective 0"."""
    if study.metric_names is None:
        with warnings.catch_warnings():
            # Metric names have been stable since Optuna 3.2 but are still flagged experimental.
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(preset.metric_names)


# ---------------------------------------------------------------------------------------------
# What the commands open: a study to start or resume, or one that must already exist
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Opened:
    """A study with the preset it runs, its storage, and that storage's URL."""

    study: optuna.Study
    preset: Preset
    storage: optuna.storages.RDBStorage
    url: str


@dataclass(frozen=True)
class Prepared(Opened):
    """A study ready to run: its trial total, whether it is new, the trials recovered, and
    the enqueued runs queued again after an interruption."""

    total: int = 0
    created: bool = False
    lost: tuple[int, ...] = ()
    requeued: tuple[str, ...] = ()
    joined: bool = False  # other workers were running its trials; their deadline stands
    changed: tuple[str, ...] = ()  # run settings the preset file changed since the last start


def prepare(
    preset: Preset,
    *,
    url: str | None = None,
    storage: optuna.storages.RDBStorage | None = None,
    name: str | None = None,
    trials: int | None = None,
    max_params: int | None = None,
    objective: str | None = None,
    hours: float | None = None,
) -> Prepared:
    """Create the study `name` (the preset's name) from `preset`, or resume it, with the total
    it will run to: what `search start` does, in the storage at `url` or in `storage`, one
    already open.

    Resuming keeps the study's own settings for what the caller leaves out (None), not the
    preset file's defaults: its budget, its objective, its hours and its trial total. Hours
    count from now, except where workers are running the study's trials: a start that joins
    them keeps their deadline. `hours` without a trial total, on a new study, runs as many as
    fit.
    """
    name = name or preset.name
    rdb, url = _storage(url, storage)
    with _creating(rdb, name):
        created = name not in names(rdb)
        old, stored_total = (None, None) if created else _stored(rdb, name)
        preset = _settings(preset, old, max_params=max_params, objective=objective, hours=hours)
        total = trials or stored_total or (MAX_TOTAL if hours else preset.trials)
        changed = () if old is None else tuple(old.changes(preset))
        study = _create(rdb, name, preset, total) if created else _resume(rdb, name, preset)
        lost, joined, requeued = _start(study, preset, total, created=created)
    return Prepared(study, preset, rdb, url, total, created, lost, requeued, joined, changed)


def _stored(rdb: optuna.storages.RDBStorage, name: str) -> tuple[Preset, int | None]:
    """The preset an existing study runs, and its trial total (None where it has none)."""
    study, preset = load_study(rdb, name)
    return preset, study.user_attrs.get("trials")


def _settings(
    preset: Preset,
    old: Preset | None,
    *,
    max_params: int | None,
    objective: str | None,
    hours: float | None,
) -> Preset:
    """The preset a start runs: `preset` with the settings the caller gives, and where it gives
    none, a resumed study's own (its `old` preset's) budget, objective and hours."""
    if old is not None:
        preset = dataclasses.replace(
            preset, max_params=old.max_params, objective=old.objective, hours=old.hours
        )
    return dataclasses.replace(
        preset,
        max_params=max_params or preset.max_params,
        objective=objective or preset.objective,
        hours=hours or preset.hours,
    )


def _storage(
    url: str | None, storage: optuna.storages.RDBStorage | None
) -> tuple[optuna.storages.RDBStorage, str]:
    """The storage prepare() works in, and its URL: `storage` itself, or the one at `url`."""
    if storage is not None:
        if url is not None:
            raise ValueError("Pass prepare() a url or a storage, not both.")
        return storage, storage.url
    url = storage_mod.resolve_url(url)
    return storage_mod.open_storage(url), url


def _start(
    study: optuna.Study, preset: Preset, total: int, *, created: bool
) -> tuple[tuple[int, ...], bool, tuple[str, ...]]:
    """Make the study ready to run to `total`: the trials of dead workers recovered, whether
    it joins workers already running, and the enqueued runs queued again."""
    set_total(study, total)
    lost = recover(study)
    # A start that joins workers already running (a second machine, a restarted replica)
    # keeps their deadline; only a start of a stopped search sets the clock again.
    joined = bool(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
    if not joined:
        set_deadline(study, preset.hours)
    runs = not created and finished(study) < total and not time_is_up(study)
    requeued = requeue_interrupted(study, preset) if runs else []
    return tuple(lost), joined, tuple(requeued)


def requeue_interrupted(study: optuna.Study, preset: Preset) -> list[str]:
    """Queue again each enqueued run (a start, a lab run) that an interruption cut short.

    Ctrl-C or SIGTERM fails the running trial, and only trials of dead workers are retried
    by the storage. A sampled trial is no loss, but the known-good start and the lab's runs
    would then never run, and the report would compare against fewer of the lab's runs. A run
    is queued again when none of its trials is waiting, running or finished and the last one
    ended that way; one that failed for a reason of its own (its training raised, it
    diverged) is not. Call under `_creating`'s lock.
    """
    trials = study.get_trials(deepcopy=False)
    again = []
    for kind, run in preset.enqueued():
        tried = [t for t in trials if t.user_attrs.get(kind) == run.name]
        if (
            tried
            and all(t.state == TrialState.FAIL for t in tried)
            and tried[-1].user_attrs.get("reason") == INTERRUPTED
        ):
            _enqueue(study, preset, kind, run)
            again.append(run.name)
    return again


def resolve(
    url: str | None, name: str | None, *, required: bool = True
) -> tuple[optuna.storages.RDBStorage, str, str | None]:
    """The storage of existing studies, its URL, and the study meant.

    Never creates an empty database. Without a name, the storage's only study is meant; if it
    holds several or none, that is an error when a study is `required`, else the name is None.
    A name that is given must exist.
    """
    url = storage_mod.resolve_url(url)
    rdb = storage_mod.open_storage(url, must_exist=True)
    available = names(rdb)
    if name is not None:
        if name not in available:
            raise _no_study(name, available)
        return rdb, url, name
    if len(available) == 1:
        return rdb, url, available[0]
    if required:
        raise StudyError(
            "Pass --study NAME; this storage holds "
            + (
                f"{len(available)} studies: {', '.join(available)}."
                if available
                else "no studies."
            )
        )
    return rdb, url, None


def open_existing(url: str | None, name: str | None, *, worker: int = 0) -> Opened:
    """A study that must already exist, for the commands that read or join it."""
    rdb, url, name = resolve(url, name)
    assert name is not None  # resolve() names one study or raises
    study, preset = load_study(rdb, name, worker=worker)
    return Opened(study, preset, rdb, url)
