"""Training one model: fit on real Fashion-MNIST images, and the History it keeps."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest

from search.define import presets
from search.define.datasets import Split
from search.define.space import Config, Conv
from search.train.network import build
from search.train.runtime import configure
from search.train.training import History, build_and_fit, fit
from tests.helpers import write_preset

NAN, INF = math.nan, math.inf


@pytest.mark.parametrize(
    ("val_loss", "best"),
    [
        ([0.9, 0.5, 0.7], 2),
        ([NAN, 0.5, 0.4, INF], 3),  # NaN and infinity never win...
        ([0.6, NAN, NAN], 1),
        ([NAN, NAN], 1),  # ...not even when nothing else is there: the first epoch is named
    ],
)
def test_the_best_epoch_is_the_lowest_finite_val_loss(val_loss: list[float], best: int) -> None:
    assert History(val_loss=val_loss).best_epoch == best


def test_the_history_is_stored_rounded_without_the_timings() -> None:
    history = History(
        loss=[1.23456789],
        accuracy=[0.5],
        val_loss=[0.987654321],
        val_accuracy=[0.25],
        seconds=[3.5],
    )
    assert history.as_dict() == {
        "loss": [1.234568],
        "accuracy": [0.5],
        "val_loss": [0.987654],
        "val_accuracy": [0.25],
    }


def train(config: Config, data: Split, epochs: int) -> tuple[History, list[int]]:
    configure()
    import keras

    keras.backend.clear_session(free_memory=True)
    keras.utils.set_random_seed(5)
    seen: list[int] = []
    history = History()
    returned = fit(
        build(config),
        config,
        data.x_train,
        data.y_train,
        epochs=epochs,
        validation=(data.x_val, data.y_val),
        on_epoch=seen.append,
        history=history,
    )
    assert returned is history  # the caller's History is filled as the epochs end
    return history, seen


def test_fit_learns_from_uint8_images_and_records_every_epoch(small_split: Split) -> None:
    config = Config(convs=(Conv(16, 3, True),), dense=(32,))
    history, seen = train(config, small_split, epochs=2)
    assert seen == [0, 1]
    for values in (
        history.loss,
        history.accuracy,
        history.val_loss,
        history.val_accuracy,
        history.seconds,
    ):
        assert len(values) == 2 and all(math.isfinite(v) for v in values)
    assert history.loss[1] < history.loss[0]
    assert history.val_accuracy[-1] > 0.5  # chance is 0.1
    assert all(s > 0 for s in history.seconds)


def test_fit_stops_at_the_first_epoch_whose_loss_is_not_finite(small_split: Split) -> None:
    diverging = Config(convs=(Conv(8, 5, True),), dense=(32,), learning_rate=1e12)
    history, seen = train(diverging, small_split, epochs=3)
    assert len(seen) < 3 and len(history.loss) == len(seen)
    assert not math.isfinite(history.loss[-1]) or not math.isfinite(history.val_loss[-1])
    assert all(math.isfinite(v) for v in history.loss[:-1])  # it stopped at the first


def test_a_batch_norm_network_validates_on_its_own_statistics_within_a_few_dozen_steps(
    small_split: Split,
) -> None:
    # 2,000 images at batch 64 are 32 steps an epoch: batch norm's moving statistics must
    # follow the network within a few dozen steps, or validation reads stale ones and a pruner
    # takes the network for one that learns slowly. (With Keras's default momentum, 0.99, this
    # network validated at 20 % accuracy after 2 epochs, with val_loss 2.8 times its loss.)
    config = Config(
        convs=(Conv(32, 3, True), Conv(64, 3, True)), dense=(64,), batchnorm=True, padding="same"
    )
    history, _ = train(config, small_split, epochs=2)
    assert history.val_accuracy[-1] > 0.6  # chance is 0.1
    assert history.val_loss[-1] < 1.5 * history.loss[-1]


def test_one_routine_seeds_builds_for_the_preset_and_fits(
    tmp_path: Path, small_split: Split
) -> None:
    """What a trial and a final model share: flips for the preset's dataset, the history
    handed to the per-epoch hook, a cosine schedule over `schedule_epochs`, the seed."""
    configure()
    import keras

    fashion = presets.load_preset(write_preset(tmp_path))
    digits = dataclasses.replace(fashion, dataset="mnist")
    assert fashion.flip_ok and not digits.flip_ok  # a mirrored digit is another class
    config = Config(convs=(Conv(8, 3, True),), dense=(16,), augment="flip", schedule="cosine")
    data = (small_split.x_train[:512], small_split.y_train[:512])
    seen: list[tuple[int, int]] = []
    runs = []
    for preset in (fashion, digits, fashion):
        model, history = build_and_fit(
            preset,
            config,
            *data,
            seed=5,
            epochs=1,
            schedule_epochs=4,
            validation=(small_split.x_val[:256], small_split.y_val[:256]),
            on_epoch=lambda history, epoch: seen.append((epoch, len(history.val_loss))),
        )
        flips = [layer for layer in model.layers if isinstance(layer, keras.layers.RandomFlip)]
        runs.append((len(flips), history.val_loss))
        # One epoch of four: the cosine schedule is a quarter down, at (1 + cos(pi/4)) / 2.
        rate = float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))
        assert rate == pytest.approx(config.learning_rate * 0.853553, rel=1e-3)
    assert seen == [(0, 1)] * 3  # the hook sees the epoch's metrics already recorded
    assert [flips for flips, _ in runs] == [1, 0, 1]
    assert runs[2] == runs[0]  # the same seed trains the same model again
