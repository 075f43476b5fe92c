"""retrain-best --ensemble K: the K best distinct trials retrained, their softmax averaged.

An ensemble of small convnets is a known, cheap gain on Fashion-MNIST (about 0.6 points for
five models in one public report). The members are chosen on validation loss alone, and fit
the preset's parameter budget together, since the ensemble is saved and used as one model. The
test set is read once, after every member is trained, to test each member and the average.

With `--members best` the members are the best trial alone, trained K times with K seeds: when
a study's best network is far ahead of its next, other networks are weaker votes.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.define.anatomy import describe, size
from search.define.presets import Preset
from search.errors import Log
from search.final.retrain import (
    RetrainError,
    final_plan,
    keep,
    mirrored,
    pick,
    raise_unsaved,
    record_or_explain,
    seed_of,
    test,
    test_set,
    train_on_all,
    trained_as,
)
from search.final.saved import foreign, identity, model_path, read_manifest
from search.store.trials import config_of
from search.train.network import ensemble, load_model, with_flips

if TYPE_CHECKING:
    import keras

# Who the members are: the K best distinct trials, or the best trial K times with K seeds.
MEMBERS = ("distinct", "best")
# Where the study records each kind's latest ensemble, so the report shows one of each.
RECORD = {"distinct": "ensemble", "best": "ensemble_best"}


@dataclass(frozen=True)
class Member:
    trial: int
    architecture: str
    params: int
    epochs: int
    test_accuracy: float
    seed: int


@dataclass(frozen=True)
class EnsembleResult:
    members: tuple[Member, ...]
    params: int
    test_loss: float
    test_accuracy: float
    model_path: str
    max_params: int | None  # the budget the members' parameters fit together
    members_of: str = "distinct"  # one of MEMBERS
    flips: bool = False  # members that trained on mirrors average each image and its mirror


def _passed_over(
    trial: FrozenTrial, params: int, total: int, max_params: int, *, first: bool
) -> str:
    reason = (
        f"it alone is over the preset's {max_params:,}"
        if first
        else f"with it the ensemble would hold {total + params:,}, over the preset's "
        f"{max_params:,}"
    )
    return f"Trial #{trial.number} ({params:,} params) is passed over: {reason}."


def distinct_best(
    study: optuna.Study, k: int, max_params: int | None = None, log: Log | None = None
) -> list[FrozenTrial]:
    """The k completed trials of lowest val_loss, no two with the same configuration.

    The ensemble is saved and used as one model, so with `max_params` its members' parameters
    fit that budget together, as one network's must: taken in order of val_loss, a trial that
    would take the total over it is passed over for the next best that fits.
    """
    done = sorted(
        study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)),
        key=lambda t: t.values[0],
    )
    chosen: list[FrozenTrial] = []
    passed_over: list[str] = []
    seen: set[str] = set()
    total = 0
    for trial in done:
        config = config_of(trial)
        key = config.to_json()
        if key in seen:
            continue
        seen.add(key)
        params = size(config).params
        if max_params is not None and total + params > max_params:
            passed_over.append(_passed_over(trial, params, total, max_params, first=not chosen))
            continue
        chosen.append(trial)
        total += params
        if len(chosen) == k:
            if log is not None:
                for line in passed_over:
                    log(line)
            return chosen
    fit = (
        f", but taken best first only {len(chosen)} fit the preset's {max_params:,} parameters "
        "together"
        if passed_over
        else ""
    )
    raise RetrainError(
        f"Study '{study.study_name}' has {len(seen)} distinct completed trial(s){fit}, fewer "
        f"than the {k} the ensemble asks for; run more trials or pass a smaller --ensemble."
    )


def copies_of_best(
    study: optuna.Study, k: int, max_params: int | None = None
) -> list[FrozenTrial]:
    """The best trial, k times: the members of an ensemble of seeds, within `max_params`."""
    trial = pick(study, None)
    params = size(config_of(trial)).params
    if max_params is not None and k * params > max_params:
        fits = max_params // params
        advice = (
            f"pass --ensemble {fits} or fewer"
            if fits >= 2
            else "no two copies fit, so pass --members distinct"
        )
        raise RetrainError(
            f"{k} copies of trial #{trial.number} ({params:,} params each) would hold "
            f"{k * params:,}, over the preset's {max_params:,}; {advice}."
        )
    return [trial] * k


def already_trained(
    study: optuna.Study, trial: FrozenTrial, out_dir: Path, log: Log, preset: Preset
) -> tuple[keras.Model, int] | None:
    """The model retrain-best saved for this trial, and its epochs, if it is still there.

    The final recipe is fixed by the study's preset, so training the same trial again would
    only repeat the longest part of an ensemble's work. Only a file whose manifest names this
    study and trial is used (study names repeat across storages), and only while it holds the
    trial's network (a file replaced by hand is ignored), trained and flipped as the preset's
    final recipe says.
    """
    path = model_path(out_dir, study, f"trial{trial.number}")
    if not path.is_file():
        return None
    why = foreign(path, study, trial.number)
    if why:
        log(f"{path} is not used: {why}.")
        return None
    try:
        model = load_model(path)
    except Exception:  # unreadable or from another Keras: train it again instead
        return None
    record = (read_manifest(path) or {}).get("record") or {}
    if model.count_params() != size(config_of(trial)).params:
        return None
    if not trained_as(record, trial, preset):
        return None
    return model, int(record.get("epochs", 0))


def _train_members(
    study: optuna.Study,
    preset: Preset,
    trials: list[FrozenTrial],
    seeds: list[int],
    flips: list[bool],
    data_dir: Path | None,
    log: Log,
    out_dir: Path,
) -> tuple[list[keras.Model], list[int]]:
    """Each member's model and its epochs: loaded where retrain-best saved it, else trained
    and, where `flips` says so, averaged over mirrors as retrain-best saves it."""
    models: list[keras.Model] = []
    epochs: list[int] = []
    for i, (trial, seed, flipped) in enumerate(zip(trials, seeds, flips, strict=True)):
        log(f"Member {i + 1} of {len(trials)}:")
        mine = seed == seed_of(trial, preset)
        saved = already_trained(study, trial, out_dir, log, preset) if mine else None
        if saved is not None:
            model, n = saved
            log(
                f"Trial #{trial.number} was retrained by retrain-best with the same recipe; "
                f"its saved model is used, not trained again ({n} epochs)."
            )
        else:  # the first member trained clears Keras's session; later ones keep the others
            model, history, _ = train_on_all(
                trial, preset, data_dir=data_dir, log=log, fresh=not models, seed=seed
            )
            if flipped:
                model = with_flips(model)
            n = len(history.loss)
        models.append(model)
        epochs.append(n)
    return models, epochs


def retrain_ensemble(
    study: optuna.Study,
    preset: Preset,
    k: int,
    *,
    out_dir: Path,
    data_dir: Path | None = None,
    log: Log = print,
    members_of: str = "distinct",
    url: str | None = None,
) -> EnsembleResult:
    """Retrain k members that fit the budget together, as retrain-best does; test all.

    The members are the k best distinct trials, or with `members_of="best"` the best trial k
    times, its own seed first, then the next k - 1 seeds.
    """
    if members_of == "best":
        trials = copies_of_best(study, k, preset.max_params)
        seeds = [seed_of(trials[0], preset) + i for i in range(k)]
    else:
        trials = distinct_best(study, k, preset.max_params, log)
        seeds = [seed_of(t, preset) for t in trials]
    flips = [mirrored(final_plan(t, preset)[0], preset) for t in trials]
    models, epochs = _train_members(study, preset, trials, seeds, flips, data_dir, log, out_dir)
    tests = test_set(preset, data_dir)  # read once, for the members and the ensemble
    members = []
    for trial, model, n, seed in zip(trials, models, epochs, seeds, strict=True):
        config = config_of(trial)
        _, accuracy = test(model, tests)
        members.append(
            Member(trial.number, describe(config), size(config).params, n, accuracy, seed)
        )
    combined = ensemble(models, name=f"ensemble_of_{k}")
    test_loss, test_accuracy = test(combined, tests)
    kind = "-best" if members_of == "best" else ""
    path = model_path(out_dir, study, f"ensemble{k}{kind}")
    result = EnsembleResult(
        members=tuple(members),
        params=sum(m.params for m in members),
        test_loss=test_loss,
        test_accuracy=test_accuracy,
        model_path=str(path),
        max_params=preset.max_params,
        members_of=members_of,
        flips=any(flips),
    )
    record = json.loads(json.dumps(asdict(result)))
    unsaved = keep(combined, path, identity(study, url, record=record))  # results, then records
    log(f"Ensemble of {k}: test accuracy {test_accuracy:.2%} (loss {test_loss:.4f}).")
    record_or_explain(study, {RECORD[members_of]: record}, path)
    raise_unsaved(unsaved)
    return result
