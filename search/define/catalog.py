"""Where presets are found: the ones shipped with the package, and a user's own in ./studies/.

`search start --preset NAME` finds its file here and presets.py reads it; `search presets` lists
what a name can find.
"""

from __future__ import annotations

import importlib.resources
import tomllib
from dataclasses import dataclass, replace
from pathlib import Path

from search.errors import first_line

# A wheel carries studies/*.toml as search/studies/ (package-dir in pyproject.toml); a source
# checkout (an editable install, or PYTHONPATH) has them in studies/ beside the package.
_CHECKOUT_DIR = Path(__file__).resolve().parents[2] / "studies"
LOCAL_DIR = Path("studies")  # a user's own presets, under the current directory
SHIPPED = "shipped"


def shipped_dir() -> Path:
    """The folder of the presets that come with the package."""
    packaged = importlib.resources.files("search").joinpath("studies")
    if isinstance(packaged, Path) and packaged.is_dir():
        return packaged
    return _CHECKOUT_DIR


@dataclass(frozen=True)
class Found:
    """A preset file that a name finds, and where it comes from."""

    name: str
    path: Path
    source: str  # SHIPPED, or "./studies" for the current directory's
    hides_shipped: bool = False  # a file in ./studies/ that has a shipped preset's name


def available() -> list[Found]:
    """Every preset a name finds, by name: ./studies/NAME.toml before a shipped NAME."""
    shipped = shipped_dir()
    folders = [(shipped, SHIPPED)]
    # From a source checkout's root, ./studies is the shipped folder itself: list it once.
    if LOCAL_DIR.is_dir() and LOCAL_DIR.resolve() != shipped.resolve():
        folders.insert(0, (LOCAL_DIR, f"./{LOCAL_DIR}"))
    found: dict[str, Found] = {}
    for folder, source in folders:
        for path in sorted(folder.glob("*.toml")):
            if path.stem in found:
                found[path.stem] = replace(found[path.stem], hides_shipped=True)
            else:
                found[path.stem] = Found(path.stem, path, source)
    return sorted(found.values(), key=lambda f: f.name)


def find(name: str) -> Path | None:
    """The file that preset `name` is read from, or None."""
    return next((f.path for f in available() if f.name == name), None)


def known() -> str:
    """The names a preset can be asked for, for error messages."""
    return ", ".join(f.name for f in available()) or "none"


def lines() -> list[str]:
    """`search presets`: a preset a line, with where it comes from and its description."""
    found = available()
    width = max([len(f.name) for f in found] + [len("NAME")])
    rows = [f"{'NAME':<{width}}  {'FROM':<9}  DESCRIPTION"]
    rows += [
        f"{f.name:<{width}}  {f.source:<9}  {_description(f.path)}"
        + (" (in place of the shipped one)" if f.hides_shipped else "")
        for f in found
    ]
    rows.append(
        f"Shipped presets are in {shipped_dir()}; copy one into ./{LOCAL_DIR}/ to change it, "
        "or pass any .toml file to --preset."
    )
    return rows


def _description(path: Path) -> str:
    try:
        return str(tomllib.loads(path.read_text()).get("description", ""))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        return f"(cannot be read: {first_line(e)})"
