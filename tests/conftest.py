"""Shared fixtures: real Fashion-MNIST, tiny presets, and a private storage folder per test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.postgres import pg_url, postgres  # noqa: F401  (fixtures: a throwaway PostgreSQL)

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
ARTIFACTS = Path(__file__).parent / "artifacts"

# A tiny but real search: 5,000 training and 1,000 validation images, three epochs a trial.
TINY_PRESET = """
dataset = "fashion_mnist"
trials = 4
val_size = 1000
train_size = 5000
epochs = 3
patience = 1
seed = 3
pruner = "{pruner}"
max_params = 400_000

[space]
conv_layers = [1, 2]
filters = [8, 16, 32, 64]
kernel = [3, 5]
pool = [true, false]
dropout = ["none", "flatten"]
dropout_rate = [0.1, 0.3]
dense_units = [32, 64, 128]
learning_rate = [0.0001, 0.003]

# A sound network first, then a starved one (learning rate 1e-4, 8 filters) that the
# successive-halving pruner stops at its first rung, after two epochs of three.
[[baseline]]
name = "lab test 9"
convs = [[32, 3, true]]
dense = [64]

[[baseline]]
name = "starved"
convs = [[8, 5, true]]
dense = [32]
learning_rate = 0.0001
"""


def write_preset(folder: Path, name: str = "tiny", pruner: str = "sha", **replace: str) -> Path:
    text = TINY_PRESET.format(pruner=pruner)
    for old, new in replace.items():
        text = text.replace(old, new)
    path = folder / f"{name}.toml"
    path.write_text(text)
    return path


@pytest.fixture(autouse=True)
def private_storage(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test gets its own storage/ folder; no test sees the user's studies."""
    home = tmp_path / "storage"
    monkeypatch.setenv("SEARCH_DIR", str(home))
    monkeypatch.delenv("SEARCH_STORAGE", raising=False)
    return home


@pytest.fixture(scope="session")
def fashion_dir() -> Path:
    if not (FASHION_DIR / "train-images-idx3-ubyte.gz").is_file():
        pytest.fail("Fashion-MNIST is missing: run 'bash .ci/setup --test' (installs Debian's "
                    "dataset-fashion-mnist).")
    return FASHION_DIR


@pytest.fixture
def tiny_preset(tmp_path: Path) -> Path:
    return write_preset(tmp_path)


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
