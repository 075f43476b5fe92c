"""What a configuration's network is, computed without building it: whether it can be built,
its size (exact parameters, forward FLOPs, activations) and a readable name.

The cost guard, the impossible-network check and every report read these; search.train.network
builds exactly what they count (tests/test_space.py and tests/test_residual.py compare them
with Keras's own counts).
"""

from __future__ import annotations

from dataclasses import dataclass

from search.define import residual
from search.define.space import NUM_CLASSES, SIDE, Config


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
    if not config.convs and not config.residual:
        return "the network has no conv layer"
    if not config.dense:
        return "the network has no Dense layer before the softmax"
    if config.residual:
        why = residual.not_residual(config)
        if why:
            return why
    try:
        residual.blocks(config, SIDE) if config.residual else feature_maps(config)
    except ValueError as e:
        return str(e)
    return None


def size(config: Config) -> Size:
    """Parameter count (as keras' count_params) and forward FLOPs per image."""
    if config.residual:
        params, flops, acts = residual.body_size(config, SIDE)
        body = Size(params=params, flops=flops, activations=acts)
        return _with_head(config, config.stages[-1].width, body)
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
    width = channels if config.head == "gap" else side * side * channels
    return _with_head(config, width, Size(params=params, flops=flops, activations=acts))


def _with_head(config: Config, width: int, body: Size) -> Size:
    """`body`'s size with the Dense layers and the softmax on `width` features."""
    params, flops, acts = body.params, body.flops, body.activations
    for units in (*config.dense, NUM_CLASSES):
        params += (width + 1) * units
        flops += 2 * width * units
        acts += units
        width = units
    return Size(params=params, flops=flops, activations=acts)


AUGMENT_TOKENS = {"flip": "AugF", "shift": "AugS", "shift+flip": "Aug"}  # and Aug + initials


def augment_token(augment: str) -> str:
    """AugF, AugS, Aug (shift and flip) as ever; other kinds Aug and their pieces' initials,
    such as AugCFE for crop+flip+erase."""
    pieces = augment.split("+")
    return AUGMENT_TOKENS.get(augment) or "Aug" + "".join(p[0].upper() for p in pieces)


def describe(config: Config) -> str:
    """A readable architecture string such as C32k3-P-C64k3-P-C64k3-F-D128."""
    parts: list[str] = []
    if config.augment != "none":
        parts.append(augment_token(config.augment))
    if config.residual:
        parts += residual.tokens(config)
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
    parts.append("GAP" if config.head == "gap" else "F")
    if config.has_dropout_flatten:
        parts.append(f"Dr{config.dropout_rate:g}")
    parts += [f"D{units}" for units in config.dense]
    return "-".join(parts)
