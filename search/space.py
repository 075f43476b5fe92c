"""The search space: suggest(trial) -> Config; build(Config) -> keras.Model; size and validity.

Everything a trial may vary lives in this module. A :class:`Config` is the complete, plain-data
description of one network and its optimiser, so a trial can be rebuilt from its stored record
without the preset that suggested it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import keras
    import optuna

SIDE = 28
NUM_CLASSES = 10
DROPOUT_PLACEMENTS = ("none", "blocks", "flatten", "both")
OPTIMIZERS = ("rmsprop", "adam")
PADDINGS = ("valid", "same")
MAX_CONV_LAYERS = 5
MAX_DENSE_LAYERS = 2


@dataclass(frozen=True)
class Conv:
    filters: int
    kernel: int
    pool: bool  # 2×2 max pooling after this conv


@dataclass(frozen=True)
class Config:
    """One network and how it is trained. The defaults are the lab's choices."""

    convs: tuple[Conv, ...]
    dense: tuple[int, ...] = (128,)  # widths of the hidden Dense layers before the softmax
    dropout: str = "none"  # none | blocks (after each pool) | flatten | both
    dropout_rate: float = 0.3
    batchnorm: bool = False  # BatchNormalization after each conv
    padding: str = "valid"
    augment: bool = False  # random shifts (and flips where the dataset allows) in training
    optimizer: str = "rmsprop"
    learning_rate: float = 1e-3
    batch_size: int = 64

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Config:
        data = dict(data)
        data["convs"] = tuple(
            Conv(**c) if isinstance(c, dict) else Conv(*c) for c in data["convs"]
        )
        data["dense"] = tuple(data.get("dense", (128,)))
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> Config:
        return cls.from_dict(json.loads(text))

    @property
    def has_dropout_blocks(self) -> bool:
        return self.dropout in ("blocks", "both") and self.dropout_rate > 0

    @property
    def has_dropout_flatten(self) -> bool:
        return self.dropout in ("flatten", "both") and self.dropout_rate > 0


@dataclass(frozen=True)
class Space:
    """Bounds of the search, read from a preset's [space] table.

    A list of one value fixes that axis; it is then not suggested at all.
    """

    conv_layers: tuple[int, int] = (1, 5)
    filters: tuple[int, ...] = (16, 32, 64, 128)
    kernel: tuple[int, ...] = (3, 5)
    pool: tuple[bool, ...] = (True, False)
    dropout: tuple[str, ...] = DROPOUT_PLACEMENTS
    dropout_rate: tuple[float, float] = (0.0, 0.5)
    dense_layers: tuple[int, int] = (1, 1)
    dense_units: tuple[int, ...] = (32, 64, 128, 256)
    learning_rate: tuple[float, float] = (1e-4, 1e-2)
    optimizer: tuple[str, ...] = ("rmsprop",)
    batchnorm: tuple[bool, ...] = (False,)
    padding: tuple[str, ...] = ("valid",)
    augment: tuple[bool, ...] = (False,)
    batch_size: tuple[int, ...] = (64,)


# ---------------------------------------------------------------------------------------------
# Hyperparameters to be tuned: every trial.suggest_* call is in this one function.
# ---------------------------------------------------------------------------------------------
def suggest(trial: optuna.Trial, space: Space) -> Config:
    def choose(name: str, choices: tuple[Any, ...]) -> Any:
        return choices[0] if len(choices) == 1 else trial.suggest_categorical(name, choices)

    def integer(name: str, bounds: tuple[int, int]) -> int:
        lo, hi = bounds
        return lo if lo == hi else trial.suggest_int(name, lo, hi)

    n_conv = integer("conv_layers", space.conv_layers)
    convs = tuple(
        Conv(
            filters=choose(f"filters_{i}", space.filters),
            kernel=choose(f"kernel_{i}", space.kernel),
            pool=choose(f"pool_{i}", space.pool),
        )
        for i in range(1, n_conv + 1)
    )
    dropout = choose("dropout", space.dropout)
    rate = 0.0
    if dropout != "none":
        lo, hi = space.dropout_rate
        rate = lo if lo == hi else trial.suggest_float("dropout_rate", lo, hi, step=0.05)
    n_dense = integer("dense_layers", space.dense_layers)
    dense = tuple(choose(f"dense_units_{i}", space.dense_units) for i in range(1, n_dense + 1))
    lo, hi = space.learning_rate
    lr = lo if lo == hi else trial.suggest_float("learning_rate", lo, hi, log=True)
    return Config(
        convs=convs,
        dense=dense,
        dropout=dropout,
        dropout_rate=rate,
        batchnorm=choose("batchnorm", space.batchnorm),
        padding=choose("padding", space.padding),
        augment=choose("augment", space.augment),
        optimizer=choose("optimizer", space.optimizer),
        learning_rate=lr,
        batch_size=choose("batch_size", space.batch_size),
    )


def to_params(config: Config, space: Space) -> dict[str, Any]:
    """The Optuna parameters that make :func:`suggest` return `config` (for enqueue_trial)."""
    params: dict[str, Any] = {}

    def put(name: str, value: Any, choices: tuple[Any, ...] | None = None) -> None:
        if choices is None or len(choices) > 1:
            params[name] = value

    if space.conv_layers[0] != space.conv_layers[1]:
        params["conv_layers"] = len(config.convs)
    for i, conv in enumerate(config.convs, start=1):
        put(f"filters_{i}", conv.filters, space.filters)
        put(f"kernel_{i}", conv.kernel, space.kernel)
        put(f"pool_{i}", conv.pool, space.pool)
    put("dropout", config.dropout, space.dropout)
    if config.dropout != "none" and space.dropout_rate[0] != space.dropout_rate[1]:
        params["dropout_rate"] = config.dropout_rate
    if space.dense_layers[0] != space.dense_layers[1]:
        params["dense_layers"] = len(config.dense)
    for i, units in enumerate(config.dense, start=1):
        put(f"dense_units_{i}", units, space.dense_units)
    if space.learning_rate[0] != space.learning_rate[1]:
        params["learning_rate"] = config.learning_rate
    put("batchnorm", config.batchnorm, space.batchnorm)
    put("padding", config.padding, space.padding)
    put("augment", config.augment, space.augment)
    put("optimizer", config.optimizer, space.optimizer)
    put("batch_size", config.batch_size, space.batch_size)
    return params


def outside(config: Config, space: Space) -> str | None:
    """Why `config` cannot come out of `space`, or None when it can."""
    checks: list[tuple[str, Any, tuple[Any, ...]]] = [
        ("dropout", config.dropout, space.dropout),
        ("batchnorm", config.batchnorm, space.batchnorm),
        ("padding", config.padding, space.padding),
        ("augment", config.augment, space.augment),
        ("optimizer", config.optimizer, space.optimizer),
        ("batch_size", config.batch_size, space.batch_size),
    ]
    for conv in config.convs:
        checks += [
            ("filters", conv.filters, space.filters),
            ("kernel", conv.kernel, space.kernel),
            ("pool", conv.pool, space.pool),
        ]
    checks += [("dense_units", units, space.dense_units) for units in config.dense]
    for name, value, choices in checks:
        if value not in choices:
            return f"{name} {value!r} is not among {list(choices)}"
    ranges: list[tuple[str, float, tuple[float, float]]] = [
        ("conv_layers", len(config.convs), space.conv_layers),
        ("dense_layers", len(config.dense), space.dense_layers),
        ("learning_rate", config.learning_rate, space.learning_rate),
    ]
    if config.dropout != "none":
        ranges.append(("dropout_rate", config.dropout_rate, space.dropout_rate))
    for name, value, (lo, hi) in ranges:
        if not lo <= value <= hi:
            return f"{name} {value} is outside [{lo}, {hi}]"
    return None


# ---------------------------------------------------------------------------------------------
# Size, validity and a readable name, all computed without building the model.
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Size:
    params: int
    flops: int  # floating-point operations of one forward pass of one image (2 per multiply-add)
    activations: int = 0  # floats of layer outputs for one image (conv, BN, pool, dense)

    def training_bytes(self, batch_size: int) -> int:
        """A generous estimate of the memory a training step needs, for the cost guard.

        Weights, gradients and two optimiser slots per parameter; each activation kept for the
        backward pass, its gradient and a temporary, in float32.
        """
        return 4 * (4 * self.params + 3 * batch_size * self.activations)


def feature_maps(config: Config) -> list[int]:
    """The side of the feature map after each conv (and its pool), or raise ValueError."""
    side, sides = SIDE, []
    for i, conv in enumerate(config.convs, start=1):
        if config.padding == "valid":
            if side < conv.kernel:
                raise ValueError(
                    f"conv {i} has a {conv.kernel}x{conv.kernel} kernel but its input map is only "
                    f"{side}x{side}"
                )
            side -= conv.kernel - 1
        if conv.pool:
            if side < 2:
                raise ValueError(f"pooling after conv {i} would halve a {side}x{side} map")
            side //= 2
        sides.append(side)
    return sides


def impossible(config: Config) -> str | None:
    """Why this network cannot be built, or None."""
    if not config.convs:
        return "the network has no conv layer"
    if not config.dense:
        return "the network has no Dense layer before the softmax"
    try:
        feature_maps(config)
    except ValueError as e:
        return str(e)
    return None


def size(config: Config) -> Size:
    """Parameter count (as keras' count_params) and forward FLOPs per image."""
    side, channels, params, flops, acts = SIDE, 1, 0, 0, SIDE * SIDE
    for conv in config.convs:
        out = side - conv.kernel + 1 if config.padding == "valid" else side
        params += (conv.kernel * conv.kernel * channels + 1) * conv.filters
        flops += 2 * out * out * conv.kernel * conv.kernel * channels * conv.filters
        acts += out * out * conv.filters * (3 if config.batchnorm else 1)
        if config.batchnorm:
            params += 4 * conv.filters  # gamma, beta, moving mean and variance
        channels, side = conv.filters, out
        if conv.pool:
            side //= 2
            acts += side * side * channels
    width = side * side * channels
    for units in (*config.dense, NUM_CLASSES):
        params += (width + 1) * units
        flops += 2 * width * units
        acts += units
        width = units
    return Size(params=params, flops=flops, activations=acts)


def describe(config: Config) -> str:
    """A readable architecture string such as C32k3-P-C64k3-P-C64k3-F-D128."""
    parts: list[str] = []
    if config.augment:
        parts.append("Aug")
    for conv in config.convs:
        token = f"C{conv.filters}k{conv.kernel}"
        if config.padding == "same":
            token += "s"
        if config.batchnorm:
            token += "-BN"
        parts.append(token)
        if conv.pool:
            parts.append("P")
            if config.has_dropout_blocks:
                parts.append(f"Dr{config.dropout_rate:g}")
    parts.append("F")
    if config.has_dropout_flatten:
        parts.append(f"Dr{config.dropout_rate:g}")
    parts += [f"D{units}" for units in config.dense]
    return "-".join(parts)


# ---------------------------------------------------------------------------------------------
# Building, kept apart from training so retrain-best rebuilds from a stored Config.
# ---------------------------------------------------------------------------------------------
def build(config: Config, *, flip: bool = False, steps_per_execution: int = 1) -> keras.Model:
    """A compiled model that takes raw uint8 images (N×28×28) and scales them itself."""
    import keras
    from keras import layers

    reason = impossible(config)
    if reason:
        raise ValueError(f"Cannot build {describe(config)}: {reason}.")
    inputs = keras.Input(shape=(SIDE, SIDE), dtype="uint8", name="image")
    x = layers.Rescaling(1.0 / 255)(inputs)
    x = layers.Reshape((SIDE, SIDE, 1))(x)
    if config.augment:
        x = layers.RandomTranslation(0.1, 0.1, fill_mode="constant")(x)
        if flip:
            x = layers.RandomFlip("horizontal")(x)
    for conv in config.convs:
        x = layers.Conv2D(
            conv.filters,
            conv.kernel,
            padding=config.padding,
            activation=None if config.batchnorm else "relu",
        )(x)
        if config.batchnorm:
            x = layers.BatchNormalization()(x)
            x = layers.Activation("relu")(x)
        if conv.pool:
            x = layers.MaxPooling2D(2)(x)
            if config.has_dropout_blocks:
                x = layers.Dropout(config.dropout_rate)(x)
    x = layers.Flatten()(x)
    if config.has_dropout_flatten:
        x = layers.Dropout(config.dropout_rate)(x)
    for units in config.dense:
        x = layers.Dense(units, activation="relu")(x)
    outputs = layers.Dense(NUM_CLASSES, activation="softmax")(x)
    model = keras.Model(inputs, outputs, name=describe(config).replace("-", "_"))
    optimizer_cls = {"rmsprop": keras.optimizers.RMSprop, "adam": keras.optimizers.Adam}
    model.compile(
        optimizer=optimizer_cls[config.optimizer](learning_rate=config.learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        steps_per_execution=steps_per_execution,
        jit_compile=False,  # XLA measured 2-4x slower on CPU (see benchmarks/)
    )
    return model
