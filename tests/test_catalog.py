"""Where presets are found: the shipped ones, then a user's ./studies/; `search presets`.

That an installed wheel finds its shipped presets without the source tree is in
test_packaging.py; reading and checking a preset's file is in test_presets.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from search.define import catalog, presets
from search.define.presets import PresetError
from tests.helpers import run, write_preset

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The current directory is a folder with a ./studies/ of the user's own presets."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "studies").mkdir()
    return tmp_path / "studies"


def test_from_a_checkout_the_shipped_presets_are_its_studies_folder(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The wheel carries the same files as search/studies/ (pyproject.toml's package-dir).
    assert catalog.shipped_dir() == ROOT / "studies"
    monkeypatch.chdir(ROOT)  # there ./studies is the shipped folder itself: listed once
    assert [(f.name, f.source, f.hides_shipped) for f in catalog.available()] == [
        ("demo", "shipped", False),
        ("fashion_mnist", "shipped", False),
        ("mnist", "shipped", False),
    ]


def test_a_name_finds_the_current_directory_s_studies_before_a_shipped_preset(
    elsewhere: Path,
) -> None:
    write_preset(elsewhere, name="mine")
    write_preset(elsewhere, name="demo")  # the tiny preset under a shipped preset's name
    found = {f.name: f for f in catalog.available()}
    assert sorted(found) == ["demo", "fashion_mnist", "mine", "mnist"]
    assert (found["mine"].source, found["mine"].hides_shipped) == ("./studies", False)
    assert (found["demo"].source, found["demo"].hides_shipped) == ("./studies", True)
    assert found["mnist"].source == "shipped"
    assert presets.load_preset("mine").name == "mine"
    assert presets.load_preset("demo").epochs == 3  # the user's file, not the shipped 4 epochs
    assert presets.load_preset(catalog.shipped_dir() / "demo.toml").epochs == 4  # still by path


def test_an_unknown_name_lists_what_a_name_can_find(elsewhere: Path) -> None:
    write_preset(elsewhere, name="mine")
    with pytest.raises(PresetError) as raised:
        presets.load_preset("nosuch")
    assert str(raised.value) == (
        "No preset named 'nosuch' in ./studies/ or among the shipped ones; known presets: "
        "demo, fashion_mnist, mine, mnist."
    )


def test_search_presets_lists_each_preset_its_source_and_its_description(
    elsewhere: Path,
) -> None:
    write_preset(elsewhere, name="mine", **{"trials = 4": 'description = "My own"\ntrials = 4'})
    write_preset(elsewhere, name="demo")
    (elsewhere / "broken.toml").write_text("trials = [")
    result = run("presets")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["NAME", "FROM", "DESCRIPTION"]
    rows = {line.split()[0]: line.split(maxsplit=2)[1:] for line in lines[1:-1]}
    assert list(rows) == ["broken", "demo", "fashion_mnist", "mine", "mnist"]
    assert rows["mine"] == ["./studies", "My own"]
    assert rows["demo"] == ["./studies", "(in place of the shipped one)"]
    assert rows["fashion_mnist"] == ["shipped", presets.load_preset("fashion_mnist").description]
    assert rows["broken"][0] == "./studies" and "(cannot be read:" in rows["broken"][1]
    assert lines[-1].startswith(f"Shipped presets are in {ROOT / 'studies'}; copy one into")
    assert "search presets" in run("start", "--help").output  # --preset points to it
