"""The worker loop: exactly the study's total, beside other workers, on real storages.

The loop is tested the way Optuna tests its storages: several processes start at the same
moment on a fresh database. The same loop in one process shows each rule on its own: failures
do not count, a dead worker's trial is retried, SIGTERM is an interrupt.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import random
import re
import socket
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from search.define import datasets, presets
from search.run import interrupt, loop
from search.run.ending import MAX_REJECTIONS_IN_A_ROW, Ending, Outcome
from search.store import storage, study
from search.store.trials import finished, recover, trained
from tests.helpers import (
    HEARTBEAT,
    check_exact,
    db_url,
    swallow_an_interrupt,
    write_preset,
)

pytestmark = pytest.mark.usefixtures("short_heartbeat")  # a dead worker's trial fails in 4 s


def quick_trial(trial: optuna.Trial) -> float:
    """Writes what a real trial writes, with some failed and pruned trials, but trains nothing.

    Which trials fail or are pruned follows the trial's number, not the sampler, so that every
    race has both, whatever the workers' seeds suggest.
    """
    x = trial.suggest_float("x", -1, 1)
    for step in range(3):
        time.sleep(random.uniform(0, 0.03))
        trial.report(x * x, step)
        trial.set_user_attr("epochs_trained", step + 1)
    if trial.number % 7 == 3:
        raise ValueError("a configuration that fails")  # FAIL: not counted, the worker goes on
    if trial.number % 5 == 2:
        raise optuna.TrialPruned()
    return x * x


def join_and_run(
    url: str, preset: str, total: int, ready: object, results: multiprocessing.Queue
) -> None:
    """One worker process: open the storage, create or join the study, run trials."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        ready.wait()  # type: ignore[attr-defined]  # all processes hit the fresh database at once
        rdb = storage.open_storage(url)
        s = study.prepare(presets.load_preset(preset), storage=rdb, name="race").study
        loop.run_trials(s, quick_trial, total, storage=rdb, log=lambda line: None)
        results.put("ok")
    except BaseException as e:  # reported to the test, whatever it is
        results.put(f"{type(e).__name__}: {e}")


def race(url: str, preset: Path, processes: int, total: int) -> list[optuna.trial.FrozenTrial]:
    context = multiprocessing.get_context("spawn")
    ready = context.Barrier(processes)
    results: multiprocessing.Queue = context.Queue()
    started = [
        context.Process(target=join_and_run, args=(url, str(preset), total, ready, results))
        for _ in range(processes)
    ]
    for p in started:
        p.start()
    outcomes = [results.get(timeout=180) for _ in started]
    for p in started:
        p.join(timeout=30)
    assert outcomes == ["ok"] * processes  # no storage error in any worker
    assert [p.exitcode for p in started] == [0] * processes
    return optuna.load_study(study_name="race", storage=url).get_trials()


def test_six_workers_on_a_fresh_postgresql_database_stop_at_exactly_the_total(
    pg_url: str, tmp_path: Path
) -> None:
    trials = race(pg_url, write_preset(tmp_path), processes=6, total=30)
    check_exact(trials, 30)
    assert any(t.state == TrialState.FAIL for t in trials)  # failures were not counted...
    assert any(t.state == TrialState.PRUNED for t in trials)  # ...pruned trials were


def test_four_workers_on_one_sqlite_file_stop_at_exactly_the_total(
    private_storage: Path, tmp_path: Path
) -> None:
    trials = race(db_url(private_storage), write_preset(tmp_path), processes=4, total=16)
    check_exact(trials, 16)


# One worker in this process ------------------------------------------------------------------
@pytest.fixture
def rdb(private_storage: Path) -> optuna.storages.RDBStorage:
    return storage.open_storage(db_url(private_storage))


def scripted(outcomes: dict[int, str]) -> Callable[[optuna.Trial], float]:
    """An objective whose trial n completes, is pruned, rejected or fails as outcomes[n] says.

    A pruned trial reported an epoch first; a rejected one ended before training.
    """

    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", 0, 1)
        outcome = outcomes.get(trial.number, "complete")
        if outcome == "fail":
            raise ValueError("a configuration that fails")
        if outcome == "rejected":
            trial.set_user_attr("reason", "over the budget")
            raise optuna.TrialPruned()
        trial.report(x, 0)
        if outcome == "pruned":
            raise optuna.TrialPruned()
        return x

    return objective


def test_one_worker_runs_to_the_total_and_failures_and_rejections_do_not_count(
    rdb: optuna.storages.RDBStorage,
) -> None:
    s = optuna.create_study(storage=rdb, study_name="alone")
    seen: list[int] = []
    objective = scripted({1: "fail", 2: "pruned", 3: "rejected"})
    loop.run_trials(
        s,
        objective,
        3,
        storage=rdb,
        log=print,
        callbacks=[lambda _, trial: seen.append(trial.number)],
    )
    assert [t.state for t in s.trials] == [
        TrialState.COMPLETE,
        TrialState.FAIL,
        TrialState.PRUNED,
        TrialState.PRUNED,
        TrialState.COMPLETE,
    ]
    assert [trained(t) for t in s.trials] == [True, False, True, False, True]
    assert seen == [0, 1, 2, 3, 4]  # every trial reached the callbacks, the failure too
    assert {t.user_attrs["worker"] for t in s.trials} == {f"{socket.gethostname()}:{os.getpid()}"}
    assert loop.run_trials(s, objective, 3, storage=rdb) == Outcome(Ending.REACHED)  # at its total
    assert len(s.trials) == 5
    loop.run_trials(s, objective, 5, storage=rdb)  # a larger total: only the remainder
    assert finished(s) == 5 and len(s.trials) == 7


def test_stop_ends_the_loop_between_trials(rdb: optuna.storages.RDBStorage) -> None:
    s = optuna.create_study(storage=rdb, study_name="stopped")
    stopped = Outcome(Ending.TIME_UP)
    ended = loop.run_trials(
        s, scripted({}), 10, storage=rdb, stop=lambda: stopped if len(s.trials) >= 2 else None
    )
    assert ended is stopped
    assert len(s.trials) == 2


def test_a_trial_whose_worker_fell_silent_is_failed_and_run_again(
    rdb: optuna.storages.RDBStorage,
) -> None:
    s = optuna.create_study(storage=rdb, study_name="orphan")
    with warnings.catch_warnings():  # Optuna warns that heartbeats go with optimize()
        warnings.simplefilter("ignore")
        orphan = s.ask()
    orphan.suggest_float("x", 0, 1)
    started = time.monotonic()
    rdb.record_heartbeat(orphan._trial_id)  # one heartbeat, then its worker died
    lines: list[str] = []
    loop.run_trials(s, scripted({}), 1, storage=rdb, log=lines.append)
    assert time.monotonic() - started >= 4  # not before the grace period
    assert lines[0] == (
        "0/1 finished; waiting for the 1 running trial(s) of other workers (a "
        "lost one is retried here)."
    )
    assert "trial #0 lost its worker (no heartbeat for 4 s): failed; a retry is queued." in lines
    dead, retry = s.trials
    assert dead.state == TrialState.FAIL and retry.state == TrialState.COMPLETE
    assert retry.system_attrs["failed_trial"] == 0 and retry.params == dead.params


def test_a_trial_whose_worker_died_before_its_first_heartbeat_is_failed_and_run_again(
    rdb: optuna.storages.RDBStorage, private_storage: Path
) -> None:
    """A worker killed between ask() and its first heartbeat leaves a RUNNING trial with no
    heartbeat row, which Optuna's stale check skips: it would hold the last slot for good."""
    s = optuna.create_study(storage=rdb, study_name="unbeaten")
    plain = optuna.storages.RDBStorage(db_url(private_storage))  # no heartbeats: none written
    dying = optuna.load_study(study_name="unbeaten", storage=plain)
    orphan = dying.ask()
    orphan.suggest_float("x", 0, 1)
    time.sleep(float(HEARTBEAT[storage.ENV_GRACE]) + 1)  # its worker died; the grace passed
    young = dying.ask()  # another worker's trial, not yet beating: within its grace period
    assert recover(s) == [orphan.number]
    dead, alive, retry = s.trials
    assert dead.state == TrialState.FAIL and alive.state == TrialState.RUNNING
    assert retry.state == TrialState.WAITING and retry.params == dead.params
    assert retry.system_attrs["failed_trial"] == orphan.number
    assert recover(s) == []  # failed once, retried once
    dying.tell(young, 0.5)
    plain.remove_session()
    deadline = time.monotonic() + 30  # a slot held forever would wait here, not hang the test
    ended = loop.run_trials(
        s,
        scripted({}),
        2,
        storage=rdb,
        stop=lambda: Outcome(Ending.TIME_UP) if time.monotonic() > deadline else None,
    )
    assert ended.ending == Ending.REACHED
    assert [t.state for t in s.trials] == [TrialState.FAIL] + [TrialState.COMPLETE] * 2
    assert s.trials[2].params == dead.params


@pytest.mark.parametrize("writes_again", [True, False], ids=["then-reports", "then-returns"])
def test_a_worker_whose_trial_another_worker_failed_goes_on(
    rdb: optuna.storages.RDBStorage, writes_again: bool
) -> None:
    """A worker that stalled past the grace period finds its trial failed by another worker,
    whether its next write is an epoch's report or the trial's result: it goes on."""
    s = optuna.create_study(storage=rdb, study_name="stalled")

    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", 0, 1)
        if trial.number == 0:  # what another worker's check of stale heartbeats does
            rdb.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
            if writes_again:
                trial.report(x, 0)
        return x

    lines: list[str] = []
    loop.run_trials(s, objective, 1, storage=rdb, log=lines.append)
    assert lines == [
        "This worker's trial was failed by another worker after missed heartbeats; going on."
    ]
    assert [t.state for t in s.trials] == [TrialState.FAIL, TrialState.COMPLETE]


def test_an_interrupt_swallowed_mid_trial_stops_the_loop_before_the_next_trial(
    rdb: optuna.storages.RDBStorage,
) -> None:
    s = optuna.create_study(storage=rdb, study_name="x")
    calls: list[int] = []

    def objective(trial: optuna.Trial) -> float:
        calls.append(trial.number)
        swallow_an_interrupt()  # as if SIGTERM came while a GC callback ran in the trial
        return 1.0

    with pytest.raises(KeyboardInterrupt), interrupt.sigterm_as_interrupt():
        loop.run_trials(s, objective, 5, storage=rdb)
    assert calls == [0]
    assert [t.state for t in s.trials] == [TrialState.COMPLETE]


def test_a_worker_at_the_total_does_not_load_the_data(
    rdb: optuna.storages.RDBStorage, tmp_path: Path
) -> None:
    preset = presets.load_preset(write_preset(tmp_path))
    s = study.prepare(preset, storage=rdb, name="tiny").study
    for value in (0.5, 0.4):
        s.add_trial(optuna.create_trial(value=value))
    lines: list[str] = []
    loop.run_worker(
        s, preset, 2, storage=rdb, data_dir=tmp_path / "nowhere", log=lines.append
    )  # a data folder that is not there is never read
    assert lines == ["Study 'tiny' already has 2 finished trials (of 2); nothing to do."]


def test_a_worker_loads_its_data_once_and_runs_real_trials(
    rdb: optuna.storages.RDBStorage, tmp_path: Path, fashion_dir: Path
) -> None:
    preset = dataclasses.replace(presets.load_preset(write_preset(tmp_path, "small")), epochs=1)
    s = study.prepare(preset, storage=rdb, name="tiny").study  # lab test 9 first
    lines: list[str] = []
    loaded: list[datasets.Split] = []
    loop.run_worker(s, preset, 1, storage=rdb, log=lines.append, threads=1, on_data=loaded.append)
    assert len(loaded) == 1 and (len(loaded[0].x_train), len(loaded[0].x_val)) == (2000, 1000)
    assert "Data: 2,000 training and 1,000 validation images of fashion_mnist." in lines
    assert lines[-1].startswith("trial 1/1 (#0) COMPLETE: val_loss ")
    first = s.trials[0]
    assert first.user_attrs["baseline"] == "lab test 9" and first.state == TrialState.COMPLETE
    assert first.user_attrs["val_accuracy"] > 0.5  # chance is 0.1


def test_rejected_networks_are_recorded_but_the_total_counts_trained_trials(
    rdb: optuna.storages.RDBStorage, tmp_path: Path, fashion_dir: Path
) -> None:
    """Both lab runs are over a budget of 100,000 parameters: the study still trains three."""
    preset = dataclasses.replace(
        presets.load_preset(write_preset(tmp_path, "small", "over_budget")), epochs=1
    )
    s = study.prepare(preset, storage=rdb, name="tiny").study
    lines: list[str] = []
    loop.run_worker(s, preset, 3, storage=rdb, log=lines.append, threads=1)
    ran = [t for t in s.trials if trained(t)]
    rejected = [t for t in s.trials if t.state == TrialState.PRUNED and not trained(t)]
    assert len(ran) == 3 == finished(s)
    assert len(rejected) >= 2  # at least the two lab runs, each with its reason
    assert all("exceed the budget of 100,000" in t.user_attrs["reason"] for t in rejected)
    assert all(t.user_attrs["epochs_trained"] >= 1 for t in ran)
    assert any(" REJECTED: " in line for line in lines)
    assert sum(line.startswith("trial 3/3 ") for line in lines) == 1


def test_a_budget_that_nothing_fits_stops_after_a_bounded_run_of_rejections(
    rdb: optuna.storages.RDBStorage, tmp_path: Path, fashion_dir: Path
) -> None:
    preset = dataclasses.replace(
        presets.load_preset(write_preset(tmp_path, "small")), max_params=1000
    )
    s = study.prepare(preset, storage=rdb, name="tiny").study
    outcome = loop.run_worker(s, preset, 3, storage=rdb, log=lambda line: None, threads=1)
    assert outcome.ending is Ending.REJECTIONS and not outcome.ok
    assert re.search(r"The last 50 configurations .* budget of 1,000", outcome.message)
    assert len(s.trials) == MAX_REJECTIONS_IN_A_ROW  # no trial trained, no endless loop
    assert finished(s) == 0


def test_an_error_after_the_trial_is_recorded_is_not_taken_for_a_lost_trial(
    rdb: optuna.storages.RDBStorage,
) -> None:
    s = optuna.create_study(storage=rdb, study_name="told")

    def broken(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        raise ValueError("a callback that fails")

    with pytest.raises(ValueError, match="a callback that fails"):
        loop.run_trials(s, scripted({0: "fail"}), 1, storage=rdb, callbacks=[broken])
    assert [t.state for t in s.trials] == [TrialState.FAIL]
