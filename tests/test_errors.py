"""Every user mistake and fault ends in one clear sentence; stored studies stay as they were.

The sentence is a SearchError's message (search/errors.py), tested first.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import optuna
import pytest
from click.testing import Result

from search.cli import cli
from search.define import presets
from search.errors import SearchError, first_line
from search.store import storage, study
from search.store.trials import INTERRUPTED, trained
from tests.helpers import MALFORMED, db_url, load_study, popen, run, write_preset
from tests.postgres import Cluster
from tests.test_storage import Relay


def assert_one_sentence(result: Result, code: int, *fragments: str) -> None:
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in result.output, result.output


@pytest.fixture
def existing(tiny_preset: Path, private_storage: Path, fashion_dir: Path) -> Path:
    """A stored study of one finished trial, to prove that mistakes leave it untouched."""
    assert run("start", "--preset", str(tiny_preset), "--trials", "1").exit_code == 0
    return private_storage / "search.db"


def started(folder: Path, variant: str, trials: int) -> optuna.Study:
    """The study after `search start` with a variant of the tiny preset, which succeeded."""
    preset = write_preset(folder, variant)
    result = run("start", "--preset", str(preset), "--trials", str(trials))
    assert result.exit_code == 0, result.output
    return load_study(storage.home())


def snapshot(db: Path) -> list[tuple[object, ...]]:
    study = load_study(db.parent)
    return [(t.number, t.state, t.params, t.value) for t in study.get_trials()]


# 0. The error type behind every sentence ------------------------------------------------------
def test_every_user_facing_error_is_a_search_error() -> None:
    assert cli.commands  # search.cli has imported every module that defines an error
    kinds = {error.__name__: error for error in SearchError.__subclasses__()}
    assert set(kinds) >= {
        "DataError",
        "PresetError",
        "StorageError",
        "StudyError",
        "DashboardError",
        "ReportError",
    }
    for error in kinds.values():
        assert error.__doc__  # each says which mistakes it stands for


def test_first_line_keeps_one_line_of_a_long_message() -> None:
    error = ValueError("  the first line\n  the second\nthe third  ")
    assert first_line(error) == "the first line"
    assert first_line("one line") == "one line"
    assert first_line(KeyError(), "KeyError") == "KeyError"  # an empty message
    assert first_line(RuntimeError(" \n "), default="none") == "none"  # blank is empty too
    assert first_line(OSError("")) == ""


# 1. Unknown dataset ---------------------------------------------------------------------------
def test_unknown_dataset(tmp_path: Path) -> None:
    assert_one_sentence(run("start", "--dataset", "cifar10"), 2, "fashion_mnist", "mnist")
    preset = write_preset(tmp_path, **{'dataset = "fashion_mnist"': 'dataset = "cifar"'})
    assert_one_sentence(
        run("start", "--preset", str(preset)),
        1,
        "Unknown dataset 'cifar'",
        "known datasets: fashion_mnist, mnist",
    )


# 2. Broken data folders (the loader's own cases are in test_datasets.py) ------------------
def test_broken_data_dir_names_the_file(tmp_path: Path, tiny_preset: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b broken")
    (data / "train-labels-idx1-ubyte.gz").write_bytes(b"")
    result = run("start", "--preset", str(tiny_preset), "--data-dir", str(data))
    assert_one_sentence(result, 1, "train-images-idx3-ubyte.gz")


# 3. Storage URLs ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("not a url", "malformed"),
        ("postgresql://u:pw@host:port/db", "malformed"),
        ("mysql://u:secret@localhost/db", "Unsupported storage scheme 'mysql'"),
    ],
)
def test_bad_storage_urls(url: str, message: str, tiny_preset: Path) -> None:
    result = run("start", "--preset", str(tiny_preset), "--storage", url)
    assert_one_sentence(result, 1, message)
    assert "secret" not in result.output and "pw@" not in result.output


def test_unreachable_postgres_names_no_password(tiny_preset: Path) -> None:
    url = "postgresql+psycopg://search:hunter2secret@127.0.0.1:1/search"
    result = run("status", "--storage", url, "--study", "x")
    assert_one_sentence(result, 1, "Cannot open the storage", "127.0.0.1:1")
    assert "hunter2secret" not in result.output and "***" in result.output


def test_a_server_lost_in_the_middle_of_a_command_is_named_not_unexpected(
    postgres: Cluster, pg_url: str
) -> None:
    rdb = storage.open_storage(pg_url)
    study.prepare(presets.load_preset("demo"), storage=rdb, name="lost")
    relay = Relay(postgres.port)
    try:
        relay.trigger = b"FROM trials"  # the storage opens and the study loads; then it is gone
        result = run("status", "--storage", relay.url(pg_url))
    finally:
        relay.close()
    assert_one_sentence(
        result,
        1,
        f"Error: The storage postgresql+psycopg://search:***@127.0.0.1:{relay.port}/",
        " failed: connection lost (",
        "the study is consistent: rerun the same command to resume.",
    )
    assert "Error: unexpected" not in result.output and postgres.password not in result.output
    assert result.output.strip().splitlines()[-1].startswith("Error: The storage ")


# 4. Read-only commands never create a database ----------------------------------------------
def test_read_only_commands_on_missing_storage_and_study(existing: Path, tmp_path: Path) -> None:
    missing = tmp_path / "typo.db"
    for command in ("status", "retrain-best"):
        result = run(command, "--storage", f"sqlite:///{missing}")
        assert_one_sentence(result, 1, "No study database at", str(missing))
        result = run(command, "--study", "nope")
        assert_one_sentence(result, 1, "No study named 'nope'", "tiny")
    assert not missing.exists()


# 5. retrain-best without a completed trial, or with one that cannot be rebuilt ---------------
def test_retrain_best_without_completed_trials(private_storage: Path) -> None:
    url = db_url(private_storage)
    private_storage.mkdir()
    from search.define import presets

    study = optuna.create_study(study_name="empty", storage=url)
    study.set_user_attr("preset", presets.load_preset("demo").to_json())
    assert_one_sentence(run("retrain-best", "--study", "empty"), 1, "no completed trial")
    # A completed trial from an older version, with no stored configuration.
    study.add_trial(
        optuna.trial.create_trial(
            value=0.3, params={}, distributions={}, user_attrs={"best_epoch": 2}
        )
    )
    assert_one_sentence(
        run("retrain-best", "--study", "empty"), 1, "architecture cannot be rebuilt"
    )
    # A study that `search start` did not make.
    optuna.create_study(study_name="foreign", storage=url)
    assert_one_sentence(run("status", "--study", "foreign"), 1, "was not made by 'search start'")


# 6. A study name reused with another dataset (another space: test_cli.py) ---------------------
def test_study_name_reused_for_another_dataset(existing: Path) -> None:
    before = snapshot(existing)
    result = run("start", "--dataset", "mnist", "--study", "tiny")
    assert_one_sentence(result, 1, "searches fashion_mnist, not mnist", "--study NEW_NAME")
    assert snapshot(existing) == before


# 7. Malformed presets name the key and the file ------------------------------------------------
@pytest.mark.parametrize(("old", "new", "message"), MALFORMED)
def test_malformed_presets(tmp_path: Path, old: str, new: str, message: str) -> None:
    preset = write_preset(tmp_path, **{old: new})
    result = run("start", "--preset", str(preset))
    assert_one_sentence(result, 1, message, str(preset))


def test_missing_preset_lists_the_known_ones() -> None:
    assert_one_sentence(run("start", "--preset", "nosuch"), 1, "known presets: demo")


# 8. Numbers out of range are usage errors ---------------------------------------------------
@pytest.mark.parametrize("args", [["--trials", "0"], ["--trials", "-3"], ["--trials", "x"]])
def test_bad_numbers(args: list[str], tiny_preset: Path) -> None:
    result = run("start", "--preset", str(tiny_preset), *args)
    assert_one_sentence(result, 2, "--trials")


# 9. A diverging trial ends with its reason and the worker goes on ----------------------------
def test_nan_loss_ends_the_trial_and_the_worker_goes_on(
    tmp_path: Path, private_storage: Path, fashion_dir: Path
) -> None:
    study = started(tmp_path, "diverging", trials=3)
    diverged = study.trials[1]
    assert diverged.user_attrs["baseline"] == "diverging"
    assert diverged.state == optuna.trial.TrialState.PRUNED
    assert "NaN or infinite" in diverged.user_attrs["reason"]
    assert (
        len(
            study.get_trials(
                states=(optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
            )
        )
        == 3
    )
    assert math.isfinite(study.best_value)


# 10. Over budget or over memory: rejected before training -------------------------------------
def test_over_budget_and_over_memory_are_rejected_untrained(
    tmp_path: Path, private_storage: Path, fashion_dir: Path
) -> None:
    study = started(tmp_path, "over_budget", trials=2)
    for trial in study.trials[:2]:  # 347,146 and 2.8 M parameters, both over 100,000
        assert trial.state == optuna.trial.TrialState.PRUNED
        assert "exceed the budget of 100,000" in trial.user_attrs["reason"]
        assert "epochs_trained" not in trial.user_attrs and not trial.intermediate_values


def test_a_batch_too_big_for_memory_is_rejected_untrained(
    tmp_path: Path, private_storage: Path, fashion_dir: Path
) -> None:
    # Batches of ten million images: the estimate runs to terabytes on any machine, so no
    # configuration fits, and the search stops after a bounded run of rejections.
    result = run("start", "--preset", str(write_preset(tmp_path, "huge_batch")), "--trials", "1")
    assert result.exit_code == 1
    assert "The last 50 configurations were all rejected before training" in result.output
    trials = load_study(storage.home()).trials
    assert len(trials) == 50  # bounded: it never loops
    trial = trials[0]
    assert trial.state == optuna.trial.TrialState.PRUNED and not trial.intermediate_values
    assert "training would need about" in trial.user_attrs["reason"]
    assert "GiB available" in trial.user_attrs["reason"]


# 11. Ctrl-C and SIGTERM leave no trial RUNNING, and the rerun resumes to the total ------------
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_marks_the_trial_failed_and_resume_reaches_the_total(
    sig: signal.Signals, tmp_path: Path, private_storage: Path, fashion_dir: Path
) -> None:
    preset = write_preset(tmp_path, "long")
    command = [sys.executable, "-m", "search", "start", "--preset", str(preset), "--trials", "2"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    assert proc.stdout is not None
    watchdog = threading.Timer(300, proc.kill)  # a hung command fails the test, not CI
    watchdog.start()
    lines = []
    for line in proc.stdout:  # wait until the first trial is training
        lines.append(line)
        if "epoch 1/6" in line:
            break
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=120)
    watchdog.cancel()
    output = "".join(lines) + out
    assert proc.returncode == 130, output
    assert "Traceback" not in output and "rerun the same command to resume" in output

    study = load_study(private_storage)
    states = [t.state for t in study.trials]
    assert optuna.trial.TrialState.RUNNING not in states
    assert states[0] == optuna.trial.TrialState.FAIL
    interrupted = study.trials[0].user_attrs
    assert interrupted["baseline"] == "lab test 9" and interrupted["reason"] == INTERRUPTED

    resumed = run("start", "--preset", str(preset), "--trials", "2")
    assert resumed.exit_code == 0, resumed.output
    # The lab's run that the interrupt cut short runs again, once.
    assert resumed.output.count("'lab test 9' was stopped before it finished; it is queued") == 1
    study = load_study(private_storage)
    assert sum(trained(t) for t in study.trials) == 2  # rejected networks do not count
    again = [t for t in study.trials[1:] if t.user_attrs.get("baseline") == "lab test 9"]
    assert len(again) == 1 and trained(again[0]) and again[0].params == study.trials[0].params


# 12. A full disk when saving the model: a clear error, the records intact ---------------------
@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_full_disk_when_saving_the_model(existing: Path, private_storage: Path) -> None:
    models = private_storage / "models"
    models.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(models)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        before = snapshot(existing)
        result = run("retrain-best", "--study", "tiny")
        assert_one_sentence(result, 1, "the model could not be saved to", "No space left")
        assert snapshot(existing) == before
        attrs = load_study(existing.parent).user_attrs
        assert attrs["test_accuracy"] > 0.5  # measured and recorded before the save failed
        assert list(models.iterdir()) == []  # no half-written model left behind
    finally:
        subprocess.run(["umount", str(models)], check=True)


# 13. The storage folder cannot be made ----------------------------------------------------------
def test_storage_folder_that_cannot_be_created(
    tmp_path: Path, tiny_preset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("SEARCH_DIR", str(blocker / "storage"))
    result = run("start", "--preset", str(tiny_preset))
    assert_one_sentence(result, 1, "Cannot create the storage folder")


# --debug -------------------------------------------------------------------------------------
def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    preset = write_preset(tmp_path, **{"epochs = 3": 'epochs = "x"'})
    result = run("--debug", "start", "--preset", str(preset))
    assert result.exit_code == 1
    assert "Traceback" in result.output or "PresetError" in str(result.output)
