"""What many test files share: the test preset and its variants, the CLI, child processes,
a small seeded fit.

conftest.py imports from here; test files import from here too (`from tests.helpers import
run`), as a module and not as a conftest.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
import pytest
from click.testing import CliRunner, Result
from optuna.trial import TrialState

from search.cli import cli
from search.store import storage
from search.store.trials import trained

if TYPE_CHECKING:
    import keras

    from search.define.datasets import Split
    from search.define.space import Config
    from search.train.training import History

# Heartbeats every second and a grace of 4 s: a dead worker's trial fails in 4 s, not minutes.
HEARTBEAT = {storage.ENV_HEARTBEAT: "1", storage.ENV_GRACE: "4"}
PRESETS = Path(__file__).parent / "presets"
TINY = PRESETS / "tiny.toml"

# Named variants of tests/presets/tiny.toml: lines of the file and what replaces them.
VARIANTS: dict[str, dict[str, str]] = {
    # 2,000 training images: trials of a few seconds an epoch that still learn.
    "small": {"train_size = 5000": "train_size = 2000"},
    # Six epochs that early stopping never cuts short: a trial long enough to interrupt.
    "long": {"epochs = 3": "epochs = 6", "patience = 1": "patience = 9"},
    # The second baseline's loss becomes NaN: a learning rate of 1e12.
    "diverging": {
        "learning_rate = [0.0001, 0.003]": "learning_rate = [0.0001, 1e12]",
        'name = "starved"\nconvs = [[8, 5, true]]\ndense = [32]\nlearning_rate = 0.0001': (
            'name = "diverging"\nconvs = [[8, 5, true]]\ndense = [32]\nlearning_rate = 1e12'
        ),
    },
    # Both baselines over a budget of 100,000 parameters (347,146 and 2.8 M).
    "over_budget": {
        "max_params = 400_000": "max_params = 100_000",
        'name = "starved"\nconvs = [[8, 5, true]]': 'name = "wide"\nconvs = [[64, 3, false]]',
    },
    # A known-good starting point, enqueued before the lab's runs.
    "started": {
        '[[baseline]]\nname = "lab test 9"': (
            '[[start]]\nname = "known good"\nconvs = [[16, 3, true], [32, 3, true]]\n'
            'dense = [64]\nlearning_rate = 0.002\n\n[[baseline]]\nname = "lab test 9"'
        ),
    },
    # Batches of ten million images: the memory estimate runs to terabytes on any machine.
    "huge_batch": {
        "[space]": "[space]\nbatch_size = [10000000]",
        "dense = [64]\n": "dense = [64]\nbatch_size = 10000000\n",
        "dense = [32]\n": "dense = [32]\nbatch_size = 10000000\n",
    },
}

# Mistakes in the preset and what the error says of each (tests/presets/malformed.toml), as
# parameters (old, new, message) for tests of presets.load and of the CLI.
MALFORMED = [
    pytest.param(m["old"], m["new"], m["error"], id=m["id"])
    for m in tomllib.loads((PRESETS / "malformed.toml").read_text())["mistake"]
]


def preset_text(*variants: str, pruner: str = "sha", **replace: str) -> str:
    """tests/presets/tiny.toml with `pruner`, the named variants, then `replace` applied.

    Each key of a variant or of `replace` is text of the preset that must be there: a
    replacement that matches nothing fails here rather than leave the preset unchanged.
    """
    text = TINY.read_text()
    steps = [{'pruner = "sha"': f'pruner = "{pruner}"'}, *(VARIANTS[v] for v in variants), replace]
    for step in steps:
        for old, new in step.items():
            if old not in text:
                raise ValueError(f"{old!r} is not in the preset: {variants}, {replace}")
            text = text.replace(old, new)
    return text


def write_preset(
    folder: Path, *variants: str, name: str = "tiny", pruner: str = "sha", **replace: str
) -> Path:
    """The preset of `preset_text` written as `folder/NAME.toml`; its study is named NAME."""
    path = folder / f"{name}.toml"
    path.write_text(preset_text(*variants, pruner=pruner, **replace))
    return path


def run(*args: str) -> Result:
    """`search ARGS` in this process. A user error exits (SystemExit); anything else fails."""
    result = CliRunner().invoke(cli, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result


def db_url(folder: Path) -> str:
    """The storage URL of the SQLite file that `search` keeps in `folder` (storage/)."""
    return f"sqlite:///{folder / 'search.db'}"


def load_study(folder: Path, name: str = "tiny") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=db_url(folder))


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


class _SignalledWhileCollected:
    def __del__(self) -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler runs here, inside a finaliser, where its raise is swallowed


def swallow_an_interrupt() -> None:
    """SIGTERM arrives while a finaliser runs: Python swallows the KeyboardInterrupt raised.

    This is what happens when a signal lands in a garbage collector's callback (SQLAlchemy's
    registry has some), and it is what `search.run.interrupt` guards against.
    """
    _SignalledWhileCollected()  # collected at once


def popen(command: list[str], **kwargs: Any) -> subprocess.Popen[str]:
    """A child process that Ctrl-C (SIGINT) stops however pytest itself was started.

    A background job of a script (`pytest &`) starts with SIGINT ignored, and an ignored
    signal stays ignored across fork and exec (restore_signals and process groups leave it),
    so a test's `search` would ignore the Ctrl-C the test sends. The child gets SIGINT's
    default back before it runs, as in a terminal, and Python then turns it into
    KeyboardInterrupt. The product itself keeps an ignored SIGINT ignored (nohup, `&`).
    """
    return subprocess.Popen(command, text=True, preexec_fn=_default_sigint, **kwargs)


def check_exact(trials: list[optuna.trial.FrozenTrial], total: int) -> None:
    """Several workers ran exactly `total` trained trials between them, and left none open."""
    states = [t.state for t in trials]
    assert sum(trained(t) for t in trials) == total  # exactly, not at least
    assert TrialState.RUNNING not in states and TrialState.WAITING not in states
    numbers = [t.number for t in trials]
    assert sorted(numbers) == list(range(len(trials)))  # unique, without gaps
    workers_seen = {t.user_attrs.get("worker") for t in trials}
    assert len(workers_seen) > 1  # the trials really were shared out


def cgroup_tree(tmp_path: Path, own: str, files: dict[str, str]) -> tuple[Path, Path]:
    """A cgroup tree written in tmp_path (`files` under its root, as the kernel writes them),
    and the /proc/self/cgroup that names this process's cgroup in it (`own`)."""
    root = tmp_path / "cgroup"
    root.mkdir()
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text + "\n")
    (tmp_path / "self-cgroup").write_text(own + "\n")
    return root, tmp_path / "self-cgroup"


def fit_small(
    config: Config, split: Split, *, epochs: int = 2, flip: bool = False
) -> tuple[keras.Model, History]:
    """`config` built and trained from seed 0 on `split`, validated each epoch on its
    validation images, with a cosine as long as these epochs where it asks for one."""
    import keras

    from search.train.network import build, decay_steps
    from search.train.training import fit

    keras.utils.set_random_seed(0)
    steps = decay_steps(config, len(split.x_train), epochs)
    model = build(config, flip=flip, decay_steps=steps)
    history = fit(
        model,
        config,
        split.x_train,
        split.y_train,
        epochs=epochs,
        validation=(split.x_val, split.y_val),
    )
    return model, history
