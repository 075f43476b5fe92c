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


def test_pad_and_crop_moves_each_image_by_whole_pixels() -> None:
    import numpy as np
    from keras import ops

    from search.train.augment import CROP_PAD, PadAndCrop

    images = np.random.default_rng(0).random((64, 28, 28, 1)).astype("float32")
    cropped = ops.convert_to_numpy(PadAndCrop(seed=2)(images, training=True))
    padded = np.pad(images, ((0, 0), (CROP_PAD, CROP_PAD), (CROP_PAD, CROP_PAD), (0, 0)))
    seen = set()
    for image, out in zip(padded, cropped, strict=True):
        # The crop of the zero-padded image at some offset, to float precision.
        found = [
            (dy, dx)
            for dy in range(2 * CROP_PAD + 1)
            for dx in range(2 * CROP_PAD + 1)
            if np.allclose(out, image[dy : dy + 28, dx : dx + 28], atol=1e-6)
        ]
        assert len(found) == 1
        seen |= set(found)
    assert len(seen) > 10  # offsets vary from image to image
    assert np.array_equal(ops.convert_to_numpy(PadAndCrop()(images, training=False)), images)


def test_random_erasing_fills_one_rectangle_of_half_the_images_with_noise() -> None:
    import numpy as np
    from keras import ops

    from search.train.augment import ERASE_AREA, RandomErasing

    images = np.full((400, 28, 28, 1), 0.5, "float32")
    erased = ops.convert_to_numpy(RandomErasing(seed=3)(images, training=True))[..., 0]
    changed = erased != 0.5
    hit = changed.any(axis=(1, 2))
    assert 0.4 < hit.mean() < 0.6  # p = 0.5
    for mask in changed[hit]:
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        box = mask[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
        assert box.all() and box.sum() == mask.sum()  # one solid rectangle, inside the image
        assert box.size <= ERASE_AREA[1] * 28 * 28 + 2 * 28 + 1  # whole pixels round it up
    assert 0 <= erased.min() and erased.max() <= 1
    untouched = RandomErasing()(images, training=False)
    assert np.array_equal(ops.convert_to_numpy(untouched), images)


def test_an_augmented_model_saves_and_loads_back_with_its_layers(tmp_path: Path) -> None:
    import keras
    import numpy as np

    model = build(
        Config(convs=(Conv(8, 3, True),), dense=(16,), augment="crop+flip+erase"), flip=True
    )
    names = [type(layer).__name__ for layer in model.layers]
    assert {"PadAndCrop", "RandomFlip", "RandomErasing"} <= set(names)
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
    pieces = Config(convs=(Conv(8, 3, True),), dense=(16,), augment="crop+flip+erase", ema=True)
    model = build(pieces, flip=True)
    model.fit(images, labels, batch_size=64, epochs=1, verbose=0)
    print("crop, erase, EMA", model.jit_compile)
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
    assert lines[:3] == ["augmented True", "crop, erase, EMA True", "RandomTranslation False"]
    # The one fallback warning is the contrast's: the trial's model never fell back to eager.
    assert lines[3] == (
        '["Model doesn\'t support `jit_compile=True`. Proceeding with `jit_compile=False`."]'
    )
