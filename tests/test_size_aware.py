"""Size-aware search: a parameter budget on the command line, and the multi-objective mode."""

from __future__ import annotations

from pathlib import Path

from optuna.trial import TrialState

from tests.helpers import load_study, run


def test_max_params_prunes_larger_networks_untrained_and_keeps_pruning(
    tiny_preset: Path, private_storage: Path, fashion_dir: Path
) -> None:
    result = run("start", "--preset", str(tiny_preset), "--trials", "2", "--max-params", "50000")
    assert result.exit_code == 0, result.output
    lab9, starved = load_study(private_storage).trials[:2]
    assert lab9.state == TrialState.PRUNED and not lab9.intermediate_values
    assert "347,146 parameters exceed the budget of 50,000" in lab9.user_attrs["reason"]
    assert starved.user_attrs["params"] < 50_000 and starved.intermediate_values
    assert "pruner sha" in result.output  # the pruner on val_loss is still on


def test_multi_objective_search_shows_a_pareto_front_and_retrains_any_trial(
    tiny_preset: Path, private_storage: Path, fashion_dir: Path
) -> None:
    result = run(
        "start", "--preset", str(tiny_preset), "--trials", "3", "--objective", "val_loss+params"
    )
    assert result.exit_code == 0, result.output
    assert "no pruning" in result.output
    study = load_study(private_storage)
    assert len(study.directions) == 2 and study.metric_names == ["val_loss", "params"]
    done = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(done) >= 2
    for trial in done:  # nothing pruned on val_loss: each trained to early stopping or its end
        assert trial.values[1] == trial.user_attrs["params"]
        assert trial.values[0] == trial.user_attrs["val_loss"]
        assert trial.user_attrs["epochs_trained"] in (2, 3)

    status = run("status", "--study", "tiny")
    assert "Pareto front" in status.output
    front = {t.number for t in study.best_trials}
    for number in front:
        assert f"  #{number} " in status.output
    # The smallest network on the front is a size-aware pick: retrain it by number.
    smallest = min(study.best_trials, key=lambda t: t.values[1])
    result = run("retrain-best", "--study", "tiny", "--trial", str(smallest.number))
    assert result.exit_code == 0, result.output
    assert load_study(private_storage).user_attrs["retrain"]["trial"] == smallest.number

    result = run("report", "--study", "tiny")  # the report reads val_loss, the first objective
    assert result.exit_code == 0, result.output
    assert (private_storage / "reports" / "tiny" / "optimization_history.png").is_file()

    # Resuming without --objective keeps the study's own; switching it is refused, not mixed.
    result = run("start", "--preset", str(tiny_preset))
    assert result.exit_code == 0 and "no pruning" in result.output, result.output
    result = run("start", "--preset", str(tiny_preset), "--objective", "val_loss")
    assert result.exit_code == 1 and "different preset or search space" in result.output
