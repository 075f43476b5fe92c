"""Presets: the declarative studies/*.toml files, read and checked strictly.

A preset names the dataset, the training budget, the bounds of the search space and the lab's
own configurations, which become a new study's first trials. Where a name finds its file (the
shipped presets, the user's ./studies/) is catalog.py's job.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

from search.define import catalog, datasets
from search.define.space import (
    AUGMENTATIONS,
    DROPOUT_PLACEMENTS,
    HEADS,
    MAX_CONV_LAYERS,
    MAX_DENSE_LAYERS,
    OPTIMIZERS,
    PADDINGS,
    SCHEDULES,
    Config,
    Space,
    augment_kind,
    impossible,
    outside,
    size,
)
from search.errors import TRAIN_IMAGES, SearchError

PRUNERS = ("hyperband", "sha", "median", "behind", "none")
# "val_loss": one objective, pruned on val_loss. "val_loss+params": both minimised, for a Pareto
# front of accuracy against size; Optuna cannot prune multi-objective studies.
OBJECTIVES = ("val_loss", "val_loss+params")
# The networks a preset enqueues before the sampler's, in this order: each is a table in the
# preset file and the user attribute that names it on its trial.
ENQUEUED = ("start", "baseline")


class PresetError(SearchError):
    """A preset file is missing or malformed; the message names the file and the key."""


@dataclass(frozen=True)
class Baseline:
    name: str
    config: Config
    params: int  # the count the lab reported; a preset that disagrees with size() is refused


@dataclass(frozen=True)
class Preset:
    name: str
    dataset: str
    space: Space
    description: str = ""
    trials: int = 50  # the default total for `search start`
    val_size: int = 5000  # the first images of the training set validate
    train_size: int | None = None  # a prefix of the remaining images, or all of them
    epochs: int = 20  # the most a trial trains
    patience: int = 3  # early stopping on val_loss
    seed: int = 0
    pruner: str = "hyperband"
    objective: str = "val_loss"
    max_params: int | None = None  # the cost guard: larger configurations are pruned untrained
    max_mflops: float | None = None  # forward MFLOPs per image, same guard
    steps_per_execution: int = 1
    baselines: tuple[Baseline, ...] = ()
    # How the search runs and how its winner is trained: none of these changes what a trial
    # measures, so none is part of the fingerprint.
    hours: float | None = None  # a wall-clock budget: no new trial starts after it
    sampler: str = "tpe"  # tpe, or tpe-grouped: multivariate TPE over groups of parameters
    startup_trials: int = 10  # finished trials (enqueued and rejected count) before TPE models
    pruner_min_epochs: int = 1  # the first rung (hyperband, sha), the first epoch judged (behind)
    pruner_reduction: int = 3  # each rung keeps about 1/reduction of the trials
    pruner_ratio: float = 1.5  # "behind" stops a trial at this multiple of the best val_loss
    # Known-good configurations, enqueued before the lab's runs: the search starts from them.
    starts: tuple[Baseline, ...] = ()
    final_epochs: float = 1.0  # retrain-best trains this multiple of the best epoch count
    final_schedule: str = "same"  # same (the trial's schedule) or cosine, for retrain-best
    # Worker processes are replaced after this many trials, or past this resident memory in
    # MB (0: never); None keeps the product's defaults (workers.py).
    recycle_trials: int | None = None
    recycle_mb: int | None = None

    def enqueued(self) -> tuple[tuple[str, Baseline], ...]:
        """The networks the study tries first, with their kind: the starts, then the lab's."""
        runs = {"start": self.starts, "baseline": self.baselines}
        return tuple((kind, run) for kind in ENQUEUED for run in runs[kind])

    def _comparable(self) -> dict[str, Any]:
        """Everything that makes two trials comparable: data, budget, objective and space."""
        data = asdict(self)
        for key in (
            "name",
            "description",
            "trials",
            "max_params",
            "max_mflops",
            "steps_per_execution",
            *_RUN_SETTINGS,
        ):
            data.pop(key)
        return data

    def fingerprint(self) -> str:
        text = json.dumps(self._comparable(), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()

    def differences(self, other: Preset) -> list[str]:
        """The settings (space axes by name) in which two presets' trials differ."""
        mine, theirs = self._comparable(), other._comparable()
        keys = [k for k in mine if k != "space" and mine[k] != theirs[k]]
        keys += [f"space.{k}" for k in mine["space"] if mine["space"][k] != theirs["space"][k]]
        return keys

    def changes(self, other: Preset) -> list[str]:
        """The run settings `other` changes, as 'name old -> new': those a study may change
        between runs (not the hours or the budget, which a command's options set)."""
        changed = []
        for key in (*_RUN_SETTINGS, "max_mflops", "steps_per_execution"):
            old, new = getattr(self, key), getattr(other, key)
            if key != "hours" and old != new:
                changed.append(key if key == "starts" else f"{key} {old} -> {new}")
        return changed

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @property
    def flip_ok(self) -> bool:
        """Whether augmentation may mirror images: clothes keep their class, digits do not."""
        return datasets.info(self.dataset).flip_ok

    @property
    def multi_objective(self) -> bool:
        return self.objective == "val_loss+params"

    @property
    def directions(self) -> list[Literal["minimize"]]:
        return ["minimize"] * (2 if self.multi_objective else 1)

    @property
    def metric_names(self) -> list[str]:
        return ["val_loss", "params"] if self.multi_objective else ["val_loss"]


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
    "recycle_trials": (int,),
    "recycle_mb": (int,),
    "space": (dict,),
    "baseline": (list,),
    "start": (list,),
}
_RUN_SETTINGS = (
    "hours",
    "sampler",
    "startup_trials",
    "pruner_min_epochs",
    "pruner_reduction",
    "pruner_ratio",
    "starts",
    "final_epochs",
    "final_schedule",
    "recycle_trials",
    "recycle_mb",
)
FINAL_SCHEDULES = ("same", "cosine")
SAMPLERS = ("tpe", "tpe-grouped")
_RANGES = {
    "conv_layers",
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
    "augment": AUGMENTATIONS,
    "head": HEADS,
    "schedule": SCHEDULES,
}


def _fail(path: Path, key: str, problem: str) -> PresetError:
    return PresetError(f"{path}: '{key}' {problem}.")


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
    checks = [
        (
            "space.conv_layers",
            1 <= space.conv_layers[0] and space.conv_layers[1] <= MAX_CONV_LAYERS,
            f"must lie within [1, {MAX_CONV_LAYERS}]",
        ),
        (
            "space.dense_layers",
            1 <= space.dense_layers[0] and space.dense_layers[1] <= MAX_DENSE_LAYERS,
            f"must lie within [1, {MAX_DENSE_LAYERS}]",
        ),
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
    for key, ok, problem in checks:
        if not ok:
            raise _fail(path, key, problem)


def _baseline(path: Path, i: int, table: dict[str, Any], kind: str = "baseline") -> Baseline:
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
    return Baseline(name=str(table.get("name", f"{kind} {i}")), config=config, params=params)


_LAB = Config(convs=())
_LAB_FIELDS = {f.name for f in fields(Config)} - {"convs", "dense"}


def _config_values(config: Config) -> list[tuple[str, Any]]:
    """Every scalar of a configuration with its field name, for type checks."""
    values = [(k, getattr(config, k)) for k in sorted(_LAB_FIELDS)]
    for conv in config.convs:
        values += [("filters", conv.filters), ("kernel", conv.kernel), ("pool", conv.pool)]
    values += [("dense", units) for units in config.dense]
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
    "pruner": PRUNERS,
    "objective": OBJECTIVES,
    "sampler": SAMPLERS,
    "final_schedule": FINAL_SCHEDULES,
}


def _check_settings(path: Path, data: dict[str, Any]) -> None:
    """The top-level settings' ranges and choices (their types are checked already)."""
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


def parse(path: Path, data: dict[str, Any]) -> Preset:
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
        raise PresetError(f"{path}: {e}") from None
    _check_settings(path, data)
    space = _space(path, data.get("space", {}))
    if not datasets.info(data["dataset"]).flip_ok and any("flip" in a for a in space.augment):
        raise _fail(path, "space.augment", "may not flip: a mirrored image is another class here")
    tables = {
        kind: tuple(_baseline(path, i, t, kind) for i, t in enumerate(data.get(kind, [])))
        for kind in ENQUEUED
    }
    for kind, found in tables.items():
        for i, b in enumerate(found):
            why = outside(b.config, space)
            if why:
                raise _fail(path, f"{kind}[{i}]", f"({b.name}) lies outside the space: {why}")
    top = {k: v for k, v in data.items() if k not in ("space", *tables)}
    return Preset(
        name=path.stem, space=space, baselines=tables["baseline"], starts=tables["start"], **top
    )


def load_preset(name_or_path: str | Path) -> Preset:
    """A preset by path (a .toml file), or by name: ./studies/NAME.toml, else a shipped one."""
    path = Path(name_or_path)
    if path.suffix != ".toml":
        found = catalog.find(str(name_or_path))
        if found is None:
            raise PresetError(
                f"No preset named '{name_or_path}' in ./{catalog.LOCAL_DIR}/ or among the "
                f"shipped ones; known presets: {catalog.known()}."
            )
        path = found
    if not path.is_file():
        raise PresetError(f"No preset file {path}; known presets: {catalog.known()}.")
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise PresetError(f"{path}: not valid TOML ({e}).") from e
    return parse(path, data)


def from_json(text: str) -> Preset:
    """The preset stored on a study (see study.py), so any worker can rebuild it."""
    data = json.loads(text)
    stored = {k: tuple(v) for k, v in data.pop("space").items()}
    if "augment" in stored:  # stored as booleans before augmentation had kinds
        stored["augment"] = tuple(augment_kind(v) for v in stored["augment"])
    space = Space(**stored)
    baselines, starts = (
        tuple(
            Baseline(name=b["name"], config=Config.from_dict(b["config"]), params=b["params"])
            for b in data.pop(key, [])
        )
        for key in ("baselines", "starts")
    )
    return Preset(space=space, baselines=baselines, starts=starts, **data)
