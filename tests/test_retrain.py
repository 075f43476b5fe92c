"""retrain-best without the CLI: which trial, and a real retraining tested once.

The command's output, reproducibility and the untouched test set are in test_cli.py; a full
disk in test_errors.py.
"""

from __future__ import annotations

import dataclasses
import sqlite3
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState, create_trial

from search.define import presets
from search.define.anatomy import describe
from search.define.space import Config, Conv
from search.final import saved
from search.final.retrain import RetrainError, final_plan, pick, retrain_trial, trained_as
from search.store import study
from tests.helpers import db_url, write_preset

SMALL = Config(convs=(Conv(16, 3, True),), dense=(32,))


def trained(
    value: float | None, state: TrialState = TrialState.COMPLETE, **attrs: object
) -> optuna.trial.FrozenTrial:
    """A finished trial as a worker records it."""
    return create_trial(
        state=state,
        value=value,
        params={},
        distributions={},
        user_attrs={"config": SMALL.to_json(), **attrs},
    )


@pytest.fixture
def sqlite(private_storage: Path) -> str:
    private_storage.mkdir()
    return db_url(private_storage)


def test_pick_takes_the_best_or_a_trial_that_trained(sqlite: str) -> None:
    s = optuna.create_study(storage=sqlite, study_name="picky")
    with pytest.raises(
        RetrainError, match="Study 'picky' has no completed trial yet; run 'search start'"
    ):
        pick(s, None)
    s.add_trial(trained(0.5, best_epoch=3))
    s.add_trial(trained(0.3, best_epoch=2))
    s.add_trial(trained(None, TrialState.PRUNED, best_epoch=1))  # stopped after an epoch
    s.add_trial(trained(None, TrialState.FAIL))  # failed before its first epoch
    assert pick(s, None).number == 1  # the lowest val_loss
    assert pick(s, 0).number == 0
    assert pick(s, 2).number == 2  # pruned, but it has a best epoch to retrain for
    with pytest.raises(
        RetrainError, match="Trial #3 is FAIL and never finished an epoch; pick a completed trial"
    ):
        pick(s, 3)
    for number in (4, -1):
        with pytest.raises(RetrainError, match=f"Study 'picky' has no trial #{number}\\."):
            pick(s, number)


def test_a_failed_save_leaves_no_half_written_file(tmp_path: Path) -> None:
    path = tmp_path / "models" / "x.keras"
    with pytest.raises(OSError, match="has no attribute 'save'"):  # not a model at all
        saved.save(object(), path, {"trial": 0})
    assert list(path.parent.iterdir()) == []


def test_retrain_trains_on_all_training_images_tests_once_and_saves(
    tmp_path: Path, private_storage: Path, fashion_dir: Path
) -> None:
    preset = presets.load_preset(write_preset(tmp_path))  # 1,000 validation and 5,000 training
    s = study.prepare(preset, url=db_url(private_storage), name="tiny").study
    s.add_trial(trained(0.6, best_epoch=1, seed=7))
    number = s.trials[-1].number
    lines: list[str] = []
    result = retrain_trial(s, preset, out_dir=private_storage, log=lines.append)
    assert (result.trial, result.epochs, result.seed) == (number, 1, 7)
    assert result.train_images == 6000 and result.architecture == "C16k3-P-F-D32"
    assert result.test_accuracy > 0.5  # chance is 0.1; one epoch on 6,000 images
    assert lines[0] == (
        f"Retraining trial #{number} C16k3-P-F-D32 ({result.params:,} params) "
        "on 6,000 images for 1 epochs, seed 7."
    )
    assert lines[1] == "Backend: tensorflow on cpu (1 device)"
    uid = s.user_attrs["uid"]
    model = private_storage / "models" / f"tiny-{uid[:8]}-trial{number}.keras"
    assert result.model_path == str(model) and model.is_file()
    manifest = saved.manifest_path(model)
    # No temporary file left; beside the model, the manifest that says whose it is.
    assert sorted(p.name for p in model.parent.iterdir()) == [model.name, manifest.name]
    assert saved.read_manifest(model) == {
        "storage": None,  # retrain_trial was not told the URL here; the CLI tells it
        "study": "tiny",
        "uid": uid,
        "trial": number,
        "record": s.user_attrs["retrain"],
    }
    attrs = optuna.load_study(study_name="tiny", storage=db_url(private_storage)).user_attrs
    assert attrs["retrain"]["test_accuracy"] == result.test_accuracy
    assert attrs["test_accuracy"] == round(result.test_accuracy, 4)


def test_a_network_that_never_saw_a_mirror_is_tested_without_one(
    tmp_path: Path, private_storage: Path
) -> None:
    preset = dataclasses.replace(presets.load_preset(write_preset(tmp_path)), final_flips=True)
    s = study.prepare(preset, url=db_url(private_storage), name="unflipped").study
    s.add_trial(trained(0.6, best_epoch=1, seed=7))  # SMALL trains without augmentation
    lines: list[str] = []
    result = retrain_trial(s, preset, out_dir=private_storage, log=lines.append)
    assert not result.flips and result.plain_test_accuracy is None
    assert result.test_accuracy > 0.5  # chance is 0.1
    (told,) = [line for line in lines if line.startswith("Test accuracy")]
    assert told.endswith(" points.")
    assert trained_as(s.user_attrs["retrain"], s.best_trial, preset)


def test_a_final_model_with_test_time_flips_records_both_and_saves_the_flipping_one(
    tmp_path: Path, private_storage: Path, fashion_dir: Path
) -> None:
    import numpy as np

    from search.define import datasets
    from search.train.network import load_model

    preset = dataclasses.replace(presets.load_preset(write_preset(tmp_path)), final_flips=True)
    s = study.prepare(preset, url=db_url(private_storage), name="flips").study
    flipped = dataclasses.replace(SMALL, augment="flip")  # it learns mirrored images too
    s.add_trial(trained(0.6, best_epoch=1, seed=7, config=flipped.to_json()))
    lines: list[str] = []
    result = retrain_trial(s, preset, out_dir=private_storage, log=lines.append)
    assert result.flips and result.plain_test_accuracy is not None
    assert result.test_accuracy > 0.5 and result.plain_test_accuracy > 0.5  # chance is 0.1
    (told,) = [line for line in lines if line.startswith("Test accuracy")]
    assert told.endswith(
        f"with test-time flips, against {result.plain_test_accuracy:.2%} on the images alone."
    )
    images, labels = datasets.load_test("fashion_mnist", fashion_dir)
    model = load_model(Path(result.model_path))  # what a user loads does the flips itself
    _, accuracy = model.evaluate(images, labels, batch_size=1024, verbose=0)
    assert accuracy == pytest.approx(result.test_accuracy, abs=1e-6)
    assert s.user_attrs["retrain"]["plain_test_accuracy"] == result.plain_test_accuracy
    import keras

    (inner,) = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    both = inner.predict(images[:64], verbose=0) + inner.predict(images[:64, :, ::-1], verbose=0)
    np.testing.assert_allclose(model.predict(images[:64], verbose=0), both / 2, atol=1e-6)


def test_the_final_plan_is_fixed_by_the_preset_not_by_the_test_set(tmp_path: Path) -> None:
    lab = presets.load_preset(write_preset(tmp_path))  # final_epochs 1, final_schedule "same"
    trial = trained(0.6, best_epoch=2)
    assert final_plan(trial, lab) == (SMALL, 2, lab.epochs)  # the lab's protocol
    longer = dataclasses.replace(lab, final_epochs=1.5, final_schedule="cosine")
    config, epochs, planned = final_plan(trial, longer)
    assert (config.schedule, epochs, planned) == ("cosine", 3, 3)  # decays to zero at the end
    assert dataclasses.replace(config, schedule=SMALL.schedule) == SMALL
    recipe = dataclasses.replace(lab, final_augment="crop+erase", final_ema=True)
    config, epochs, _ = final_plan(trial, recipe)
    assert (config.augment, config.ema, epochs) == ("crop+erase", True, 2)
    assert dataclasses.replace(config, augment=SMALL.augment, ema=False) == SMALL


def test_a_final_model_trains_with_the_recipes_pieces_and_averaged_weights(
    tmp_path: Path, private_storage: Path, fashion_dir: Path
) -> None:
    """final_augment and final_ema change the final model's training, not the trial's record:
    the result says what trained, and a saved model of another recipe is not taken for it."""
    lab = presets.load_preset(write_preset(tmp_path))
    preset = dataclasses.replace(lab, final_augment="crop+erase", final_ema=True)
    s = study.prepare(preset, url=db_url(private_storage), name="recipe").study
    s.add_trial(trained(0.6, best_epoch=1, seed=7))
    trial = s.get_trials()[-1]
    lines: list[str] = []
    result = retrain_trial(s, preset, out_dir=private_storage, log=lines.append)
    assert (result.trial, result.augment, result.ema) == (trial.number, "crop+erase", True)
    assert result.architecture == describe(SMALL)  # the trial's network, as searched
    assert result.test_accuracy > 0.5  # chance is 0.1
    (told,) = [line for line in lines if line.startswith("Retraining trial #")]
    assert "AugCE-C16k3-P-F-D32" in told and told.endswith("its weights averaged (EMA).")
    record = s.user_attrs["retrain"]
    assert (record["augment"], record["ema"]) == ("crop+erase", True)
    assert trained_as(record, trial, preset)
    assert not trained_as(record, trial, lab)  # the lab's recipe would train it again
    assert not trained_as(record, trial, dataclasses.replace(preset, final_ema=False))


def test_a_result_the_study_cannot_record_keeps_its_model_and_a_rerun_records_it(
    tmp_path: Path, private_storage: Path, fashion_dir: Path
) -> None:
    """The storage is locked by another writer just as the result is to be recorded (as a
    PostgreSQL gone away or a full disk would refuse it): the test accuracy is printed, the
    model and its manifest are kept, one sentence says so, and the rerun trains nothing."""
    preset = presets.load_preset(write_preset(tmp_path))
    url = db_url(private_storage)
    s = study.prepare(preset, url=url, name="tiny").study
    s.add_trial(trained(0.6, best_epoch=1, seed=7))
    impatient = optuna.storages.RDBStorage(url, engine_kwargs={"connect_args": {"timeout": 1}})
    s = optuna.load_study(study_name="tiny", storage=impatient)
    saved.study_uid(s)  # an old study gets its uid before the training, not after
    blocker = sqlite3.connect(private_storage / "search.db", isolation_level=None)
    lines: list[str] = []

    def log(line: str) -> None:
        lines.append(line)
        if line.startswith("Model saved to "):  # saved and printed: now the storage fails
            blocker.execute("BEGIN EXCLUSIVE")

    with pytest.raises(RetrainError) as raised:
        retrain_trial(s, preset, out_dir=private_storage, log=log)
    blocker.execute("ROLLBACK")
    message = str(raised.value)
    assert message.startswith("The model is saved at ") and "database is locked" in message
    assert message.endswith("it records the saved model without training again.")
    assert any(line.startswith("Test accuracy ") for line in lines)
    assert "retrain" not in s.user_attrs  # nothing was recorded
    path = Path(lines[-1].removeprefix("Model saved to "))
    assert path.is_file() and saved.read_manifest(path) is not None

    again: list[str] = []
    result = retrain_trial(s, preset, out_dir=private_storage, log=again.append)
    assert again == [
        f"{path} holds trial #{result.trial} retrained with this recipe, but its result was "
        "never recorded on the study; it is recorded now, without training again."
    ]
    assert s.user_attrs["retrain"] == saved.read_manifest(path)["record"]  # type: ignore[index]
    assert s.user_attrs["test_accuracy"] == round(result.test_accuracy, 4)
    # Recorded now: a third run retrains, as retrain-best always has.
    third: list[str] = []
    retrain_trial(s, preset, out_dir=private_storage, log=third.append)
    assert third[0].startswith(f"Retraining trial #{result.trial} ")
