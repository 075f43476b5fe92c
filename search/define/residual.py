"""The residual family of the search space: a 3x3 stem, then stages of basic blocks.

Each stage after the first halves the map (a stride-2 first block, or 2x2 max pooling before
it) and doubles the width; global average pooling and the Dense head follow. A residual
:class:`~search.define.space.Config` has `stages` instead of `convs`. As in the rest of
search.define, nothing here imports Keras: a network's blocks, size and name come from its
stages alone, and search.train.network builds exactly the blocks :func:`blocks` lists.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from search.define.space import Config

DOWNSAMPLES = ("stride", "pool")
MAX_STAGES = 4
MAX_BLOCKS = 6
# The plain family's axes a residual network fixes, and the dropout it allows: dropout follows
# the pooled head only, since a block's shortcut would carry around it.
FIXED = {"batchnorm": True, "padding": "same", "head": "gap"}
DROPOUTS = ("none", "flatten")


@dataclass(frozen=True)
class Stage:
    """A residual stage: `blocks` basic blocks of `width` filters. A basic block is two 3x3
    convs, each with batch norm, beside an identity shortcut, or a 1x1 conv with batch norm
    where the block changes the width or halves the map by stride."""

    width: int
    blocks: int


@dataclass(frozen=True)
class Block:
    """One basic block of a residual network, as built (see :class:`Stage`)."""

    inputs: int  # channels in
    width: int  # channels out
    stride: int  # 2: its first conv halves the map
    pooled: bool  # 2x2 max pooling before it
    side: int  # the side of the map it puts out

    @property
    def projection(self) -> bool:
        """Whether its shortcut is a 1x1 conv: the width or the map changes."""
        return self.stride != 1 or self.inputs != self.width


def stages_of(width: int, blocks: int, n: int) -> tuple[Stage, ...]:
    """The family's `n` stages from a first width of `width`, each doubling it."""
    return tuple(Stage(width * 2**i, blocks) for i in range(n))


def not_residual(config: Config) -> str | None:
    """Why a configuration with stages is not one this family builds, or None."""
    first = config.stages[0]
    if len(config.stages) > MAX_STAGES:
        return f"a residual network has at most {MAX_STAGES} stages"
    if config.stages != stages_of(first.width, first.blocks, len(config.stages)):
        return "residual stages must double the width each stage and keep one block count"
    if config.convs:
        return "a residual network has stages instead of convs, not both"
    for name, value in FIXED.items():
        if getattr(config, name) != value:
            return f"a residual network has {name} {value!r}, not {getattr(config, name)!r}"
    if len(config.stages) == 1 and config.downsample != "stride":
        return "a one-stage residual network halves no map: its downsample is 'stride'"
    if config.dropout not in DROPOUTS:
        return f"a residual network's dropout is 'none' or 'flatten', not {config.dropout!r}"
    return None


def blocks(config: Config, side: int) -> list[Block]:
    """The blocks after the stem on a `side` x `side` image, or raise ValueError."""
    channels, built = config.stages[0].width, []
    for i, stage in enumerate(config.stages):
        if stage.width < 1 or stage.blocks < 1:
            raise ValueError(f"stage {i + 1} needs a positive width and block count")
        for b in range(stage.blocks):
            halves = i > 0 and b == 0
            if halves and side < 2:
                raise ValueError(f"stage {i + 1} would halve a {side}x{side} map")
            pooled = halves and config.downsample == "pool"
            stride = 2 if halves and config.downsample == "stride" else 1
            side = side // 2 if pooled else -(-side // stride)
            built.append(Block(channels, stage.width, stride, pooled, side))
            channels = stage.width
    return built


def body_size(config: Config, side: int) -> tuple[int, int, int]:
    """Parameters, forward FLOPs and activation floats of the stem and stages, per image.

    Convs have no biases (batch norm follows each); batch norm keeps four values a channel.
    """
    stem = config.stages[0].width
    params = 9 * stem + 4 * stem
    flops = 2 * side * side * 9 * stem
    acts = side * side * (1 + 3 * stem)  # the image; the stem's conv, batch norm and ReLU
    for block in blocks(config, side):
        area, width = block.side * block.side, block.width
        if block.pooled:
            acts += area * block.inputs
        params += 9 * block.inputs * width + 9 * width * width + 8 * width
        flops += 2 * area * 9 * width * (block.inputs + width)
        acts += 6 * area * width  # conv, batch norm, ReLU, conv, batch norm, the sum's ReLU
        if block.projection:
            params += block.inputs * width + 4 * width
            flops += 2 * area * block.inputs * width
            acts += 2 * area * width
    return params, flops, acts


def tokens(config: Config) -> list[str]:
    """The stem and stages in describe()'s notation: C16k3s-BN-R16x3-R32x3s2-R64x3s2."""
    parts = [f"C{config.stages[0].width}k3s-BN"]
    for i, stage in enumerate(config.stages):
        if i and config.downsample == "pool":
            parts.append("P")
        stride = "s2" if i and config.downsample == "stride" else ""
        parts.append(f"R{stage.width}x{stage.blocks}{stride}")
    return parts
