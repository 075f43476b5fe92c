"""The search space: suggest(trial) -> Config, and where a Config falls outside a Space.

Everything a trial may vary lives in this module. A :class:`Config` is the complete, plain-data
description of one network and its optimiser, so a trial can be rebuilt from its stored record
without the preset that suggested it.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, Protocol

from search.define import residual
from search.define.residual import DOWNSAMPLES, Stage

SIDE = 28
NUM_CLASSES = 10
DROPOUT_PLACEMENTS = ("none", "blocks", "flatten", "both")
OPTIMIZERS = ("rmsprop", "adam", "adamw")
# Augmentation is "none" or pieces joined by "+", in this order: a random sub-pixel shift or a
# whole-pixel pad-and-crop (one translation at most), a horizontal mirror, random erasing.
AUGMENT_PIECES = ("shift", "crop", "flip", "erase")
AUGMENTATIONS = (
    "none",
    *(
        "+".join(pieces)
        for n in range(1, len(AUGMENT_PIECES) + 1)
        for pieces in itertools.combinations(AUGMENT_PIECES, n)
        if not {"shift", "crop"} <= set(pieces)
    ),
)
HEADS = ("flatten", "gap")
SCHEDULES = ("constant", "cosine", "plateau")
PADDINGS = ("valid", "same")
MAX_CONV_LAYERS = 5
MAX_DENSE_LAYERS = 2
# The lab's stacks of convs, or residual stages (search.define.residual).
FAMILIES = ("plain", "residual")


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
    augment: str = "none"  # none, or AUGMENT_PIECES joined by "+" (flips where a class allows)
    optimizer: str = "rmsprop"
    learning_rate: float = 1e-3
    batch_size: int = 64
    head: str = "flatten"  # flatten | gap (global average pooling) before the Dense layers
    schedule: str = "constant"  # constant | cosine (over the planned epochs) | plateau
    weight_decay: float = 0.0  # AdamW's decoupled weight decay
    label_smoothing: float = 0.0
    ema: bool = False  # an average of the weights over the run's last steps validates and stays
    # A residual network: `convs` is empty, the stem and stages replace it, with batch norm,
    # same padding and a GAP head; dropout, if any, follows the pooling.
    stages: tuple[Stage, ...] = ()
    downsample: str = "stride"  # stride | pool, between residual stages

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Config:
        data = dict(data)
        data["convs"] = tuple(
            Conv(**c) if isinstance(c, dict) else Conv(*c) for c in data.get("convs", ())
        )
        data["stages"] = tuple(
            Stage(**s) if isinstance(s, dict) else Stage(*s) for s in data.get("stages", ())
        )
        data["dense"] = tuple(data.get("dense", (128,)))
        if isinstance(data.get("augment"), bool):  # stored before augmentation had kinds
            data["augment"] = augment_kind(data["augment"])
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

    @property
    def residual(self) -> bool:
        return bool(self.stages)

    @property
    def family(self) -> str:
        return "residual" if self.residual else "plain"

    @property
    def augment_pieces(self) -> frozenset[str]:
        return frozenset(self.augment.split("+")) - {"none"}

    @property
    def shifts(self) -> bool:
        return "shift" in self.augment_pieces

    @property
    def crops(self) -> bool:
        return "crop" in self.augment_pieces

    @property
    def flips(self) -> bool:
        return "flip" in self.augment_pieces

    @property
    def erases(self) -> bool:
        return "erase" in self.augment_pieces


def with_pieces(augment: str, extra: str) -> str:
    """`augment` with the pieces of `extra` added, in AUGMENT_PIECES order; a crop on either
    side replaces a shift (one translation at most). "none" with "none" is "none"."""
    pieces = (set(augment.split("+")) | set(extra.split("+"))) - {"none"}
    if "crop" in pieces:
        pieces.discard("shift")
    return "+".join(p for p in AUGMENT_PIECES if p in pieces) or "none"


def augment_kind(value: bool | str) -> str:
    """Augmentation as a kind; `true` in older presets and records meant shifts and flips."""
    if isinstance(value, bool):
        return "shift+flip" if value else "none"
    return value


@dataclass(frozen=True)
class Space:
    """Bounds of the search, read from a preset's [space] table.

    A list of one value fixes that axis; it is then not suggested at all. The axes after
    batch_size came later: at their defaults they are off, as for the lab's runs.
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
    augment: tuple[str, ...] = ("none",)
    batch_size: tuple[int, ...] = (64,)
    head: tuple[str, ...] = ("flatten",)
    schedule: tuple[str, ...] = ("constant",)
    weight_decay: tuple[float, float] = (1e-5, 1e-3)  # searched only for AdamW
    label_smoothing: tuple[float, float] = (0.0, 0.0)
    ema: tuple[bool, ...] = (False,)
    # Residual networks: `filters` offers the first stage's width, which each stage doubles.
    family: tuple[str, ...] = ("plain",)
    stages: tuple[int, int] = (2, 3)
    blocks: tuple[int, int] = (1, 3)
    downsample: tuple[str, ...] = DOWNSAMPLES

    def max_conv_layers(self) -> int:
        """The most convs that fit a 28x28 image with the smallest kernel and no pooling."""
        if "valid" not in self.padding or min(self.kernel) == 1:
            return MAX_CONV_LAYERS
        return min(MAX_CONV_LAYERS, (SIDE - 1) // (min(self.kernel) - 1))


class Trial(Protocol):
    """What :func:`suggest` asks of a trial: an optuna.Trial, or :class:`_Replay`."""

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any: ...
    def suggest_int(self, name: str, low: int, high: int) -> int: ...
    def suggest_float(
        self, name: str, low: float, high: float, *, step: float | None = None, log: bool = False
    ) -> float: ...


# ---------------------------------------------------------------------------------------------
# Hyperparameters to be tuned: every trial.suggest_* call is in this one function.
# ---------------------------------------------------------------------------------------------
def suggest(trial: Trial, space: Space) -> Config:
    """A network the space allows and that can be built: no choice leaves the map too small.

    Kernels and pools are offered only where the map leaves room for the convs that follow
    (see _suggest_convs); the number of convs is bounded by what fits at all.
    """

    def choose(name: str, choices: tuple[Any, ...], allowed: tuple[Any, ...] | None = None) -> Any:
        allowed = choices if allowed is None else allowed
        if len(allowed) == 1:
            return allowed[0]
        if allowed != choices:
            name += "_among_" + "_".join(str(c) for c in allowed)
        return trial.suggest_categorical(name, allowed)

    def between(name: str, bounds: tuple[float, float], **kw: Any) -> float:
        lo, hi = bounds
        return lo if lo == hi else trial.suggest_float(name, lo, hi, **kw)

    def integer(name: str, lo: int, hi: int) -> int:
        return lo if lo == hi else trial.suggest_int(name, lo, hi)

    family = choose("family", space.family)
    if family == "residual":
        n_stages = integer("stages", *space.stages)
        blocks = integer("blocks", *space.blocks)
        width = choose("width", space.filters)
        # One stage halves no map: its downsampling is moot, so not asked.
        downsample = choose("downsample", space.downsample) if n_stages > 1 else "stride"
        stages = residual.stages_of(width, blocks, n_stages)
        convs: tuple[Conv, ...] = ()
        padding = "same"
        heads_only = tuple(d for d in space.dropout if d in residual.DROPOUTS)
        dropout = choose("dropout", space.dropout, heads_only or ("none",))
    else:
        stages, downsample = (), "stride"
        padding = choose("padding", space.padding)
        n_conv = integer(
            "conv_layers", space.conv_layers[0], min(space.conv_layers[1], space.max_conv_layers())
        )
        convs = _suggest_convs(choose, space, n_conv, padding)
        dropout = choose("dropout", space.dropout)
    rate = between("dropout_rate", space.dropout_rate, step=0.05) if dropout != "none" else 0.0
    n_dense = integer("dense_layers", *space.dense_layers)
    optimizer = choose("optimizer", space.optimizer)
    is_residual = family == "residual"  # then batch norm, same padding, a GAP head
    return Config(
        convs=convs,
        dense=tuple(choose(f"dense_units_{i}", space.dense_units) for i in range(1, n_dense + 1)),
        dropout=dropout,
        dropout_rate=rate,
        batchnorm=True if is_residual else choose("batchnorm", space.batchnorm),
        padding=padding,
        augment=choose("augment", space.augment),
        optimizer=optimizer,
        learning_rate=between("learning_rate", space.learning_rate, log=True),
        batch_size=choose("batch_size", space.batch_size),
        head="gap" if is_residual else choose("head", space.head),
        schedule=choose("schedule", space.schedule),
        weight_decay=(
            between("weight_decay", space.weight_decay, log=True) if optimizer == "adamw" else 0.0
        ),
        label_smoothing=between("label_smoothing", space.label_smoothing, step=0.05),
        ema=choose("ema", space.ema),
        stages=stages,
        downsample=downsample,
    )


def _suggest_convs(
    choose: Callable[..., Any], space: Space, n_conv: int, padding: str
) -> tuple[Conv, ...]:
    """Each conv's filters, kernel and pool, leaving room for the convs that follow it.

    Room is what the rest need with the smallest kernel and no pooling. A choice narrowed to
    a strict subset is asked under its own name (`kernel_4_among_3_5`): an Optuna parameter
    keeps one set of choices.
    """
    shrink = min(space.kernel) - 1 if padding == "valid" else 0

    def room(after: int) -> int:  # the smallest map that `after` more convs can still take
        return after * shrink + 1

    side, convs = SIDE, []
    for i in range(1, n_conv + 1):
        need = room(n_conv - i)
        filters = choose(f"filters_{i}", space.filters)
        fits = tuple(k for k in space.kernel if padding == "same" or side - k + 1 >= need)
        kernel = choose(f"kernel_{i}", space.kernel, fits)
        side = side - kernel + 1 if padding == "valid" else side
        pools = tuple(p for p in space.pool if not p or (side >= 2 and side // 2 >= need))
        pool = choose(f"pool_{i}", space.pool, pools or (False,))
        side = side // 2 if pool else side
        convs.append(Conv(filters=filters, kernel=kernel, pool=pool))
    return tuple(convs)


class _Replay:
    """Answers :func:`suggest`'s questions from a configuration, and notes which were asked."""

    def __init__(self, config: Config) -> None:
        values: dict[str, Any] = {
            f.name: getattr(config, f.name)
            for f in fields(config)
            if f.name not in ("convs", "dense", "stages")
        }
        values["family"] = config.family
        if config.residual:
            values |= {
                "stages": len(config.stages),
                "blocks": config.stages[0].blocks,
                "width": config.stages[0].width,
            }
        values["conv_layers"] = len(config.convs)
        values["dense_layers"] = len(config.dense)
        for i, conv in enumerate(config.convs, start=1):
            values |= {
                f"filters_{i}": conv.filters,
                f"kernel_{i}": conv.kernel,
                f"pool_{i}": conv.pool,
            }
        values |= {f"dense_units_{i}": units for i, units in enumerate(config.dense, start=1)}
        self.values = values
        self.params: dict[str, Any] = {}

    def _answer(self, name: str) -> Any:
        value = self.values[name.split("_among_")[0]]
        self.params[name] = value
        return value

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        return self._answer(name)

    def suggest_int(self, name: str, low: int, high: int) -> int:
        return int(self._answer(name))

    def suggest_float(
        self, name: str, low: float, high: float, *, step: float | None = None, log: bool = False
    ) -> float:
        return float(self._answer(name))


def to_params(config: Config, space: Space) -> dict[str, Any]:
    """The Optuna parameters that make :func:`suggest` return `config` (for enqueue_trial).

    They are the questions suggest() asks on the way to `config`, answered from it.
    """
    replay = _Replay(config)
    suggest(replay, space)
    return replay.params


def outside(config: Config, space: Space) -> str | None:
    """Why `config` cannot come out of `space`, or None when it can."""
    checks: list[tuple[str, Any, tuple[Any, ...]]] = [
        ("family", config.family, space.family),
        ("dropout", config.dropout, space.dropout),
        ("augment", config.augment, space.augment),
        ("optimizer", config.optimizer, space.optimizer),
        ("batch_size", config.batch_size, space.batch_size),
        ("ema", config.ema, space.ema),
    ]
    for conv in config.convs:
        checks += [
            ("filters", conv.filters, space.filters),
            ("kernel", conv.kernel, space.kernel),
            ("pool", conv.pool, space.pool),
        ]
    checks += [("dense_units", units, space.dense_units) for units in config.dense]
    if config.residual:
        why = residual.not_residual(config)
        if why:
            return why
        checks.append(("width", config.stages[0].width, space.filters))
        if len(config.stages) > 1:
            checks.append(("downsample", config.downsample, space.downsample))
    else:
        checks += [
            ("batchnorm", config.batchnorm, space.batchnorm),
            ("padding", config.padding, space.padding),
        ]
    for name, value, choices in checks:
        if value not in choices:
            return f"{name} {value!r} is not among {list(choices)}"
    layers = (
        [
            ("stages", len(config.stages), space.stages),
            ("blocks", config.stages[0].blocks, space.blocks),
        ]
        if config.residual
        else [("conv_layers", len(config.convs), space.conv_layers)]
    )
    ranges: list[tuple[str, float, tuple[float, float]]] = [
        *layers,
        ("dense_layers", len(config.dense), space.dense_layers),
        ("learning_rate", config.learning_rate, space.learning_rate),
    ]
    if config.dropout != "none":
        ranges.append(("dropout_rate", config.dropout_rate, space.dropout_rate))
    for name, value, (lo, hi) in ranges:
        if not lo <= value <= hi:
            return f"{name} {value} is outside [{lo}, {hi}]"
    return None
