"""The ladder: each trial's first looks are complete short runs, judged by the pruner rung by
rung; the trials that climb train their full run. Real trials on real Fashion-MNIST."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from search.define import presets
from search.report.analysis import savings, table_trials
from search.run import sizing
from search.run.objective import rung_step
from search.store import study
from search.store.pruners import Ladder
from search.store.trials import finished, trained
from tests.helpers import load_study, run, write_preset

# One rung before the full run: a quarter of the 2,000 training images ("small"), one epoch.
LADDER = {"epochs = 3": "epochs = 3\nrungs = [{ share = 0.25, epochs = 1 }]"}


def test_a_trial_climbs_its_rungs_or_stops_there_and_only_a_full_run_completes(
    tmp_path: Path, private_storage: Path, fashion_dir: Path
) -> None:
    preset = write_preset(tmp_path, "small", **LADDER)
    result = run("start", "--preset", str(preset), "--trials", "6")
    assert result.exit_code == 0, result.output
    trials = load_study(private_storage).get_trials()
    by_state = {s: [t for t in trials if t.state == s] for s in TrialState}
    assert by_state[TrialState.COMPLETE] and by_state[TrialState.PRUNED]
    for t in by_state[TrialState.COMPLETE] + by_state[TrialState.PRUNED]:
        if "reason" in t.user_attrs and t.user_attrs["reason"]:
            continue  # rejected before training: no rung
        (rung,) = t.user_attrs["rungs"]  # validated on the whole validation split
        assert (rung["share"], rung["epochs"]) == (0.25, 1)
        assert t.intermediate_values == {1: pytest.approx(rung["val_loss"])}
    # The lab's run goes first and climbs; the starved baseline (8 filters, learning rate
    # 1e-4) trails it at the first rung and stops there, after its one epoch on 500 images.
    first, starved = trials[0], trials[1]
    assert first.state == TrialState.COMPLETE
    assert starved.user_attrs["baseline"] == "starved" and starved.state == TrialState.PRUNED
    assert starved.user_attrs["epochs_trained"] == 1
    # A completed trial's value and record are its full run's, three epochs on all images.
    full = first.user_attrs
    assert full["epochs_trained"] == 3 and len(full["curves"]["val_loss"]) == 3
    assert first.value == pytest.approx(full["val_loss"])
    assert full["val_accuracy"] > 0.6 > full["rungs"][0]["val_accuracy"] > 0.3  # chance: 0.1
    assert "trial 0 rung 1/2 epoch 1/1: val_loss" in result.output
    assert "trial 0 rung 2/2 epoch 3/3: val_loss" in result.output
    assert "(#1) PRUNED after rung 1: val_loss " in result.output
    assert "(25% of the images, 1 epochs)" in result.output
    # What the rungs saved: the full runs never begun, at least 1 + patience epochs each.
    stopped = [t for t in trials if t.state == TrialState.PRUNED and t.user_attrs.get("rungs")]
    saved = savings(load_study(private_storage), presets.load_preset(preset))
    assert saved.pruned == len(stopped) > 0
    assert (saved.at_least, saved.at_most) == (2 * len(stopped), 3 * len(stopped))


def test_rung_k_reports_where_the_pruners_rung_k_judges(tmp_path: Path) -> None:
    two = {
        "epochs = 3": (
            "epochs = 9\nrungs = [{ share = 0.2, epochs = 1 }, { share = 0.5, epochs = 2 }]"
        )
    }
    for pruner, kind in (
        ("sha", optuna.pruners.SuccessiveHalvingPruner),
        ("hyperband", optuna.pruners.HyperbandPruner),
    ):
        preset = presets.load_preset(write_preset(tmp_path, pruner=pruner, **two))
        assert [rung_step(preset, k) for k in range(2)] == [1, 3]
        made = study.pruner(preset)
        assert isinstance(made, kind)
        if isinstance(made, optuna.pruners.HyperbandPruner):
            assert (made._min_resource, made._max_resource) == (1, 3)
        else:
            assert made._min_resource == 1 and made._reduction_factor == 3
    ladder = study.pruner(presets.load_preset(write_preset(tmp_path, pruner="asha", **two)))
    assert isinstance(ladder, Ladder) and (ladder.steps, ladder.reduction) == ([1, 3], 3)


def test_a_preset_without_rungs_keeps_the_fingerprint_studies_stored(tmp_path: Path) -> None:
    preset = presets.load_preset(write_preset(tmp_path))
    stored = json.loads(preset.to_json())
    del stored["rungs"]  # a study created before ladders existed
    old = presets.from_json(json.dumps(stored))
    assert old == preset and old.fingerprint() == preset.fingerprint()
    laddered = presets.load_preset(write_preset(tmp_path, name="ladder", **LADDER))
    assert laddered.rungs == (presets.Rung(share=0.25, epochs=1),)
    assert presets.from_json(laddered.to_json()) == laddered
    assert laddered.differences(preset) == ["rungs"]


def test_on_asha_the_first_trials_wait_for_peers_and_the_best_climbs_on_later(
    tmp_path: Path, private_storage: Path, fashion_dir: Path
) -> None:
    # The known-good start comes first, then the lab's two runs, then sampled trials; on
    # Optuna's successive halving the start would climb unjudged, being first at its rung.
    preset = write_preset(tmp_path, "small", "started", pruner="asha", **LADDER)
    result = run("start", "--preset", str(preset), "--trials", "6")
    assert result.exit_code == 0, result.output
    s = load_study(private_storage)
    trials = s.get_trials()
    start, lab, starved = trials[:3]
    assert "start" in start.user_attrs and "baseline" in lab.user_attrs
    # No trial climbs before three have reached the rung: the first two stop there, waiting.
    assert start.state == lab.state == TrialState.PRUNED
    assert start.user_attrs["epochs_trained"] == lab.user_attrs["epochs_trained"] == 1
    # The start's peers made it one of the best: a continuation took its rung over, with its
    # kind and seed, and trained its full run, which completed.
    (climb,) = [t for t in trials if t.user_attrs.get("resumes") == start.number]
    assert climb.state == TrialState.COMPLETE and climb.user_attrs["start"] == "known good"
    assert climb.user_attrs["origin"] == start.number
    assert climb.user_attrs["seed"] == start.user_attrs["seed"]
    assert climb.params == start.params
    (carried,) = climb.user_attrs["rungs"]
    assert carried == {**start.user_attrs["rungs"][0], "from": start.number}
    assert climb.intermediate_values == start.intermediate_values  # not trained again
    assert climb.user_attrs["epochs_trained"] == 3 and climb.user_attrs["val_accuracy"] > 0.6
    assert f"(#{climb.number}, continuing #{start.number}) COMPLETE" in result.output
    assert f"trial #{start.number} is now among the best at rung 1" in result.output
    # The total counts configurations: six first looks, however many climbed on.
    first_looks = [t for t in trials if "resumes" not in t.user_attrs]
    assert finished(s) == 6 == sum(trained(t) for t in first_looks)
    # One full run at most for each configuration, and not every configuration earned one.
    completed = [
        t.user_attrs.get("origin", t.number) for t in trials if t.state == TrialState.COMPLETE
    ]
    assert len(completed) == len(set(completed)) < 6
    # Reports follow each climb to its latest trial: the start's first look saved nothing,
    # since its full run did train, and a lab run that climbed on is listed once, as the climb.
    climbed = {int(t.user_attrs["resumes"]) for t in trials if "resumes" in t.user_attrs}
    waited = [t for t in trials if t.state == TrialState.PRUNED and t.user_attrs.get("rungs")]
    assert (
        savings(s, presets.load_preset(preset)).pruned
        == len([t for t in waited if t.number not in climbed])
        < len(waited)
    )
    listed = {t.number for t in table_trials(s)}
    assert not listed & climbed and climb.number in listed


def test_a_climb_due_after_the_total_is_run_by_a_fresh_worker_and_by_a_rerun(
    tmp_path: Path, private_storage: Path, fashion_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Three first looks and the worker retires (its limit) before it can queue the climb
    # that the third one's peers made due: the climb outlasts the total, so it is replaced.
    preset = write_preset(tmp_path, "small", "started", pruner="asha", **LADDER)
    monkeypatch.setenv(sizing.ENV_RECYCLE_TRIALS, "3")
    result = run("start", "--preset", str(preset), "--trials", "3")
    assert result.exit_code == 0, result.output
    assert "retired after 3 trials (its limit)" in result.output
    s = load_study(private_storage)
    trials = s.get_trials()
    assert finished(s) == 3 and len(trials) == 4
    (climb,) = [t for t in trials if "resumes" in t.user_attrs]
    assert climb.state == TrialState.COMPLETE and climb.user_attrs["val_accuracy"] > 0.6
    holders = [t.user_attrs["worker"] for t in trials]
    assert holders[0] == holders[2] != holders[3]
    # Done: a rerun finds nothing left, neither configurations nor climbs.
    again = run("start", "--preset", str(preset), "--trials", "3")
    assert again.exit_code == 0 and "nothing to do" in again.output
    assert len(load_study(private_storage).get_trials()) == 4
