"""Memory: resident memory of one worker process after each of 30 tiny trials.

    .venv/bin/python benchmarks/memory.py [--trials 30] [--images 2000] [--epochs 2]

One process runs the product's worker loop (search.loop.run_trials with the product's
Objective and SQLite storage: gc_after_trial and clear_session as `search start` uses them)
over a small Fashion-MNIST search whose architectures vary from trial to trial, and reads
VmRSS from /proc/self/status after each trial. A leak shows as a steady climb; a process that
only warms up shows a plateau. The figure: the slope over the second half of the run, in MB
per trial. The loop runs to --trials finished (complete or pruned) trials, as a search does;
a failed trial adds one.
"""

from __future__ import annotations

import argparse
import ctypes
import tempfile
from dataclasses import replace
from pathlib import Path

import common
import numpy as np

from search import datasets, loop, presets, storage
from search import study as study_mod
from search.objective import Objective
from search.runtime import configure


def memory_preset(trials: int, images: int, epochs: int) -> presets.Preset:
    """A small search over a wide space (the Fashion-MNIST preset's axes, narrowed), so the
    architectures vary from trial to trial; no pruner and no lab runs enqueued."""
    base = presets.load("fashion_mnist")
    space = replace(
        base.space,
        conv_layers=(1, 3),
        filters=(8, 16, 32, 64),
        dense_units=(32, 64, 128),
        learning_rate=(0.0003, 0.003),
    )
    return replace(
        base,
        name="memory",
        description="",
        trials=trials,
        val_size=500,
        train_size=images,
        epochs=epochs,
        patience=1,
        seed=5,
        pruner="none",
        max_params=400_000,
        steps_per_execution=1,
        space=space,
        baselines=(),
    )


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def isolate(models: int) -> str:
    """The same growth without the product: plain Keras fits of one small model, in a loop."""
    import gc

    import keras
    from tensorflow.python.framework.func_graph import FuncGraph

    x = np.random.default_rng(0).integers(0, 255, (640, 28, 28), dtype=np.uint8)
    y = np.random.default_rng(1).integers(0, 10, 640).astype(np.uint8)
    rows = []
    for i in range(1, models + 1):
        keras.backend.clear_session(free_memory=True)
        model = keras.Sequential(
            [
                keras.Input((28, 28)),
                keras.layers.Flatten(),
                keras.layers.Dense(32, activation="relu"),
                keras.layers.Dense(10, activation="softmax"),
            ]
        )
        model.compile(
            optimizer="rmsprop", loss="sparse_categorical_crossentropy", metrics=["accuracy"]
        )
        model.fit(x, y, epochs=1, verbose=0)
        del model
        gc.collect()
        if i % 5 == 0:
            graphs = sum(isinstance(o, FuncGraph) for o in gc.get_objects())
            rows.append([i, f"{rss_mb():.0f}", graphs])
            print(f"model {i}: RSS {rss_mb():.0f} MB, {graphs} FuncGraphs alive", flush=True)
    return (
        "The same loop without the product: a plain two-layer Keras model compiled and "
        "fitted for one epoch, `keras.backend.clear_session(free_memory=True)` and "
        "`gc.collect()` between models:\n\n"
        + common.table(["models fitted", "RSS MB", "TensorFlow FuncGraphs still alive"], rows)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument(
        "--trim",
        action="store_true",
        help="call glibc's malloc_trim(0) after each trial, before reading RSS",
    )
    parser.add_argument(
        "--isolate",
        type=int,
        metavar="MODELS",
        default=0,
        help="then fit a plain Keras model MODELS times and count what stays",
    )
    args = common.add_common(parser).parse_args()

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    folder = Path(tempfile.mkdtemp(prefix="memory-bench-"))
    preset = memory_preset(args.trials, args.images, args.epochs)
    configure()
    before_data = rss_mb()
    images, labels = datasets.load_train(preset.dataset, args.data_dir)
    data = datasets.split(images, labels, preset.val_size, preset.train_size)
    rdb = storage.open_storage(f"sqlite:///{folder / 'memory.db'}")
    study, _ = study_mod.create_or_load(rdb, "memory", preset)
    curve: list[tuple[int, str, str, float]] = []

    def record(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if args.trim:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        curve.append(
            (trial.number, trial.state.name, trial.user_attrs.get("architecture", ""), rss_mb())
        )
        print(
            f"trial {trial.number:2d} {trial.state.name:8s} RSS {curve[-1][3]:7.1f} MB  "
            f"{curve[-1][2]}",
            flush=True,
        )

    start = rss_mb()
    objective = Objective(
        preset, data, flip=datasets.info(preset.dataset).flip_ok, log=lambda line: None
    )
    # The product's worker loop (gc_after_trial, failures caught, heartbeats), to the total of
    # finished trials; `record` runs after each trial, where the progress line would print.
    loop.run_trials(study, objective, args.trials, storage=rdb, callbacks=[record])
    rss = np.array([c[3] for c in curve])
    half = len(rss) // 2
    slope = float(np.polyfit(np.arange(half, len(rss)), rss[half:], 1)[0])
    first_slope = float(np.polyfit(np.arange(half), rss[:half], 1)[0])
    summary = (
        f"RSS {before_data:.0f} MB after importing TensorFlow, {start:.0f} MB with the "
        f"data and storage open; after trial 1: {rss[0]:.0f} MB, after trial "
        f"{half}: {rss[half - 1]:.0f} MB, after trial {len(rss)}: {rss[-1]:.0f} MB "
        f"(peak {rss.max():.0f} MB). Slope: {first_slope:+.1f} MB a trial over the "
        f"first half, {slope:+.1f} MB a trial over the second half."
    )
    body = (
        summary
        + "\n\n"
        + common.table(
            ["trial", "state", "architecture", "RSS MB"],
            [[n, s, a, f"{r:.0f}"] for n, s, a, r in curve],
        )
    )
    print(summary)
    if args.isolate:
        body += "\n\n" + isolate(args.isolate)
    if not args.no_write:
        common.write_section(
            "memory",
            common.section(
                "Memory: RSS over 30 trials in one worker",
                body,
                extra=f"- Study: {args.trials} trials, {args.images:,} training images, "
                f"{args.epochs} epochs a trial, architectures varied by the sampler",
            ),
        )


if __name__ == "__main__":
    main()
