"""The CLI's shared parts: the --workers type and the storage URLs scrubbed from stray errors."""

from __future__ import annotations

import sys

import click
import pytest

from search.options import WorkerCount, storage_arguments


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
