"""The CLI's shared parts: the --workers type, the storage URLs scrubbed from stray errors, and
--backend and --gpus, checked before anything runs."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click
import pytest

from search.cli.options import Hours, WorkerCount, storage_arguments
from search.train import runtime
from tests.helpers import run, write_preset


@pytest.mark.parametrize(("given", "expected"), [("auto", "auto"), ("3", 3), (2, 2)])
def test_workers_takes_a_positive_number_or_auto(given: object, expected: object) -> None:
    assert WorkerCount().convert(given, None, None) == expected


@pytest.mark.parametrize("given", ["0", "-1", "two", "1.5"])
def test_workers_refuses_anything_else_in_one_sentence(given: str) -> None:
    with pytest.raises(click.BadParameter, match="neither a positive number nor 'auto'"):
        WorkerCount().convert(given, None, None)


def test_the_storage_urls_to_scrub_come_from_the_arguments_and_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = "postgresql+psycopg://search:secret@db/search"
    monkeypatch.delenv("SEARCH_STORAGE", raising=False)
    monkeypatch.setattr(sys, "argv", ["search", "status", "--storage", url])
    assert storage_arguments() == [None, url]
    monkeypatch.setattr(sys, "argv", ["search", "status", f"--storage={url}"])
    assert storage_arguments() == [None, url]
    # search copy names two storages, and both passwords are scrubbed.
    monkeypatch.setattr(sys, "argv", ["search", "copy", "--from", url, f"--to={url}x"])
    assert storage_arguments() == [None, url, url + "x"]
    monkeypatch.setattr(sys, "argv", ["search", "status"])
    monkeypatch.setenv("SEARCH_STORAGE", "sqlite:///x.db")
    assert storage_arguments() == ["sqlite:///x.db"]


def test_gpus_must_be_card_numbers(tmp_path: Path, private_storage: Path) -> None:
    preset = write_preset(tmp_path)
    for command in (["start", "--preset", str(preset)], ["worker", "--study", "tiny"]):
        result = run(*command, "--gpus", "a,b")
        assert result.exit_code == 2
        assert "Invalid value for '--gpus'" in result.output and "names no GPU" in result.output
    assert not (private_storage / "search.db").exists()


def test_the_commands_that_train_take_a_backend() -> None:
    for command in ("start", "worker", "retrain-best"):
        text = run(command, "--help").output
        assert "--backend [tensorflow|jax|torch]" in text and "KERAS_BACKEND" in text
    assert "--gpus" in run("worker", "--help").output


def test_a_backend_this_process_cannot_switch_to_is_refused_and_changes_nothing(
    tmp_path: Path, private_storage: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import keras  # noqa: F401  (this process now runs TensorFlow)

    monkeypatch.delenv(runtime.ENV_BACKEND, raising=False)
    result = run("start", "--preset", str(write_preset(tmp_path)), "--backend", "jax")
    assert result.exit_code == 1
    assert "Keras already runs on tensorflow in this process; start a new process to use jax." in (
        result.output
    )
    assert runtime.ENV_BACKEND not in os.environ
    assert not (private_storage / "search.db").exists()


@pytest.mark.parametrize("hours", ["inf", "nan", "-inf", "1e300", "0", "-2", "8761"])
def test_hours_must_be_finite_positive_and_at_most_a_year(
    hours: str, private_storage: Path
) -> None:
    """Before, inf and 1e300 passed and failed later with 'timestamp out of range', and nan
    was stored on the study, so every resume and `search status` failed the same way."""
    result = run("start", "--preset", "demo", "--hours", hours)
    assert result.exit_code == 2
    assert f"'{hours}' is not a number of hours above 0 and at most 8,760." in result.output
    assert not private_storage.exists()  # refused before any storage was opened


def test_a_fractional_hour_is_a_budget(tmp_path: Path) -> None:
    assert Hours().convert("0.25", None, None) == 0.25
