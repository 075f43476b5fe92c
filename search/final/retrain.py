"""retrain-best: rebuild a trial's network, train it on all training images, test it once."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import optuna
import sqlalchemy.exc
from optuna.trial import FrozenTrial, TrialState

from search.define import datasets
from search.define.anatomy import describe, size
from search.define.presets import Preset
from search.define.space import Config, with_pieces
from search.errors import Log, SearchError, first_line
from search.final.saved import foreign, identity, model_path, read_manifest, save
from search.store.trials import best, config_of
from search.train.network import for_inference, with_flips
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
    # With the preset's final_flips, the saved model averages each image and its mirror, and
    # test_loss and test_accuracy are its; these are the same weights on the images alone.
    flips: bool = False
    plain_test_loss: float | None = None
    plain_test_accuracy: float | None = None
    # The final model's augmentation and weight averaging: the trial's, with the preset's
    # final_augment and final_ema (None: recorded before either existed).
    augment: str | None = None
    ema: bool | None = None


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


def final_plan(trial: FrozenTrial, preset: Preset) -> tuple[Config, int, int]:
    """The final model's configuration, epochs and schedule length, fixed by the preset.

    It trains `final_epochs` times the trial's best epoch count. With `final_schedule =
    "cosine"` the learning rate decays to zero over exactly those epochs; with "same" the
    trial's own schedule runs over its planned epochs, scaled alike. `final_augment` adds its
    pieces to the trial's augmentation and `final_ema` averages the weights. Nothing here looks
    at the test set.
    """
    config = config_of(trial)
    config = dataclasses.replace(
        config,
        augment=with_pieces(config.augment, preset.final_augment),
        ema=config.ema or preset.final_ema,
    )
    best_epoch = int(trial.user_attrs.get("best_epoch", preset.epochs))
    epochs = max(1, round(preset.final_epochs * best_epoch))
    planned = max(epochs, round(preset.final_epochs * preset.epochs))
    if preset.final_schedule == "cosine":
        return dataclasses.replace(config, schedule="cosine"), epochs, epochs
    return config, epochs, planned


def mirrored(config: Config, preset: Preset) -> bool:
    """Whether the final model averages each image and its mirror: the preset's final_flips,
    for a network that trained on mirrored images. One that never saw a mirror reads it as
    another image (a network without flips lost 6.8 points of test accuracy to them)."""
    return preset.final_flips and config.flips


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
        f"on {len(images):,} images for {epochs} epochs, seed {seed}"
        + (", its weights averaged (EMA)." if config.ema else ".")
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
    url: str | None = None,
) -> Result:
    """Retrain a trial (the best by default) on all training images, test it once, save it.

    Results before records: the model and its manifest are saved, then the test accuracy is
    printed, then it is recorded on the study. A save that fails loses no record; a record
    that cannot be written (the storage went away during a retrain of hours) keeps the model,
    and the same command run again records it from the manifest without training again.
    """
    trial = pick(study, number)
    path = model_path(out_dir, study, f"trial{trial.number}")  # gives an old study its uid
    attached = _attach(study, trial, preset, path, log)
    if attached is not None:
        return attached
    model, history, train_images = train_on_all(trial, preset, data_dir=data_dir, log=log)
    images_and_labels = test_set(preset, data_dir)
    plain_loss, plain_accuracy = test(model, images_and_labels)
    test_loss, test_accuracy = plain_loss, plain_accuracy
    config, final = config_of(trial), final_plan(trial, preset)[0]
    flips = mirrored(final, preset)
    if flips:
        model = with_flips(model)
        test_loss, test_accuracy = test(model, images_and_labels)
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
        flips=flips,
        plain_test_loss=plain_loss if flips else None,
        plain_test_accuracy=plain_accuracy if flips else None,
        augment=final.augment,
        ema=final.ema,
    )
    unsaved = keep(model, path, identity(study, url, trial=trial.number, record=_json(result)))
    delta = (result.test_accuracy - result.lab_test_accuracy) * 100
    log(
        f"Test accuracy {result.test_accuracy:.2%} (loss {result.test_loss:.4f}) against "
        f"the lab's {result.lab_test_accuracy:.2%}: {delta:+.2f} points"
        + (
            f"; with test-time flips, against {plain_accuracy:.2%} on the images alone."
            if flips
            else "."
        )
    )
    if unsaved is None:
        log(f"Model saved to {path}")
    _record(study, result, path)
    raise_unsaved(unsaved)
    return result


def _json(result: Result) -> dict[str, Any]:
    return dict(json.loads(json.dumps(asdict(result))))


def _attach(
    study: optuna.Study, trial: FrozenTrial, preset: Preset, path: Path, log: Log
) -> Result | None:
    """Record a saved result that never reached the study, instead of training again."""
    unrecorded = _unrecorded(study, trial, preset, path)
    if unrecorded is not None:
        log(
            f"{path} holds trial #{trial.number} retrained with this recipe, but its result "
            "was never recorded on the study; it is recorded now, without training again."
        )
        _record(study, unrecorded, path)
    return unrecorded


def _unrecorded(
    study: optuna.Study, trial: FrozenTrial, preset: Preset, path: Path
) -> Result | None:
    """A result saved beside this trial's model, with this recipe, that the study lacks."""
    manifest = read_manifest(path) if path.is_file() else None
    if manifest is None or foreign(path, study, trial.number) or "record" not in manifest:
        return None
    record = manifest["record"]
    _, epochs, _ = final_plan(trial, preset)
    same_recipe = (
        record.get("epochs") == epochs
        and record.get("seed") == seed_of(trial, preset)
        and trained_as(record, trial, preset)
    )
    if not same_recipe or study.user_attrs.get("retrain") == record:
        return None  # recorded already: a rerun trains again, as it always has
    return Result(**record)


def trained_as(record: dict[str, Any], trial: FrozenTrial, preset: Preset) -> bool:
    """Whether a saved final model's record shows the preset's final recipe: its augmentation,
    weight averaging and test-time flips. A record from before final_augment and final_ema
    trained with the trial's own augmentation and averaging."""
    own, final = config_of(trial), final_plan(trial, preset)[0]
    return (
        bool(record.get("flips", False)) == mirrored(final, preset)
        and record.get("augment", own.augment) == final.augment
        and bool(record.get("ema", own.ema)) == final.ema
    )


def _record(study: optuna.Study, result: Result, path: Path) -> None:
    attrs = {
        "retrain": _json(result),
        "test_accuracy": round(result.test_accuracy, 4),
        "test_loss": round(result.test_loss, 4),
    }
    record_or_explain(study, attrs, path)


def record_or_explain(study: optuna.Study, attrs: dict[str, Any], path: Path) -> None:
    """Write a final model's record on the study, or say in one sentence why it is not."""
    try:
        for key, value in attrs.items():
            study.set_user_attr(key, value)
    except (optuna.exceptions.StorageInternalError, sqlalchemy.exc.SQLAlchemyError, OSError) as e:
        cause = e.__cause__ or e
        raise RetrainError(
            f"The model is saved at {path} and its test result is printed above, but the "
            f"result could not be recorded on study '{study.study_name}' "
            f"({first_line(cause, type(cause).__name__)}); run the same command again once the "
            "storage is back: it records the saved model without training again."
        ) from None


def keep(model: keras.Model, path: Path, manifest: dict[str, Any]) -> RetrainError | None:
    """Save the model and its manifest; if that fails (a full disk), the error to raise once
    the test result is printed and recorded, so that what was measured is not lost too."""
    try:
        save(model, path, manifest)
    except OSError as e:
        return RetrainError(
            f"The test result is recorded on the study, but the model could not be saved to "
            f"{path}: {e.strerror or e}."
        )
    return None


def raise_unsaved(error: RetrainError | None) -> None:
    if error is not None:
        raise error
