"""The worker loop: run one study's trials to its exact total, beside other workers."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.define import datasets
from search.define.presets import ENQUEUED, Preset
from search.errors import Log
from search.run import interrupt
from search.run.ending import Ending, Outcome, Watch
from search.run.objective import Objective
from search.run.progress import LadderPlan, Progress
from search.run.sizing import Recycle
from search.store import faults
from search.store import storage as storage_mod
from search.store.pruners import Ladder, climbs_left, origin
from search.store.trials import ORIGIN, RESUMES, counted, finished, first_look, recover
from search.train.runtime import configure, devices, resident_memory

Callback = Callable[[optuna.Study, FrozenTrial], None]
TrialFunction = Callable[[optuna.Trial], float | Sequence[float]]


@dataclass(frozen=True)
class Slots:
    """What a worker finds under the trial lock: the configurations finished and running, the
    slots left for new ones, and whether a continuation waits to climb (see _climb)."""

    done: int
    running: int
    free: int
    climb: bool = False


def _free_slots(study: optuna.Study, total: int) -> Slots:
    """Count the study's trials; a continuation takes no slot, its configuration has one."""
    trials = study.get_trials(deepcopy=False)
    done = counted(trials)
    running = sum(t.state == TrialState.RUNNING and first_look(t) for t in trials)
    waiting = [t for t in trials if t.state == TrialState.WAITING]
    # Optuna runs the oldest waiting trial first: a continuation goes beyond the total only
    # when no first look waits before it, as one may where the total is below the preset's
    # enqueued runs.
    climb = bool(waiting) and not any(first_look(t) for t in waiting)
    return Slots(done, running, total - done - running, climb)


def _climb(study: optuna.Study, ladder: Ladder | None, log: Log) -> None:
    """Queue a continuation of each trial stopped at a rung that its peers have since made
    one of the best (pruners.Ladder); it carries the trial's kind (a start, a lab run)."""
    if ladder is None:
        return
    for trial in ladder.due(study.get_trials(deepcopy=False)):
        kinds = {k: trial.user_attrs[k] for k in ENQUEUED if k in trial.user_attrs}
        study.enqueue_trial(
            trial.params, user_attrs={RESUMES: trial.number, ORIGIN: origin(trial), **kinds}
        )
        rungs = len(trial.user_attrs.get("rungs") or [])
        log(f"trial #{trial.number} is now among the best at rung {rungs}: queued to climb on.")


def _run_one(
    study: optuna.Study,
    objective: TrialFunction,
    slot: ExitStack,
    callbacks: Sequence[Callback],
    log: Log,
) -> None:
    """Run one trial; the slot's lock is let go as soon as the trial exists."""
    holder = f"{socket.gethostname()}:{os.getpid()}"
    taken: list[int] = []
    told: list[int] = []  # the callbacks run once the trial's result is recorded

    def take(trial: optuna.Trial) -> float | Sequence[float]:
        slot.close()  # the trial exists: other workers may take theirs
        taken.append(trial.number)
        trial.set_user_attr("worker", holder)
        # The worker's memory as the trial starts: how it grows shows in the dashboard.
        trial.set_user_attr("worker_rss_mb", round((resident_memory() or 0) / 2**20))
        return objective(trial)

    try:
        study.optimize(
            take,
            n_trials=1,
            catch=(Exception,),  # a failing trial is recorded as FAIL; the worker goes on
            callbacks=[lambda study, trial: told.append(trial.number), *callbacks],
            gc_after_trial=True,
        )
    except (optuna.exceptions.UpdateFinishedTrialError, ValueError, AssertionError):
        # This worker went silent past the grace period (a stalled machine) and another
        # worker failed its trial; that trial's retry is already queued. What Optuna raises
        # depends on the moment this worker wakes: "Cannot tell a FAIL trial." (ValueError)
        # after a write inside the trial, its own AssertionError if the trial had just
        # returned. Only a trial whose result was never told, and that the storage holds as
        # failed, is that case.
        if (
            told
            or not taken
            or study.get_trials(deepcopy=False)[taken[0]].state != TrialState.FAIL
        ):
            raise
        log("This worker's trial was failed by another worker after missed heartbeats; going on.")


def _recover(study: optuna.Study, grace: int, log: Log) -> None:
    for number in recover(study):
        log(
            f"trial #{number} lost its worker (no heartbeat for {grace} s): failed; "
            "a retry is queued."
        )


def _take_slot(
    study: optuna.Study,
    storage: optuna.storages.RDBStorage,
    total: int,
    grace: int,
    log: Log,
    ladder: Ladder | None = None,
) -> tuple[ExitStack, Slots]:
    """Take the trial lock, fail lost trials, queue the climbs that are due, and count; the
    lock is held by the stack returned, and let go at once if any of it fails, so that the
    whole of it can be tried again."""
    slot = ExitStack()
    try:
        slot.enter_context(
            storage_mod.exclusive(storage.url, f"trials:{study.study_name}", storage.engine)
        )
        _recover(study, grace, log)
        _climb(study, ladder, log)
        return slot, _free_slots(study, total)
    except BaseException:
        slot.close()
        raise


def _sleep(seconds: float) -> None:
    """A wait between storage retries that a stop cuts short."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        interrupt.check()
        time.sleep(min(left, 0.5))


def run_trials(
    study: optuna.Study,
    objective: TrialFunction,
    total: int,
    *,
    storage: optuna.storages.RDBStorage,
    log: Log = print,
    callbacks: Sequence[Callback] = (),
    stop: Callable[[], Outcome | None] = lambda: None,
    ladder: Ladder | None = None,
) -> Outcome:
    """Run trials until the study holds exactly `total` finished trials, beside other workers,
    or until `stop` gives a reason to stop before the next one; return how it ended.

    With a `ladder`, trials that it finds due to climb are queued as continuations and run
    first, after the total too: the total counts configurations, and a continuation goes on
    with one that has already counted.

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
    waiting = False
    retrying = faults.retrying(log, sleep=_sleep)
    while (stopped := stop()) is None:
        interrupt.check()  # a deferred stop, or one whose raise was swallowed, ends it here
        # A server restarting or a lock held a moment too long passes: try again a few times.
        slot, slots = retrying(_take_slot, study, storage, total, grace, log, ladder)
        with slot:
            if slots.done >= total and not slots.climb:
                return Outcome(Ending.REACHED)
            if slots.free <= 0 and not slots.climb:
                if not waiting:
                    log(
                        f"{slots.done}/{total} finished; waiting for the {slots.running} "
                        "running trial(s) of other workers (a lost one is retried here)."
                    )
                waiting = True
                slot.close()
                time.sleep(poll)
                continue
            waiting = False
            _run_one(study, objective, slot, callbacks, log)
    return stopped


def _load(preset: Preset, data_dir: Path | None, log: Log) -> datasets.Split:
    """The preset's training and validation images, loaded once for this worker's trials."""
    images, labels = datasets.load_train(preset.dataset, data_dir)
    data = datasets.split(images, labels, preset.val_size, preset.train_size)
    log(
        f"Data: {len(data.x_train):,} training and {len(data.x_val):,} validation images "
        f"of {preset.dataset}."
    )
    return data


def run_worker(
    study: optuna.Study,
    preset: Preset,
    total: int,
    *,
    storage: optuna.storages.RDBStorage,
    data_dir: Path | None = None,
    log: Log = print,
    threads: int | None = None,
    cpus: Sequence[int] = (),
    on_data: Callable[[datasets.Split], None] | None = None,
    recycle: Recycle | None = None,
) -> Outcome:
    """Run trials until the study holds `total` finished (complete or pruned) trials, or
    until this worker stops (ending.Watch says when); return how it ended.

    Other workers, in this process's siblings or on other machines, may share the study.
    With `recycle`, stop early when this process is due to make way for a fresh one, between
    trials (the outcome says why).
    """
    if finished(study) >= total and not climbs_left(study):
        log(
            f"Study '{study.study_name}' already has {finished(study)} finished trials "
            f"(of {total}); nothing to do."
        )
        return Outcome(Ending.REACHED)
    configure(threads, cpus)
    log(f"Backend: {devices()}")
    data = _load(preset, data_dir, log)
    if on_data:
        on_data(data)
    objective = Objective(preset, data, log=log)
    watch = Watch(log, recycle)
    # Deferred: trials write to the storage between batches, and a stop must not land mid-write.
    with interrupt.sigterm_as_interrupt(deferred=True):
        return run_trials(
            study,
            objective,
            total,
            storage=storage,
            log=log,
            callbacks=[Progress(total, log, ladder=LadderPlan.of(preset)), watch],
            stop=lambda: watch.due(study),
            ladder=pruner if isinstance(pruner := study.pruner, Ladder) else None,
        )
