"""The search space: the lab's exact parameter counts, size accounting, and validity."""

from __future__ import annotations

import optuna
import pytest

from search import presets
from search.space import Config, Conv, build, describe, feature_maps, impossible, size, suggest

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
    found = {(p, b.name) for p in ("mnist", "fashion_mnist") for b in presets.load(p).baselines}
    assert found == set(LAB_COUNTS)


@pytest.mark.parametrize(("dataset", "name"), sorted(LAB_COUNTS))
def test_built_lab_models_have_the_lab_parameter_counts(dataset: str, name: str) -> None:
    baseline = next(b for b in presets.load(dataset).baselines if b.name == name)
    model = build(baseline.config)
    assert model.count_params() == LAB_COUNTS[(dataset, name)]
    assert size(baseline.config).params == LAB_COUNTS[(dataset, name)]


def test_architecture_string_reads_like_the_lab_table() -> None:
    lab7 = next(b for b in presets.load("fashion_mnist").baselines if b.name == "lab test 7.2")
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


def test_every_suggestion_is_either_rejected_with_a_reason_or_builds_with_the_counted_size() -> (
    None
):
    """Random draws over the full preset space, extras included: none reaches Keras broken."""
    space = presets.load("fashion_mnist").space
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    rejected = built = 0
    for _ in range(300):
        config = suggest(study.ask(), space)
        if impossible(config):
            rejected += 1
            continue
        if built < 25 and size(config).params < 3_000_000:
            model = build(config, flip=True)
            assert model.count_params() == size(config).params, describe(config)
            built += 1
    assert rejected > 0 and built == 25
