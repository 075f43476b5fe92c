"""Packaging: the wheel carries the shipped presets, and an installed `search` runs anywhere.

The wheel is built as a user builds it (`pip wheel`) from the files the Dockerfile copies, and
installed into a fresh virtual environment outside the checkout, with PYTHONPATH unset and
another current directory, so nothing of the source tree is in reach. Its dependencies
(TensorFlow and the rest) are this interpreter's, through a .pth file, not downloaded again.
About 40 s on two cores: the wheel's build (with pip's own isolated setuptools) and one
`search start` that loads TensorFlow and the data.
"""

from __future__ import annotations

import os
import re
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ["pyproject.toml", "README.md", "search", "studies"]  # what the image is built from


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built from a copy of the sources (setuptools' build/ stays out of the tree)."""
    source = tmp_path_factory.mktemp("source")
    skip = shutil.ignore_patterns("__pycache__")
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=skip)
        else:
            shutil.copy(ROOT / name, source / name)
    out = tmp_path_factory.mktemp("wheel")
    pip = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(source)]
    subprocess.run(pip, check=True, capture_output=True, text=True)
    (built,) = out.glob("search-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment outside the checkout with the wheel installed; its bin/."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    # Only the dependencies: a path in a .pth file is not a site folder, so this environment's
    # own .pth files (the editable install of the checkout among them) are not run there.
    Path(purelib, "dependencies.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    install = [sys.executable, "-m", "pip", "--python", str(python), "install", "-q"]
    subprocess.run([*install, "--no-deps", str(wheel)], check=True, capture_output=True)
    return venv / "bin"


def outside(bin_dir: Path, folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """A command of the installed environment, run in `folder` without PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["SEARCH_DIR"] = str(folder / "storage")
    return subprocess.run(
        [str(bin_dir / args[0]), *args[1:]],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_the_wheel_carries_the_shipped_presets_and_no_more(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    shipped = sorted(n for n in names if n.startswith("search/studies/"))
    assert shipped == [f"search/studies/{p.name}" for p in sorted(ROOT.glob("studies/*.toml"))]
    assert len(shipped) == 3  # demo, fashion_mnist, mnist; not RESULTS.md
    assert "search/cli/commands.py" in names and "search/define/catalog.py" in names
    assert not [n for n in names if n.startswith("tests/") or n.endswith(".md")]


def test_an_installed_wheel_lists_and_starts_a_shipped_preset_from_anywhere(
    installed: Path, tmp_path: Path, fashion_dir: Path
) -> None:
    where = outside(installed, tmp_path, "python", "-c", "import search; print(search.__file__)")
    assert where.returncode == 0, where.stderr
    assert where.stdout.startswith(str(installed.parent)) and str(ROOT) not in where.stdout

    listed = outside(installed, tmp_path, "search", "presets")
    assert listed.returncode == 0, listed.stderr
    rows = [line.split()[:2] for line in listed.stdout.splitlines()[1:-1]]
    assert rows == [["demo", "shipped"], ["fashion_mnist", "shipped"], ["mnist", "shipped"]]
    assert re.search(r"Shipped presets are in \S+/site-packages/search/studies;", listed.stdout)

    # The demo preset as shipped, with a budget of a few milliseconds: the study is made and
    # the data read, and the time is up before 20,000 images train for 4 epochs.
    started = outside(
        installed,
        tmp_path,
        "search",
        "start",
        "--preset",
        "demo",
        "--trials",
        "1",
        "--hours",
        "0.000001",
        "--data-dir",
        str(fashion_dir),
    )
    assert started.returncode == 0, started.stdout + started.stderr
    assert "Study 'demo' (new): 1 trials, preset demo" in started.stdout
    assert "Data: 20,000 training and 2,000 validation images" in started.stdout
    assert "Time is up with 0 of 1 trials trained" in started.stdout
    study = optuna.load_study(
        study_name="demo", storage=f"sqlite:///{tmp_path / 'storage' / 'search.db'}"
    )
    assert study.user_attrs["preset_name"] == "demo" and study.user_attrs["trials"] == 1
    assert [t.state for t in study.get_trials()][0] == TrialState.WAITING  # the lab's run, queued


def test_the_image_installs_the_wheel_not_the_source_tree() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "pip wheel" in dockerfile and "pip install -e" not in dockerfile
    copied = re.findall(r"^COPY (.+) \S+$", dockerfile, flags=re.M)
    assert sorted(" ".join(copied).split()) == sorted(SOURCES)  # what the wheel here is built from
