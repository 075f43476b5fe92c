"""Keras models from a Config: build, the training recipe, and an ensemble of final models.

Kept apart from the search space, so retrain-best rebuilds a network from a stored Config.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from search.define import residual
from search.define.anatomy import describe, impossible
from search.define.space import NUM_CLASSES, SIDE, Config

if TYPE_CHECKING:
    import keras

PLATEAU_FACTOR = 0.3  # reduce-on-plateau multiplies the learning rate by this
# Batch norm's moving statistics, which validation and inference use, move this far towards
# each batch's. Keras's 0.99 follows the network over some hundred steps: a trial on a subset
# (40 to 80 steps an epoch on 5,000 images) then validated on stale statistics for several
# epochs (val_loss 3.7 to 4.8 while its training loss fell from 1.1 to 0.54), and pruners took
# it for a network that learns slowly. 0.9, PyTorch's default, follows within some ten steps.
BN_MOMENTUM = 0.9
# An average of the weights (`ema`) spans about this share of a run's steps: Keras starts the
# average at the first step's weights, and at its usual 0.99 they still held half of it after
# the 64 steps of a short run. Between 0.9 and 0.9999 a step.
EMA_SPAN = 0.1


def build(
    config: Config,
    *,
    flip: bool = False,
    steps_per_execution: int = 1,
    decay_steps: int | None = None,
    compile_settings: dict[str, Any] | None = None,
) -> keras.Model:
    """A compiled model that takes raw uint8 images (N×28×28) and scales them itself.

    `flip` says whether the dataset allows mirrored images; `decay_steps` is the length of a
    cosine schedule (the planned epochs times the steps per epoch). `compile_settings`
    replaces what runtime.compile_options chooses (benchmarks/backends.py measures them).
    """
    import keras

    from search.train.runtime import compile_options

    reason = impossible(config)
    if reason:
        raise ValueError(f"Cannot build {describe(config)}: {reason}.")
    inputs = keras.Input(shape=(SIDE, SIDE), dtype="uint8", name="image")
    outputs = _layers(config, inputs, flip)
    model = keras.Model(inputs, outputs, name=describe(config).replace("-", "_"))
    model.compile(
        optimizer=optimizer(config, decay_steps),
        # Label smoothing lives in the targets (see targets()), so val_loss stays the plain
        # cross-entropy that every trial is compared on.
        loss=(
            "categorical_crossentropy"
            if config.label_smoothing
            else "sparse_categorical_crossentropy"
        ),
        metrics=["accuracy"],
        # XLA or not, per backend and device
        **(compile_settings or compile_options(steps_per_execution)),
    )
    return model


def _layers(config: Config, inputs: Any, flip: bool) -> Any:
    """The network's layers from raw images to the softmax, applied to `inputs`."""
    from keras import layers

    from search.train.augment import augmentation

    x = layers.Rescaling(1.0 / 255)(inputs)
    x = layers.Reshape((SIDE, SIDE, 1))(x)
    pieces = {"shift": config.shifts, "crop": config.crops, "erase": config.erases}
    for layer in augmentation(flip=config.flips and flip, **pieces):
        x = layer(x)
    if config.residual:
        x = _residual(config, x)
    for conv in config.convs:
        x = layers.Conv2D(
            conv.filters,
            conv.kernel,
            padding=config.padding,
            activation=None if config.batchnorm else "relu",
        )(x)
        if config.batchnorm:
            x = layers.BatchNormalization(momentum=BN_MOMENTUM)(x)
            x = layers.Activation("relu")(x)
        if conv.pool:
            x = layers.MaxPooling2D(2)(x)
            if config.has_dropout_blocks:
                x = layers.Dropout(config.dropout_rate)(x)
    x = layers.GlobalAveragePooling2D()(x) if config.head == "gap" else layers.Flatten()(x)
    if config.has_dropout_flatten:
        x = layers.Dropout(config.dropout_rate)(x)
    for units in config.dense:
        x = layers.Dense(units, activation="relu")(x)
    outputs = layers.Dense(NUM_CLASSES, activation="softmax")(x)
    return outputs


def _residual(config: Config, x: Any) -> Any:
    """A residual network's stem and stages (search.define.residual), applied to `x`."""
    from keras import layers

    def conv_bn(x: Any, width: int, kernel: int = 3, stride: int = 1) -> Any:
        x = layers.Conv2D(width, kernel, strides=stride, padding="same", use_bias=False)(x)
        return layers.BatchNormalization(momentum=BN_MOMENTUM)(x)

    x = layers.Activation("relu")(conv_bn(x, config.stages[0].width))
    for block in residual.blocks(config, SIDE):
        if block.pooled:
            x = layers.MaxPooling2D(2)(x)
        y = layers.Activation("relu")(conv_bn(x, block.width, stride=block.stride))
        y = conv_bn(y, block.width)
        shortcut = conv_bn(x, block.width, 1, block.stride) if block.projection else x
        x = layers.Activation("relu")(layers.Add()([y, shortcut]))
    return x


def optimizer(config: Config, decay_steps: int | None = None) -> keras.optimizers.Optimizer:
    """The configured optimiser, on a cosine schedule where the configuration asks for one."""
    import keras

    rate: Any = config.learning_rate
    if config.schedule == "cosine" and decay_steps:
        rate = keras.optimizers.schedules.CosineDecay(config.learning_rate, decay_steps)
    # With `ema`, Keras keeps an average of the weights and fit ends by writing it into the
    # model; callbacks() swaps it in for each validation.
    kw: dict[str, Any] = {"learning_rate": rate, "use_ema": config.ema}
    if config.ema:
        kw["ema_momentum"] = ema_momentum(decay_steps)
    if config.optimizer == "adamw":
        return keras.optimizers.AdamW(weight_decay=config.weight_decay, **kw)
    if config.optimizer == "adam":
        return keras.optimizers.Adam(**kw)
    return keras.optimizers.RMSprop(**kw)


def ema_momentum(steps: int | None) -> float:
    """How much of the average each step keeps, for a run of `steps` (unknown: Keras's 0.99)."""
    if not steps:
        return 0.99
    return min(0.9999, max(0.9, 1 - 1 / (EMA_SPAN * steps)))


def decay_steps(config: Config, images: int, epochs: int) -> int:
    """Training steps in `epochs` epochs of `images` images: a cosine schedule's length."""
    return epochs * -(-images // config.batch_size)


def callbacks(config: Config, *, monitor: str, patience: int) -> list[keras.callbacks.Callback]:
    """What the configuration needs during fit: validation on the averaged weights (`ema`),
    and reduce-on-plateau watching `monitor`."""
    import keras

    needed: list[keras.callbacks.Callback] = []
    if config.ema:
        needed.append(keras.callbacks.SwapEMAWeights())
    if config.schedule == "plateau":
        # Half the early-stopping patience, so the rate drops before early stopping gives up.
        wait = max(1, patience // 2)
        needed.append(
            keras.callbacks.ReduceLROnPlateau(
                monitor=monitor, factor=PLATEAU_FACTOR, patience=wait
            )
        )
    return needed


def targets(config: Config, labels: np.ndarray, *, train: bool) -> np.ndarray:
    """The labels in the form the model's loss takes.

    Integer labels, or, with label smoothing, one-hot rows: smoothed for training, exact for
    validation and test, so the reported loss is the plain cross-entropy.
    """
    if not config.label_smoothing:
        return labels
    rows = np.eye(NUM_CLASSES, dtype="float32")[labels.astype(int)]
    if train:
        rows = rows * (1 - config.label_smoothing) + config.label_smoothing / NUM_CLASSES
    return rows


def for_inference(model: keras.Model) -> keras.Model:
    """Compile for raw images and integer labels, as every saved model takes them.

    The training optimiser's state is not needed once training is over: a fresh one replaces
    it.
    """
    model.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    # Built now, so the saved file holds the slots that loading it expects: no warning then.
    model.optimizer.build(model.trainable_variables)
    return model


def load_model(path: Path) -> keras.Model:
    """A model that retrain-best saved, with the search's own layers registered for it."""
    from search.train.runtime import configure

    configure()
    import keras

    import search.train.augment  # noqa: F401  (registers the layers that load_model must know)

    return keras.models.load_model(path)


def with_flips(model: keras.Model) -> keras.Model:
    """One model that averages `model`'s softmax on each raw image and on its mirror image
    (test-time flips), with `model`'s own weights; ready for inference."""
    import keras

    from search.train.augment import Mirror

    inputs = keras.Input(shape=(SIDE, SIDE), dtype="uint8", name="image")
    outputs = keras.layers.Average()([model(inputs), model(Mirror()(inputs))])
    return for_inference(keras.Model(inputs, outputs, name=f"{model.name}_flips"))


def ensemble(members: list[keras.Model], name: str = "ensemble") -> keras.Model:
    """One model that averages its members' softmax outputs on the same raw images."""
    import keras

    inputs = keras.Input(shape=(SIDE, SIDE), dtype="uint8", name="image")
    parts = []
    for i, member in enumerate(members, start=1):
        # Uncompiled copies: a member's training optimiser has no place in the saved file.
        part = keras.models.clone_model(member)
        part.set_weights(member.get_weights())
        part.name = f"member_{i}"
        parts.append(part)
    outputs = keras.layers.Average()([part(inputs) for part in parts])
    return for_inference(keras.Model(inputs, outputs, name=name))
