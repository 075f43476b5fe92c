"""`search report` on a real tiny study: every figure a real image, REPORT.md its numbers."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
import pytest
from matplotlib.image import imread
from optuna.trial import TrialState

from search.report import document as report
from search.report import figures
from search.store.study import stored_preset
from tests.helpers import preset_text, run

RECORDING: list[str] | None = None


def _audit(event: str, args: tuple[object, ...]) -> None:
    if RECORDING is not None and event == "open" and isinstance(args[0], str | bytes | Path):
        RECORDING.append(str(args[0]))


sys.addaudithook(_audit)  # records the files this process opens while RECORDING is a list


@dataclass(frozen=True)
class Tiny:
    url: str
    before: Path  # the report written before retrain-best
    opened_before: list[str]
    after: Path  # the report written after it
    output_after: str

    def study(self) -> optuna.Study:
        return optuna.load_study(study_name="tiny", storage=self.url)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory, fashion_dir: Path) -> Tiny:
    """Five trials, reported on, retrained, and reported on again; shared by this module.

    The starved baseline goes first here, so the sound one beats it at every rung and both
    complete (importances need two); the pruner then stops the random trials that trail them.
    """
    global RECORDING
    folder = tmp_path_factory.mktemp("report")
    head, sound, starved = preset_text().split("[[baseline]]")
    preset = folder / "tiny.toml"
    preset.write_text(head + "[[baseline]]" + starved + "\n[[baseline]]" + sound)
    url = f"sqlite:///{folder / 'search.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SEARCH_DIR", str(folder))  # models go here, not into ./storage
        mp.delenv("SEARCH_STORAGE", raising=False)
        result = run("start", "--preset", str(preset), "--trials", "5", "--storage", url)
        assert result.exit_code == 0, result.output
        RECORDING = []
        try:
            result = run(
                "report", "--study", "tiny", "--storage", url, "--out", str(folder / "before")
            )
            opened = RECORDING
        finally:
            RECORDING = None
        assert result.exit_code == 0, result.output
        result = run("retrain-best", "--study", "tiny", "--storage", url)
        assert result.exit_code == 0, result.output
        after = run("report", "--study", "tiny", "--storage", url)  # the default folder
        assert after.exit_code == 0, after.output
    return Tiny(
        url=url,
        before=folder / "before",
        opened_before=opened,
        after=folder / "reports" / "tiny",
        output_after=after.output,
    )


def assert_image(path: Path) -> None:
    assert path.is_file(), f"{path.name} is missing"
    pixels = imread(path)  # a PNG that does not decode fails here
    height, width = pixels.shape[:2]
    assert 300 <= height <= 3000 and 400 <= width <= 4000, (path.name, pixels.shape)
    assert float(np.var(pixels[..., :3])) > 0.001, f"{path.name} is blank"


def test_before_retraining_only_the_search_is_drawn_and_the_test_set_is_not_read(
    tiny: Tiny,
) -> None:
    for name in figures.SEARCH_FIGURES:
        assert_image(tiny.before / name)
    for name in figures.FINAL_FIGURES:
        assert not (tiny.before / name).exists()
    text = (tiny.before / "REPORT.md").read_text()
    assert "Not retrained yet: run `search retrain-best --study tiny`" in text
    assert "90.70 %" in text  # the lab's figure, to beat
    assert any(p.endswith(".png") for p in tiny.opened_before)  # the hook does see files
    assert not [p for p in tiny.opened_before if "t10k" in p]


def test_the_report_draws_every_figure_and_states_the_study_s_numbers(tiny: Tiny) -> None:
    study = tiny.study()
    trials = study.get_trials()
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    # What makes every figure drawable here, checked rather than assumed.
    assert len(done) >= 2 and len({tuple(sorted(t.params.items())) for t in done}) >= 2
    assert "Wrote " in tiny.output_after and "not drawn" not in tiny.output_after
    for name in figures.SEARCH_FIGURES + figures.FINAL_FIGURES:
        assert_image(tiny.after / name)

    text = (tiny.after / "REPORT.md").read_text()
    for name in figures.SEARCH_FIGURES + figures.FINAL_FIGURES:
        assert f"]({name})" in text  # the figures sit beside it
    best = min(done, key=lambda t: t.value)  # type: ignore[arg-type,return-value]
    assert f"**Best trial: #{best.number}** `{best.user_attrs['architecture']}`" in text
    assert f"val_loss {best.value:.4f}" in text

    # One table row per lab run, with its numbers from the study.
    for t in trials:
        if "baseline" in t.user_attrs:
            a = t.user_attrs
            line = next(
                line
                for line in text.splitlines()
                if line.startswith(f"| lab: {a['baseline']} (#{t.number})")
            )
            assert f"| {a['val_loss']:.4f} |" in line
            assert f"| {a['val_accuracy']:.2%} |".replace("%", " %") in line
            assert f"| {a['params']:,} |" in line
            assert f"| {a['epochs_trained']} (best {a['best_epoch']}) |" in line
    assert "| lab: lab test 9 (#1) | 1 | 32 | 3x3 | after conv 1 | none | 64 |" in text

    # Pruning's saving, from its definition: a pruned trial could have run to the epoch limit.
    preset = stored_preset(study)
    pruned = [
        t
        for t in trials
        if t.state == TrialState.PRUNED
        and "reason" not in t.user_attrs
        and t.user_attrs.get("epochs_trained")
    ]
    assert pruned, "the pruner stopped no trial, so this test would check nothing"
    at_most = sum(preset.epochs - t.user_attrs["epochs_trained"] for t in pruned)
    trained = sum(t.user_attrs.get("epochs_trained", 0) for t in trials)
    assert f"The pruner stopped **{len(pruned)} trial" in text
    assert f"**{at_most} epoch" in text and f"the study trained {trained} epochs" in text

    retrained = study.user_attrs["retrain"]
    assert (
        f"| this study's final model | **{retrained['test_accuracy']:.2%}".replace("%", " %")
        in text
    )
    assert "| the lab's final model | 90.70 % |" in text
    delta = (retrained["test_accuracy"] - 0.9070) * 100
    assert f"That is {delta:+.2f} points against the lab" in text
    assert "now, not the recorded" not in text  # the saved model still scores what it did


def test_a_small_study_skips_what_it_cannot_draw_and_says_why(tiny: Tiny, tmp_path: Path) -> None:
    # One complete and one pruned trial of the shared study, copied into a new study.
    trials = tiny.study().get_trials()
    small = optuna.create_study(study_name="small", direction="minimize")
    small.set_user_attr("preset", tiny.study().user_attrs["preset"])
    small.add_trials(
        [
            next(t for t in trials if t.state == state)
            for state in (TrialState.COMPLETE, TrialState.PRUNED)
        ]
    )
    assert [t.state for t in small.get_trials()].count(TrialState.COMPLETE) == 1

    written = report.write_report(small, stored_preset(small), tmp_path, log=lambda line: None)
    assert {p.name for p in written.figures} == {
        figures.HISTORY,
        figures.INTERMEDIATE,
        figures.SIZE,
    }
    for path in written.figures:
        assert_image(path)
    text = written.markdown.read_text()
    assert (
        "`param_importances.png` is not drawn: parameter importances need at least 2 "
        "completed trials; this study has 1."
    ) in text
    assert "`parallel_coordinate.png` is not drawn" in text
    assert "`confusion_matrix.png` is not drawn: the study has not been retrained" in text


def test_report_refuses_a_study_that_is_not_there(private_storage: Path, tiny: Tiny) -> None:
    result = run("report", "--study", "nothing")
    assert result.exit_code == 1 and "No study database" in result.output
    assert not (private_storage / "search.db").exists()  # a read-only command creates nothing
    result = run("report", "--study", "nothing", "--storage", tiny.url)
    assert result.exit_code == 1 and "No study named 'nothing'" in result.output
    assert "Traceback" not in result.output
