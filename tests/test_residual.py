"""Residual networks as a family of the space: suggested, replayed, counted exactly, trained."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import keras
import optuna
import pytest

from search.define.anatomy import describe, impossible, size
from search.define.datasets import Split
from search.define.space import Config, Conv, Space, Stage, outside, suggest, to_params
from search.train.network import build
from search.train.runtime import configure
from tests.helpers import fit_small

# ResNet-20's layout (three stages of three blocks, 16-32-64) under a 64-unit head.
RESNET20 = Config(
    convs=(),
    stages=(Stage(16, 3), Stage(32, 3), Stage(64, 3)),
    dense=(64,),
    batchnorm=True,
    padding="same",
    head="gap",
)
SPACE = Space(
    family=("plain", "residual"),
    stages=(1, 3),
    blocks=(1, 3),
    filters=(16, 32, 64),
    downsample=("stride", "pool"),
    dropout=("none", "blocks", "flatten", "both"),
    batchnorm=(False, True),
    padding=("valid", "same"),
    head=("flatten", "gap"),
    augment=("none", "crop+flip+erase"),
    ema=(False, True),
)


def keras_flops(model: keras.Model) -> int:
    """Forward FLOPs of one image, read off the built layers' shapes (2 per multiply-add)."""
    total = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            _, h, w, out = layer.output.shape
            k1, k2, inputs, _ = layer.kernel.shape
            total += 2 * h * w * k1 * k2 * inputs * out
        elif isinstance(layer, keras.layers.Dense):
            total += 2 * layer.kernel.shape[0] * layer.kernel.shape[1]
    return total


@pytest.mark.parametrize(
    "config",
    [
        RESNET20,
        dataclasses.replace(RESNET20, downsample="pool", dropout="flatten", dropout_rate=0.2),
        dataclasses.replace(RESNET20, stages=(Stage(32, 1),), dense=(32, 16)),
        # Plain networks are counted by the same rules.
        Config(convs=(Conv(32, 3, True), Conv(64, 5, True)), dense=(128,)),
        Config(convs=(Conv(32, 3, False), Conv(64, 3, True)), padding="same", batchnorm=True),
    ],
    ids=["resnet20", "pooled", "one-stage", "plain", "plain-bn"],
)
def test_parameters_and_flops_are_counted_exactly_before_building(config: Config) -> None:
    configure()
    model = build(config, flip=True)
    assert model.count_params() == size(config).params
    assert keras_flops(model) == size(config).flops


def test_resnet20_is_the_field_s_small_network() -> None:
    assert describe(RESNET20) == "C16k3s-BN-R16x3-R32x3s2-R64x3s2-GAP-D64"
    assert size(RESNET20).params == 277_914  # ResNet-20 itself: about 0.27 M
    assert impossible(RESNET20) is None and outside(RESNET20, SPACE) is None
    pooled = dataclasses.replace(RESNET20, downsample="pool")
    assert describe(pooled) == "C16k3s-BN-R16x3-P-R32x3-P-R64x3-GAP-D64"


def test_a_residual_network_that_is_not_of_the_family_is_refused() -> None:
    uneven = dataclasses.replace(RESNET20, stages=(Stage(16, 3), Stage(48, 3)))
    assert outside(uneven, SPACE) == (
        "residual stages must double the width each stage and keep one block count"
    )
    assert "at most 4 stages" in (
        impossible(
            dataclasses.replace(RESNET20, stages=tuple(Stage(8 * 2**i, 1) for i in range(5)))
        )
        or ""
    )
    one = dataclasses.replace(RESNET20, stages=(Stage(16, 3),), downsample="pool")
    assert (
        impossible(one) == "a one-stage residual network halves no map: its downsample is 'stride'"
    )
    plain_bits = dataclasses.replace(RESNET20, convs=(Conv(8, 3, False),))
    assert impossible(plain_bits) == "a residual network has stages instead of convs, not both"
    assert impossible(dataclasses.replace(RESNET20, dropout="blocks")) == (
        "a residual network's dropout is 'none' or 'flatten', not 'blocks'"
    )


def test_both_families_are_suggested_buildable_and_replayed() -> None:
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=4))
    residual = 0
    for _ in range(400):
        config = suggest(study.ask(), SPACE)
        assert impossible(config) is None, describe(config)
        assert outside(config, SPACE) is None, describe(config)
        replayed = suggest(optuna.trial.FixedTrial(to_params(config, SPACE)), SPACE)
        assert replayed == config
        if config.residual:
            residual += 1
            assert config.dropout in ("none", "flatten") and config.head == "gap"
            assert config.stages[-1].width == config.stages[0].width * 2 ** (
                len(config.stages) - 1
            )
    assert 100 < residual < 300  # about half of them
    # A stored record reads back the same.
    assert Config.from_json(RESNET20.to_json()) == RESNET20


def test_a_residual_network_learns_fashion_mnist(small_split: Split) -> None:
    configure()
    config = dataclasses.replace(
        RESNET20,
        stages=(Stage(16, 1), Stage(32, 1)),
        optimizer="adamw",
        weight_decay=1e-4,
        learning_rate=3e-3,
        batch_size=64,  # 64 steps: at 128, batch norm's statistics lag after 32
        schedule="cosine",
        augment="crop+flip+erase",
        ema=True,
    )
    _, history = fit_small(config, small_split, flip=True)
    assert history.val_accuracy[-1] > 0.4  # chance is 0.1: two epochs of 2,000 images


def test_a_preset_searches_residual_networks_from_a_residual_start(tmp_path: Path) -> None:
    from search.define import presets
    from tests.helpers import write_preset

    path = write_preset(
        tmp_path,
        **{
            "[space]": '[space]\nfamily = ["plain", "residual"]\nstages = [1, 2]\nblocks = [1, 2]',
            '[[baseline]]\nname = "lab test 9"': (
                '[[start]]\nname = "small ResNet"\nstages = [[16, 1], [32, 1]]\n'
                'dense = [32]\nbatchnorm = true\npadding = "same"\nhead = "gap"\n'
                "params = 21_050\n\n"
                '[[baseline]]\nname = "lab test 9"'
            ),
        },
    )
    preset = presets.load_preset(path)
    (start,) = preset.starts
    assert start.config.stages == (Stage(16, 1), Stage(32, 1))
    assert start.params == size(start.config).params == 21_050
    assert preset.space.family == ("plain", "residual") and preset.space.stages == (1, 2)
    wrong = path.read_text().replace("stages = [1, 2]", "stages = [1, 9]")
    path.write_text(wrong)
    with pytest.raises(presets.PresetError, match=r"'space.stages' must lie within \[1, 4\]"):
        presets.load_preset(path)
    path.write_text(
        wrong.replace("stages = [1, 9]", "stages = [1, 2]").replace(
            'dropout = ["none", "flatten"]', 'dropout = ["blocks"]'
        )
    )
    with pytest.raises(presets.PresetError, match="must offer 'none' or 'flatten' for residual"):
        presets.load_preset(path)
