"""Shared by the benchmarks: the machine's description, medians, RESULTS.md sections, and the
product's way to create a study and run it.

Every benchmark prints its figures and replaces its own section of benchmarks/RESULTS.md, so
the file always holds the latest run of each, with the command, date and machine beside it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import fcntl
import os
import platform
import re
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    from optuna.trial import FrozenTrial

    from search import define, store

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "RESULTS.md"
CLOSING = "## Targets"  # the hand-written closing note; sections go before it

if str(ROOT) not in sys.path:  # run from a checkout without `pip install -e .`
    sys.path.insert(0, str(ROOT))


def add_common(parser: argparse.ArgumentParser, *, data: bool = True) -> argparse.ArgumentParser:
    """The options the benchmarks share: --data-dir (where `data`) and --no-write."""
    if data:
        parser.add_argument(
            "--data-dir", type=Path, help="folder with the Fashion-MNIST IDX files"
        )
    parser.add_argument(
        "--no-write", action="store_true", help="print only; leave benchmarks/RESULTS.md as it is"
    )
    return parser


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def nproc() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# The load when the benchmark started: sections are written at the end, after its own work.
START_LOAD = os.getloadavg()[0]


def machine() -> str:
    """`nproc`, the CPU model and the load when the run started: the figures' context."""
    return f"{nproc()} cores (nproc), {cpu_model()}, load average {START_LOAD:.1f} at the start"


def today() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def command() -> str:
    """The command line that produced the figures, as a user would type it from the root."""
    script = Path(sys.argv[0]).resolve()
    try:
        script_text = str(script.relative_to(ROOT))
    except ValueError:
        script_text = str(script)
    return shlex.join([".venv/bin/python", script_text, *sys.argv[1:]])


def ladder(text: str | None) -> tuple[define.Rung, ...]:
    """'0.1x3,0.25x4' -> the rungs (share of the training images x epochs); '' -> none."""
    from search import define

    items = [item.split("x") for item in text.split(",")] if text else []
    return tuple(define.Rung(share=float(share), epochs=int(epochs)) for share, epochs in items)


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def spread(values: Sequence[float], fmt: str = ".0f") -> str:
    """median (min-max), for a table cell."""
    return f"{median(values):{fmt}} ({min(values):{fmt}}-{max(values):{fmt}})"


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def section(title: str, body: str, *, extra: str = "") -> str:
    """A RESULTS.md section: title, how it was run, then the figures."""
    head = f"## {title}\n\n- Command: `{command()}`\n- Date: {today()}\n- Machine: {machine()}\n"
    if extra:
        head += extra.rstrip() + "\n"
    return f"{head}\n{body.rstrip()}\n"


def write_section(name: str, text: str) -> None:
    """Replace (or add) the section `name` of RESULTS.md; a lock keeps parallel runs apart."""
    begin, end = f"<!-- begin {name} -->", f"<!-- end {name} -->"
    block = f"{begin}\n{text.rstrip()}\n{end}"
    RESULTS.touch()
    with RESULTS.open("r+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        current = f.read()
        pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
        if pattern.search(current):
            updated = pattern.sub(lambda _: block, current)
        elif CLOSING in current:
            at = current.index(CLOSING)
            updated = current[:at] + block + "\n\n" + current[at:]
        else:
            updated = current.rstrip() + ("\n\n" if current.strip() else "") + block + "\n"
        f.seek(0)
        f.truncate()
        f.write(updated)
    print(f"Wrote the '{name}' section of {RESULTS}")


def budget(
    preset: define.Preset,
    args: argparse.Namespace,
    *,
    name: str,
    narrow: dict[str, Any] | None = None,
    **changes: Any,
) -> define.Preset:
    """`preset` cut to the benchmark's size: its --trials trials of at most --epochs epochs on
    --images training images, one step per execution, no description, the axes of the search
    space in `narrow` narrowed to those values; then the preset's fields in `changes`."""
    return replace(
        preset,
        name=name,
        description="",
        trials=args.trials,
        train_size=args.images,
        epochs=args.epochs,
        steps_per_execution=1,
        space=replace(preset.space, **(narrow or {})),
        **changes,
    )


def run_quietly(
    prepared: store.Prepared,
    data_dir: Path | None,
    *,
    threads: int | None = None,
    on_data: Callable[[define.Split], None] | None = None,
) -> None:
    """Run a study that store.prepare made, as `search start` does, to its total or its
    deadline: the product's worker loop in this process, its progress lines unprinted."""
    from search import run

    run.run_worker(
        prepared.study,
        prepared.preset,
        prepared.total,
        storage=prepared.storage,
        data_dir=data_dir,
        log=lambda line: None,
        threads=threads,
        on_data=on_data,
    )


def timed(run: Callable[[], object]) -> float:
    """The seconds one call of `run` takes."""
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def started_trials(url: str, name: str) -> tuple[Any, list[FrozenTrial], dt.datetime]:
    """A stored study, its trials that started, and when the first of them did."""
    import optuna

    from search import store

    study = optuna.load_study(study_name=name, storage=store.open_storage(url, must_exist=True))
    trials = [t for t in study.get_trials(deepcopy=False) if t.datetime_start]
    if not trials:
        raise SystemExit(f"Study '{name}' has no started trial yet.")
    return study, trials, min(started(t) for t in trials)


def started(trial: FrozenTrial) -> dt.datetime:
    """When a trial started (the benchmarks read only trials that did)."""
    assert trial.datetime_start is not None, f"trial #{trial.number} never started"
    return trial.datetime_start


def ended(trial: FrozenTrial) -> dt.datetime:
    """When a trial ended (the benchmarks read only trials that did)."""
    assert trial.datetime_complete is not None, f"trial #{trial.number} has not ended"
    return trial.datetime_complete


def lab_model(config: object) -> object:
    """The lab's plain Keras code for one of its configurations: a Sequential model on float32
    (N, 28, 28, 1) input, one-hot labels, categorical cross-entropy and Keras' compile defaults
    (jit_compile="auto"). `config` is a search.define.space.Config from a preset's baseline."""
    import keras
    from keras import layers

    stack: list[object] = [keras.Input((28, 28, 1))]
    for conv in config.convs:  # type: ignore[attr-defined]
        stack.append(layers.Conv2D(conv.filters, conv.kernel, activation="relu"))
        if conv.pool:
            stack.append(layers.MaxPooling2D(2))
            if config.has_dropout_blocks:  # type: ignore[attr-defined]
                stack.append(layers.Dropout(config.dropout_rate))  # type: ignore[attr-defined]
    stack.append(layers.Flatten())
    if config.has_dropout_flatten:  # type: ignore[attr-defined]
        stack.append(layers.Dropout(config.dropout_rate))  # type: ignore[attr-defined]
    stack += [layers.Dense(units, activation="relu") for units in config.dense]  # type: ignore[attr-defined]
    stack.append(layers.Dense(10, activation="softmax"))
    model = keras.Sequential(stack)
    model.compile(optimizer="rmsprop", loss="categorical_crossentropy", metrics=["accuracy"])
    return model


def lab_arrays(x: object, y: object) -> tuple[np.ndarray, np.ndarray]:
    """The lab's inputs: float32 images scaled in NumPy, one-hot labels."""
    import keras
    import numpy as np

    images = np.asarray(x)
    return (
        (images.astype("float32") / 255).reshape(-1, 28, 28, 1),
        keras.utils.to_categorical(np.asarray(y), 10),
    )
