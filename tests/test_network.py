"""Keras models from a Config: the training recipe's axes, and the ensemble of final models."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import keras
import numpy as np
import pytest

from search.define.datasets import Split
from search.define.space import Config, Conv
from search.train.network import (
    build,
    callbacks,
    decay_steps,
    ensemble,
    load_model,
    optimizer,
    targets,
    with_flips,
)
from search.train.runtime import configure
from tests.helpers import fit_small

SMALL = Config(convs=(Conv(16, 3, True), Conv(32, 3, True)), dense=(64,), batch_size=128)


def test_label_smoothing_lives_in_the_training_targets_only() -> None:
    labels = np.array([0, 3, 9])
    assert targets(SMALL, labels, train=True) is labels  # no smoothing: integer labels
    smoothed = dataclasses.replace(SMALL, label_smoothing=0.1)
    train = targets(smoothed, labels, train=True)
    exact = targets(smoothed, labels, train=False)
    assert train.shape == exact.shape == (3, 10)
    assert np.allclose(train.sum(axis=1), 1) and np.allclose(exact.sum(axis=1), 1)
    assert train[1, 3] == pytest.approx(0.91) and train[1, 0] == pytest.approx(0.01)
    assert exact[1, 3] == 1 and exact[1, 0] == 0  # validation and test: the plain loss


def test_the_optimiser_and_schedule_follow_the_configuration() -> None:
    configure()
    adamw = dataclasses.replace(SMALL, optimizer="adamw", weight_decay=1e-4, schedule="cosine")
    made = optimizer(adamw, decay_steps=100)
    assert isinstance(made, keras.optimizers.AdamW) and made.weight_decay == pytest.approx(1e-4)
    schedule = made.learning_rate  # read back as the current rate, at step 0
    assert float(schedule) == pytest.approx(adamw.learning_rate)
    assert isinstance(made._learning_rate, keras.optimizers.schedules.CosineDecay)
    assert isinstance(optimizer(SMALL), keras.optimizers.RMSprop)  # the lab's
    assert decay_steps(SMALL, images=1000, epochs=3) == 3 * 8  # ceil(1000 / 128) steps
    plateau = dataclasses.replace(SMALL, schedule="plateau")
    (reduce,) = callbacks(plateau, monitor="val_loss", patience=4)
    assert isinstance(reduce, keras.callbacks.ReduceLROnPlateau) and reduce.patience == 2
    assert callbacks(SMALL, monitor="val_loss", patience=4) == []
    averaged = dataclasses.replace(SMALL, ema=True)
    assert optimizer(averaged).use_ema and not optimizer(SMALL).use_ema
    # The average spans a tenth of the run: 0.9 a step for 64 steps, 0.999 for 10,000.
    assert optimizer(averaged, decay_steps=64).ema_momentum == pytest.approx(0.9)
    assert optimizer(averaged, decay_steps=10_000).ema_momentum == pytest.approx(0.999)
    (swap,) = callbacks(averaged, monitor="val_loss", patience=4)
    assert isinstance(swap, keras.callbacks.SwapEMAWeights)


def test_averaged_weights_are_what_validates_and_what_the_model_keeps(
    small_split: Split,
) -> None:
    """The same seeded training with and without an average of its weights: the steps are
    the same, the averaged weights validate differently, and the model ends holding them."""
    configure()
    val = (small_split.x_val, small_split.y_val)
    ends = {}
    for ema in (False, True):
        config = dataclasses.replace(SMALL, ema=ema, optimizer="adam", learning_rate=3e-3)
        model, history = fit_small(config, small_split)
        assert history.val_accuracy[-1] > 0.5  # chance is 0.1
        loss, _ = model.evaluate(*val, batch_size=1024, verbose=0)
        assert loss == pytest.approx(history.val_loss[-1], rel=1e-4)  # the weights it kept
        ends[ema] = history
    assert ends[True].loss == pytest.approx(ends[False].loss, rel=1e-4)  # the same steps
    assert abs(ends[True].val_loss[-1] - ends[False].val_loss[-1]) > 1e-3  # other weights


def test_the_whole_recipe_trains_and_val_loss_stays_the_plain_cross_entropy(
    small_split: Split,
) -> None:
    """Flips, AdamW on a cosine schedule and label smoothing, on real images."""
    configure()
    recipe = dataclasses.replace(
        SMALL,
        augment="flip",
        optimizer="adamw",
        weight_decay=1e-4,
        schedule="cosine",
        label_smoothing=0.1,
        learning_rate=3e-3,
    )
    model, history = fit_small(recipe, small_split, flip=True)
    assert history.val_accuracy[-1] > 0.3  # ten classes: chance is 0.1
    probabilities = model.predict(small_split.x_val, verbose=0)
    plain = -np.mean(np.log(probabilities[np.arange(len(probabilities)), small_split.y_val]))
    assert history.val_loss[-1] == pytest.approx(plain, rel=1e-3)


def test_test_time_flips_average_each_image_and_its_mirror(
    small_split: Split, tmp_path: Path
) -> None:
    configure()
    keras.utils.set_random_seed(0)
    model = build(SMALL)
    flips = with_flips(model)
    images = small_split.x_val[:32]
    expected = (
        model.predict(images, verbose=0) + model.predict(images[:, :, ::-1], verbose=0)
    ) / 2
    assert np.allclose(flips.predict(images, verbose=0), expected, atol=1e-6)
    assert not np.allclose(expected, model.predict(images, verbose=0), atol=1e-3)
    flips.save(tmp_path / "flips.keras")
    loaded = load_model(tmp_path / "flips.keras")
    assert np.allclose(loaded.predict(images, verbose=0), expected, atol=1e-6)


def test_an_ensemble_averages_its_members_on_raw_images(small_split: Split) -> None:
    configure()
    members = []
    for i, config in enumerate((SMALL, dataclasses.replace(SMALL, head="gap"))):
        keras.utils.set_random_seed(i)
        members.append(build(config))  # both named by their architecture: renamed inside
    combined = ensemble(members)
    images = small_split.x_val[:32]
    expected = np.mean([m.predict(images, verbose=0) for m in members], axis=0)
    assert np.allclose(combined.predict(images, verbose=0), expected, atol=1e-6)
    loss, accuracy = combined.evaluate(images, small_split.y_val[:32], verbose=0)
    assert 0 <= accuracy <= 1 and loss > 0  # integer labels, as the saved models take
