"""Studies: create or load one from a preset with the lab's runs enqueued, and query it."""

from __future__ import annotations

import dataclasses
import time
import warnings
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.define import presets
from search.define.presets import ENQUEUED, Baseline, Preset
from search.define.space import Config, impossible, to_params
from search.errors import SearchError
from search.store import storage as storage_mod
from search.store.pruners import Behind

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
METRIC = "val_loss"  # the objective: the best epoch's validation loss, minimised


class StudyError(SearchError):
    """The study does not exist, or does not match what the user asked for."""


MAX_TOTAL = 100_000  # the trial total of a search bounded by --hours alone


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


def create_or_load(
    storage: optuna.storages.RDBStorage,
    name: str,
    preset: Preset,
    *,
    worker: int = 0,
    total: int | None = None,
) -> tuple[optuna.Study, bool]:
    """The study `name`, created from `preset` with the lab's runs enqueued if it is new.

    An existing study must have been made with the same dataset and search space: trials of
    different spaces are never mixed in one study. A new study records `total`, if given.
    """
    with _creating(storage, name):
        if name in names(storage):
            return _resume(storage, name, preset, worker), False
        return _create(storage, name, preset, worker, total), True


def _resume(
    storage: optuna.storages.RDBStorage, name: str, preset: Preset, worker: int
) -> optuna.Study:
    study, old = load_study(storage, name, worker=worker)
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
    storage: optuna.storages.RDBStorage,
    name: str,
    preset: Preset,
    worker: int,
    total: int | None,
) -> optuna.Study:
    study = optuna.create_study(
        storage=storage,
        study_name=name,
        directions=preset.directions,
        sampler=sampler(preset, worker),
        pruner=pruner(preset),
    )
    name_metric(study, preset)
    study.set_user_attr("dataset", preset.dataset)
    study.set_user_attr("objective", "minimize " + " and ".join(preset.metric_names))
    study.set_user_attr("preset_name", preset.name)
    if total is not None:
        set_total(study, total)
    for kind, run in preset.enqueued():
        _enqueue(study, preset, kind, run)
    study.set_user_attr("preset", preset.to_json())  # last: the creation is complete
    return study


def _enqueue(study: optuna.Study, preset: Preset, kind: str, run: Baseline) -> None:
    """Queue one of the preset's own networks, marked with its kind and name."""
    study.enqueue_trial(to_params(run.config, preset.space), user_attrs={kind: run.name})


# A trial's recorded reason when Ctrl-C or SIGTERM stopped it (objective.py).
INTERRUPTED = "stopped by Ctrl-C or SIGTERM before it finished"


def name_metric(study: optuna.Study, preset: Preset) -> None:
    """Name the objectives, so optuna-dashboard and plots say val_loss, not "Objective 0"."""
    if study.metric_names is None:
        with warnings.catch_warnings():
            # Metric names have been stable since Optuna 3.2 but are still flagged experimental.
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(preset.metric_names)


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


def finished(study: optuna.Study) -> int:
    """The trials that count toward the study's total (see trained())."""
    return sum(trained(t) for t in study.get_trials(deepcopy=False, states=FINISHED))


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
    running = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))}
    if not running:
        return []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    failed = {t.number for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))}
    return sorted(running & failed)


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
    url: str | None,
    name: str | None = None,
    trials: int | None = None,
    max_params: int | None = None,
    objective: str | None = None,
    hours: float | None = None,
) -> Prepared:
    """Create the study `name` from `preset`, or resume it, with the total it will run to.

    Resuming keeps the study's own settings for what the caller leaves out (None), not the
    preset file's defaults: its budget, its objective, its hours and its trial total. Hours
    count from now, except where workers are running the study's trials: a start that joins
    them keeps their deadline. `hours` without a trial total, on a new study, runs as many as
    fit.
    """
    name = name or preset.name
    url = storage_mod.resolve_url(url)
    rdb = storage_mod.open_storage(url)
    with _creating(rdb, name):
        created = name not in names(rdb)
        stored_total = None
        if not created:
            old_study, old = load_study(rdb, name)
            preset = dataclasses.replace(
                preset, max_params=old.max_params, objective=old.objective, hours=old.hours
            )
            stored_total = old_study.user_attrs.get("trials")
        preset = dataclasses.replace(
            preset,
            max_params=max_params or preset.max_params,
            objective=objective or preset.objective,
            hours=hours or preset.hours,
        )
        total = trials or stored_total or (MAX_TOTAL if hours else preset.trials)
        changed = [] if created else old.changes(preset)
        study = _create(rdb, name, preset, 0, total) if created else _resume(rdb, name, preset, 0)
        set_total(study, total)
        lost = recover(study)
        # A start that joins workers already running (a second machine, a restarted replica)
        # keeps their deadline; only a start of a stopped search sets the clock again.
        joined = bool(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
        if not joined:
            set_deadline(study, preset.hours)
        runs = not created and finished(study) < total and not time_is_up(study)
        requeued = requeue_interrupted(study, preset) if runs else []
    return Prepared(
        study,
        preset,
        rdb,
        url,
        total=total,
        created=created,
        lost=tuple(lost),
        requeued=tuple(requeued),
        joined=joined,
        changed=tuple(changed),
    )


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
