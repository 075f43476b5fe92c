"""The training-time augmentation: Keras's random translation, in operations every backend's
compiler takes, saved and loaded with the model, and compiled by XLA on JAX."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from search.define.space import Config, Conv
from search.train.network import build


def test_the_shift_is_keras_s_random_translation_in_operations_every_compiler_takes() -> None:
    import keras
    import numpy as np
    from keras import ops

    from search.train.augment import RandomShift

    images = np.random.default_rng(0).random((2, 28, 28, 1)).astype("float32")
    dy, dx = np.array([1.7, -2.3], "float32"), np.array([-0.4, 2.8], "float32")
    rows = RandomShift._interpolation(ops.convert_to_tensor(dy), 28, "float32")
    cols = RandomShift._interpolation(ops.convert_to_tensor(dx), 28, "float32")
    ours = ops.einsum("bikc,blk->bilc", ops.einsum("bij,bjkc->bikc", rows, images), cols)
    # What RandomTranslation(fill_mode="constant") does with the same shifts: bilinear, zeros.
    for i in range(2):
        expected = keras.ops.image.affine_transform(
            images[i : i + 1],
            np.array([[1, 0, -dx[i], 0, 1, -dy[i], 0, 0]], "float32"),
            interpolation="bilinear",
            fill_mode="constant",
        )
        np.testing.assert_allclose(ops.convert_to_numpy(ours)[i : i + 1], expected, atol=1e-5)
    layer = RandomShift(seed=1)
    assert np.array_equal(ops.convert_to_numpy(layer(images, training=False)), images)
    shifted = ops.convert_to_numpy(layer(images, training=True))
    assert not np.allclose(shifted, images) and shifted.shape == images.shape


def test_an_augmented_model_saves_and_loads_back_with_its_layers(tmp_path: Path) -> None:
    import keras
    import numpy as np

    model = build(Config(convs=(Conv(8, 3, True),), dense=(16,), augment="shift+flip"), flip=True)
    names = [type(layer).__name__ for layer in model.layers]
    assert "RandomShift" in names and "RandomFlip" in names
    model.save(tmp_path / "augmented.keras")
    loaded = keras.models.load_model(tmp_path / "augmented.keras")
    assert [type(layer).__name__ for layer in loaded.layers] == names
    images = np.arange(4 * 28 * 28, dtype="uint8").reshape(4, 28, 28)
    np.testing.assert_allclose(loaded.predict(images, verbose=0), model.predict(images, verbose=0))


COMPILED_ON_JAX = """
import warnings
import keras
import numpy as np
from search.train.runtime import configure
from search.train.network import build
from search.define.space import Config, Conv

configure()
images = np.random.default_rng(0).integers(0, 255, (256, 28, 28), dtype="uint8")
labels = np.arange(256) % 10
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    model = build(Config(convs=(Conv(8, 3, True),), dense=(16,), augment="shift+flip"), flip=True)
    model.fit(images, labels, batch_size=64, epochs=1, verbose=0)
    print("augmented", model.jit_compile)
    # Keras's own translation layer, for contrast: Keras warns and compiles without XLA.
    plain = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.RandomTranslation(0.1, 0.1)])
    plain.compile(loss="mse", jit_compile=True)
    print("RandomTranslation", plain.jit_compile)
print([str(w.message) for w in caught if "jit_compile" in str(w.message)])
"""


def test_an_augmented_model_stays_compiled_by_xla_through_fit_on_jax() -> None:
    pytest.importorskip("jax")
    env = {**os.environ, "KERAS_BACKEND": "jax"}
    result = subprocess.run(
        [sys.executable, "-c", COMPILED_ON_JAX],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:2] == ["augmented True", "RandomTranslation False"]
    # The one fallback warning is the contrast's: the trial's model never fell back to eager.
    assert lines[2] == (
        '["Model doesn\'t support `jit_compile=True`. Proceeding with `jit_compile=False`."]'
    )
