"""retrain-best: rebuild a trial's network, train it on all training images, test it once."""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from search.define import datasets
from search.define.presets import Preset
from search.define.space import Config, describe, size
from search.errors import Log, SearchError, first_line
from search.store.storage import safe_name
from search.store.trials import best, config_of
from search.train.network import for_inference
from search.train.runtime import configure, devices
from search.train.training import History, build_and_fit

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


class RetrainError(SearchError):
    """The trial asked for cannot be retrained as asked, or its retraining failed."""


def pick(study: optuna.Study, number: int | None) -> FrozenTrial:
    if number is None:
        trial = best(study)
        if trial is None:
            raise RetrainError(
                f"Study '{study.study_name}' has no completed trial yet; run 'search start' "
                "until at least one trial completes."
            )
        return trial
    trials = study.get_trials(deepcopy=False)
    if not 0 <= number < len(trials):
        raise RetrainError(f"Study '{study.study_name}' has no trial #{number}.")
    trial = trials[number]
    if trial.state != TrialState.COMPLETE and "best_epoch" not in trial.user_attrs:
        raise RetrainError(
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


def final_plan(trial: FrozenTrial, preset: Preset) -> tuple[Config, int, int]:
    """The final model's configuration, epochs and schedule length, fixed by the preset.

    It trains `final_epochs` times the trial's best epoch count. With `final_schedule =
    "cosine"` the learning rate decays to zero over exactly those epochs; with "same" the
    trial's own schedule runs over its planned epochs, scaled alike. Nothing here looks at the
    test set.
    """
    config = config_of(trial)
    best_epoch = int(trial.user_attrs.get("best_epoch", preset.epochs))
    epochs = max(1, round(preset.final_epochs * best_epoch))
    planned = max(epochs, round(preset.final_epochs * preset.epochs))
    if preset.final_schedule == "cosine":
        return dataclasses.replace(config, schedule="cosine"), epochs, epochs
    return config, epochs, planned


def final_images(preset: Preset, data_dir: Path | None) -> tuple[np.ndarray, np.ndarray]:
    """Every training image the preset uses: its validation and training images together.

    datasets.split decides which they are, for the search and here alike: a prefix of the
    training set, validation first.
    """
    images, labels = datasets.load_train(preset.dataset, data_dir)
    data = datasets.split(images, labels, preset.val_size, preset.train_size)
    used = len(data.x_val) + len(data.x_train)
    return images[:used], labels[:used]


def seed_of(trial: FrozenTrial, preset: Preset) -> int:
    """The seed a trial trained with, which its final model trains with too."""
    return int(trial.user_attrs.get("seed", preset.seed))


def train_on_all(
    trial: FrozenTrial,
    preset: Preset,
    *,
    data_dir: Path | None,
    log: Log,
    fresh: bool = True,
    seed: int | None = None,
) -> tuple[keras.Model, History, int]:
    """A new model of the trial's network trained on every training image, with its seed.

    Returns the model, ready for inference, its history and how many images it trained on.
    `fresh` clears Keras's session first; an ensemble keeps its earlier members alive. `seed`
    replaces the trial's, for an ensemble of one network trained several times.
    """
    config, epochs, planned = final_plan(trial, preset)
    seed = seed_of(trial, preset) if seed is None else seed
    configure()
    images, labels = final_images(preset, data_dir)
    log(
        f"Retraining trial #{trial.number} {describe(config)} ({size(config).params:,} params) "
        f"on {len(images):,} images for {epochs} epochs, seed {seed}."
    )
    log(f"Backend: {devices()}")

    def on_epoch(history: History, epoch: int) -> None:
        log(
            f"  epoch {epoch + 1}/{epochs}: loss {history.loss[-1]:.4f} accuracy "
            f"{history.accuracy[-1]:.4f} ({history.seconds[-1]:.1f} s)"
        )

    model, history = build_and_fit(
        preset,
        config,
        images,
        labels,
        seed=seed,
        epochs=epochs,
        schedule_epochs=planned,
        on_epoch=on_epoch,
        fresh=fresh,
    )
    if not np.isfinite(history.loss[-1]):
        raise RetrainError(f"Retraining trial #{trial.number} diverged (loss {history.loss[-1]}).")
    return for_inference(model), history, len(images)


TestSet = tuple[np.ndarray, np.ndarray]


def test_set(preset: Preset, data_dir: Path | None) -> TestSet:
    """The test images and labels: read here only, after every model is trained."""
    return datasets.load_test(preset.dataset, data_dir)


def test(model: keras.Model, images_and_labels: TestSet) -> tuple[float, float]:
    """Test loss and accuracy of a trained model."""
    loss, accuracy = model.evaluate(*images_and_labels, batch_size=1024, verbose=0)
    return float(loss), float(accuracy)


def retrain_trial(
    study: optuna.Study,
    preset: Preset,
    *,
    out_dir: Path,
    number: int | None = None,
    data_dir: Path | None = None,
    log: Log = print,
) -> Result:
    """Retrain a trial (the best by default) on all training images, test it once, save it."""
    trial = pick(study, number)
    model, history, train_images = train_on_all(trial, preset, data_dir=data_dir, log=log)
    test_loss, test_accuracy = test(model, test_set(preset, data_dir))
    path = out_dir / "models" / f"{safe_name(study.study_name)}-trial{trial.number}.keras"
    config = config_of(trial)
    result = Result(
        trial=trial.number,
        architecture=describe(config),
        params=size(config).params,
        epochs=len(history.loss),
        seed=seed_of(trial, preset),
        train_images=train_images,
        test_loss=test_loss,
        test_accuracy=test_accuracy,
        lab_test_accuracy=datasets.info(preset.dataset).lab_test_accuracy,
        model_path=str(path),
        history=history.as_dict(),
    )
    # Results go on the study first, so a failed save below loses nothing already measured.
    study.set_user_attr("retrain", json.loads(json.dumps(asdict(result))))
    study.set_user_attr("test_accuracy", round(result.test_accuracy, 4))
    study.set_user_attr("test_loss", round(result.test_loss, 4))
    save_or_explain(model, path)
    return result


def save_or_explain(model: keras.Model, path: Path) -> None:
    try:
        _save(model, path)
    except OSError as e:
        raise RetrainError(
            f"The test result is recorded on the study, but the model could not be "
            f"saved to {path}: {e.strerror or e}."
        ) from None
