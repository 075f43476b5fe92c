"""How a run ends: a worker's stop rules (ending.Watch) and a run's outcome (ending.of_run)."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from search.run.ending import (
    MAX_CONSECUTIVE_FAILURES,
    MAX_REJECTIONS_IN_A_ROW,
    Ended,
    Ending,
    Outcome,
    Watch,
    of_run,
)
from search.run.sizing import Recycle
from search.store.trials import MAX_TOTAL
from tests.helpers import db_url
from tests.test_progress import trial_that


@pytest.fixture
def sqlite(private_storage: Path) -> str:
    private_storage.mkdir()
    return db_url(private_storage)


def test_a_worker_stops_after_a_run_of_rejections_and_names_the_last_reason(sqlite: str) -> None:
    study = optuna.create_study(storage=sqlite)
    watch = Watch(lambda line: None)
    outcomes = {n: "pruned" for n in range(200)}  # nothing fits
    study.optimize(trial_that(outcomes), n_trials=200, callbacks=[watch])
    assert len(study.trials) == MAX_REJECTIONS_IN_A_ROW
    stopped = watch.due(study)
    assert stopped is not None and stopped.ending is Ending.REJECTIONS and not stopped.ok
    assert "(the last: too big)" in stopped.message and stopped.exit_code == 1
    assert watch.ran == 0  # a rejection builds no model


def test_a_worker_gives_up_after_failures_in_a_row_only(sqlite: str) -> None:
    lines: list[str] = []
    study = optuna.create_study(storage=sqlite)
    watch = Watch(lines.append)
    # Four failures, a success that resets the count, then failures until it gives up.
    outcomes = {n: "fail" for n in range(20) if n != MAX_CONSECUTIVE_FAILURES - 1}
    study.optimize(trial_that(outcomes), n_trials=20, catch=(ValueError,), callbacks=[watch])
    assert watch.failures_in_a_row == MAX_CONSECUTIVE_FAILURES
    assert watch.due(study) == Outcome(Ending.FAILURES)
    assert len(study.trials) == 2 * MAX_CONSECUTIVE_FAILURES  # study.stop() ended optimize
    assert study.trials[MAX_CONSECUTIVE_FAILURES - 1].state == TrialState.COMPLETE
    assert watch.ran == 2 * MAX_CONSECUTIVE_FAILURES  # failures count toward recycling
    assert lines == [
        f"{MAX_CONSECUTIVE_FAILURES} trials failed in a row; stopping this "
        "worker (see 'search status' for the reasons)."
    ]


def test_a_worker_counts_trained_trials_and_retires_when_its_recycling_says(sqlite: str) -> None:
    study = optuna.create_study(storage=sqlite)
    watch = Watch(lambda line: None, Recycle(trials=2))
    study.optimize(trial_that({0: "pruned"}), n_trials=2, callbacks=[watch])
    # The rejection (#0) does not count, so one trained trial: not yet due.
    assert watch.ran == 1 and watch.due(study) is None
    study.optimize(trial_that({}), n_trials=1, callbacks=[watch])
    retired = watch.due(study)
    assert retired is not None and retired.ending is Ending.RETIRED and retired.ok
    assert retired.message.startswith("after 2 trials (its limit), at ")


def test_a_worker_stops_when_the_hours_run_out(sqlite: str) -> None:
    study = optuna.create_study(storage=sqlite)
    watch = Watch(lambda line: None)
    assert watch.due(study) is None
    study.set_user_attr("deadline", (datetime.now() - timedelta(seconds=1)).timestamp())
    assert watch.due(study) == Outcome(Ending.TIME_UP)


def test_a_worker_that_gave_up_says_so_even_when_the_hours_have_run_out(sqlite: str) -> None:
    study = optuna.create_study(storage=sqlite)
    watch = Watch(lambda line: None)
    failing = {n: "fail" for n in range(MAX_CONSECUTIVE_FAILURES)}
    study.optimize(trial_that(failing), n_trials=10, catch=(ValueError,), callbacks=[watch])
    study.set_user_attr("deadline", 0.0)
    assert watch.due(study) == Outcome(Ending.FAILURES)


@pytest.mark.parametrize(
    ("done", "time_up", "ended", "single", "ending", "message"),
    [
        (3, False, Ended(), True, Ending.REACHED, ""),
        (3, True, Ended(errors={0: "boom"}), False, Ending.REACHED, ""),
        (
            1,
            True,
            Ended(),
            True,
            Ending.TIME_UP,
            "Time is up with 1 of 3 trials trained; rerun to go on.",
        ),
        (1, False, Ended(errors={0: "no data"}), True, Ending.WORKER_ERROR, "no data"),
        (
            1,
            True,
            Ended(errors={1: "no data"}),
            False,
            Ending.WORKER_ERROR,
            "Worker 1 stopped: no data",
        ),
        (
            1,
            False,
            Ended(killed=[9]),
            True,
            Ending.KILLED,
            "The worker process was killed by signal 9 with 1 of 3 trials finished; rerun the "
            "command to resume (its trial is retried).",
        ),
        (
            1,
            False,
            Ended(gave_up=[0]),
            True,
            Ending.FAILURES,
            "Stopped with 1 of 3 trials finished because trials kept failing; 'search status' "
            "shows their reasons.",
        ),
        (
            1,
            False,
            Ended(gave_up=[1]),
            False,
            Ending.FAILURES,
            "The workers stopped with 1 of 3 trials finished (see the lines above); rerun the "
            "command to resume.",
        ),
        (
            1,
            False,
            Ended(killed=[9, 9]),
            False,
            Ending.KILLED,
            "The workers stopped with 1 of 3 trials finished (see the lines above); rerun the "
            "command to resume.",
        ),
    ],
)
def test_a_run_ends_in_one_outcome(
    done: int, time_up: bool, ended: Ended, single: bool, ending: Ending, message: str
) -> None:
    outcome = of_run(done, 3, time_up, ended, single=single)
    assert outcome == Outcome(ending, message)
    assert outcome.exit_code == (0 if ending in (Ending.REACHED, Ending.TIME_UP) else 1)


def test_a_search_bounded_by_hours_alone_counts_without_a_total() -> None:
    outcome = of_run(7, MAX_TOTAL, True, Ended(), single=True)
    assert outcome.message == "Time is up with 7 trials trained; rerun to go on."


def test_an_interrupted_run_exits_130() -> None:
    assert Outcome(Ending.INTERRUPTED).exit_code == 130
