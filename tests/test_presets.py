"""Presets: the TOML files read strictly, every mistake named with its file and key.

The CLI's sentence for the same mistakes is in test_errors.py; random junk in test_fuzz.py.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from search.define import catalog, presets
from search.define.presets import PresetError
from search.define.space import Space
from search.errors import SearchError
from tests.helpers import MALFORMED, write_preset

SHIPPED = sorted(p.stem for p in catalog.shipped_dir().glob("*.toml"))


def test_a_preset_loads_by_name_or_by_path(tmp_path: Path) -> None:
    assert SHIPPED == ["demo", "fashion_mnist", "mnist"]
    assert presets.load_preset("demo") == presets.load_preset(catalog.shipped_dir() / "demo.toml")
    tiny = presets.load_preset(write_preset(tmp_path, name="mine"))
    assert tiny.name == "mine"  # the file's name, not the dataset's
    assert (tiny.dataset, tiny.trials, tiny.epochs, tiny.max_params) == (
        "fashion_mnist",
        4,
        3,
        400_000,
    )
    assert tiny.space.conv_layers == (1, 2) and tiny.space.optimizer == Space().optimizer
    assert [b.name for b in tiny.baselines] == ["lab test 9", "starved"]
    assert tiny.baselines[0].params == 347_146  # counted, as no params were given


def test_a_missing_preset_names_the_file_and_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(PresetError) as raised:
        presets.load_preset(tmp_path / "elsewhere.toml")
    assert str(raised.value) == (
        f"No preset file {tmp_path / 'elsewhere.toml'}; known presets: {', '.join(SHIPPED)}."
    )
    with pytest.raises(PresetError, match=f"known presets: {', '.join(SHIPPED)}"):
        presets.load_preset("nosuch")  # by name: test_catalog.py
    assert issubclass(PresetError, SearchError)  # the CLI prints it as one sentence


def test_a_file_that_is_not_text_is_not_valid_toml(tmp_path: Path) -> None:
    path = tmp_path / "binary.toml"
    path.write_bytes(b"\xff\xfe\x00junk")
    with pytest.raises(PresetError, match=r"binary.toml: not valid TOML"):
        presets.load_preset(path)


@pytest.mark.parametrize(("old", "new", "message"), MALFORMED)
def test_a_mistake_names_the_file_and_the_key(
    tmp_path: Path, old: str, new: str, message: str
) -> None:
    path = write_preset(tmp_path, **{old: new})
    with pytest.raises(PresetError) as raised:
        presets.load_preset(path)
    assert str(raised.value).startswith(f"{path}: ")
    assert message in str(raised.value)


def test_an_unknown_pruner_lists_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(
        PresetError,
        match=r"'pruner' must be one of \['hyperband', 'sha', "
        r"'asha', 'median', 'behind', 'none'\]",
    ):
        presets.load_preset(write_preset(tmp_path, pruner="random"))


@pytest.mark.parametrize("name", SHIPPED)
def test_the_preset_stored_on_a_study_is_the_preset(name: str) -> None:
    preset = presets.load_preset(name)
    assert presets.from_json(preset.to_json()) == preset


def test_the_fingerprint_covers_what_makes_trials_comparable(tmp_path: Path) -> None:
    tiny = presets.load_preset(write_preset(tmp_path))
    # Name, description, trial total, budget and speed may change on a study under way.
    same = dataclasses.replace(
        tiny,
        name="other",
        description="x",
        trials=99,
        max_params=10,
        max_mflops=1.5,
        steps_per_execution=8,
        recycle_trials=5,
        recycle_mb=900,
    )
    assert same.fingerprint() == tiny.fingerprint() and same.differences(tiny) == []
    # The data, the training budget and the space may not.
    other = dataclasses.replace(tiny, epochs=4, space=dataclasses.replace(tiny.space, kernel=(3,)))
    assert other.fingerprint() != tiny.fingerprint()
    assert other.differences(tiny) == ["epochs", "space.kernel"]


def test_recycling_is_read_from_the_preset_and_older_stored_presets_still_match(
    tmp_path: Path,
) -> None:
    tiny = presets.load_preset(write_preset(tmp_path))
    assert (tiny.recycle_trials, tiny.recycle_mb) == (None, None)  # the product's defaults
    path = write_preset(tmp_path, **{"patience = 1": "patience = 1\nrecycle_trials = 0"})
    assert presets.load_preset(path).recycle_trials == 0  # 0: never by count
    # A preset stored on a study before these keys existed loads with the defaults, and a
    # study made then still resumes: its fingerprint is unchanged.
    stored = json.loads(tiny.to_json())
    del stored["recycle_trials"], stored["recycle_mb"]
    old = presets.from_json(json.dumps(stored))
    assert old == tiny and old.fingerprint() == tiny.fingerprint()


def test_the_objective_decides_directions_and_metric_names(tmp_path: Path) -> None:
    tiny = presets.load_preset(write_preset(tmp_path))
    assert (tiny.multi_objective, tiny.directions, tiny.metric_names) == (
        False,
        ["minimize"],
        ["val_loss"],
    )
    sized = dataclasses.replace(tiny, objective="val_loss+params")
    assert (sized.multi_objective, sized.directions, sized.metric_names) == (
        True,
        ["minimize", "minimize"],
        ["val_loss", "params"],
    )
    assert sized.fingerprint() != tiny.fingerprint()  # never mixed in one study


def test_a_preset_stored_before_the_recipe_axes_still_matches_its_file() -> None:
    """Studies made before head, schedule, weight decay, label smoothing and augmentation
    kinds existed resume: their stored preset lacks those keys and says augment [false]."""
    demo = presets.load_preset("demo")
    stored = json.loads(demo.to_json())
    for key in ("head", "schedule", "weight_decay", "label_smoothing"):
        del stored["space"][key]
    stored["space"]["augment"] = [False]
    for key in ("hours", "sampler", "startup_trials", "final_epochs", "final_schedule"):
        del stored[key]
    old = presets.from_json(json.dumps(stored))
    assert old.fingerprint() == demo.fingerprint() and old.space.augment == ("none",)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('final_augment = "crop+flip"', "'final_augment' may not flip"),
        ('final_augment = "rotate"', "'final_augment' must be one of"),
        ("final_ema = 1", "'final_ema' must be of type bool"),
    ],
)
def test_a_final_recipe_a_dataset_cannot_take_is_refused_by_name(
    tmp_path: Path, line: str, message: str
) -> None:
    path = tmp_path / "digits.toml"
    path.write_text(f'dataset = "mnist"\n{line}\n[space]\naugment = ["none", "shift"]\n')
    with pytest.raises(presets.PresetError, match=message):
        presets.load_preset(path)


def test_digits_are_never_flipped(tmp_path: Path) -> None:
    path = tmp_path / "digits.toml"
    path.write_text('dataset = "mnist"\n[space]\naugment = ["none", "flip"]\n')
    with pytest.raises(presets.PresetError, match="'space.augment' may not flip"):
        presets.load_preset(path)


NON_FINITE = [
    ("max_params = 400_000", "max_params = 400_000\nhours = nan", "'hours' must be a finite"),
    ("max_params = 400_000", "max_params = 400_000\nhours = inf", "'hours' must be a finite"),
    ("max_params = 400_000", "max_params = 400_000\nhours = 1e300", "'hours' must be at most"),
    ("max_params = 400_000", "max_params = 400_000\nmax_mflops = nan", "'max_mflops' must be"),
    ("max_params = 400_000", "max_params = 400_000\npruner_ratio = nan", "'pruner_ratio'"),
    ("max_params = 400_000", "max_params = 400_000\nfinal_epochs = nan", "'final_epochs'"),
    ("max_params = 400_000", "max_params = 400_000\nfinal_epochs = 1e300", "'final_epochs'"),
    ("dropout_rate = [0.1, 0.3]", "dropout_rate = [0.1, nan]", "'space.dropout_rate'"),
    ("learning_rate = [0.0001, 0.003]", "learning_rate = [0.0001, inf]", "'space.learning_rate'"),
    ("learning_rate = 0.0001", "learning_rate = -inf", "'baseline[1].learning_rate'"),
]


@pytest.mark.parametrize(("old", "new", "message"), NON_FINITE)
def test_a_number_that_is_not_finite_or_is_absurd_is_refused_by_name(
    tmp_path: Path, old: str, new: str, message: str
) -> None:
    """TOML has nan and inf; NaN compares false with everything, so a range check alone lets
    it through (a NaN budget or pruner ratio would silently turn the guard or pruner off)."""
    path = write_preset(tmp_path, **{old: new})
    with pytest.raises(PresetError) as raised:
        presets.load_preset(path)
    assert str(raised.value).startswith(f"{path}: ")
    assert message in str(raised.value)
