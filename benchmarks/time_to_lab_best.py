"""Time to the lab's best: how long a real search took to reach the lab's best val_accuracy.

    .venv/bin/python benchmarks/time_to_lab_best.py --storage sqlite:///PATH/search.db \\
        [--study fashion_mnist] [--goal 0.921] [--skip-lab] [--data-dir DIR]

It reads a study that `search start --dataset fashion_mnist` ran (or still runs) on the full
Fashion-MNIST split, and finds the wall time from its first trial's start until a finished
trial first recorded a val_accuracy of at least the lab's best, 92.1 % (tests 8, 9 and 9.1).
Against it stands the time the lab's six manual Fashion runs (tests 7, 7.1, 7.2, 8, 9, 9.1)
take at 20 epochs each with the lab's plain code on this machine, extrapolated from one
measured epoch of each, built from studies/fashion_mnist.toml's baselines. Target: <= 0.5.

The search and the lab's epochs are timed at different moments of a shared machine; the
load average at each is printed beside the figures.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

import common

from search import define, store
from search.train import configure

LAB_EPOCHS = 20


def search_progress(url: str, name: str, goal: float) -> tuple[str, dict[str, Any]]:
    _, trials, start = common.started_trials(url, name)
    done = sorted(
        (t for t in trials if t.datetime_complete and t.state.is_finished()),
        key=common.ended,
    )
    best, reached, rows = 0.0, None, []
    for t in done:
        acc = t.user_attrs.get("val_accuracy")
        if acc is None or acc <= best:
            continue
        best = acc
        at = (common.ended(t) - start).total_seconds()
        rows.append(
            [
                t.number,
                t.state.name,
                f"{acc:.4f}",
                t.user_attrs.get("architecture", ""),
                f"{at / 60:.1f}",
            ]
        )
        if reached is None and acc >= goal:
            reached = (t.number, at)
    last = max((t.datetime_complete or common.started(t)) for t in trials)
    elapsed = (last - start).total_seconds()
    running = sum(t.state.name == "RUNNING" for t in trials)
    body = (
        f"Study '{name}': {len(done)} finished trials ({running} running) over "
        f"{elapsed / 60:.1f} minutes since its first trial started at "
        f"{start:%Y-%m-%d %H:%M} UTC. Each new best val_accuracy (at the trial's best "
        "epoch), with the minutes from the start to that trial's end:\n\n"
        + common.table(
            ["trial", "state", "val_accuracy", "architecture", "minutes from the start"], rows
        )
    )
    return body, {"reached": reached, "best": best, "elapsed": elapsed}


def lab_epochs(data_dir: Path | None, train_size: int | None = None) -> tuple[str, float]:
    import keras

    preset = define.load_preset("fashion_mnist")
    images, labels = define.load_train("fashion_mnist", data_dir)
    data = define.split(images, labels, preset.val_size, train_size)
    x, y = common.lab_arrays(data.x_train, data.y_train)
    xv, yv = common.lab_arrays(data.x_val, data.y_val)
    rows, total = [], 0.0
    for baseline in preset.baselines:
        keras.backend.clear_session(free_memory=True)
        keras.utils.set_random_seed(0)
        model: Any = common.lab_model(baseline.config)
        assert model.count_params() == baseline.params, baseline.name
        # A few steps first, so the timed epoch is a steady one, not the tracing.
        model.fit(x[:640], y[:640], batch_size=64, epochs=1, verbose=0)
        load = os.getloadavg()[0]
        start = time.perf_counter()
        model.fit(x, y, batch_size=64, epochs=1, validation_data=(xv, yv), verbose=0)
        seconds = time.perf_counter() - start
        total += seconds * LAB_EPOCHS
        rows.append(
            [
                baseline.name,
                f"{baseline.params:,}",
                f"{seconds:.1f}",
                f"{seconds * LAB_EPOCHS / 60:.1f}",
                f"{load:.1f}",
            ]
        )
        print(f"{baseline.name}: {seconds:.1f} s an epoch (load {load:.1f})", flush=True)
    body = (
        f"The lab's six runs, its plain code (float32, batch 64, validation each epoch), "
        f"one epoch each measured, times {LAB_EPOCHS}:\n\n"
        + common.table(
            [
                "run",
                "params",
                "seconds an epoch",
                f"minutes for {LAB_EPOCHS} epochs",
                "load average",
            ],
            rows,
        )
        + f"\n\nTotal: {total / 60:.1f} minutes."
    )
    return body, total


def main() -> None:
    args = common.add_common(options()).parse_args()

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = store.resolve_url(args.storage)
    search_body, found = search_progress(url, args.study, args.goal)
    print(search_body, flush=True)
    parts = [search_body]
    if not args.skip_lab:
        configure()
        lab_body, lab_total = lab_epochs(args.data_dir, args.images)
        print(lab_body)
        parts.append(lab_body)
        summary = verdict(found, lab_total, args.goal)
        print(summary)
        parts.append(summary)
    if not args.no_write:
        common.write_section(
            "time_to_lab_best",
            common.section(
                "4. Time to the lab's best",
                "\n\n".join(parts),
                extra=f"- Storage read: {store.masked(url)}, study '{args.study}'",
            ),
        )


def options() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage", help="the search's storage URL (default: as 'search')")
    parser.add_argument("--study", default="fashion_mnist")
    parser.add_argument("--goal", type=float, default=0.921, help="val_accuracy to reach")
    parser.add_argument(
        "--skip-lab",
        action="store_true",
        help="do not time the lab's epochs (print the search's progress only)",
    )
    parser.add_argument(
        "--images", type=int, help="time the lab's epochs on fewer training images (a quick check)"
    )
    return parser


def verdict(found: dict[str, Any], lab_total: float, goal: float) -> str:
    """The search's time to `goal` against the lab's time for its runs, and the target's fate."""
    if found["reached"]:
        number, at = found["reached"]
        ratio = at / lab_total
        return (
            f"The search first reached val_accuracy >= {goal:.1%} with trial "
            f"#{number}, {at / 60:.1f} minutes after its start: "
            f"{ratio:.2f} of the lab's {lab_total / 60:.1f} minutes; target <= 0.5, "
            f"{'met' if ratio <= 0.5 else 'not met'}."
        )
    return (
        f"The search has not reached {goal:.1%} yet: its best is "
        f"{found['best']:.2%} after {found['elapsed'] / 60:.1f} minutes, "
        f"{found['elapsed'] / lab_total:.2f} of the lab's "
        f"{lab_total / 60:.1f} minutes. Target <= 0.5: not met so far."
    )


if __name__ == "__main__":
    main()
