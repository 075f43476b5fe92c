"""retrain-best --ensemble K: distinct members, one saved model, each accuracy recorded."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import keras
import numpy as np
import optuna
import pytest
from optuna.trial import TrialState, create_trial

from search.define import datasets, presets
from search.define.anatomy import size
from search.define.space import Config, Conv
from search.final import ensemble, saved
from search.final.retrain import RetrainError
from search.report import document as report
from search.store import study
from search.train.network import load_model
from tests.helpers import db_url, run, write_preset

ONE = Config(convs=(Conv(16, 3, True),), dense=(32,))
TWO = Config(convs=(Conv(16, 3, True), Conv(32, 3, True)), dense=(32,), head="gap")
WIDE = Config(convs=(Conv(16, 3, True),), dense=(64,))


def trained(value: float, config: Config, seed: int = 5) -> optuna.trial.FrozenTrial:
    return create_trial(
        state=TrialState.COMPLETE,
        value=value,
        params={},
        distributions={},
        user_attrs={"config": config.to_json(), "best_epoch": 1, "seed": seed},
    )


@pytest.fixture
def tiny_study(tmp_path: Path, private_storage: Path) -> optuna.Study:
    preset = presets.load_preset(write_preset(tmp_path))
    s = study.prepare(preset, url=db_url(private_storage), name="tiny").study
    for value, config in ((0.5, ONE), (0.4, ONE), (0.6, TWO), (0.9, TWO)):
        s.add_trial(trained(value, config))
    return s


def test_members_are_the_best_trials_with_distinct_configurations(
    tiny_study: optuna.Study,
) -> None:
    chosen = ensemble.distinct_best(tiny_study, 2)
    assert [t.value for t in chosen] == [0.4, 0.6]  # 0.5 repeats the best one's network
    with pytest.raises(RetrainError, match="2 distinct completed trial.*fewer than the 3"):
        ensemble.distinct_best(tiny_study, 3)


def test_members_fit_the_parameter_budget_together(tiny_study: optuna.Study) -> None:
    budget = size(ONE).params + size(TWO).params
    tiny_study.add_trial(trained(0.45, WIDE))  # second best, but it does not fit beside ONE
    wide = tiny_study.trials[-1].number
    passed_over: list[str] = []
    chosen = ensemble.distinct_best(tiny_study, 2, budget, passed_over.append)
    assert [t.value for t in chosen] == [0.4, 0.6]
    best = chosen[0].number
    assert passed_over == [
        f"Trial #{wide} ({size(WIDE).params:,} params) is passed over: with it the ensemble would "
        f"hold {size(ONE).params + size(WIDE).params:,}, over the preset's {budget:,}."
    ]
    assert [t.value for t in ensemble.distinct_best(tiny_study, 2)] == [0.4, 0.45]  # unbounded
    with pytest.raises(RetrainError, match="has 3 distinct .* only 2 fit the preset's"):
        ensemble.distinct_best(tiny_study, 3, budget)

    # The best trial itself may be over a budget made smaller since it trained.
    passed_over.clear()
    chosen = ensemble.distinct_best(tiny_study, 1, size(TWO).params, passed_over.append)
    assert [t.value for t in chosen] == [0.6]
    assert passed_over == [
        f"Trial #{best} ({size(ONE).params:,} params) is passed over: it alone is over the "
        f"preset's {size(TWO).params:,}.",
        f"Trial #{wide} ({size(WIDE).params:,} params) is passed over: it alone is over the "
        f"preset's {size(TWO).params:,}.",
    ]


def test_retrain_best_ensemble_saves_one_model_and_records_every_accuracy(
    tiny_study: optuna.Study, private_storage: Path, fashion_dir: Path
) -> None:
    result = run("retrain-best", "--study", "tiny", "--ensemble", "2")
    assert result.exit_code == 0, result.output
    assert "Ensemble of 2 (" in result.output and result.output.count("  member #") == 2
    record = tiny_study.user_attrs["ensemble"]
    members = record["members"]
    assert [m["architecture"] for m in members] == ["C16k3-P-F-D32", "C16k3-P-C32k3-P-GAP-D32"]
    assert all(m["test_accuracy"] > 0.2 for m in members)  # one epoch each; chance is 0.1
    assert record["test_accuracy"] > 0.5 and record["params"] == sum(m["params"] for m in members)
    path = private_storage / "models" / f"tiny-{tiny_study.user_attrs['uid'][:8]}-ensemble2.keras"
    assert record["model_path"] == str(path)
    assert saved.read_manifest(path)["record"] == record  # type: ignore[index]
    model = keras.models.load_model(path)  # one file that takes raw images
    x_test, y_test = datasets.load_test("fashion_mnist", fashion_dir)
    accuracy = float(np.mean(np.argmax(model.predict(x_test, verbose=0), axis=1) == y_test))
    assert accuracy == pytest.approx(record["test_accuracy"], abs=1e-4)
    section = "\n".join(report._ensemble_section(record))
    assert "## Ensemble of 2" in section and "**the ensemble**" in section
    assert record["max_params"] == 400_000  # the tiny preset's
    assert "best distinct trials whose parameters fit 400,000 together" in section
    both = run("retrain-best", "--study", "tiny", "--ensemble", "2", "--trial", "1")
    assert both.exit_code == 2 and "not both" in both.output


def test_an_ensemble_under_final_flips_averages_each_member_over_an_image_and_its_mirror(
    tmp_path: Path, private_storage: Path, fashion_dir: Path
) -> None:
    """Every member trained on mirrors flips, so the saved ensemble answers an image and its
    mirror alike."""
    preset = dataclasses.replace(presets.load_preset(write_preset(tmp_path)), final_flips=True)
    s = study.prepare(preset, url=db_url(private_storage), name="flips").study
    for value, config in ((0.4, ONE), (0.6, TWO)):
        s.add_trial(trained(value, dataclasses.replace(config, augment="flip")))
    result = ensemble.retrain_ensemble(s, preset, 2, out_dir=private_storage, log=lambda _: None)
    assert result.flips and s.user_attrs["ensemble"]["flips"] is True
    assert result.test_accuracy > 0.5  # one epoch each; chance is 0.1
    images, labels = datasets.load_test("fashion_mnist", fashion_dir)
    model = load_model(Path(result.model_path))
    _, accuracy = model.evaluate(images, labels, batch_size=1024, verbose=0)
    assert accuracy == pytest.approx(result.test_accuracy, abs=1e-6)
    mirrored = model.predict(images[:64, :, ::-1], verbose=0)
    np.testing.assert_allclose(model.predict(images[:64], verbose=0), mirrored, atol=1e-5)


def test_a_member_that_retrain_best_saved_is_loaded_not_trained_again(
    tiny_study: optuna.Study, private_storage: Path, fashion_dir: Path
) -> None:
    single = run("retrain-best", "--study", "tiny")
    assert single.exit_code == 0, single.output
    retrained = tiny_study.user_attrs["retrain"]
    result = run("retrain-best", "--study", "tiny", "--ensemble", "2")
    assert result.exit_code == 0, result.output
    assert f"Trial #{retrained['trial']} was retrained by retrain-best" in result.output
    assert result.output.count("Retraining trial #") == 1  # only the second member trains
    first = tiny_study.user_attrs["ensemble"]["members"][0]
    assert first["trial"] == retrained["trial"] and first["epochs"] == retrained["epochs"]
    # The same model, tested again on the same images.
    assert first["test_accuracy"] == pytest.approx(retrained["test_accuracy"], abs=1e-6)

    # A file that no longer holds the trial's network is not trusted: the member trains again.
    ensemble_path = Path(tiny_study.user_attrs["ensemble"]["model_path"])
    Path(retrained["model_path"]).write_bytes(ensemble_path.read_bytes())
    again = run("retrain-best", "--study", "tiny", "--ensemble", "2")
    assert again.exit_code == 0, again.output
    assert again.output.count("Retraining trial #") == 2


def test_members_best_is_the_best_trial_within_the_budget(tiny_study: optuna.Study) -> None:
    chosen = ensemble.copies_of_best(tiny_study, 3)
    assert [t.value for t in chosen] == [0.4, 0.4, 0.4]
    params, best = size(ONE).params, chosen[0].number
    assert len(ensemble.copies_of_best(tiny_study, 2, 2 * params)) == 2
    with pytest.raises(
        RetrainError, match=f"3 copies of trial #{best} .* preset's {2 * params:,}"
    ):
        ensemble.copies_of_best(tiny_study, 3, 2 * params)
    with pytest.raises(RetrainError, match="; pass --ensemble 2 or fewer.$"):
        ensemble.copies_of_best(tiny_study, 3, 2 * params + 1)
    with pytest.raises(RetrainError, match="no two copies fit, so pass --members distinct.$"):
        ensemble.copies_of_best(tiny_study, 2, 2 * params - 1)


def test_members_best_trains_the_best_trial_with_successive_seeds(
    tiny_study: optuna.Study, private_storage: Path, fashion_dir: Path
) -> None:
    alone = run("retrain-best", "--study", "tiny", "--members", "best")
    assert alone.exit_code == 2 and "--members goes with --ensemble" in alone.output
    single = run("retrain-best", "--study", "tiny")
    assert single.exit_code == 0, single.output
    retrained = tiny_study.user_attrs["retrain"]
    best = retrained["trial"]
    result = run("retrain-best", "--study", "tiny", "--ensemble", "2", "--members", "best")
    assert result.exit_code == 0, result.output
    # The first member is retrain-best's model, with the trial's seed; the second trains.
    assert f"Trial #{best} was retrained by retrain-best" in result.output
    assert result.output.count("Retraining trial #") == 1 and "seed 6." in result.output
    record = tiny_study.user_attrs["ensemble_best"]
    assert "ensemble" not in tiny_study.user_attrs  # a distinct ensemble's record is its own
    assert [(m["trial"], m["seed"]) for m in record["members"]] == [(best, 5), (best, 6)]
    first = record["members"][0]
    assert first["test_accuracy"] == pytest.approx(retrained["test_accuracy"], abs=1e-6)
    assert all(m["test_accuracy"] > 0.2 for m in record["members"])  # chance is 0.1
    assert record["members_of"] == "best" and record["params"] == 2 * size(ONE).params
    uid = tiny_study.user_attrs["uid"]
    path = private_storage / "models" / f"tiny-{uid[:8]}-ensemble2-best.keras"
    assert record["model_path"] == str(path)
    model = keras.models.load_model(path)
    one, two = (model.get_layer(f"member_{i}").get_weights()[0] for i in (1, 2))
    assert one.shape == two.shape and not np.allclose(one, two)  # two seeds, two networks
    text = "\n".join(report._ensemble_section(record))
    assert "## Ensemble of 2 seeds" in text
    assert "The best trial, trained 2 times with 2 seeds (its copies fit 400,000" in text
    assert f"trial #{best} `C16k3-P-F-D32`, seed 6" in text


def test_studies_of_one_name_in_two_storages_never_share_a_saved_model(
    tmp_path: Path, private_storage: Path, fashion_dir: Path
) -> None:
    """Before, both wrote storage/models/tiny-trial1.keras: b's retrain replaced a's file, and
    a's ensemble then averaged b's network into a's result."""
    preset = presets.load_preset(write_preset(tmp_path))
    made = []
    for folder, seed in (("a", 5), ("b", 6)):
        url = f"sqlite:///{tmp_path / folder / 'search.db'}"
        s = study.prepare(preset, url=url, name="tiny").study
        for value, config in ((0.5, ONE), (0.4, ONE), (0.6, TWO)):
            s.add_trial(trained(value, config, seed=seed))
        made.append((s, url))
    (a, a_url), (b, b_url) = made
    best = a.trials[-2].number  # val_loss 0.4, in both storages
    for url, more in ((a_url, []), (b_url, ["--trial", str(best)])):
        retrained = run("retrain-best", "--storage", url, "--study", "tiny", *more)
        assert retrained.exit_code == 0, retrained.output
    a_path, b_path = (Path(s.user_attrs["retrain"]["model_path"]) for s in (a, b))
    assert a_path != b_path and a_path.is_file() and b_path.is_file()
    assert saved.read_manifest(a_path)["uid"] == a.user_attrs["uid"]  # type: ignore[index]

    seeds_of_best = ("--study", "tiny", "--ensemble", "2", "--members", "best")
    result = run("retrain-best", "--storage", a_url, *seeds_of_best)
    assert result.exit_code == 0, result.output
    assert f"Trial #{best} was retrained by retrain-best" in result.output  # a's own, reused
    first = a.user_attrs["ensemble_best"]["members"][0]
    assert first["test_accuracy"] == pytest.approx(
        a.user_attrs["retrain"]["test_accuracy"], abs=1e-6
    )

    # b's file copied over a's by hand is refused with one sentence, and the member trains.
    a_path.write_bytes(b_path.read_bytes())
    saved.manifest_path(a_path).write_bytes(saved.manifest_path(b_path).read_bytes())
    again = run("retrain-best", "--storage", a_url, *seeds_of_best)
    assert again.exit_code == 0, again.output
    assert f"{a_path} is not used: it was saved for study 'tiny' in sqlite:///" in again.output
    assert again.output.count("Retraining trial #") == 2
