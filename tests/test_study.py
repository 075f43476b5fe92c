"""Studies: creating, resuming and finding them, on real SQLite files, without the CLI.

What the commands print about the same policies is in test_cli.py and test_errors.py.
"""

from __future__ import annotations

import dataclasses
import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from optuna.trial import TrialState, create_trial

from search.define import presets
from search.define.presets import Preset
from search.define.space import Config, Conv
from search.store import storage, study
from search.store.pruners import Behind
from search.store.storage import StorageError
from search.store.trials import (
    INTERRUPTED,
    StudyError,
    best,
    config_of,
    counts,
    finished,
    pareto,
    stored_total,
)
from tests.helpers import db_url, popen, run, write_preset


@pytest.fixture
def tiny(tmp_path: Path) -> Preset:
    return presets.load_preset(write_preset(tmp_path))


def finish(s: optuna.Study, *values: float) -> None:
    """Add completed trials of these values (the baselines stay queued)."""
    for value in values:
        s.add_trial(create_trial(value=value, params={}, distributions={}))


def test_a_new_study_starts_from_the_lab_s_runs(tiny: Preset, private_storage: Path) -> None:
    run = study.prepare(tiny, url=None)  # the default: storage/search.db under SEARCH_DIR
    assert run.url == db_url(private_storage) and (private_storage / "search.db").is_file()
    assert run.created and run.total == 4 and run.lost == ()
    s = run.study
    assert s.study_name == "tiny" and s.metric_names == ["val_loss"]
    assert s.user_attrs["dataset"] == "fashion_mnist" and s.user_attrs["trials"] == 4
    assert s.user_attrs["objective"] == "minimize val_loss"
    assert study.stored_preset(s) == tiny
    queued = s.get_trials(states=(TrialState.WAITING,))
    assert [t.user_attrs["baseline"] for t in queued] == ["lab test 9", "starved"]
    assert queued[1].system_attrs["fixed_params"]["learning_rate"] == 0.0001  # the lab's own
    assert isinstance(s.pruner, optuna.pruners.SuccessiveHalvingPruner)
    assert isinstance(s.sampler, optuna.samplers.TPESampler)


def test_a_known_good_start_is_enqueued_before_the_lab_s_runs(
    tmp_path: Path, private_storage: Path
) -> None:
    started = presets.load_preset(write_preset(tmp_path, "started"))
    assert [s.name for s in started.starts] == ["known good"]
    assert started.fingerprint() == presets.load_preset(write_preset(tmp_path)).fingerprint()
    s = study.prepare(started, url=None).study
    queued = s.get_trials(states=(TrialState.WAITING,))
    assert [t.user_attrs for t in queued] == [
        {"start": "known good"},
        {"baseline": "lab test 9"},
        {"baseline": "starved"},
    ]
    assert queued[0].system_attrs["fixed_params"]["filters_2"] == 32
    assert study.stored_preset(s) == started


def test_resuming_keeps_the_study_s_own_settings_for_what_is_left_out(
    tiny: Preset, private_storage: Path
) -> None:
    first = study.prepare(tiny, url=None, trials=7, max_params=50_000, objective="val_loss+params")
    assert first.created and first.total == 7
    assert (first.preset.max_params, first.preset.objective) == (50_000, "val_loss+params")
    finish(first.study)  # nothing finished: resuming is about settings only

    again = study.prepare(tiny, url=None)  # the preset file says 4 trials, 400,000, val_loss
    assert not again.created and again.total == 7
    assert (again.preset.max_params, again.preset.objective) == (50_000, "val_loss+params")
    assert len(again.study.directions) == 2
    assert len(again.study.get_trials()) == 2  # the baselines were not enqueued twice

    bigger = study.prepare(tiny, url=None, trials=9, max_params=80_000)
    assert bigger.total == 9 and bigger.preset.max_params == 80_000
    # Recorded, so workers that join later use this run's budget and total.
    stored = study.open_existing(None, "tiny")
    assert stored.preset.max_params == 80_000 and stored_total(stored.study) == 9


def test_a_study_is_never_resumed_with_another_space_or_dataset(
    tiny: Preset, tmp_path: Path
) -> None:
    s = study.prepare(tiny, url=None).study
    finish(s, 0.5)
    before = [(t.number, t.state, t.value) for t in s.get_trials()]
    wider = write_preset(tmp_path / "..", **{"kernel = [3, 5]": "kernel = [3, 5, 7]"})
    with pytest.raises(
        StudyError,
        match=r"different preset or search space \(tiny; differs in "
        r"space.kernel\); pass --study NEW_NAME",
    ):
        study.prepare(presets.load_preset(wider), url=None)
    digits = presets.load_preset("mnist")
    with pytest.raises(StudyError, match="searches fashion_mnist, not mnist"):
        study.prepare(digits, url=None, name="tiny")
    after = study.open_existing(None, "tiny").study.get_trials()
    assert [(t.number, t.state, t.value) for t in after] == before


def test_resolve_finds_the_only_study_and_never_creates_a_database(
    tiny: Preset, private_storage: Path, tmp_path: Path
) -> None:
    missing = tmp_path / "typo.db"
    with pytest.raises(StorageError, match=f"No study database at {missing}"):
        study.resolve(f"sqlite:///{missing}", None)
    with pytest.raises(StorageError, match="No study database"):
        study.resolve(None, "tiny", required=False)
    assert not missing.exists() and not private_storage.exists()

    study.prepare(tiny, url=None)
    rdb, url, name = study.resolve(None, None)
    assert (url, name) == (db_url(private_storage), "tiny")
    assert study.names(rdb) == ["tiny"]
    with pytest.raises(
        StudyError,
        match=r"No study named 'other' in this storage \(studies: "
        r"tiny\)",
    ):
        study.resolve(None, "other")


def test_resolve_wants_a_name_where_there_are_several_studies_or_none(
    tiny: Preset, private_storage: Path
) -> None:
    url = db_url(private_storage)
    rdb = storage.open_storage(url)  # a database with Optuna's tables and no study
    with pytest.raises(StudyError, match=r"Pass --study NAME; this storage holds no studies\."):
        study.resolve(url, None)
    study.prepare(tiny, storage=rdb, name="a")
    study.prepare(tiny, storage=rdb, name="b")
    with pytest.raises(StudyError, match=r"holds 2 studies: a, b\."):
        study.resolve(url, None)
    assert study.resolve(url, None, required=False)[2] is None  # the dashboard shows them all
    assert study.resolve(url, "b")[2] == "b"
    opened = study.open_existing(url, "b")
    assert opened.study.study_name == "b" and opened.preset == tiny and opened.url == url


def test_a_study_search_did_not_make_or_an_older_version_made_is_refused(
    private_storage: Path,
) -> None:
    url = db_url(private_storage)
    rdb = storage.open_storage(url)
    foreign = optuna.create_study(storage=rdb, study_name="foreign")
    with pytest.raises(
        StudyError,
        match="Study 'foreign' was not made by 'search start', or its 'search start' was "
        "stopped while creating it: rerun that command",
    ):
        study.stored_preset(foreign)
    foreign.set_user_attr("preset", json.dumps({"dataset": "mnist"}))  # fields are missing
    with pytest.raises(StudyError, match="made by an incompatible version of search"):
        study.open_existing(url, "foreign")
    with pytest.raises(StudyError, match="has no trial total yet; run 'search start --trials N'"):
        stored_total(foreign)


def test_a_trial_s_network_is_rebuilt_from_its_record_or_the_reason_is_given() -> None:
    config = Config(convs=(Conv(16, 3, True),), dense=(32,), learning_rate=0.002)
    trial = create_trial(value=0.4, user_attrs={"config": config.to_json()})
    assert config_of(trial) == config
    for attrs, reason in (({}, "KeyError"), ({"config": "{not json"}, "JSONDecodeError")):
        with pytest.raises(
            StudyError,
            match=f"cannot be rebuilt: its stored configuration is "
            f"missing or from an older version \\({reason}",
        ):
            config_of(create_trial(value=0.4, user_attrs=attrs))
    deep = Config(convs=tuple(Conv(8, 5, True) for _ in range(3)))
    with pytest.raises(StudyError, match="cannot be rebuilt: conv 3 has a 5x5 kernel"):
        config_of(create_trial(value=0.4, user_attrs={"config": deep.to_json()}))


def test_counts_best_and_the_pareto_front(tiny: Preset, private_storage: Path) -> None:
    sized = study.prepare(tiny, url=None, objective="val_loss+params").study
    for values in ([0.50, 1000], [0.40, 9000], [0.45, 12_000], [0.60, 800]):
        sized.add_trial(create_trial(values=values, params={}, distributions={}))
    pruned = {"state": TrialState.PRUNED, "params": {}, "distributions": {}}
    sized.add_trial(create_trial(**pruned, intermediate_values={0: 0.9}))  # after an epoch
    sized.add_trial(create_trial(**pruned, user_attrs={"reason": "over budget"}))  # untrained
    sized.add_trial(create_trial(state=TrialState.FAIL, params={}, distributions={}))
    states = counts(sized)
    assert (states["WAITING"], states["COMPLETE"], states["PRUNED"], states["FAIL"]) == (
        2,
        4,
        2,
        1,
    )
    # Complete, and pruned after training; neither a rejection nor a failure counts.
    assert finished(sized) == 5
    lowest = best(sized)
    assert lowest is not None and lowest.values == [0.40, 9000]  # the lowest val_loss
    front = pareto(sized)
    assert [t.values for t in front] == [[0.40, 9000], [0.50, 1000], [0.60, 800]]
    assert lowest in front

    plain = study.prepare(tiny, url=None, name="plain").study
    assert best(plain) is None and pareto(plain) == []
    finish(plain, 0.7, 0.3)
    assert best(plain).value == 0.3  # type: ignore[union-attr]
    assert pareto(plain) == []  # one objective: no front


def test_the_sampler_is_seeded_apart_per_worker_and_the_pruner_follows_the_preset(
    tiny: Preset,
) -> None:
    def first_draws(worker: int) -> list[float]:
        s = optuna.create_study(sampler=study.sampler(tiny, worker))
        return [s.ask().suggest_float("x", 0, 1) for _ in range(3)]

    assert first_draws(0) == first_draws(0)  # reproducible...
    assert first_draws(0) != first_draws(1)  # ...and another worker draws others
    kinds = {
        name: type(study.pruner(Preset(**{**tiny.__dict__, "pruner": name})))
        for name in presets.PRUNERS
        if name != "asha"  # a ladder's only: tests/test_ladder.py
    }
    assert kinds == {
        "hyperband": optuna.pruners.HyperbandPruner,
        "sha": optuna.pruners.SuccessiveHalvingPruner,
        "median": optuna.pruners.MedianPruner,
        "behind": Behind,
        "none": optuna.pruners.NopPruner,
    }
    sized = Preset(**{**tiny.__dict__, "objective": "val_loss+params"})
    assert isinstance(study.pruner(sized), optuna.pruners.NopPruner)  # cannot prune two


# ---------------------------------------------------------------------------------------------
# A study and its preset come into being together: a creation stopped midway is redone
# ---------------------------------------------------------------------------------------------
def check_complete(s: optuna.Study, total: int) -> None:
    """A whole study of the tiny preset: its settings, its preset, the lab's two runs once."""
    assert study.stored_preset(s).name == "tiny" and s.user_attrs["trials"] == total
    assert (s.user_attrs["dataset"], s.user_attrs["preset_name"]) == ("fashion_mnist", "tiny")
    assert [t.user_attrs["baseline"] for t in s.get_trials()] == ["lab test 9", "starved"]


def test_a_creation_stopped_before_its_preset_is_redone_by_the_next_start(
    tiny: Preset, private_storage: Path
) -> None:
    study.prepare(tiny, url=None, name="other")  # a study beside it, which stays as it is
    database = private_storage / "search.db"
    # The database fails the last write of a creation, as if the process had died there: with
    # an integer overflow, since Optuna takes RAISE()'s constraint error for a race and ignores it.
    with sqlite3.connect(database) as connection:
        connection.execute(
            "CREATE TRIGGER stop BEFORE INSERT ON study_user_attributes WHEN NEW.key = 'preset'"
            " BEGIN SELECT abs(-9223372036854775808); END"
        )
    with pytest.raises(optuna.exceptions.StorageInternalError):
        study.prepare(tiny, url=None, trials=5)
    half = optuna.load_study(study_name="tiny", storage=db_url(private_storage))
    assert "preset" not in half.user_attrs and len(half.get_trials()) == 2
    with sqlite3.connect(database) as connection:
        connection.execute("DROP TRIGGER stop")

    again = study.prepare(tiny, url=None, trials=5)
    assert again.created  # made anew, not resumed
    check_complete(again.study, 5)
    assert study.names(again.storage) == ["other", "tiny"]
    check_complete(study.open_existing(None, "other").study, 4)


def test_a_study_without_a_preset_that_holds_a_trial_is_never_deleted(
    tiny: Preset, private_storage: Path
) -> None:
    url = db_url(private_storage)
    foreign = optuna.create_study(storage=storage.open_storage(url), study_name="tiny")
    finish(foreign, 0.5)
    with pytest.raises(StudyError, match="holds trials or settings of its own; pass --study"):
        study.prepare(tiny, url=None)
    kept = optuna.load_study(study_name="tiny", storage=url).get_trials()
    assert [(t.state, t.value) for t in kept] == [(TrialState.COMPLETE, 0.5)]


# Where a creation is held, on PostgreSQL: a trigger sleeps before the first write of the point.
PAUSES = {
    "attributes": ("study_user_attributes", "NEW.key = 'dataset'"),  # the study alone exists
    "baselines": ("trials", "(SELECT count(*) FROM trials) = 1"),  # one of the lab's runs
    "preset": ("study_user_attributes", "NEW.key = 'preset'"),  # all but the preset
}


def pause_creation(engine: sqlalchemy.Engine, point: str) -> None:
    table, condition = PAUSES[point]
    with engine.begin() as connection:
        connection.execute(
            sqlalchemy.text(
                "CREATE FUNCTION pause() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                f"IF {condition} THEN PERFORM pg_sleep(600); END IF; RETURN NEW; END $$"
            )
        )
        connection.execute(
            sqlalchemy.text(
                f"CREATE TRIGGER pause BEFORE INSERT ON {table} "
                "FOR EACH ROW EXECUTE FUNCTION pause()"
            )
        )


def sleepers(engine: sqlalchemy.Engine) -> list[int]:
    query = "SELECT pid FROM pg_stat_activity WHERE wait_event = 'PgSleep'"
    with engine.connect() as connection:
        return list(connection.execute(sqlalchemy.text(query)).scalars())


@pytest.mark.parametrize(
    ("signum", "point"),
    [
        pytest.param(signal.SIGKILL, "attributes", id="SIGKILL-attributes"),
        pytest.param(signal.SIGKILL, "preset", id="SIGKILL-preset"),
        pytest.param(signal.SIGINT, "baselines", id="SIGINT-baselines"),
    ],
)
def test_search_start_killed_while_creating_leaves_a_study_the_next_start_completes(
    signum: int, point: str, pg_url: str, tmp_path: Path, fashion_dir: Path
) -> None:
    # A budget of a few milliseconds: the time is up before any trial starts, and what
    # matters is the study, not training.
    args = ["start", "--preset", str(write_preset(tmp_path)), "--storage", pg_url]
    args += ["--trials", "1", "--hours", "0.000001", "--data-dir", str(fashion_dir)]
    storage.open_storage(pg_url)  # Optuna's tables, for the trigger
    engine = sqlalchemy.create_engine(pg_url)
    pause_creation(engine, point)
    child = popen(
        [sys.executable, "-m", "search", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    deadline = time.monotonic() + 120
    while not sleepers(engine):
        assert child.poll() is None and time.monotonic() < deadline, child.communicate()[0]
        time.sleep(0.1)
    child.send_signal(signum)
    output = child.communicate(timeout=60)[0]
    assert child.returncode == (-9 if signum == signal.SIGKILL else 130), output
    # A dead client's server process would notice at once; this one sleeps in the trigger.
    with engine.begin() as connection:
        for pid in sleepers(engine):
            connection.execute(sqlalchemy.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        connection.execute(sqlalchemy.text("DROP FUNCTION pause() CASCADE"))
    half = optuna.load_study(study_name="tiny", storage=pg_url)
    assert "preset" not in half.user_attrs  # stopped midway
    assert len(half.get_trials()) == {"attributes": 0, "baselines": 1, "preset": 2}[point]
    engine.dispose()

    again = run(*args)  # the same command again, here: it waits for no lock of the dead one's
    assert again.exit_code == 0, again.output
    assert "Study 'tiny' (new): 1 trials" in again.output
    assert "Time is up with 0 of 1 trials trained" in again.output
    s = optuna.load_study(study_name="tiny", storage=pg_url)
    check_complete(s, 1)
    assert [t.state for t in s.get_trials()] == [TrialState.WAITING, TrialState.WAITING]


def test_a_resume_queues_again_an_enqueued_run_that_an_interrupt_cut_short(
    tiny: Preset, private_storage: Path
) -> None:
    s = study.prepare(tiny, url=None).study
    rdb = s._storage

    def end(trial: optuna.trial.FrozenTrial, reason: str) -> None:
        """Run the queued trial and fail it, with this reason on record."""
        rdb.set_trial_state_values(trial._trial_id, state=TrialState.RUNNING)
        rdb.set_trial_user_attr(trial._trial_id, "reason", reason)
        rdb.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)

    lab, starved = s.get_trials(states=(TrialState.WAITING,))
    end(lab, "")  # its worker died: failed for missed heartbeats, with no reason
    s.add_trial(  # the retry of it, which Ctrl-C then stopped
        create_trial(
            state=TrialState.FAIL,
            params={},
            distributions={},
            user_attrs={"baseline": "lab test 9", "reason": INTERRUPTED},
        )
    )
    end(starved, "training failed: ValueError: a configuration that fails")

    resumed = study.prepare(tiny, url=None)
    assert resumed.requeued == ("lab test 9",)  # not starved: it failed for its own reason
    (queued,) = s.get_trials(states=(TrialState.WAITING,))
    assert queued.user_attrs == {"baseline": "lab test 9"} and queued.params == lab.params
    assert study.prepare(tiny, url=None).requeued == ()  # queued already: not twice

    end(queued, INTERRUPTED)
    finish(s, 0.5, 0.4, 0.3, 0.2)
    assert study.prepare(tiny, url=None).requeued == ()  # at its total: nothing would run it
    assert study.prepare(tiny, url=None, trials=6).requeued == ("lab test 9",)


def test_a_start_that_joins_running_workers_keeps_their_deadline(
    tiny: Preset, private_storage: Path, short_heartbeat: dict[str, str]
) -> None:
    first = study.prepare(tiny, url=None, hours=1.0)
    deadline = first.study.user_attrs["deadline"]
    assert not first.joined and deadline == pytest.approx(time.time() + 3600, abs=60)
    trial = first.study.ask()  # a worker's trial, its heartbeat fresh
    first.storage.record_heartbeat(trial._trial_id)

    joined = study.prepare(tiny, url=None, hours=5.0)  # a second machine, a restarted replica
    assert joined.joined and joined.study.user_attrs["deadline"] == deadline

    time.sleep(float(short_heartbeat[storage.ENV_GRACE]) + 1)  # that worker died
    resumed = study.prepare(tiny, url=None, hours=5.0)
    assert not resumed.joined and resumed.lost == (trial.number,)
    assert resumed.study.user_attrs["deadline"] == pytest.approx(time.time() + 5 * 3600, abs=60)


def test_a_resume_says_which_run_settings_the_preset_changed(
    tiny: Preset, private_storage: Path
) -> None:
    study.prepare(tiny, url=None)
    assert study.prepare(tiny, url=None).changed == ()
    other = "tpe" if tiny.sampler == "tpe-grouped" else "tpe-grouped"
    edited = dataclasses.replace(tiny, sampler=other, final_epochs=tiny.final_epochs + 1)
    resumed = study.prepare(edited, url=None)
    assert resumed.changed == (
        f"sampler {tiny.sampler} -> {other}",
        f"final_epochs {tiny.final_epochs} -> {tiny.final_epochs + 1}",
    )
    # Recorded on the study, so the workers that join use the new settings too.
    assert presets.from_json(resumed.study.user_attrs["preset"]).sampler == other
    assert study.prepare(edited, url=None).changed == ()
