"""retrain-best: rebuild a trial's network, train it on all training images, test it once."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from search import datasets
from search.errors import first_line
from search.presets import Preset
from search.runtime import Log, configure
from search.space import build, describe, size
from search.storage import safe_name
from search.study import StudyError, best, config_of
from search.training import History, fit

if TYPE_CHECKING:
    import keras


@dataclass(frozen=True)
class Result:
    trial: int
    architecture: str
    params: int
    epochs: int
    seed: int
    train_images: int
    test_loss: float
    test_accuracy: float
    lab_test_accuracy: float
    model_path: str
    history: dict[str, list[float]]


def pick(study: optuna.Study, number: int | None) -> FrozenTrial:
    if number is None:
        trial = best(study)
        if trial is None:
            raise StudyError(
                f"Study '{study.study_name}' has no completed trial yet; run 'search start' "
                "until at least one trial completes."
            )
        return trial
    trials = study.get_trials(deepcopy=False)
    if not 0 <= number < len(trials):
        raise StudyError(f"Study '{study.study_name}' has no trial #{number}.")
    trial = trials[number]
    if trial.state != TrialState.COMPLETE and "best_epoch" not in trial.user_attrs:
        raise StudyError(
            f"Trial #{number} is {trial.state.name} and never finished an epoch; "
            "pick a completed trial."
        )
    return trial


def _save(model: object, path: Path) -> None:
    """Write to a temporary file and rename it, so a failed save leaves no half-written model."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".keras", dir=path.parent)
    os.close(fd)
    try:
        model.save(tmp)  # type: ignore[attr-defined]
        os.replace(tmp, path)
    except OSError:
        raise
    except Exception as e:  # h5py and zipfile report a full disk in their own exception types
        raise OSError(first_line(e, type(e).__name__)) from e
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def train_on_all(
    trial: FrozenTrial, preset: Preset, *, data_dir: str | None, log: Log
) -> tuple[keras.Model, History, int]:
    """A new model of the trial's network trained on every training image, with its seed.

    It trains for the trial's best epoch count. Returns the model, its history and how many
    images it trained on.
    """
    config = config_of(trial)
    epochs = int(trial.user_attrs.get("best_epoch", preset.epochs))
    seed = int(trial.user_attrs.get("seed", preset.seed))
    configure()
    import keras

    images, labels = datasets.load_train(preset.dataset, data_dir)
    if preset.train_size:
        images, labels = (
            images[: preset.val_size + preset.train_size],
            labels[: preset.val_size + preset.train_size],
        )
    log(
        f"Retraining trial #{trial.number} {describe(config)} ({size(config).params:,} params) "
        f"on {len(images):,} images for {epochs} epochs, seed {seed}."
    )
    keras.backend.clear_session(free_memory=True)
    keras.utils.set_random_seed(seed)
    model = build(
        config,
        flip=datasets.info(preset.dataset).flip_ok,
        steps_per_execution=preset.steps_per_execution,
    )
    history = History()

    def on_epoch(epoch: int) -> None:
        log(
            f"  epoch {epoch + 1}/{epochs}: loss {history.loss[-1]:.4f} accuracy "
            f"{history.accuracy[-1]:.4f} ({history.seconds[-1]:.1f} s)"
        )

    fit(model, config, images, labels, epochs=epochs, on_epoch=on_epoch, history=history)
    if not np.isfinite(history.loss[-1]):
        raise StudyError(f"Retraining trial #{trial.number} diverged (loss {history.loss[-1]}).")
    return model, history, len(images)


def retrain(
    study: optuna.Study,
    preset: Preset,
    *,
    out_dir: Path,
    number: int | None = None,
    data_dir: str | None = None,
    log: Log = print,
) -> Result:
    """Retrain a trial (the best by default) on all training images, test it once, save it."""
    trial = pick(study, number)
    model, history, train_images = train_on_all(trial, preset, data_dir=data_dir, log=log)
    # The only place the test set is read.
    x_test, y_test = datasets.load_test(preset.dataset, data_dir)
    test_loss, test_accuracy = model.evaluate(x_test, y_test, batch_size=1024, verbose=0)
    path = out_dir / "models" / f"{safe_name(study.study_name)}-trial{trial.number}.keras"
    config = config_of(trial)
    result = Result(
        trial=trial.number,
        architecture=describe(config),
        params=size(config).params,
        epochs=len(history.loss),
        seed=int(trial.user_attrs.get("seed", preset.seed)),
        train_images=train_images,
        test_loss=float(test_loss),
        test_accuracy=float(test_accuracy),
        lab_test_accuracy=datasets.info(preset.dataset).lab_test_accuracy,
        model_path=str(path),
        history=history.as_dict(),
    )
    # Results go on the study first, so a failed save below loses nothing already measured.
    study.set_user_attr("retrain", json.loads(json.dumps(asdict(result))))
    study.set_user_attr("test_accuracy", round(result.test_accuracy, 4))
    study.set_user_attr("test_loss", round(result.test_loss, 4))
    try:
        _save(model, path)
    except OSError as e:
        raise StudyError(
            f"The test result is recorded on the study, but the model could not be "
            f"saved to {path}: {e.strerror or e}."
        ) from None
    return result
