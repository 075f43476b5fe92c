"""Keras models from a Config: the training recipe's axes, and the ensemble of final models."""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import pytest

from search.define.datasets import Split
from search.define.space import Config, Conv
from search.train.network import build, callbacks, decay_steps, ensemble, optimizer, targets
from search.train.runtime import configure
from search.train.training import History, fit

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
    keras.utils.set_random_seed(0)
    model = build(recipe, flip=True, decay_steps=decay_steps(recipe, len(small_split.x_train), 2))
    history = History()
    fit(
        model,
        recipe,
        small_split.x_train,
        small_split.y_train,
        epochs=2,
        validation=(small_split.x_val, small_split.y_val),
        history=history,
    )
    assert history.val_accuracy[-1] > 0.3  # ten classes: chance is 0.1
    probabilities = model.predict(small_split.x_val, verbose=0)
    plain = -np.mean(np.log(probabilities[np.arange(len(probabilities)), small_split.y_val]))
    assert history.val_loss[-1] == pytest.approx(plain, rel=1e-3)


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
