"""The commands end to end on real Fashion-MNIST subsets and real SQLite files."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import optuna
import pytest

from search.cli import cli
from search.run import sizing
from search.store.trials import trained
from tests.helpers import load_study, run, write_preset

OPENED: list[str] = []
RECORDING = [False]


def _audit(event: str, args: tuple[object, ...]) -> None:
    if RECORDING[0] and event == "open" and isinstance(args[0], str | bytes | Path):
        OPENED.append(str(args[0]))


sys.addaudithook(_audit)  # records every file this process opens; cannot be removed


def trials(home: Path, study: str = "tiny") -> list[optuna.trial.FrozenTrial]:
    return load_study(home, study).get_trials()


def test_search_prunes_records_and_resumes_to_the_same_total(
    tiny_preset: Path, private_storage: Path, fashion_dir: Path
) -> None:
    result = run("start", "--preset", str(tiny_preset), "--trials", "3")
    assert result.exit_code == 0, result.output
    assert str(private_storage / "search.db") in result.output  # the absolute path is printed
    assert "trial 3/3" in result.output and "Best: trial #" in result.output

    done = trials(private_storage)
    assert [t.state.name for t in done][:2] == ["COMPLETE", "PRUNED"]
    # The starved baseline was stopped by the pruner at its first rung, before the last epoch.
    starved = done[1]
    assert starved.user_attrs["baseline"] == "starved"
    assert starved.user_attrs["epochs_trained"] == 2 and len(starved.intermediate_values) == 2
    first = done[0].user_attrs
    assert first["architecture"] == "C32k3-P-F-D64" and first["params"] == 347_146
    assert first["mflops"] > 0 and first["seed"] == 3 * 100_003 + 0
    assert first["best_epoch"] in (1, 2, 3) and first["seconds_per_epoch"] > 0
    assert first["val_accuracy"] > 0.6  # it learned: chance is 0.1
    assert done[0].value == pytest.approx(first["val_loss"])

    result = run("start", "--preset", str(tiny_preset), "--trials", "5")
    assert "resuming, 3 finished" in result.output and "trial 5/5" in result.output
    after = trials(private_storage)  # trained trials count; rejected ones are recorded too
    assert sum(map(trained, after)) == 5
    result = run("start", "--preset", str(tiny_preset), "--trials", "5")
    assert result.exit_code == 0 and "nothing to do" in result.output
    assert len(trials(private_storage)) == len(after)
    # Without --trials, a resumed study keeps its own total, not the preset's default (4).
    result = run("start", "--preset", str(tiny_preset))
    assert result.exit_code == 0 and "5 trials" in result.output
    assert "nothing to do" in result.output and len(trials(private_storage)) == len(after)

    status = run("status", "--study", "tiny")
    assert status.exit_code == 0
    assert "C32k3-P-F-D64" in status.output and "347,146" in status.output
    assert "Best: trial #" in status.output and "pruned" in status.output


# Installed in the worker processes through PYTHONPATH: records every file they open. The log
# is opened before the hook, and written with os.write, which raises no audit event of its own.
OPEN_LOGGER = """
import os, sys
_log = os.environ.get("SEARCH_TEST_OPEN_LOG")
if _log:
    _fd = os.open(_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    def _audit(event, args):
        if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
            os.write(_fd, os.fsencode(args[0]) + b"\\n")
    sys.addaudithook(_audit)
"""


def test_the_search_never_reads_the_test_set(
    tmp_path: Path, private_storage: Path, fashion_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "train-only"
    data.mkdir()
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"):
        shutil.copy(fashion_dir / name, data / name)
    preset = write_preset(tmp_path)
    # The trials run in a worker process: it records what it opens, as this process does.
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(OPEN_LOGGER)
    worker_log = tmp_path / "opened-by-workers.txt"
    monkeypatch.setenv("SEARCH_TEST_OPEN_LOG", str(worker_log))
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join([str(hook), os.environ.get("PYTHONPATH", "")])
    )
    OPENED.clear()
    RECORDING[0] = True
    try:
        result = run("start", "--preset", str(preset), "--trials", "2", "--data-dir", str(data))
    finally:
        RECORDING[0] = False
    assert result.exit_code == 0, result.output
    opened = OPENED + worker_log.read_text().splitlines()
    assert any("train-images" in p for p in opened)  # the hooks do see the data files
    assert not [p for p in opened if "t10k" in p]
    # Only retrain-best asks for the test set, and here it is not there.
    result = run("retrain-best", "--study", "tiny", "--data-dir", str(data))
    assert result.exit_code == 1
    assert "missing t10k-images-idx3-ubyte.gz" in result.output


def test_retrain_best_tests_once_well_above_chance_and_saves_the_model(
    tiny_preset: Path, private_storage: Path, fashion_dir: Path
) -> None:
    assert run("start", "--preset", str(tiny_preset), "--trials", "2").exit_code == 0
    result = run("retrain-best", "--study", "tiny")
    assert result.exit_code == 0, result.output
    assert "against the lab's 90.70%" in result.output
    attrs = load_study(private_storage).user_attrs
    assert attrs["test_accuracy"] > 0.70
    retrain = attrs["retrain"]
    assert retrain["train_images"] == 6000 and retrain["trial"] == 0
    assert Path(retrain["model_path"]).is_file()

    import keras

    model = keras.models.load_model(retrain["model_path"])
    assert model.count_params() == retrain["params"]

    # Reproducible: the same trial, retrained with its recorded seed, tests the same.
    assert run("retrain-best", "--study", "tiny").exit_code == 0
    again = load_study(private_storage).user_attrs
    assert again["retrain"]["test_accuracy"] == retrain["test_accuracy"]
    assert again["retrain"]["history"] == retrain["history"]


def test_a_study_name_is_not_reused_for_another_space(
    tmp_path: Path, tiny_preset: Path, private_storage: Path, fashion_dir: Path
) -> None:
    assert run("start", "--preset", str(tiny_preset), "--trials", "1").exit_code == 0
    before = [(t.number, t.state, t.params) for t in trials(private_storage)]
    changed = write_preset(tmp_path / "..", name="tiny", **{"[0.0001, 0.003]": "[0.0001, 0.005]"})
    result = run("start", "--preset", str(changed), "--trials", "2")
    assert result.exit_code == 1
    assert "different preset or search space" in result.output
    assert "Traceback" not in result.output
    after = [(t.number, t.state, t.params) for t in trials(private_storage)]
    assert after == before  # nothing was added or lost


def test_read_only_commands_do_not_create_a_database(private_storage: Path) -> None:
    for command in ("status", "retrain-best"):
        result = run(command, "--study", "nothing")
        assert result.exit_code == 1
        assert "No study database" in result.output
    assert not (private_storage / "search.db").exists()


def test_help_shows_an_example_for_every_command() -> None:
    assert "Example:" in run("--help").output
    for name in cli.commands:
        result = run(name, "--help")
        assert result.exit_code == 0 and "Example:" in result.output, name


def test_hours_bound_the_search_and_a_rerun_keeps_them(
    tmp_path: Path, private_storage: Path, fashion_dir: Path
) -> None:
    preset = write_preset(tmp_path, "small")
    result = run("start", "--preset", str(preset), "--trials", "50", "--hours", "0.005")
    assert result.exit_code == 0, result.output  # running out of time is not a failure
    assert "No new trial starts after 0.005 h." in result.output
    assert "Time is up with " in result.output and "of 50 trials trained; rerun" in result.output
    study = load_study(private_storage)
    done = sum(t.state.name in ("COMPLETE", "PRUNED") for t in study.get_trials())
    assert done < 50  # 18 seconds hold a few trials of 2,000 images, not fifty
    assert study.user_attrs["deadline"] is not None and study.user_attrs["trials"] == 50
    again = run("start", "--preset", str(preset))  # resumes: the total and the hours kept
    assert again.exit_code == 0, again.output
    assert "50 trials" in again.output and "No new trial starts after 0.005 h." in again.output
    hours_only = run("start", "--preset", str(preset), "--study", "open", "--hours", "0.001")
    assert hours_only.exit_code == 0, hours_only.output
    assert "(new): as many trials as fit, preset" in hours_only.output
    assert "/100000" not in hours_only.output  # its trials are counted, not out of a total
    assert "of 100000" not in hours_only.output


def test_help_states_the_recycling_and_the_time_left() -> None:
    for command in ("start", "worker"):
        text = " ".join(run(command, "--help").output.split())
        assert f"after {sizing.RECYCLE_TRIALS} trials or past {sizing.RECYCLE_MB:,} MB" in text
        assert "SEARCH_RECYCLE_TRIALS and SEARCH_RECYCLE_MB (0: never)" in text
    assert "an estimate of the rest" in " ".join(run("status", "--help").output.split())
