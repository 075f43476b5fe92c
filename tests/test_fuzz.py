"""Random junk presets and storage URLs: the CLI never crashes and never touches a study."""

from __future__ import annotations

import os
from pathlib import Path

import optuna
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.helpers import run

KEYS = [
    "dataset",
    "trials",
    "val_size",
    "train_size",
    "epochs",
    "patience",
    "seed",
    "pruner",
    "max_params",
    "max_mflops",
    "steps_per_execution",
    "hours",
    "final_epochs",
    "pruner_ratio",
    "description",
    "junk",
]
AXES = [
    "conv_layers",
    "filters",
    "kernel",
    "pool",
    "dropout",
    "dropout_rate",
    "dense_layers",
    "dense_units",
    "learning_rate",
    "optimizer",
    "batchnorm",
    "padding",
    "augment",
    "batch_size",
    "nonsense",
]

scalars = st.one_of(
    st.integers(-(10**12), 10**12),
    st.floats(),  # NaN, the infinities and 1e308 among them: TOML writes nan and inf
    st.booleans(),
    st.text(max_size=12),
    st.sampled_from(["fashion_mnist", "mnist", "sha"]),
)
values = st.one_of(scalars, st.lists(scalars, max_size=4))


def toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.encode("unicode_escape").decode().replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return repr(value)


@st.composite
def presets(draw: st.DrawFn) -> str:
    if draw(st.booleans()):
        return draw(st.text(max_size=200))  # not TOML at all, most of the time
    top = draw(st.dictionaries(st.sampled_from(KEYS), values, max_size=8))
    top.setdefault("dataset", "fashion_mnist")
    space = draw(st.dictionaries(st.sampled_from(AXES), values, max_size=6))
    lines = [f"{k} = {toml_value(v)}" for k, v in top.items()]
    lines.append("[space]")
    lines += [f"{k} = {toml_value(v)}" for k, v in space.items()]
    if draw(st.booleans()):
        convs = draw(st.lists(st.lists(scalars, max_size=4), max_size=3))
        lines += [
            "[[baseline]]",
            f"convs = {toml_value(convs)}",
            f"dense = {toml_value(draw(st.lists(scalars, max_size=2)))}",
        ]
    return "\n".join(lines)


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, list[object]]:
    """A study with trials, made without training, that no junk may change."""
    from search.define import presets as presets_mod

    folder = tmp_path_factory.mktemp("fuzz")
    url = f"sqlite:///{folder / 'search.db'}"
    study = optuna.create_study(study_name="kept", storage=url)
    study.set_user_attr("preset", presets_mod.load_preset("demo").to_json())
    study.set_user_attr("dataset", "fashion_mnist")
    for value in (0.5, 0.4):
        study.add_trial(optuna.trial.create_trial(value=value, params={}, distributions={}))
    return url, snapshot(url)


def snapshot(url: str) -> list[object]:
    study = optuna.load_study(study_name="kept", storage=url)
    return [study.user_attrs, *[(t.number, t.state, t.value) for t in study.trials]]


def assert_clean(result: object, url: str, before: list[object]) -> None:
    assert result.exit_code in (1, 2), result.output  # type: ignore[attr-defined]
    assert isinstance(result.exception, SystemExit), result.output  # type: ignore[attr-defined]
    assert "Traceback" not in result.output  # type: ignore[attr-defined]
    assert snapshot(url) == before


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(text=presets())
def test_junk_presets(
    text: str, stored: tuple[str, list[object]], tmp_path_factory: pytest.TempPathFactory
) -> None:
    url, before = stored
    path = tmp_path_factory.mktemp("preset") / "junk.toml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    # The study exists with the demo preset: any parsable junk is refused as another space.
    result = run(
        "start", "--preset", str(path), "--study", "kept", "--storage", url, "--trials", "1"
    )
    assert_clean(result, url, before)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    junk=st.one_of(
        st.text(max_size=60),
        st.builds(
            lambda scheme, rest: f"{scheme}://{rest}",
            st.sampled_from(["sqlite", "sqlite+pysqlite", "postgresql", "mysql", "http", ""]),
            st.text(max_size=40),
        ),
    )
)
def test_junk_storage_urls(junk: str, stored: tuple[str, list[object]], tmp_path: Path) -> None:
    url, before = stored
    cwd = os.getcwd()
    os.chdir(tmp_path)  # a relative junk path must not leave a database file here either
    try:
        for command in ("status", "retrain-best"):
            result = run(command, "--storage", junk, "--study", "kept")
            if junk == url:
                continue
            assert_clean(result, url, before)
        assert list(tmp_path.iterdir()) == []
    finally:
        os.chdir(cwd)
