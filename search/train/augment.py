"""Training-time augmentation that compiles on every Keras backend: random shifts and flips.

Keras's own RandomTranslation declares itself unfit for XLA (`supports_jit = False`), so one
such layer made Keras compile the whole model with `jit_compile=False`: every operation then ran
eagerly, one at a time, on JAX. :class:`RandomShift` does the same translation with plain
`keras.ops` (two small matrix products per image), which XLA, TensorFlow's graphs and PyTorch
all accept. Keras's RandomFlip already compiles.

Importing this module imports Keras: import it only once the backend is chosen
(search.train.runtime.configure). It also registers RandomShift for `keras.models.load_model`.
"""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

SHIFT = 0.1  # the largest shift, as a fraction of the image's height and width (the lab's)


@keras.saving.register_keras_serializable(package="search")
class RandomShift(keras.layers.Layer):
    """Shift each image by a random fraction of its size, in training only.

    As `RandomTranslation(factor, factor, fill_mode="constant")`: each image moves by a shift
    drawn uniformly from [-factor, factor] of its height and of its width, bilinearly
    interpolated, with zeros where it moved in from outside. Bilinear interpolation along one
    axis is a product with a matrix whose row i holds max(0, 1 - |j - (i - shift)|) in
    column j; rows, then columns. Outside training the layer passes images through.
    """

    def __init__(self, factor: float = SHIFT, seed: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.factor = factor
        self.seed = seed
        self.generator = keras.random.SeedGenerator(seed)

    def call(self, images: Any, training: bool | None = None) -> Any:
        if not training:
            return images
        batch = ops.shape(images)[0]
        height, width = images.shape[1], images.shape[2]
        dy, dx = (
            keras.random.uniform((batch,), -self.factor, self.factor, seed=self.generator) * side
            for side in (height, width)
        )
        rows = self._interpolation(dy, height, images.dtype)
        cols = self._interpolation(dx, width, images.dtype)
        shifted = ops.einsum("bij,bjkc->bikc", rows, images)
        return ops.einsum("bikc,blk->bilc", shifted, cols)

    @staticmethod
    def _interpolation(shift: Any, side: int, dtype: Any) -> Any:
        """(batch, side, side): row i takes the input at i - shift, bilinearly, zero outside."""
        out = ops.arange(side, dtype=dtype)[None, :, None]
        source = ops.arange(side, dtype=dtype)[None, None, :]
        distance = ops.abs(source - (out - ops.cast(shift, dtype)[:, None, None]))
        return ops.relu(1.0 - distance)

    def compute_output_shape(self, input_shape: Any) -> Any:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "factor": self.factor, "seed": self.seed}


def augmentation(*, shift: bool, flip: bool) -> list[keras.layers.Layer]:
    """The layers that augment training images (N×H×W×1 floats): a shift, then a mirror."""
    layers: list[keras.layers.Layer] = []
    if shift:
        layers.append(RandomShift(SHIFT))
    if flip:
        layers.append(keras.layers.RandomFlip("horizontal"))
    return layers
