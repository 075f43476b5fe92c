"""`search copy`: a study with its trials and attributes, SQLite to PostgreSQL and back.

On the real PostgreSQL the suite starts, with a study that `search start` trained, plus trials
in every other state; the copy is then resumed to its total. A real `search copy` process is
killed halfway, and the same command run again.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
import sqlalchemy
from optuna.distributions import FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState, create_trial

from search.define.presets import load_preset
from search.store.study import COPYING, StudyError, name_metric, names, stored_preset
from search.store.transfer import RUNNING_REASON
from search.store.trials import set_total, trained
from tests.helpers import TINY, db_url, popen, run, write_preset
from tests.postgres import Cluster

SEARCH = str(Path(sys.executable).with_name("search"))  # the installed console script
MANY = 400  # trials in the study a copy is killed in: it takes seconds to copy


def record(trial: FrozenTrial) -> dict[str, Any]:
    """Everything a copy must keep of a trial."""
    return {
        "number": trial.number,
        "state": trial.state,
        "params": trial.params,
        "distributions": trial.distributions,
        "values": trial.values,
        "intermediate_values": trial.intermediate_values,
        "user_attrs": trial.user_attrs,
        "system_attrs": trial.system_attrs,
        "datetime_start": trial.datetime_start,
        "datetime_complete": trial.datetime_complete,
    }


def study_record(url: str, name: str = "tiny") -> dict[str, Any]:
    study = optuna.load_study(study_name=name, storage=url)
    return {
        "directions": study.directions,
        "metric_names": study.metric_names,
        "user_attrs": study.user_attrs,
    }


@pytest.fixture
def source(tmp_path: Path, private_storage: Path, fashion_dir: Path) -> str:
    """A study of two trained trials, one pruned, one failed and one still running; total 5."""
    preset = write_preset(tmp_path, "small", pruner="none", **{"epochs = 3": "epochs = 2"})
    assert run("start", "--preset", str(preset), "--trials", "2").exit_code == 0
    url = db_url(private_storage)
    study = optuna.load_study(study_name="tiny", storage=url)
    first, second = study.trials
    shape = {"params": first.params, "distributions": first.distributions}
    study.add_trial(
        create_trial(
            state=TrialState.PRUNED,
            intermediate_values={0: 1.5, 1: 1.25},
            user_attrs={"reason": "pruned at epoch 2", "architecture": "C32k3-P-F-D64"},
            **shape,
        )
    )
    study.add_trial(create_trial(state=TrialState.FAIL, user_attrs={"reason": "bad"}, **shape))
    study.add_trial(
        create_trial(
            state=TrialState.RUNNING,
            params=second.params,
            distributions=second.distributions,
            intermediate_values={0: 2.0},
            user_attrs={"worker": "elsewhere:1", "epochs_trained": 1},
        )
    )
    set_total(study, 5)
    # What retrain-best records on the study, and a multi-line text.
    study.set_user_attr("retrain", {"trial": 0, "test_accuracy": 0.81, "history": [0.5, 0.4]})
    study.set_user_attr("note", "line one\nline two")
    return url


def test_a_copy_to_postgresql_and_back_keeps_everything_and_resumes_to_the_total(
    source: str, postgres: Cluster, pg_url: str, tmp_path: Path
) -> None:
    before = [record(t) for t in optuna.load_study(study_name="tiny", storage=source).trials]
    there = run("copy", "--from", source, "--to", pg_url)
    assert there.exit_code == 0, there.output
    assert there.output.splitlines()[:3] == [
        f"From: SQLite file {source.removeprefix('sqlite:///')}",
        f"To: postgresql+psycopg://search:***@127.0.0.1:{postgres.port}/"
        + pg_url.rsplit("/", 1)[1],
        "Copying study 'tiny': 5 trials (2 complete, 1 pruned, 1 fail, 1 running), "
        "8 study attributes.",
    ]
    assert "Trial(s) #4 were running in the source: failed in the copy, and queued" in (
        there.output
    )
    back_url = f"sqlite:///{tmp_path / 'back' / 'copy.db'}"  # a folder that is not there yet
    back = run("copy", "--from", pg_url, "--to", back_url)
    assert back.exit_code == 0, back.output
    assert "Copying study 'tiny': 6 trials (2 complete, 1 pruned, 2 fail, 1 waiting)" in (
        back.output
    )

    after = [record(t) for t in optuna.load_study(study_name="tiny", storage=back_url).trials]
    assert after[:4] == before[:4]  # states, params, values, curves, attributes, times
    assert study_record(back_url) == study_record(source)
    assert study_record(source)["metric_names"] == ["val_loss"]
    # The trial that was running: failed, with the reason, and queued again as it was.
    lost, retry = after[4], after[5]
    assert lost["state"] == TrialState.FAIL and lost["user_attrs"]["reason"] == RUNNING_REASON
    assert {k: v for k, v in lost.items() if k not in ("state", "user_attrs")} == {
        k: v for k, v in before[4].items() if k not in ("state", "user_attrs", "datetime_complete")
    } | {"datetime_complete": lost["datetime_complete"]}
    assert retry["state"] == TrialState.WAITING and retry["params"] == before[4]["params"]
    assert retry["system_attrs"]["failed_trial"] == 4 and "reason" not in retry["user_attrs"]
    for output in (there.output, back.output):
        assert postgres.password not in output

    # The copy on PostgreSQL goes on to the total: the retry first, then one new trial.
    resumed = run("worker", "--storage", pg_url, "--study", "tiny")
    assert resumed.exit_code == 0, resumed.output
    trials = optuna.load_study(study_name="tiny", storage=pg_url).trials
    assert [t.state for t in trials].count(TrialState.FAIL) == 2  # none new
    assert trained(trials[5]) and trials[5].params == before[4]["params"]
    assert sum(trained(t) for t in trials) == 5  # the total, rejections aside
    assert [record(t) for t in optuna.load_study(study_name="tiny", storage=source).trials] == (
        before
    )  # the source is untouched


def test_a_copy_never_replaces_a_study_and_never_makes_an_empty_source(
    source: str, postgres: Cluster, pg_url: str, tmp_path: Path
) -> None:
    assert run("copy", "--from", source, "--to", pg_url).exit_code == 0
    again = run("copy", "--from", source, "--to", pg_url)
    assert again.exit_code == 1
    assert (
        f"A study named 'tiny' already exists in postgresql+psycopg://search:***@127.0.0.1:{postgres.port}/"
        in again.output
    )
    assert "pass --as NEW_NAME to copy under another name" in again.output
    assert "Traceback" not in again.output and postgres.password not in again.output
    assert len(optuna.load_study(study_name="tiny", storage=pg_url).trials) == 6  # as copied

    renamed = run("copy", "--from", source, "--to", pg_url, "--as", "tiny-2")
    assert renamed.exit_code == 0, renamed.output
    assert names(optuna.storages.RDBStorage(pg_url)) == ["tiny", "tiny-2"]
    assert study_record(pg_url, "tiny-2") == study_record(pg_url, "tiny")

    missing = tmp_path / "typo.db"
    target = tmp_path / "target.db"
    result = run("copy", "--from", f"sqlite:///{missing}", "--to", f"sqlite:///{target}")
    assert result.exit_code == 1 and f"No study database at {missing}" in result.output
    assert not missing.exists() and not target.exists()
    result = run("copy", "--from", source, "--to", f"sqlite:///{target}", "--study", "nope")
    assert result.exit_code == 1 and "No study named 'nope'" in result.output


@pytest.fixture(scope="session")
def many(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A SQLite file with study 'tiny' of MANY trained trials and its preset; only read."""
    url = f"sqlite:///{tmp_path_factory.mktemp('many') / 'source.db'}"
    study = optuna.create_study(storage=url, study_name="tiny")
    preset = load_preset(TINY)
    name_metric(study, preset)
    set_total(study, MANY)
    study.set_user_attr("note", "copied whole or not at all")
    space = {
        "learning_rate": FloatDistribution(1e-4, 3e-3, log=True),
        "convs": IntDistribution(1, 3),
    }
    study.add_trials(
        [
            create_trial(
                params={"learning_rate": 1e-3, "convs": i % 3 + 1},
                distributions=space,
                value=1 / (i + 1),
                intermediate_values={0: 2.0, 1: 1 / (i + 1)},
                user_attrs={"architecture": "C32k3-P-F-D64", "worker": f"host:{i}"},
            )
            for i in range(MANY)
        ]
    )
    study.set_user_attr("preset", preset.to_json())
    return url


@pytest.fixture(params=["sqlite", "postgresql"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """An empty destination: a SQLite file, or a database on the suite's PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'target.db'}"
    return str(request.getfixturevalue("pg_url"))


def copied_trials(engine: sqlalchemy.Engine) -> int:
    """How many trials the destination holds so far (0 before Optuna made its tables)."""
    try:
        with engine.connect() as connection:
            return int(connection.execute(sqlalchemy.text("SELECT count(*) FROM trials")).scalar())
    except sqlalchemy.exc.DBAPIError:
        return 0


def kill_halfway(source: str, target: str) -> int:
    """Run `search copy` and SIGKILL it once some but not all trials arrived; how many did."""
    engine = sqlalchemy.create_engine(target, poolclass=sqlalchemy.pool.NullPool)
    copy = popen(
        [SEARCH, "copy", "--from", source, "--to", target],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 120
        while copied_trials(engine) < MANY // 10:
            assert copy.poll() is None, f"the copy ended before it was killed: {copy.stderr}"
            assert time.monotonic() < deadline, "the copy wrote no trials in two minutes"
            time.sleep(0.01)
        copy.send_signal(signal.SIGKILL)
        assert copy.wait(timeout=30) == -signal.SIGKILL
        left = copied_trials(engine)
    finally:
        if copy.poll() is None:
            copy.kill()
            copy.wait()
        engine.dispose()
    assert MANY // 10 <= left < MANY  # killed halfway, not after the copy was whole
    return left


def test_a_copy_killed_halfway_is_replaced_by_the_same_command_run_again(
    many: str, target: str, tmp_path: Path
) -> None:
    left = kill_halfway(many, target)
    leftover = optuna.load_study(study_name="tiny", storage=target)
    assert "preset" not in leftover.user_attrs and leftover.user_attrs[COPYING]["study"] == "tiny"

    # `search start` on it says in one sentence what happened, and leaves it as it is.
    started = run("start", "--preset", str(write_preset(tmp_path)), "--storage", target)
    assert started.exit_code == 1
    said = (
        f"Study 'tiny' is an unfinished copy: a `search copy` of study 'tiny' from {many} into "
        "it was interrupted; rerun that `search copy` command, which replaces it."
    )
    assert said in " ".join(started.output.split()), started.output
    with pytest.raises(StudyError, match="is still running or was interrupted; wait for it"):
        stored_preset(leftover)  # a worker, which waits without the lock
    assert len(optuna.load_study(study_name="tiny", storage=target).trials) == left

    again = run("copy", "--from", many, "--to", target)
    assert again.exit_code == 0, again.output
    replaced = [line for line in again.output.splitlines() if line.startswith("Replaced")]
    assert len(replaced) == 1 and "what an interrupted copy of it (by " in replaced[0]
    assert f"Copied study 'tiny' with {MANY} trials." in again.output
    source = optuna.load_study(study_name="tiny", storage=many)
    copy = optuna.load_study(study_name="tiny", storage=target)
    assert [record(t) for t in copy.trials] == [record(t) for t in source.trials]
    assert study_record(target) == study_record(many)  # the preset back, the mark gone
    assert COPYING not in copy.user_attrs and stored_preset(copy).name == "tiny"


def test_a_study_that_no_copy_left_is_never_replaced(many: str, tmp_path: Path) -> None:
    target = f"sqlite:///{tmp_path / 'target.db'}"
    theirs = optuna.create_study(storage=target, study_name="tiny")  # without a preset
    theirs.add_trial(create_trial(value=1.0))
    refused = run("copy", "--from", many, "--to", target)
    assert refused.exit_code == 1
    assert "A study named 'tiny' already exists in SQLite file" in refused.output
    assert "Replaced" not in refused.output
    # What a copy of another study left under this name is that copy's to replace.
    theirs.set_user_attr(COPYING, {"study": "other", "from": "sqlite:////elsewhere.db"})
    refused = run("copy", "--from", many, "--to", target)
    assert refused.exit_code == 1
    assert "is what an interrupted copy of study 'other' from sqlite:////elsewhere.db" in (
        " ".join(refused.output.split())
    )
    kept = optuna.load_study(study_name="tiny", storage=target)
    assert [t.value for t in kept.trials] == [1.0] and "preset" not in kept.user_attrs


def test_a_copy_run_again_while_the_first_runs_waits_and_replaces_nothing(
    many: str, tmp_path: Path
) -> None:
    target = f"sqlite:///{tmp_path / 'target.db'}"
    engine = sqlalchemy.create_engine(target, poolclass=sqlalchemy.pool.NullPool)
    first = popen([SEARCH, "copy", "--from", many, "--to", target], stdout=subprocess.PIPE)
    try:
        while copied_trials(engine) == 0:
            assert first.poll() is None, "the first copy ended before the second began"
            time.sleep(0.01)
        second = run("copy", "--from", many, "--to", target)  # waits for the first's lock
        out, _ = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
        engine.dispose()
    assert first.returncode == 0 and "Replaced" not in out
    assert second.exit_code == 1 and "A study named 'tiny' already exists" in second.output
    copy = optuna.load_study(study_name="tiny", storage=target)
    assert len(copy.trials) == MANY and COPYING not in copy.user_attrs
