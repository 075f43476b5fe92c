"""Checking a preset file: every setting's type and range, the space's axes, the enqueued
networks, each mistake in one sentence that names the file and the key.

presets.load_preset reads the TOML and hands it here; what passes becomes a Preset.
"""

from __future__ import annotations

import math
from dataclasses import fields
from pathlib import Path
from typing import Any

from search.define import datasets, presets
from search.define.anatomy import impossible, size
from search.define.residual import DOWNSAMPLES, DROPOUTS, MAX_BLOCKS, MAX_STAGES
from search.define.space import (
    AUGMENTATIONS,
    DROPOUT_PLACEMENTS,
    FAMILIES,
    HEADS,
    MAX_CONV_LAYERS,
    MAX_DENSE_LAYERS,
    OPTIMIZERS,
    PADDINGS,
    SCHEDULES,
    Config,
    Space,
    augment_kind,
    outside,
)
from search.errors import TRAIN_IMAGES

_TOP_TYPES: dict[str, tuple[type, ...]] = {
    "dataset": (str,),
    "description": (str,),
    "trials": (int,),
    "val_size": (int,),
    "train_size": (int,),
    "epochs": (int,),
    "patience": (int,),
    "seed": (int,),
    "pruner": (str,),
    "objective": (str,),
    "max_params": (int,),
    "max_mflops": (int, float),
    "steps_per_execution": (int,),
    "hours": (int, float),
    "sampler": (str,),
    "startup_trials": (int,),
    "pruner_min_epochs": (int,),
    "pruner_reduction": (int,),
    "pruner_ratio": (int, float),
    "final_epochs": (int, float),
    "final_schedule": (str,),
    "final_flips": (bool,),
    "final_augment": (str,),
    "final_ema": (bool,),
    "recycle_trials": (int,),
    "recycle_mb": (int,),
    "space": (dict,),
    "baseline": (list,),
    "start": (list,),
    "rungs": (list,),
}
FINAL_SCHEDULES = ("same", "cosine")
MAX_RUNGS = 5
MIN_RUNG_IMAGES = 500  # fewer would judge a network on a handful of batches
LADDER_PRUNERS = ("asha", "sha", "hyperband", "none")  # the pruners that judge a trial per rung
SAMPLERS = ("tpe", "tpe-grouped")
_RANGES = {
    "conv_layers",
    "stages",
    "blocks",
    "dense_layers",
    "dropout_rate",
    "learning_rate",
    "weight_decay",
    "label_smoothing",
}
_ALLOWED: dict[str, tuple[Any, ...]] = {
    "dropout": DROPOUT_PLACEMENTS,
    "optimizer": OPTIMIZERS,
    "padding": PADDINGS,
    "pool": (True, False),
    "batchnorm": (True, False),
    "ema": (True, False),
    "augment": AUGMENTATIONS,
    "family": FAMILIES,
    "downsample": DOWNSAMPLES,
    "head": HEADS,
    "schedule": SCHEDULES,
}


def _fail(path: Path, key: str, problem: str) -> presets.PresetError:
    return presets.PresetError(f"{path}: '{key}' {problem}.")


def _is(value: Any, kinds: tuple[type, ...]) -> bool:
    # bool is a subclass of int in Python; a preset's `true` is never a number.
    if isinstance(value, bool):
        return bool in kinds
    return isinstance(value, kinds)


def _space(path: Path, table: dict[str, Any]) -> Space:
    names = {f.name for f in fields(Space)}
    values: dict[str, Any] = {}
    for key, value in table.items():
        if key not in names:
            raise _fail(path, f"space.{key}", f"is not a known axis (known: {', '.join(names)})")
        values[key] = _axis(path, key, value)
    space = Space(**values)
    _check_space(path, space)
    return space


def _axis(path: Path, key: str, value: Any) -> tuple[Any, ...]:
    """One axis of [space]: a list of choices, or [min, max] for a range, of the right type."""
    where = f"space.{key}"
    if not isinstance(value, list) or not value:
        raise _fail(path, where, "must be a non-empty list")
    if key == "augment":  # `[false, true]` from before augmentation had kinds
        value = [augment_kind(v) if isinstance(v, bool) else v for v in value]
    default = getattr(Space(), key)
    kinds: tuple[type, ...] = (type(default[0]),)
    if kinds == (float,):
        kinds = (int, float)
    for item in value:
        if not _is(item, kinds):
            raise _fail(path, where, f"holds {item!r}, expected {kinds[0].__name__} values")
    if key in _ALLOWED and not set(value) <= set(_ALLOWED[key]):
        raise _fail(path, where, f"must take values from {list(_ALLOWED[key])}")
    if key not in _RANGES:
        if len(set(value)) != len(value):
            raise _fail(path, where, "lists a value twice")
        return tuple(value)
    if len(value) != 2:
        raise _fail(path, where, "must be [min, max]")
    lo, hi = value
    if lo > hi:
        raise _fail(path, where, f"has min {lo} greater than max {hi}")
    return (lo, hi)


def _check_space(path: Path, space: Space) -> None:
    """Bounds that hold across axes: layer counts, positive sizes, rates in range."""
    counts = {
        "conv_layers": MAX_CONV_LAYERS,
        "dense_layers": MAX_DENSE_LAYERS,
        "stages": MAX_STAGES,
        "blocks": MAX_BLOCKS,
    }
    checks = [
        (
            f"space.{axis}",
            1 <= min(getattr(space, axis)) and max(getattr(space, axis)) <= most,
            f"must lie within [1, {most}]",
        )
        for axis, most in counts.items()
    ]
    checks += [
        (
            "space.kernel",
            all(k >= 1 and k % 2 == 1 for k in space.kernel),
            "must hold odd sizes of at least 1",
        ),
        ("space.filters", all(f >= 1 for f in space.filters), "must be positive"),
        ("space.dense_units", all(u >= 1 for u in space.dense_units), "must be positive"),
        ("space.batch_size", all(b >= 1 for b in space.batch_size), "must be positive"),
        (
            "space.dropout_rate",
            0 <= space.dropout_rate[0] and space.dropout_rate[1] < 1,
            "must lie within [0, 1)",
        ),
        ("space.learning_rate", space.learning_rate[0] > 0, "must be positive"),
        ("space.weight_decay", space.weight_decay[0] > 0, "must be positive"),
        (
            "space.label_smoothing",
            0 <= space.label_smoothing[0] and space.label_smoothing[1] < 1,
            "must lie within [0, 1)",
        ),
    ]
    if "residual" in space.family:
        checks.append(
            (
                "space.dropout",
                bool(set(DROPOUTS) & set(space.dropout)),
                "must offer 'none' or 'flatten' for residual networks, whose dropout follows "
                "the pooled head only",
            )
        )
    for key, ok, problem in checks:
        if not ok:
            raise _fail(path, key, problem)


def _baseline(
    path: Path, i: int, table: dict[str, Any], kind: str = "baseline"
) -> presets.Baseline:
    where = f"{kind}[{i}]"
    if not isinstance(table, dict):
        raise _fail(path, where, "must be a table")
    known = {f.name for f in fields(Config)} | {"name", "params"}
    for key in table:
        if key not in known:
            raise _fail(path, f"{where}.{key}", f"is not a known field (known: {sorted(known)})")
    try:
        config = Config.from_dict({k: v for k, v in table.items() if k not in ("name", "params")})
    except (TypeError, KeyError, ValueError) as e:
        raise _fail(path, where, f"is not a valid configuration ({e})") from e
    for key, value in _config_values(config):
        expected = {"pool": bool}.get(key) or (
            type(getattr(_LAB, key)) if key in _LAB_FIELDS else int
        )
        if not _is(value, (expected,) if expected is not float else (int, float)):
            raise _fail(path, f"{where}.{key}", f"holds {value!r}, expected {expected.__name__}")
        if expected in (int, float) and not isinstance(value, bool) and value < 0:
            raise _fail(path, f"{where}.{key}", "must not be negative")
    reason = impossible(config)
    if reason:
        raise _fail(path, where, f"cannot be built: {reason}")
    counted = size(config).params
    params = table.get("params", counted)
    if params != counted:
        raise _fail(
            path,
            f"{where}.params",
            f"says {params!r}, but this network has {counted:,} parameters",
        )
    return presets.Baseline(
        name=str(table.get("name", f"{kind} {i}")), config=config, params=params
    )


_LAB = Config(convs=())
_LAB_FIELDS = {f.name for f in fields(Config)} - {"convs", "dense", "stages"}


def _config_values(config: Config) -> list[tuple[str, Any]]:
    """Every scalar of a configuration with its field name, for type checks."""
    values = [(k, getattr(config, k)) for k in sorted(_LAB_FIELDS)]
    for conv in config.convs:
        values += [("filters", conv.filters), ("kernel", conv.kernel), ("pool", conv.pool)]
    values += [("dense", units) for units in config.dense]
    for stage in config.stages:
        values += [("width", stage.width), ("blocks", stage.blocks)]
    return values


_POSITIVE = (
    "trials",
    "val_size",
    "epochs",
    "steps_per_execution",
    "train_size",
    "max_params",
    "max_mflops",
    "hours",
    "final_epochs",
    "startup_trials",
    "pruner_min_epochs",
)
_ONE_OF = {
    "pruner": presets.PRUNERS,
    "objective": presets.OBJECTIVES,
    "sampler": SAMPLERS,
    "final_schedule": FINAL_SCHEDULES,
    "final_augment": AUGMENTATIONS,
}


def _non_finite(value: Any, where: str) -> str | None:
    """The first place under `where` that holds NaN or an infinity, or None."""
    if isinstance(value, float) and not math.isfinite(value):
        return where
    items: Any = ()
    if isinstance(value, dict):
        items = ((f"{where}.{k}" if where else k, v) for k, v in value.items())
    elif isinstance(value, list):
        # A list of tables is numbered (baseline[1]); a list of numbers is one setting.
        tables = any(isinstance(v, dict) for v in value)
        items = ((f"{where}[{i}]" if tables else where, v) for i, v in enumerate(value))
    return next((found for key, v in items if (found := _non_finite(v, key))), None)


def _check_finite(path: Path, data: dict[str, Any]) -> None:
    """TOML has nan and inf. NaN compares false with everything, so no range check below
    would refuse it: a NaN budget or pruner ratio would turn the guard or the pruner off."""
    where = _non_finite(data, "")
    if where:
        raise _fail(path, where, "must be a finite number, not nan or an infinity")
    if data.get("hours", 0) > presets.MAX_HOURS:
        raise _fail(path, "hours", f"must be at most {presets.MAX_HOURS:,} (a year)")
    if data.get("final_epochs", 0) > presets.MAX_FINAL_EPOCHS:
        raise _fail(path, "final_epochs", f"must be at most {presets.MAX_FINAL_EPOCHS}")


def _check_settings(path: Path, data: dict[str, Any]) -> None:
    """The top-level settings' ranges and choices (their types are checked already)."""
    _check_finite(path, data)
    for key in _POSITIVE:
        if key in data and data[key] <= 0:
            raise _fail(path, key, "must be positive")
    for key in ("patience", "seed", "recycle_trials", "recycle_mb"):
        if key in data and data[key] < 0:
            raise _fail(path, key, "must not be negative")
    for key, choices in _ONE_OF.items():
        if key in data and data[key] not in choices:
            raise _fail(path, key, f"must be one of {list(choices)}")
    if data.get("pruner_reduction", 3) < 2:
        raise _fail(path, "pruner_reduction", "must be at least 2")
    if data.get("pruner_ratio", 1.5) <= 1:
        raise _fail(path, "pruner_ratio", "must exceed 1")
    if data.get("val_size", 5000) >= TRAIN_IMAGES:
        raise _fail(path, "val_size", "must leave training images (at most 59,999)")


def _rung(path: Path, i: int, item: Any, images: int) -> presets.Rung:
    where = f"rungs[{i}]"
    if not isinstance(item, dict) or set(item) != {"share", "epochs"}:
        raise _fail(path, where, "must be a table of exactly 'share' and 'epochs'")
    share, epochs = item["share"], item["epochs"]
    if not _is(share, (int, float)) or not 0 < share <= 1:
        raise _fail(path, f"{where}.share", "must be a share of the training images, in (0, 1]")
    if not _is(epochs, (int,)) or epochs < 1:
        raise _fail(path, f"{where}.epochs", "must be a whole number of epochs, at least 1")
    if share * images < MIN_RUNG_IMAGES:
        raise _fail(
            path,
            f"{where}.share",
            f"gives {int(share * images):,} of the {images:,} training images; a rung needs "
            f"at least {MIN_RUNG_IMAGES:,}",
        )
    return presets.Rung(share=float(share), epochs=epochs)


def _rungs(path: Path, data: dict[str, Any]) -> tuple[presets.Rung, ...]:
    """The ladder: each rung dearer than the one before, the full run dearer than all."""
    items = data.get("rungs", [])
    if not items:
        if data.get("pruner") == "asha":
            raise _fail(path, "pruner", "asha climbs a ladder: give the preset rungs")
        return ()
    if len(items) > MAX_RUNGS:
        raise _fail(path, "rungs", f"may hold at most {MAX_RUNGS} rungs")
    if data.get("objective", "val_loss") != "val_loss":
        raise _fail(path, "rungs", "need the single objective val_loss: Optuna cannot prune more")
    if data.get("pruner", "hyperband") not in LADDER_PRUNERS:
        raise _fail(path, "pruner", f"must be one of {list(LADDER_PRUNERS)} with rungs")
    images = data.get("train_size") or TRAIN_IMAGES - data.get("val_size", 5000)
    rungs = tuple(_rung(path, i, item, images) for i, item in enumerate(items))
    full = presets.Rung(share=1.0, epochs=data.get("epochs", 20))
    for i, (rung, above) in enumerate(zip(rungs, (*rungs[1:], full), strict=True)):
        if rung.cost >= above.cost:
            what = f"rungs[{i + 1}]" if i + 1 < len(rungs) else "the full run ('epochs')"
            raise _fail(path, f"rungs[{i}]", f"must cost less than {what}, in share x epochs")
    return rungs


def parse(path: Path, data: dict[str, Any]) -> presets.Preset:
    for key, value in data.items():
        if key not in _TOP_TYPES:
            raise _fail(path, key, f"is not a known setting (known: {', '.join(_TOP_TYPES)})")
        if not _is(value, _TOP_TYPES[key]):
            raise _fail(path, key, f"must be of type {_TOP_TYPES[key][0].__name__}")
    if "dataset" not in data:
        raise _fail(path, "dataset", "is required")
    try:
        datasets.info(data["dataset"])
    except datasets.DataError as e:
        raise presets.PresetError(f"{path}: {e}") from None
    _check_settings(path, data)
    space = _space(path, data.get("space", {}))
    if not datasets.info(data["dataset"]).flip_ok and any("flip" in a for a in space.augment):
        raise _fail(path, "space.augment", "may not flip: a mirrored image is another class here")
    if not datasets.info(data["dataset"]).flip_ok and data.get("final_flips"):
        raise _fail(path, "final_flips", "may not be true: a mirrored image is another class here")
    if not datasets.info(data["dataset"]).flip_ok and "flip" in data.get("final_augment", ""):
        raise _fail(path, "final_augment", "may not flip: a mirrored image is another class here")
    tables = {
        kind: tuple(_baseline(path, i, t, kind) for i, t in enumerate(data.get(kind, [])))
        for kind in presets.ENQUEUED
    }
    for kind, found in tables.items():
        for i, b in enumerate(found):
            why = outside(b.config, space)
            if why:
                raise _fail(path, f"{kind}[{i}]", f"({b.name}) lies outside the space: {why}")
    rungs = _rungs(path, data)
    top = {k: v for k, v in data.items() if k not in ("space", "rungs", *tables)}
    return presets.Preset(
        name=path.stem,
        space=space,
        baselines=tables["baseline"],
        starts=tables["start"],
        rungs=rungs,
        **top,
    )
