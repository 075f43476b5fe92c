"""Speed settings change how fast a trial runs, never what it learns."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from search.define import datasets, presets
from search.define.space import Config, Conv
from search.train.network import build
from search.train.runtime import configure
from search.train.training import fit

IMAGES = 1100  # 18 batches of 64: one full execution of 16 steps and a partial one of 2


@pytest.fixture(scope="module")
def images(fashion_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    x, y = datasets.load_train("fashion_mnist", fashion_dir)
    return x[:IMAGES], y[:IMAGES]


def train(
    config: Config, x: np.ndarray, y: np.ndarray, steps_per_execution: int
) -> tuple[list[float], list[np.ndarray], int]:
    configure()
    import keras

    keras.backend.clear_session(free_memory=True)
    keras.utils.set_random_seed(11)
    model = build(config, steps_per_execution=steps_per_execution)
    history = fit(model, config, x, y, epochs=2)
    return history.loss, model.get_weights(), int(model.optimizer.iterations.numpy())


def test_steps_per_execution_trains_every_batch_and_learns_the_same(
    images: tuple[np.ndarray, np.ndarray],
) -> None:
    x, y = images
    config = Config(convs=(Conv(16, 3, True),), dense=(32,))
    loss_1, weights_1, steps_1 = train(config, x, y, steps_per_execution=1)
    loss_16, weights_16, steps_16 = train(config, x, y, steps_per_execution=16)
    per_epoch = math.ceil(IMAGES / config.batch_size)
    # The partial last execution (2 of 16 steps) still runs: no batch is dropped.
    assert steps_1 == steps_16 == 2 * per_epoch
    assert loss_1[1] < loss_1[0]  # it really learns
    np.testing.assert_allclose(loss_16, loss_1, rtol=1e-4)
    for a, b in zip(weights_16, weights_1, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("name", ["fashion_mnist", "mnist", "demo"])
def test_shipped_presets_reach_the_compiled_model(name: str) -> None:
    preset = presets.load_preset(name)
    configure()
    model = build(preset.baselines[0].config, steps_per_execution=preset.steps_per_execution)
    assert model.steps_per_execution == preset.steps_per_execution
    # steps_per_execution is a speed setting: changing it must not orphan a running study.
    faster = presets.Preset(**{**preset.__dict__, "steps_per_execution": 1})
    assert faster.fingerprint() == preset.fingerprint()
