"""The package's layers: what each subpackage may import, read from the code and from a fresh
process, and the public names each declares.

define < train, store < run, final, report < cli. A layer imports only the layers below it
(and `search.errors`); `define` imports neither Optuna nor Keras, `train` never Optuna, and
`store` never Keras. Imports inside functions count: Keras is imported lazily everywhere, so
a static read is the only check that sees them.
"""

from __future__ import annotations

import ast
import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "search"

BELOW = {
    "define": set(),
    "train": {"define"},
    "store": {"define"},
    "run": {"define", "train", "store"},
    "final": {"define", "train", "store"},
    "report": {"define", "train", "store"},
    "cli": {"define", "train", "store", "run", "final", "report"},
}
KERAS = {"keras", "tensorflow", "jax", "torch", "optuna_integration"}
OPTUNA = {"optuna", "optuna_dashboard", "optuna_integration", "sqlalchemy"}
FORBIDDEN = {"define": KERAS | OPTUNA | {"matplotlib"}, "train": OPTUNA, "store": KERAS}
# The one exception, and why: where no data is on the machine, datasets._download lets
# keras.datasets fetch it (online machines only). It imports Keras then, never before.
EXCEPTIONS = {("datasets.py", "keras")}


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every module a file imports, at its top or inside a function, with the line."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            if node.module == "search":  # from search import define: the layer is the name
                found += [(node.lineno, f"search.{alias.name}") for alias in node.names]
    return found


def violations(layer: str, path: Path) -> list[str]:
    wrong = []
    for line, module in _imports(path):
        parts = module.split(".")
        where = f"{path.name}:{line} imports {module}"
        if parts[0] in FORBIDDEN.get(layer, set()):
            if (path.name, module) not in EXCEPTIONS:
                wrong.append(where)
        elif parts[0] == "search" and len(parts) > 1 and parts[1] in BELOW:
            if parts[1] != layer and parts[1] not in BELOW[layer]:
                wrong.append(where)
    return wrong


@pytest.mark.parametrize("layer", sorted(BELOW))
def test_a_layer_imports_only_what_lies_below_it(layer: str) -> None:
    files = sorted((PACKAGE / layer).glob("*.py"))
    assert files, f"search/{layer}/ has no modules"
    wrong = [v for path in files for v in violations(layer, path)]
    assert not wrong, "\n".join(wrong)


def test_the_check_sees_a_forbidden_import(tmp_path: Path) -> None:
    """The rule itself: a define module that imports Optuna inside a function is caught."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    import optuna\n    from search.run import loop\n")
    assert violations("define", bad) == ["bad.py:2 imports optuna", "bad.py:3 imports search.run"]
    assert violations("run", bad) == []


def test_only_the_layers_sit_at_the_top_of_the_package() -> None:
    modules = {p.stem for p in PACKAGE.glob("*.py")}
    assert modules == {"__init__", "__main__", "errors"}
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert folders == set(BELOW)


PROBE = """
import json, sys
import search.{layer}
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in {names} or
      (m.startswith("search.") and m.split(".")[1] in {higher}))))
"""


@pytest.mark.parametrize("layer", sorted(BELOW))
def test_importing_a_layer_loads_no_backend_and_nothing_above_it(layer: str) -> None:
    """In a fresh process: no layer imports Keras or a backend until a network is trained,
    `define` and `train` not Optuna, and nothing imports a layer above it."""
    names = KERAS | (OPTUNA if layer in ("define", "train") else set())
    names |= {"matplotlib"} if layer == "define" else set()
    higher = set(BELOW) - BELOW[layer] - {layer}
    code = PROBE.format(layer=layer, names=sorted(names), higher=sorted(higher))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == []


@pytest.mark.parametrize("layer", sorted(BELOW))
def test_each_layer_declares_its_public_names(layer: str) -> None:
    package = importlib.import_module(f"search.{layer}")
    assert package.__doc__, f"search.{layer} says what it is for"
    assert package.__all__, f"search.{layer} declares __all__"
    for name in package.__all__:
        assert getattr(package, name) is not None, f"search.{layer}.{name}"


def test_benchmarks_and_the_cli_use_only_public_names() -> None:
    """They import the layers, or the names in a layer's __all__, never a module inside one.

    (ruff's F822 checks that every name in an __all__ exists; RUF022 keeps it sorted.)"""
    files = sorted((ROOT / "benchmarks").glob("*.py")) + sorted((PACKAGE / "cli").glob("*.py"))
    wrong = []
    for path in files:
        for line, module in _imports(path):
            parts = module.split(".")
            if parts[0] == "search" and len(parts) > 2 and parts[1] != "cli":
                wrong.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    assert not wrong, "\n".join(wrong)
