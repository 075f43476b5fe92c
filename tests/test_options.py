"""The CLI's shared parts: the --workers type and the storage URL scrubbed from stray errors."""

from __future__ import annotations

import sys

import click
import pytest

from search.options import WorkerCount, _storage_argument


@pytest.mark.parametrize(("given", "expected"), [("auto", "auto"), ("3", 3), (2, 2)])
def test_workers_takes_a_positive_number_or_auto(given: object, expected: object) -> None:
    assert WorkerCount().convert(given, None, None) == expected


@pytest.mark.parametrize("given", ["0", "-1", "two", "1.5"])
def test_workers_refuses_anything_else_in_one_sentence(given: str) -> None:
    with pytest.raises(click.BadParameter, match="neither a positive number nor 'auto'"):
        WorkerCount().convert(given, None, None)


def test_the_storage_url_to_scrub_comes_from_the_arguments_or_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url = "postgresql+psycopg://search:secret@db/search"
    monkeypatch.setattr(sys, "argv", ["search", "status", "--storage", url])
    assert _storage_argument() == url
    monkeypatch.setattr(sys, "argv", ["search", "status", f"--storage={url}"])
    assert _storage_argument() == url
    monkeypatch.setattr(sys, "argv", ["search", "status"])
    monkeypatch.setenv("SEARCH_STORAGE", "sqlite:///x.db")
    assert _storage_argument() == "sqlite:///x.db"
