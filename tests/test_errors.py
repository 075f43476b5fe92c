"""Every user mistake and fault ends in one clear sentence; stored studies stay as they were."""

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
from click.testing import CliRunner, Result

from search.cli import cli
from tests.conftest import write_preset


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


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


def snapshot(db: Path) -> list[tuple[object, ...]]:
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{db}")
    return [(t.number, t.state, t.params, t.value) for t in study.get_trials()]


# 1. Unknown dataset ---------------------------------------------------------------------------
def test_unknown_dataset(tmp_path: Path) -> None:
    assert_one_sentence(run("start", "--dataset", "cifar10"), 2, "fashion_mnist", "mnist")
    preset = write_preset(tmp_path, **{'dataset = "fashion_mnist"': 'dataset = "cifar"'})
    assert_one_sentence(run("start", "--preset", str(preset)), 1,
                        "Unknown dataset 'cifar'", "known datasets: fashion_mnist, mnist")


# 2. Broken data folders (the loader's own cases are in test_datasets.py) ------------------
def test_broken_data_dir_names_the_file(tmp_path: Path, tiny_preset: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "train-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b broken")
    (data / "train-labels-idx1-ubyte.gz").write_bytes(b"")
    result = run("start", "--preset", str(tiny_preset), "--data-dir", str(data))
    assert_one_sentence(result, 1, "train-images-idx3-ubyte.gz")


# 3. Storage URLs ------------------------------------------------------------------------------
@pytest.mark.parametrize(("url", "message"), [
    ("not a url", "malformed"),
    ("postgresql://u:pw@host:port/db", "malformed"),
    ("mysql://u:secret@localhost/db", "Unsupported storage scheme 'mysql'"),
])
def test_bad_storage_urls(url: str, message: str, tiny_preset: Path) -> None:
    result = run("start", "--preset", str(tiny_preset), "--storage", url)
    assert_one_sentence(result, 1, message)
    assert "secret" not in result.output and "pw@" not in result.output


def test_unreachable_postgres_names_no_password(tiny_preset: Path) -> None:
    url = "postgresql+psycopg://search:hunter2secret@127.0.0.1:1/search"
    result = run("status", "--storage", url, "--study", "x")
    assert_one_sentence(result, 1, "Cannot open the storage", "127.0.0.1:1")
    assert "hunter2secret" not in result.output and "***" in result.output


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
    storage = f"sqlite:///{private_storage / 'search.db'}"
    private_storage.mkdir()
    from search import presets

    study = optuna.create_study(study_name="empty", storage=storage)
    study.set_user_attr("preset", presets.load("demo").to_json())
    assert_one_sentence(run("retrain-best", "--study", "empty"), 1, "no completed trial")
    # A completed trial from an older version, with no stored configuration.
    study.add_trial(optuna.trial.create_trial(value=0.3, params={}, distributions={},
                                              user_attrs={"best_epoch": 2}))
    assert_one_sentence(run("retrain-best", "--study", "empty"), 1,
                        "architecture cannot be rebuilt")
    # A study that `search start` did not make.
    optuna.create_study(study_name="foreign", storage=storage)
    assert_one_sentence(run("status", "--study", "foreign"), 1, "was not made by 'search start'")


# 6. A study name reused with another dataset (another space: test_cli.py) ---------------------
def test_study_name_reused_for_another_dataset(existing: Path) -> None:
    before = snapshot(existing)
    result = run("start", "--dataset", "mnist", "--study", "tiny")
    assert_one_sentence(result, 1, "searches fashion_mnist, not mnist", "--study NEW_NAME")
    assert snapshot(existing) == before


# 7. Malformed presets name the key and the file ------------------------------------------------
@pytest.mark.parametrize(("old", "new", "message"), [
    ("patience = 1", "patience = 1\nfoo = 3", "'foo' is not a known setting"),
    ("epochs = 3", 'epochs = "three"', "'epochs' must be of type int"),
    ("conv_layers = [1, 2]", "conv_layers = [3, 1]", "'space.conv_layers' has min 3 greater"),
    ("kernel = [3, 5]", "kernel = [0, 3]", "'space.kernel' must hold odd sizes"),
    ("dropout_rate = [0.1, 0.3]", "dropout_rate = [-0.2, 0.3]",
     "'space.dropout_rate' must lie within [0, 1)"),
    ("filters = [8, 16, 32, 64]", "filters = [8, 16, 32, 64]\nbogus = [1]",
     "'space.bogus' is not a known axis"),
    ("seed = 3", "seed = 3\n[oops", "not valid TOML"),
])
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
    preset = write_preset(tmp_path, **{
        "learning_rate = [0.0001, 0.003]": "learning_rate = [0.0001, 1e12]",
        'name = "starved"\nconvs = [[8, 5, true]]\ndense = [32]\nlearning_rate = 0.0001':
        'name = "diverging"\nconvs = [[8, 5, true]]\ndense = [32]\nlearning_rate = 1e12',
    })
    result = run("start", "--preset", str(preset), "--trials", "3")
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="tiny",
                              storage=f"sqlite:///{private_storage / 'search.db'}")
    diverged = study.trials[1]
    assert diverged.user_attrs["baseline"] == "diverging"
    assert diverged.state == optuna.trial.TrialState.PRUNED
    assert "NaN or infinite" in diverged.user_attrs["reason"]
    assert len(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,
                                        optuna.trial.TrialState.PRUNED))) == 3
    assert math.isfinite(study.best_value)


# 10. Over budget or over memory: rejected before training -------------------------------------
def test_over_budget_and_over_memory_are_rejected_untrained(
    tmp_path: Path, private_storage: Path, fashion_dir: Path
) -> None:
    preset = write_preset(tmp_path, **{
        "max_params = 400_000": "max_params = 100_000",
        'name = "starved"\nconvs = [[8, 5, true]]': 'name = "wide"\nconvs = [[64, 3, false]]',
    })
    assert run("start", "--preset", str(preset), "--trials", "2").exit_code == 0
    study = optuna.load_study(study_name="tiny",
                              storage=f"sqlite:///{private_storage / 'search.db'}")
    for trial in study.trials[:2]:  # 347,146 and 2.8 M parameters, both over 100,000
        assert trial.state == optuna.trial.TrialState.PRUNED
        assert "exceed the budget of 100,000" in trial.user_attrs["reason"]
        assert "epochs_trained" not in trial.user_attrs and not trial.intermediate_values



def test_a_batch_too_big_for_memory_is_rejected_untrained(
    tmp_path: Path, private_storage: Path, fashion_dir: Path
) -> None:
    # Batches of ten million images: the estimate runs to terabytes on any machine.
    preset = write_preset(tmp_path, **{
        "[space]": "[space]\nbatch_size = [10000000]",
        "dense = [64]\n": "dense = [64]\nbatch_size = 10000000\n",
        "dense = [32]\n": "dense = [32]\nbatch_size = 10000000\n",
    })
    result = run("start", "--preset", str(preset), "--trials", "1")
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="tiny",
                              storage=f"sqlite:///{private_storage / 'search.db'}")
    trial = study.trials[0]
    assert trial.state == optuna.trial.TrialState.PRUNED and not trial.intermediate_values
    assert "training would need about" in trial.user_attrs["reason"]
    assert "GiB available" in trial.user_attrs["reason"]


# 11. Ctrl-C and SIGTERM leave no trial RUNNING, and the rerun resumes to the total ------------
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_marks_the_trial_failed_and_resume_reaches_the_total(
    sig: signal.Signals, tmp_path: Path, private_storage: Path, fashion_dir: Path
) -> None:
    preset = write_preset(tmp_path, **{"epochs = 3": "epochs = 6", "patience = 1": "patience = 9"})
    command = [sys.executable, "-m", "search", "start", "--preset", str(preset), "--trials", "2"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env)
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

    storage = f"sqlite:///{private_storage / 'search.db'}"
    study = optuna.load_study(study_name="tiny", storage=storage)
    states = [t.state for t in study.trials]
    assert optuna.trial.TrialState.RUNNING not in states
    assert states[0] == optuna.trial.TrialState.FAIL

    assert run("start", "--preset", str(preset), "--trials", "2").exit_code == 0
    study = optuna.load_study(study_name="tiny", storage=storage)
    finished = [t for t in study.trials if t.state.is_finished()
                and t.state != optuna.trial.TrialState.FAIL]
    assert len(finished) == 2


# 12. A full disk when saving the model: a clear error, the records intact ---------------------
@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_full_disk_when_saving_the_model(existing: Path, private_storage: Path) -> None:
    models = private_storage / "models"
    models.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(models)],
                             capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        before = snapshot(existing)
        result = run("retrain-best", "--study", "tiny")
        assert_one_sentence(result, 1, "the model could not be saved to", "No space left")
        assert snapshot(existing) == before
        attrs = optuna.load_study(study_name="tiny",
                                  storage=f"sqlite:///{existing}").user_attrs
        assert attrs["test_accuracy"] > 0.5  # measured and recorded before the save failed
        assert list(models.iterdir()) == []  # no half-written model left behind
    finally:
        subprocess.run(["umount", str(models)], check=True)


# 13. The storage folder cannot be made ----------------------------------------------------------
def test_storage_folder_that_cannot_be_created(tmp_path: Path, tiny_preset: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
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
