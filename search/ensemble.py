"""retrain-best --ensemble K: the K best distinct trials retrained, their softmax averaged.

An ensemble of small convnets is a known, cheap gain on Fashion-MNIST (about 0.6 points for
five models in one public report). The members are chosen on validation loss alone; the test
set is read once, after every member is trained, to test each member and the average.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.network import ensemble
from search.presets import Preset
from search.retrain import save_or_explain, test, test_set, train_on_all
from search.runtime import Log
from search.space import describe, size
from search.storage import safe_name
from search.study import StudyError, config_of


@dataclass(frozen=True)
class Member:
    trial: int
    architecture: str
    params: int
    epochs: int
    test_accuracy: float


@dataclass(frozen=True)
class EnsembleResult:
    members: tuple[Member, ...]
    params: int
    test_loss: float
    test_accuracy: float
    model_path: str


def distinct_best(study: optuna.Study, k: int) -> list[FrozenTrial]:
    """The k completed trials of lowest val_loss, no two with the same configuration."""
    done = sorted(
        study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)),
        key=lambda t: t.values[0],
    )
    chosen: list[FrozenTrial] = []
    seen: set[str] = set()
    for trial in done:
        key = config_of(trial).to_json()
        if key not in seen:
            seen.add(key)
            chosen.append(trial)
        if len(chosen) == k:
            return chosen
    raise StudyError(
        f"Study '{study.study_name}' has {len(chosen)} distinct completed trial(s), fewer than "
        f"the {k} the ensemble asks for; run more trials or pass a smaller --ensemble."
    )


def retrain_ensemble(
    study: optuna.Study,
    preset: Preset,
    k: int,
    *,
    out_dir: Path,
    data_dir: str | None = None,
    log: Log = print,
) -> EnsembleResult:
    """Retrain the k best distinct trials as retrain-best does, test each and their average."""
    trials = distinct_best(study, k)
    models, epochs = [], []
    for i, trial in enumerate(trials):
        log(f"Member {i + 1} of {k}:")
        model, history, _ = train_on_all(trial, preset, data_dir=data_dir, log=log, fresh=i == 0)
        models.append(model)
        epochs.append(len(history.loss))
    tests = test_set(preset, data_dir)  # read once, for the members and the ensemble
    members = []
    for trial, model, n in zip(trials, models, epochs, strict=True):
        config = config_of(trial)
        _, accuracy = test(model, tests)
        members.append(Member(trial.number, describe(config), size(config).params, n, accuracy))
    combined = ensemble(models, name=f"ensemble_of_{k}")
    test_loss, test_accuracy = test(combined, tests)
    path = out_dir / "models" / f"{safe_name(study.study_name)}-ensemble{k}.keras"
    result = EnsembleResult(
        members=tuple(members),
        params=sum(m.params for m in members),
        test_loss=test_loss,
        test_accuracy=test_accuracy,
        model_path=str(path),
    )
    study.set_user_attr("ensemble", json.loads(json.dumps(asdict(result))))
    log(f"Ensemble of {k}: test accuracy {test_accuracy:.2%} (loss {test_loss:.4f}).")
    save_or_explain(combined, path)
    return result
