"""Training-time augmentation that compiles on every Keras backend: random shifts, pad-and-crop,
flips and random erasing.

Keras's own RandomTranslation declares itself unfit for XLA (`supports_jit = False`), so one
such layer made Keras compile the whole model with `jit_compile=False`: every operation then ran
eagerly, one at a time, on JAX. :class:`RandomShift` does the same translation with plain
`keras.ops` (two small matrix products per image), which XLA, TensorFlow's graphs and PyTorch
all accept. Keras's RandomFlip already compiles. :class:`PadAndCrop` is the same product with
whole-pixel shifts, and :class:`RandomErasing` a mask built from comparisons: neither needs a
shape that depends on the data.

Importing this module imports Keras: import it only once the backend is chosen
(search.train.runtime.configure). It also registers the layers for `keras.models.load_model`.
"""

from __future__ import annotations

import math
from typing import Any

import keras
from keras import ops

SHIFT = 0.1  # the largest shift, as a fraction of the image's height and width (the lab's)
# Pad-and-crop: 4 pixels on each side of a 32-pixel CIFAR image is the field's recipe; 3 of 28
# is about the same share.
CROP_PAD = 3
# Random erasing as Zhong et al. (2017) gave it for Fashion-MNIST: half the images lose a
# rectangle of 2-40 % of their area, of aspect 0.3-3.3, filled with noise.
ERASE_P = 0.5
ERASE_AREA = (0.02, 0.4)
ERASE_ASPECT = (0.3, 1 / 0.3)


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

    def shifts(self, batch: Any, side: int) -> Any:
        """Each image's shift along one axis, in pixels."""
        drawn = keras.random.uniform((batch,), -self.factor, self.factor, seed=self.generator)
        return drawn * side

    def call(self, images: Any, training: bool | None = None) -> Any:
        if not training:
            return images
        batch = ops.shape(images)[0]
        height, width = images.shape[1], images.shape[2]
        dy, dx = (self.shifts(batch, side) for side in (height, width))
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


@keras.saving.register_keras_serializable(package="search")
class PadAndCrop(RandomShift):
    """Pad each image by `pad` zero pixels a side and crop it back at a random place, in
    training only: a shift by a whole number of pixels in [-pad, pad] on each axis, which the
    interpolation of :class:`RandomShift` moves exactly."""

    def __init__(self, pad: int = CROP_PAD, seed: int | None = None, **kwargs: Any) -> None:
        kwargs.pop("factor", None)
        super().__init__(factor=0.0, seed=seed, **kwargs)
        self.pad = pad

    def shifts(self, batch: Any, side: int) -> Any:
        drawn = keras.random.uniform((batch,), 0, 2 * self.pad + 1, seed=self.generator)
        return ops.minimum(ops.floor(drawn), 2 * self.pad) - self.pad

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "pad": self.pad}


@keras.saving.register_keras_serializable(package="search")
class RandomErasing(keras.layers.Layer):
    """Random erasing (Zhong et al., 2017), in training only: with probability `p` an image's
    rectangle of a random share `area` of it and aspect `aspect` is replaced by uniform noise in
    [0, 1] (images are scaled to [0, 1] before augmentation)."""

    def __init__(
        self,
        p: float = ERASE_P,
        area: tuple[float, float] = ERASE_AREA,
        aspect: tuple[float, float] = ERASE_ASPECT,
        seed: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.p, self.area, self.aspect, self.seed = p, tuple(area), tuple(aspect), seed
        self.generator = keras.random.SeedGenerator(seed)

    def call(self, images: Any, training: bool | None = None) -> Any:
        if not training:
            return images
        batch = ops.shape(images)[0]
        height, width = images.shape[1], images.shape[2]

        def uniform(low: float, high: float) -> Any:
            return keras.random.uniform((batch,), low, high, seed=self.generator)

        area = uniform(*self.area) * height * width
        ratio = ops.exp(uniform(math.log(self.aspect[0]), math.log(self.aspect[1])))
        tall = ops.minimum(ops.sqrt(area * ratio), height)
        wide = ops.minimum(ops.sqrt(area / ratio), width)
        top, left = uniform(0, 1) * (height - tall), uniform(0, 1) * (width - wide)
        rows = ops.arange(height, dtype="float32")[None, :]
        cols = ops.arange(width, dtype="float32")[None, :]
        in_rows = ops.logical_and(rows >= top[:, None], rows < (top + tall)[:, None])
        in_cols = ops.logical_and(cols >= left[:, None], cols < (left + wide)[:, None])
        erased = ops.logical_and(in_rows[:, :, None], in_cols[:, None, :])
        erased = ops.logical_and(erased, (uniform(0, 1) < self.p)[:, None, None])
        noise = keras.random.uniform(ops.shape(images), dtype=images.dtype, seed=self.generator)
        return ops.where(erased[..., None], noise, images)

    def compute_output_shape(self, input_shape: Any) -> Any:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "p": self.p,
            "area": list(self.area),
            "aspect": list(self.aspect),
            "seed": self.seed,
        }


@keras.saving.register_keras_serializable(package="search")
class Mirror(keras.layers.Layer):
    """Every image mirrored left to right, always: the second view of test-time flips."""

    def call(self, images: Any) -> Any:
        return ops.flip(images, axis=2)

    def compute_output_shape(self, input_shape: Any) -> Any:
        return input_shape


def augmentation(
    *, shift: bool, flip: bool, crop: bool = False, erase: bool = False
) -> list[keras.layers.Layer]:
    """The layers that augment training images (N×H×W×1 floats in [0, 1]): a shift or a
    pad-and-crop, then a mirror, then erasing."""
    layers: list[keras.layers.Layer] = []
    if shift:
        layers.append(RandomShift(SHIFT))
    if crop:
        layers.append(PadAndCrop(CROP_PAD))
    if flip:
        layers.append(keras.layers.RandomFlip("horizontal"))
    if erase:
        layers.append(RandomErasing())
    return layers
