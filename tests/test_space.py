"""The search space: the lab's exact parameter counts, size accounting, and validity."""

from __future__ import annotations

import optuna
import pytest

from search.define import presets
from search.define.anatomy import describe, feature_maps, impossible, size
from search.define.space import (
    AUGMENTATIONS,
    Config,
    Conv,
    Space,
    outside,
    suggest,
    to_params,
    with_pieces,
)
from search.train.network import build

# The lab's runs and the parameter counts its notebook printed for each.
LAB_COUNTS = {
    ("mnist", "lab test 1"): 93_322,
    ("mnist", "lab test 2"): 106_122,
    ("mnist", "lab test 4"): 515_146,
    ("mnist", "lab test 5"): 79_050,
    ("mnist", "lab test 6"): 2_038_922,
    ("fashion_mnist", "lab test 7"): 130_890,
    ("fashion_mnist", "lab test 7.1"): 130_890,
    ("fashion_mnist", "lab test 7.2"): 130_890,
    ("fashion_mnist", "lab test 8"): 4_022_090,
    ("fashion_mnist", "lab test 9"): 347_146,
    ("fashion_mnist", "lab test 9.1"): 347_146,
}


def test_presets_enqueue_every_lab_run() -> None:
    found = {
        (p, b.name) for p in ("mnist", "fashion_mnist") for b in presets.load_preset(p).baselines
    }
    assert found == set(LAB_COUNTS)


@pytest.mark.parametrize(("dataset", "name"), sorted(LAB_COUNTS))
def test_built_lab_models_have_the_lab_parameter_counts(dataset: str, name: str) -> None:
    baseline = next(b for b in presets.load_preset(dataset).baselines if b.name == name)
    model = build(baseline.config)
    assert model.count_params() == LAB_COUNTS[(dataset, name)]
    assert size(baseline.config).params == LAB_COUNTS[(dataset, name)]


def test_architecture_string_reads_like_the_lab_table() -> None:
    lab7 = next(
        b for b in presets.load_preset("fashion_mnist").baselines if b.name == "lab test 7.2"
    )
    assert describe(lab7.config) == "C32k3-P-Dr0.3-C64k3-P-Dr0.3-C64k3-F-Dr0.3-D128"


def test_impossible_networks_are_named_not_built() -> None:
    five_by_five = Config(convs=tuple(Conv(32, 5, i < 2) for i in range(5)))
    reason = impossible(five_by_five)
    assert reason is not None and "kernel" in reason
    with pytest.raises(ValueError, match="Cannot build"):
        build(five_by_five)
    # 'same' padding keeps the map, so the same depth fits.
    same = Config(convs=five_by_five.convs, padding="same")
    assert impossible(same) is None
    assert feature_maps(same) == [14, 7, 7, 7, 7]


SHIPPED = ("fashion_mnist", "mnist", "demo")


@pytest.mark.parametrize("name", SHIPPED)
def test_no_suggestion_of_a_shipped_preset_is_an_impossible_network(name: str) -> None:
    """2,000 random draws over each shipped space: every one can be built, and lies in it."""
    space = presets.load_preset(name).space
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    depths = set()
    for _ in range(2000):
        config = suggest(study.ask(), space)
        assert impossible(config) is None, describe(config)
        assert outside(config, space) is None, describe(config)
        depths.add(len(config.convs))
    lo, hi = space.conv_layers
    assert depths == set(range(lo, hi + 1))  # the feasibility rules cut no depth off


def test_a_space_that_would_run_out_of_pixels_narrows_its_choices() -> None:
    """Five 5x5-or-3x3 convs that may all pool: late kernels and pools are offered only where
    the map leaves room for the convs still to come."""
    space = Space(conv_layers=(5, 5), kernel=(3, 5, 7), pool=(True, False))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    names: set[str] = set()
    for _ in range(500):
        trial = study.ask()
        config = suggest(trial, space)
        assert impossible(config) is None, describe(config)
        names |= set(trial.params)
        study.tell(trial, 0.0)
    assert any("_among_" in n for n in names)  # a narrowed choice is its own parameter


@pytest.mark.parametrize("name", SHIPPED)
def test_to_params_makes_suggest_return_the_same_configuration(name: str) -> None:
    space = presets.load_preset(name).space
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=2))
    for _ in range(200):
        config = suggest(study.ask(), space)
        replayed = suggest(optuna.trial.FixedTrial(to_params(config, space)), space)
        assert replayed == config


def test_recipe_axes_default_off_and_older_records_still_read() -> None:
    lab = Config(convs=(Conv(32, 3, True),), dense=(64,))
    assert (lab.head, lab.schedule, lab.augment) == ("flatten", "constant", "none")
    assert (lab.weight_decay, lab.label_smoothing) == (0.0, 0.0)
    old = lab.to_json().replace('"augment": "none"', '"augment": true')
    assert Config.from_json(old).augment == "shift+flip"  # what `true` meant before kinds


def test_global_average_pooling_head_is_counted_and_named() -> None:
    config = Config(convs=(Conv(32, 3, True), Conv(64, 3, True)), dense=(128,), head="gap")
    # convs 320 + 18,496; GAP leaves 64 features: Dense 64*128+128, softmax 128*10+10.
    assert size(config).params == 320 + 18_496 + 8_320 + 1_290
    assert describe(config) == "C32k3-P-C64k3-P-GAP-D128"
    assert build(config).count_params() == size(config).params


def test_every_suggestion_is_either_rejected_with_a_reason_or_builds_with_the_counted_size() -> (
    None
):
    """Random draws over the full preset space, extras included: every one builds at its size."""
    space = presets.load_preset("fashion_mnist").space
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    built = 0
    for _ in range(300):
        config = suggest(study.ask(), space)
        assert impossible(config) is None
        if built < 25 and size(config).params < 3_000_000:
            model = build(config, flip=True)
            assert model.count_params() == size(config).params, describe(config)
            built += 1
    assert built == 25


@pytest.mark.parametrize(
    ("own", "extra", "joined"),
    [
        ("none", "none", "none"),
        ("flip", "none", "flip"),
        ("none", "erase", "erase"),
        ("flip", "crop+erase", "crop+flip+erase"),
        ("erase+flip", "flip", "flip+erase"),  # written in AUGMENT_PIECES order
        ("shift+flip", "crop", "crop+flip"),  # the final recipe's crop replaces a shift
        ("crop+flip", "shift", "crop+flip"),  # one translation at most: the crop stays
    ],
)
def test_final_pieces_join_a_trials_own_augmentation(own: str, extra: str, joined: str) -> None:
    assert with_pieces(own, extra) == joined
    assert joined in AUGMENTATIONS
