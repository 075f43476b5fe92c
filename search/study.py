"""Studies: create or load one from a preset, enqueue the lab's runs, and run a worker."""

from __future__ import annotations

import os
import signal
import socket
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

import optuna
from optuna.trial import FrozenTrial, TrialState

from search import datasets, presets
from search import storage as storage_mod
from search.objective import Log, Objective, configure_tensorflow, summary
from search.presets import Preset
from search.space import to_params

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
MAX_CONSECUTIVE_FAILURES = 5
METRIC = "val_loss"  # the objective: the best epoch's validation loss, minimised


class StudyError(Exception):
    """The study does not exist, or does not match what the user asked for."""


# Every mistake a user can make ends in one of these, each with a sentence that says what to do.
USER_ERRORS = (datasets.DataError, presets.PresetError, storage_mod.StorageError, StudyError)


def sampler(preset: Preset, worker: int = 0) -> optuna.samplers.BaseSampler:
    # Each worker gets its own seed so parallel workers do not suggest the same configuration.
    return optuna.samplers.TPESampler(seed=preset.seed + worker, n_startup_trials=10)


def pruner(preset: Preset) -> optuna.pruners.BasePruner:
    if preset.multi_objective:
        return optuna.pruners.NopPruner()  # Optuna does not prune multi-objective studies
    if preset.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=preset.epochs,
                                              reduction_factor=3)
    if preset.pruner == "sha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    if preset.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1)
    return optuna.pruners.NopPruner()


def stored_preset(study: optuna.Study) -> Preset:
    text = study.user_attrs.get("preset")
    if text is None:
        raise StudyError(f"Study '{study.study_name}' was not made by 'search start'.")
    try:
        return presets.from_json(text)
    except (ValueError, KeyError, TypeError) as e:
        raise StudyError(
            f"Study '{study.study_name}' was made by an incompatible version of search ({e})."
        ) from None


def names(storage: optuna.storages.BaseStorage) -> list[str]:
    return [s.study_name for s in storage.get_all_studies()]


def load(storage: optuna.storages.BaseStorage, name: str, *, worker: int = 0
         ) -> tuple[optuna.Study, Preset]:
    """An existing study and the preset it was made with."""
    if name not in names(storage):
        known = ", ".join(names(storage)) or "none yet"
        raise StudyError(f"No study named '{name}' in this storage (studies: {known}).")
    # The creator writes the preset just after creating the study; wait a moment for it.
    for _ in range(50):
        study = optuna.load_study(study_name=name, storage=storage)
        if "preset" in study.user_attrs:
            break
        time.sleep(0.2)
    preset = stored_preset(study)
    study = optuna.load_study(study_name=name, storage=storage, sampler=sampler(preset, worker),
                              pruner=pruner(preset))
    return study, preset


def create_or_load(storage: optuna.storages.BaseStorage, name: str, preset: Preset,
                   *, worker: int = 0) -> tuple[optuna.Study, bool]:
    """The study `name`, created from `preset` with the lab's runs enqueued if it is new.

    An existing study must have been made with the same dataset and search space: trials of
    different spaces are never mixed in one study.
    """
    if name in names(storage):
        study, old = load(storage, name, worker=worker)
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
        return study, False
    try:
        study = optuna.create_study(
            storage=storage, study_name=name, directions=preset.directions,
            sampler=sampler(preset, worker), pruner=pruner(preset),
        )
    except optuna.exceptions.DuplicatedStudyError:  # another worker created it first
        return create_or_load(storage, name, preset, worker=worker)
    name_metric(study, preset)
    study.set_user_attr("dataset", preset.dataset)
    study.set_user_attr("objective", "minimize " + " and ".join(preset.metric_names))
    study.set_user_attr("preset_name", preset.name)
    for baseline in preset.baselines:
        study.enqueue_trial(to_params(baseline.config, preset.space),
                            user_attrs={"baseline": baseline.name})
    study.set_user_attr("preset", preset.to_json())  # written last: load() waits for it
    return study, True


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
        raise StudyError(f"Study '{study.study_name}' has no trial total yet; run 'search start "
                         "--trials N' for it once.")
    return total


def counts(study: optuna.Study) -> dict[str, int]:
    result = {state.name: 0 for state in TrialState}
    for trial in study.get_trials(deepcopy=False):
        result[trial.state.name] += 1
    return result


def finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=FINISHED))


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


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM ends a worker the way Ctrl-C does, so its running trial is not left RUNNING."""
    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@dataclass
class Progress:
    """One line per finished trial: n/N, state, this trial and the best so far."""

    total: int
    log: Log
    failures_in_a_row: int = 0

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        s = summary(trial)
        head = f"trial {finished(study)}/{self.total} (#{trial.number}) {s['state']}"
        if trial.state == TrialState.COMPLETE:
            head += f": val_loss {s['val_loss']:.4f} val_accuracy {s['val_accuracy']:.4f}"
        elif s["reason"]:
            head += f": {s['reason']}"
        b = best(study)
        tail = ""
        if b is not None:
            tail = (f" | best #{b.number} val_loss {b.values[0]:.4f} "
                    f"val_accuracy {b.user_attrs.get('val_accuracy', float('nan')):.4f}")
        self.log(f"{head} | {s['architecture']}{tail}")
        if trial.state == TrialState.FAIL:
            self.failures_in_a_row += 1
            if self.failures_in_a_row >= MAX_CONSECUTIVE_FAILURES:
                self.log(f"{MAX_CONSECUTIVE_FAILURES} trials failed in a row; stopping this "
                         "worker (see 'search status' for the reasons).")
                study.stop()
        else:
            self.failures_in_a_row = 0


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


def run_trials(
    study: optuna.Study,
    objective: Callable[[optuna.Trial], float],
    total: int,
    *,
    storage: optuna.storages.RDBStorage,
    log: Log = print,
    callbacks: Sequence[Callable[[optuna.Study, FrozenTrial], None]] = (),
    stop: Callable[[], bool] = lambda: False,
) -> None:
    """Run trials until the study holds exactly `total` finished trials, beside other workers.

    Exactly, not at least. A worker takes a new trial only while the finished and running
    trials leave a free slot, and it counts and creates that trial under a lock that every
    worker on the storage respects (storage.exclusive), so two workers never both take the
    last slot. The lock is let go in the objective's first line, once the trial exists, so
    trials still train in parallel. A worker that finds every slot taken by running trials
    waits instead of leaving: if one of those workers dies, its trial is failed when its
    heartbeat goes stale, a retry is queued, and a waiting worker runs it.
    """
    grace = storage.grace_period or storage_mod.GRACE_SECONDS
    poll = min(5, storage.heartbeat_interval or 5)
    holder = f"{socket.gethostname()}:{os.getpid()}"
    waiting = False
    while not stop():
        slot = ExitStack()
        slot.enter_context(storage_mod.exclusive(storage.url, f"trials:{study.study_name}",
                                                 storage.engine))
        try:
            for number in recover(study):
                log(f"trial #{number} lost its worker (no heartbeat for {grace} s): failed; "
                    "a retry is queued.")
            states = [t.state for t in study.get_trials(deepcopy=False)]
            done = sum(state in FINISHED for state in states)
            running = states.count(TrialState.RUNNING)
            if done >= total:
                return
            if done + running >= total:
                if not waiting:
                    log(f"{done}/{total} finished; waiting for the {running} running trial(s) "
                        "of other workers (a lost one is retried here).")
                waiting = True
                slot.close()
                time.sleep(poll)
                continue
            waiting = False

            def take(trial: optuna.Trial, slot: ExitStack = slot) -> float:
                slot.close()  # the trial exists: other workers may take theirs
                trial.set_user_attr("worker", holder)
                return objective(trial)

            try:
                study.optimize(
                    take,
                    n_trials=1,
                    catch=(Exception,),  # a failing trial is recorded as FAIL; the worker goes on
                    callbacks=list(callbacks),
                    gc_after_trial=True,
                )
            except optuna.exceptions.UpdateFinishedTrialError:
                # This worker went silent past the grace period (a stalled machine) and
                # another worker failed its trial; that trial's retry is already queued.
                log("This worker's trial was failed by another worker after missed "
                    "heartbeats; going on.")
        finally:
            slot.close()


def run_worker(
    study: optuna.Study,
    preset: Preset,
    total: int,
    *,
    storage: optuna.storages.RDBStorage,
    data_dir: str | None = None,
    log: Log = print,
    threads: int | None = None,
    on_data: Callable[[datasets.Split], None] | None = None,
) -> None:
    """Run trials until the study holds `total` finished (complete or pruned) trials.

    Other workers, in this process's siblings or on other machines, may share the study.
    """
    if finished(study) >= total:
        log(f"Study '{study.study_name}' already has {finished(study)} finished trials "
            f"(of {total}); nothing to do.")
        return
    configure_tensorflow(threads)
    images, labels = datasets.load_train(preset.dataset, data_dir)
    data = datasets.split(images, labels, preset.val_size, preset.train_size)
    if on_data:
        on_data(data)
    log(f"Data: {len(data.x_train):,} training and {len(data.x_val):,} validation images "
        f"of {preset.dataset}.")
    objective = Objective(preset, data, flip=datasets.info(preset.dataset).flip_ok, log=log)
    progress = Progress(total, log)
    with sigterm_as_interrupt():
        run_trials(study, objective, total, storage=storage, log=log, callbacks=[progress],
                   stop=lambda: progress.failures_in_a_row >= MAX_CONSECUTIVE_FAILURES)
