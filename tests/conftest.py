"""Shared fixtures: real Fashion-MNIST, the tiny preset, and a private storage folder per test.

The helpers that tests call (the preset, `run`, `popen`) live in tests/helpers.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from search.define import datasets
from tests.helpers import HEARTBEAT, db_url, write_preset
from tests.postgres import pg_url, postgres  # noqa: F401  (fixtures: a throwaway PostgreSQL)

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
ARTIFACTS = Path(__file__).parent / "artifacts"


@pytest.fixture(autouse=True)
def private_storage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test gets its own storage/ folder; no test sees the user's studies."""
    home = tmp_path / "storage"
    monkeypatch.setenv("SEARCH_DIR", str(home))
    monkeypatch.delenv("SEARCH_STORAGE", raising=False)
    return home


@pytest.fixture(params=["postgresql", "sqlite"])
def url(request: pytest.FixtureRequest, private_storage: Path) -> str:
    """A fresh database on each backend: an empty PostgreSQL database, or a new SQLite file."""
    if request.param == "postgresql":
        return str(request.getfixturevalue("pg_url"))
    return db_url(private_storage)


@pytest.fixture
def short_heartbeat(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Heartbeats every second and a grace of 4 s, for this test and the processes it starts."""
    for key, value in HEARTBEAT.items():
        monkeypatch.setenv(key, value)
    return HEARTBEAT


@pytest.fixture(scope="session")
def fashion_dir() -> Path:
    if not (FASHION_DIR / "train-images-idx3-ubyte.gz").is_file():
        pytest.fail(
            "Fashion-MNIST is missing: run 'bash .ci/setup --test' (installs Debian's "
            "dataset-fashion-mnist)."
        )
    return FASHION_DIR


@pytest.fixture(scope="session")
def small_split(fashion_dir: Path) -> datasets.Split:
    """Real Fashion-MNIST: the first 1,000 training images validate, the next 2,000 train."""
    images, labels = datasets.load_train("fashion_mnist", fashion_dir)
    split = datasets.split(images, labels, 1000, train_size=2000)
    assert set(np.unique(split.y_train)) == set(range(10))
    return split


@pytest.fixture
def tiny_preset(tmp_path: Path) -> Path:
    return write_preset(tmp_path)


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
