"""Presets: the declarative studies/*.toml files, read and checked strictly.

A preset names the dataset, the training budget, the bounds of the search space and the lab's
own configurations, which become a new study's first trials. Where a name finds its file (the
shipped presets, the user's ./studies/) is catalog.py's job; checking the file's every key is
preset_checks.py's.
"""

from __future__ import annotations

import hashlib
import json
import tomllib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from search.define import catalog, datasets
from search.define.anatomy import Size, impossible, size
from search.define.space import Config, Space, augment_kind
from search.errors import SearchError

PRUNERS = ("hyperband", "sha", "asha", "median", "behind", "none")
# "val_loss": one objective, pruned on val_loss. "val_loss+params": both minimised, for a Pareto
# front of accuracy against size; Optuna cannot prune multi-objective studies.
OBJECTIVES = ("val_loss", "val_loss+params")
# The networks a preset enqueues before the sampler's, in this order: each is a table in the
# preset file and the user attribute that names it on its trial.
ENQUEUED = ("start", "baseline")


class PresetError(SearchError):
    """A preset file is missing or malformed; the message names the file and the key."""


# The longest --hours (or preset hours) a search takes: a deadline is a timestamp, and 1e300
# hours overflows it. A year is longer than any search here runs.
MAX_HOURS = 8_760
# The most final_epochs (the multiple of the best epoch count a final model trains for).
MAX_FINAL_EPOCHS = 100


@dataclass(frozen=True)
class Baseline:
    name: str
    config: Config
    params: int  # the count the lab reported; a preset that disagrees with size() is refused


@dataclass(frozen=True)
class Rung:
    """A first look at a trial: a complete run on the first `share` of the training images
    for `epochs` epochs, its schedule (a cosine) decaying within them, validated on the whole
    validation split. A trial climbs a preset's rungs, then trains its full run."""

    share: float
    epochs: int

    @property
    def cost(self) -> float:
        """Its training in full-run epochs (images seen over the training split's size)."""
        return self.share * self.epochs


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
    final_flips: bool = False  # the final model averages each image and its mirror image
    # The final model trains with these augmentation pieces besides the trial's own ("none",
    # or pieces joined by "+", such as "crop+erase"), and with an average of its weights: the
    # stronger regularisation a long final run can use and a short look cannot judge.
    final_augment: str = "none"
    final_ema: bool = False
    # Worker processes are replaced after this many trials, or past this resident memory in
    # MB (0: never); None keeps the product's defaults (workers.py).
    recycle_trials: int | None = None
    recycle_mb: int | None = None
    # The ladder of first looks before a trial's full run; empty: the full run alone, pruned
    # epoch by epoch.
    rungs: tuple[Rung, ...] = ()

    def enqueued(self) -> tuple[tuple[str, Baseline], ...]:
        """The networks the study tries first, with their kind: the starts, then the lab's."""
        runs = {"start": self.starts, "baseline": self.baselines}
        return tuple((kind, run) for kind in ENQUEUED for run in runs[kind])

    def screen(self, config: Config) -> tuple[Size | None, str | None]:
        """`config`'s size, and why the cost guard turns it away before training (None: it
        may train): a network that cannot be built, which has no size, or one over the
        parameter or FLOP budget."""
        reason = impossible(config)
        if reason:  # its size would be meaningless: the map shrinks below zero
            return None, f"impossible network: {reason}"
        cost = size(config)
        if self.max_params and cost.params > self.max_params:
            return cost, f"{cost.params:,} parameters exceed the budget of {self.max_params:,}"
        if self.max_mflops and cost.flops / 1e6 > self.max_mflops:
            mflops = cost.flops / 1e6
            return cost, f"{mflops:,.1f} MFLOPs exceed the budget of {self.max_mflops:,} MFLOPs"
        return cost, None

    def refusal(self, config: Config) -> str | None:
        """Why the cost guard turns `config` away before training, or None (see screen)."""
        return self.screen(config)[1]

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
    "final_flips",
    "final_augment",
    "final_ema",
    "recycle_trials",
    "recycle_mb",
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
    from search.define.preset_checks import parse  # it builds Presets: imported here, not above

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
    rungs = tuple(Rung(**r) for r in data.pop("rungs", []))
    return Preset(space=space, baselines=baselines, starts=starts, rungs=rungs, **data)
