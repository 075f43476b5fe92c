"""What a person reads: the line per finished trial, the best trial, and `status`'s table."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import optuna
import pytest
from optuna.trial import FrozenTrial, TrialState, create_trial

from search.run import progress
from search.run.progress import Progress
from search.store.trials import MAX_TOTAL
from tests.helpers import db_url


@pytest.fixture
def sqlite(private_storage: Path) -> str:
    private_storage.mkdir()
    return db_url(private_storage)


def trial_that(outcomes: dict[int, str]) -> object:
    """An objective whose trial n completes, is pruned or fails as outcomes[n] says."""

    def objective(trial: optuna.Trial) -> float:
        n = trial.number
        trial.set_user_attr("architecture", f"C{8 * (n + 1)}k3-F-D32")
        outcome = outcomes.get(n, "complete")
        if outcome == "pruned":
            trial.set_user_attr("reason", "too big")
            raise optuna.TrialPruned()
        if outcome == "fail":
            trial.set_user_attr("reason", "training failed: ValueError: bad")
            raise ValueError("bad")
        trial.set_user_attr("val_loss", 0.5 - n / 10)
        trial.set_user_attr("val_accuracy", 0.8 + n / 100)
        return 0.5 - n / 10

    return objective


def test_one_line_per_finished_trial_with_the_best_so_far(sqlite: str) -> None:
    lines: list[str] = []
    study = optuna.create_study(storage=sqlite)
    study.optimize(
        trial_that({0: "pruned", 2: "fail"}),
        n_trials=4,
        catch=(ValueError,),
        callbacks=[Progress(4, lines.append)],
    )
    # Each line ends with the time (exact figures: the tests of `timing` below).
    assert all(line.rsplit(" | ", 1)[1].startswith("elapsed ") for line in lines)
    assert [line.rsplit(" | ", 1)[0] for line in lines] == [
        # Rejected before training: recorded, not counted.
        "trial 0/4 (#0) REJECTED: too big | C8k3-F-D32",  # nothing has completed yet
        "trial 1/4 (#1) COMPLETE: val_loss 0.4000 val_accuracy 0.8100 | C16k3-F-D32 | "
        "best #1 val_loss 0.4000 val_accuracy 0.8100",
        # A failure is not counted among the finished trials: 1/4 again.
        "trial 1/4 (#2) FAIL: training failed: ValueError: bad | C24k3-F-D32 | "
        "best #1 val_loss 0.4000 val_accuracy 0.8100",
        "trial 2/4 (#3) COMPLETE: val_loss 0.2000 val_accuracy 0.8300 | C32k3-F-D32 | "
        "best #3 val_loss 0.2000 val_accuracy 0.8300",
    ]


def test_summary_and_best_line_read_the_trial_s_record(sqlite: str) -> None:
    study = optuna.create_study(storage=sqlite)
    assert progress.best_line(study) == "No trial has completed yet."
    study.add_trial(create_trial(state=TrialState.PRUNED, user_attrs={"reason": "slow"}))
    study.add_trial(
        create_trial(
            value=0.3,
            user_attrs={
                "val_loss": 0.3,
                "val_accuracy": 0.91,
                "params": 12_345,
                "best_epoch": 2,
                "epochs_trained": 3,
                "architecture": "C8k3-F-D32",
            },
        )
    )
    pruned, done = study.get_trials()
    assert progress.summary(pruned) == {
        "number": 0,
        "state": "PRUNED",
        "val_loss": None,
        "val_accuracy": None,
        "params": None,
        "epochs": 0,
        "seconds": None,
        "architecture": "",
        "reason": "slow",
    }
    assert progress.summary(done)["epochs"] == 3 and progress.summary(done)["reason"] == ""
    assert progress.best_line(study) == (
        "Best: trial #1 val_loss 0.3000 val_accuracy 0.9100 at epoch 2, 12,345 params, C8k3-F-D32"
    )


def test_status_shows_the_table_the_counts_the_best_and_the_test_result(sqlite: str) -> None:
    study = optuna.create_study(storage=sqlite, study_name="one")
    assert list(progress.status_lines(study))[1:] == [
        "Trials: none",
        "No trial has completed yet.",
    ]
    study.optimize(trial_that({0: "pruned", 2: "fail"}), n_trials=3, catch=(ValueError,))
    study.set_user_attr("test_accuracy", 0.9012)
    lines = list(progress.status_lines(study))
    assert lines[0].split() == [
        "#",
        "state",
        "val_loss",
        "val_acc",
        "params",
        "epochs",
        "seconds",
        "architecture",
    ]
    rows = lines[1:4]
    assert rows[0].split()[:7] == ["0", "PRUNED", "-", "-", "-", "0", "0"]
    assert rows[0].endswith("C8k3-F-D32  (too big)")
    assert rows[1].split()[:4] == ["1", "COMPLETE", "0.4000", "0.8100"]
    assert rows[1].endswith("C16k3-F-D32")  # no reason shown for a completed trial
    assert rows[2].endswith("C24k3-F-D32  (training failed: ValueError: bad)")
    assert lines[4:] == [
        "Trials: 1 complete, 1 pruned, 1 fail",
        progress.best_line(study),
        "Retrained: test accuracy 0.9012",
    ]


def test_status_of_a_size_aware_study_lists_the_pareto_front(sqlite: str) -> None:
    study = optuna.create_study(storage=sqlite, directions=["minimize", "minimize"])
    for loss, params in ((0.4, 9000), (0.5, 1000), (0.45, 12_000)):
        study.add_trial(
            create_trial(
                values=[loss, params],
                user_attrs={"val_accuracy": 1 - loss, "architecture": f"C{params}"},
            )
        )
    lines = list(progress.status_lines(study))
    start = lines.index(
        "Pareto front (val_loss against parameters; retrain any with "
        "'search retrain-best --trial N'):"
    )
    assert lines[start + 1 :] == [
        "  #0    val_loss 0.4000  val_accuracy 0.6000       9,000 params  C9000",
        "  #1    val_loss 0.5000  val_accuracy 0.5000       1,000 params  C1000",
    ]
    assert lines[start - 1].startswith("Best: trial #0 val_loss 0.4000")


# The time: elapsed and left, on trials of known start and end ---------------------------------
T0 = datetime(2026, 1, 5, 9, 0, 0)


def minutes(n: float) -> datetime:
    return T0 + timedelta(minutes=n)


def timed(start: float, end: float | None = None, **fields: object) -> FrozenTrial:
    """create_trial's trial, started and ended at these minutes (create_trial stamps now)."""
    trial = create_trial(**fields)  # type: ignore[arg-type]
    trial.datetime_start = minutes(start)
    trial.datetime_complete = None if end is None else minutes(end)
    return trial


def timed_study(sqlite: str, total: int = 10) -> optuna.Study:
    """Trials of 10 and 20 minutes trained, one failed (not counted), one running."""
    study = optuna.create_study(storage=sqlite, study_name="timed")
    study.set_user_attr("trials", total)
    for state, start, end in (
        (TrialState.COMPLETE, 0, 10),
        (TrialState.FAIL, 10, 15),
        (TrialState.PRUNED, 15, 35),
    ):
        study.add_trial(
            timed(
                start,
                end,
                state=state,
                value=0.3 if state == TrialState.COMPLETE else None,
                intermediate_values={0: 0.3},  # an epoch trained: the pruned trial counts
                user_attrs={"architecture": "C8k3-F-D32", "val_loss": 0.3, "val_accuracy": 0.9},
            )
        )
    study.add_trial(timed(35, state=TrialState.RUNNING))
    return study


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (-5, "0s"),
        (0, "0s"),
        (59.9, "59s"),
        (60, "1m"),
        (3599, "59m"),
        (3600, "1h 00m"),
        (3600 * 5 + 65, "5h 01m"),
        (86_399, "23h 59m"),
        (86_400, "1d 00h"),
        (86_400 * 3 + 3600 * 7 + 59, "3d 07h"),
    ],
)
def test_durations_read_as_a_person_plans(seconds: float, text: str) -> None:
    assert progress.duration(timedelta(seconds=seconds)) == text


def test_each_trial_line_ends_with_the_time_elapsed_and_left(sqlite: str) -> None:
    study = timed_study(sqlite)
    lines: list[str] = []
    watch = Progress(10, lines.append, now=lambda: minutes(45))
    watch(study, study.trials[2])  # the pruned trial has just been recorded
    # Mean of the finished trials 15 min; 8 left; this worker and the running one: 2 at once.
    assert lines == [
        "trial 2/10 (#2) PRUNED | C8k3-F-D32 | best #0 val_loss 0.3000 val_accuracy 0.9000"
        " | elapsed 45m, ~1h 00m left"
    ]
    # A rejection counts neither toward the total, the mean, nor this worker's trials.
    study.add_trial(timed(45, 45, state=TrialState.PRUNED, user_attrs={"reason": "too big"}))
    watch(study, study.trials[-1])
    assert lines[-1] == (
        "trial 2/10 (#4) REJECTED: too big |  | best #0 val_loss 0.3000 val_accuracy 0.9000"
        " | elapsed 45m, ~1h 00m left"
    )


def test_the_estimate_shares_the_trials_left_among_at_most_that_many_workers(
    sqlite: str,
) -> None:
    study = timed_study(sqlite)
    trials = study.get_trials()
    at = minutes(45)
    assert progress.timing(trials, 10, 1, at) == "elapsed 45m, ~2h 00m left"  # 8 x 15 min
    assert progress.timing(trials, 10, 4, at) == "elapsed 45m, ~30m left"
    # 2 left: 2 workers at most are busy, however many there are.
    assert progress.timing(trials, 4, 16, at) == "elapsed 45m, ~15m left"
    assert progress.timing(trials, 2, 2, at) == "elapsed 45m"  # nothing left to estimate
    # Nothing finished yet: no mean to estimate from.
    running = [t for t in trials if t.state == TrialState.RUNNING]
    assert progress.timing(running, 10, 1, at) == "elapsed 10m"
    assert progress.timing([], 10, 1, at) == ""


def test_with_hours_the_estimate_ends_at_the_deadline_and_a_mean_trial(sqlite: str) -> None:
    trials = timed_study(sqlite).get_trials()
    at = minutes(45)
    # 8 trials of 15 min left would take 2 h; the deadline comes 20 min from now, and the
    # trials running then finish within a mean trial (15 min).
    assert progress.timing(trials, 10, 1, at, minutes(65)) == "elapsed 45m, ~35m left"
    assert progress.timing(trials, 10, 1, at, minutes(30)) == "elapsed 45m, ~15m left"
    assert progress.timing(trials, 10, 1, at, minutes(600)) == "elapsed 45m, ~2h 00m left"
    assert progress.of_total(3, 50) == "3/50" and progress.of_total(3, MAX_TOTAL) == "3"
    assert progress.of_total(3, 50, sep=" of ") == "3 of 50"
    assert progress.of_total(3, MAX_TOTAL, sep=" of ") == "3"


def test_status_shows_the_time_while_trials_run(sqlite: str) -> None:
    study = timed_study(sqlite)
    lines = list(progress.status_lines(study, now=minutes(95)))
    # One trial running: 8 trials of 15 min left, one at a time.
    assert lines[5:7] == [
        "Trials: 1 running, 1 complete, 1 pruned, 1 fail",
        "Running: 1 trial(s) now; elapsed 1h 35m, ~2h 00m left.",
    ]
    study.tell(study.trials[3].number, state=TrialState.FAIL)
    assert not any(line.startswith("Running:") for line in progress.status_lines(study))


# On a ladder: first looks first, full runs later ---------------------------------------------
LADDER = progress.LadderPlan(costs=(0.3, 1.0, 8.0), reduction=3)  # 0.1x3, 0.25x4, 8 epochs


def rung(share: float, epochs: int, **more: object) -> dict[str, object]:
    return {
        "share": share,
        "epochs": epochs,
        "val_loss": 0.5,
        "val_accuracy": 0.8,
        "seconds": 60.0 * share * epochs * 10,  # 10 min a pass
        **more,
    }


def first_looks(study: optuna.Study, starts: tuple[float, ...] = (0, 3)) -> optuna.Study:
    """First looks stopped after rung 1: 0.3 passes in 3 min each, 10 min a pass."""
    for start in starts:
        study.add_trial(
            timed(
                start,
                start + 3,
                state=TrialState.PRUNED,
                intermediate_values={1: 0.5},
                user_attrs={"rungs": [rung(0.1, 3)], "epochs_trained": 3},
            )
        )
    return study


def ladder_study(sqlite: str) -> optuna.Study:
    """Two first looks stopped after rung 1, and a third running since minute 6."""
    study = first_looks(optuna.create_study(storage=sqlite, study_name="ladder"))
    study.add_trial(timed(6, state=TrialState.RUNNING))
    return study


def test_on_a_ladder_first_looks_do_not_make_the_estimate_short(sqlite: str) -> None:
    trials = ladder_study(sqlite).get_trials()
    at = minutes(8)
    # A mean of the two first looks (3 min) says 8 more take 24 min, though a share of the
    # configurations climbs to rung 2 and a share of those trains 8 full epochs.
    assert progress.timing(trials, 10, 1, at) == "elapsed 8m, ~24m left"
    # Climb rates with no climb yet: (0 + 1) / (2 + 3) at rung 1, (0 + 1) / (0 + 3) at
    # rung 2, so a configuration takes 0.3 + 0.2 x 1 + 0.2 / 3 x 8 = 1.033 passes. The
    # running one has 1 min of its first look left and 7.33 min after it; 7 more take
    # 72.33 min at 10 min a pass: 80.7 min on one worker, 40.3 on two.
    assert progress.timing(trials, 10, 1, at, ladder=LADDER) == "elapsed 8m, ~1h 20m left"
    assert progress.timing(trials, 10, 2, at, ladder=LADDER) == "elapsed 8m, ~40m left"


def test_climb_rates_are_the_study_s_own(sqlite: str) -> None:
    study = first_looks(optuna.create_study(storage=sqlite, study_name="rates"), starts=(0,))
    for start in (3, 6):  # two whole climbs
        study.add_trial(
            timed(
                start,
                start + 3,
                state=TrialState.COMPLETE,
                value=0.3,
                user_attrs={"rungs": [rung(0.1, 3), rung(0.25, 4)], "epochs_trained": 8},
            )
        )
    # In its second rung now: it went on from rung 1.
    study.add_trial(timed(9, state=TrialState.RUNNING, user_attrs={"rungs": [rung(0.1, 3)]}))
    climbs = LADDER.climbs(study.get_trials(), minutes(10))
    # Rung 1: 3 of 4 went on, (3 + 1) / (4 + 3); rung 2: 2 of 2, (2 + 1) / (2 + 3).
    assert LADDER.climb_rates(climbs) == pytest.approx((4 / 7, 3 / 5))
    assert LADDER.passes(1) == pytest.approx(0.3 + 1 / 3 + 8 / 9)  # 1/reduction a rung


def test_a_continuation_counts_only_what_it_trained_itself(sqlite: str) -> None:
    study = first_looks(optuna.create_study(storage=sqlite, study_name="climbed"))
    # #0 climbed later: #2 carried its rung 1 over, trained rung 2 (1 pass) and the full
    # run (8 passes) in 90 minutes, 10 min a pass like the first looks.
    study.add_trial(
        timed(
            8,
            98,
            state=TrialState.COMPLETE,
            value=0.3,
            user_attrs={
                "resumes": 0,
                "origin": 0,
                "rungs": [rung(0.1, 3, **{"from": 0}), rung(0.25, 4)],
                "epochs_trained": 8,
            },
        )
    )
    trials = study.get_trials()
    assert progress.trained_passes(trials[2]) == 9.0
    # Two configurations: #0's climb is whole, #1 stopped at rung 1. Rates (1 + 1) / (2 + 3)
    # and (1 + 1) / (1 + 3): 0.3 + 0.4 + 0.4 x 0.5 x 8 = 2.3 passes for each of 8 more.
    assert progress.timing(trials, 10, 1, minutes(98), ladder=LADDER) == (
        "elapsed 1h 38m, ~3h 04m left"
    )
    # Every configuration in and none climbing: nothing is left to estimate.
    assert progress.timing(trials, 2, 1, minutes(98), ladder=LADDER) == "elapsed 1h 38m"


def test_each_configuration_s_pace_counts_once_however_many_passes_it_trained(
    sqlite: str,
) -> None:
    study = first_looks(optuna.create_study(storage=sqlite, study_name="paces"), starts=(0,))
    # A dear network's first look, 10 min a pass; a cheap one's whole climb, 1 min a pass.
    study.add_trial(
        timed(
            0,
            9.3,
            state=TrialState.COMPLETE,
            value=0.3,
            user_attrs={"rungs": [rung(0.1, 3), rung(0.25, 4)], "epochs_trained": 8},
        )
    )
    # 8 more configurations of 2.3 passes (rates 0.4 and 0.5) at (10 + 1) / 2 min a pass:
    # 101 min, where the pace of all passes together (12.3 min / 9.6) would say 24.
    assert progress.timing(study.get_trials(), 10, 1, minutes(10), ladder=LADDER) == (
        "elapsed 10m, ~1h 41m left"
    )


def test_on_a_ladder_a_deadline_ends_the_estimate_a_full_run_later(sqlite: str) -> None:
    trials = ladder_study(sqlite).get_trials()
    # 184 min of training left for 20 configurations; the deadline is 12 min away, and a
    # full run started just before it takes 8 passes at 10 min a pass.
    assert progress.timing(trials, 20, 1, minutes(8), None, LADDER) == ("elapsed 8m, ~3h 04m left")
    assert progress.timing(trials, 20, 1, minutes(8), minutes(20), LADDER) == (
        "elapsed 8m, ~1h 32m left"
    )


def test_a_diverged_trial_leaves_the_pace_alone(sqlite: str) -> None:
    study = ladder_study(sqlite)
    # Diverged in its second rung after an hour: that rung is in its time, not its rungs.
    study.add_trial(
        timed(
            6,
            66,
            state=TrialState.PRUNED,
            intermediate_values={1: 0.5},
            user_attrs={
                "rungs": [rung(0.1, 3)],
                "epochs_trained": 2,
                "reason": "the loss became NaN or infinite at epoch 2",
            },
        )
    )
    # Still 10 min a pass (its own pace, 200 min, would make the mean 73). Rates 1/6 and
    # 1/3: 0.911 passes a configuration; the running one (an hour in its first look) has
    # 6.1 min left after it, and 6 more take 54.7 min.
    assert progress.timing(study.get_trials(), 10, 1, minutes(66), ladder=LADDER) == (
        "elapsed 1h 06m, ~1h 00m left"
    )


def test_with_no_pruner_every_configuration_climbs_every_rung() -> None:
    from dataclasses import replace

    from search.define import presets

    preset = replace(presets.load_preset("fashion_mnist"), pruner="none")
    plan = progress.LadderPlan.of(preset)
    assert plan is not None and plan.reduction == 1
    assert plan.passes(2) == pytest.approx(2 * sum(plan.costs))


def test_a_preset_s_ladder_and_the_status_of_a_ladder_study(sqlite: str) -> None:
    from search.define import presets

    preset = presets.load_preset("fashion_mnist")
    plan = progress.LadderPlan.of(preset)
    assert plan is not None
    assert plan.costs == tuple(r.cost for r in preset.rungs) + (float(preset.epochs),)
    assert plan.reduction == preset.pruner_reduction
    assert progress.LadderPlan.of(presets.load_preset("mnist")) is None
    study = ladder_study(sqlite)
    study.set_user_attr("trials", 10)
    study.set_user_attr("preset", preset.to_json())
    running = next(line for line in progress.status_lines(study) if line.startswith("Running"))
    # The running trial started long ago: its first look counts as done.
    expected = progress.timing(study.get_trials(), 10, 1, datetime.now(), ladder=plan)
    assert "left" in expected and running.endswith(expected.split(", ")[1] + ".")
