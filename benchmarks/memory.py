"""Memory: a worker's resident memory over 200 tiny trials, with and without recycling.

    .venv/bin/python benchmarks/memory.py [--trials 200] [--images 500] [--epochs 1]
                                          [--recycle 30] [--isolate MODELS]

Runs the same small Fashion-MNIST search twice through the product's worker process
(search.run.workers.run_study with one worker: the loop, Objective, gc_after_trial and
clear_session that `search start` uses), on a fresh SQLite study each: once with recycling
off, once with a worker process replaced after --recycle trials (the product's default). The
architectures vary from trial to trial. Each trial records the worker's VmRSS as it starts
(user attribute worker_rss_mb), which is the RSS after the process's previous trial. The
figures: the RSS as the last trial started, with and without recycling, as a ratio; the slope
without recycling; and what recycling costs, from the trials' own times: the gap between one
trial's end and the next one's start where the process changed, against the gap where it did
not. SEARCH_RECYCLE_TRIALS and SEARCH_RECYCLE_MB are ignored here.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import common
import numpy as np
from optuna.trial import FrozenTrial

from search import define, run, store, train

TYPICAL_TRIAL = 183.0  # s: the median trained trial of the full search (service_overhead)


def memory_preset(args: argparse.Namespace) -> define.Preset:
    """A small search over a wide space (the Fashion-MNIST preset's axes, narrowed), so the
    architectures vary from trial to trial; no pruner and no lab runs enqueued."""
    return common.budget(
        define.load_preset("fashion_mnist"),
        args,
        name="memory",
        narrow={
            "conv_layers": (1, 3),
            "filters": (8, 16, 32, 64),
            "dense_units": (32, 64, 128),
            "learning_rate": (0.0003, 0.003),
        },
        val_size=500,
        patience=1,
        seed=5,
        pruner="none",
        max_params=400_000,
        baselines=(),
    )


def resident_mb() -> float:
    return (train.resident_memory() or 0) / 2**20


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
            rows.append([i, f"{resident_mb():.0f}", graphs])
            print(f"model {i}: RSS {resident_mb():.0f} MB, {graphs} FuncGraphs alive", flush=True)
    return (
        "The same loop without the product: a plain two-layer Keras model compiled and "
        "fitted for one epoch, `keras.backend.clear_session(free_memory=True)` and "
        "`gc.collect()` between models:\n\n"
        + common.table(["models fitted", "RSS MB", "TensorFlow FuncGraphs still alive"], rows)
    )


def measure(
    preset: define.Preset, recycle: int, folder: Path, data_dir: Path | None, label: str
) -> tuple[list[FrozenTrial], float]:
    """One search to preset.trials through the product's worker process; its trials and wall
    seconds. `recycle` 0 turns recycling off (by count and by memory)."""
    preset = replace(preset, recycle_trials=recycle, recycle_mb=None if recycle else 0)
    url = f"sqlite:///{folder / (label + '.db')}"
    study = store.prepare(preset, url=url, name="memory").study

    def log(line: str) -> None:
        if line.startswith(("trial ", "Worker process")):
            print(f"[{label}] {line.split(' | ')[0]}", flush=True)

    started = time.monotonic()
    run.run_study(
        study,
        preset,
        preset.trials,
        url=url,
        request=run.WorkerRequest(workers=1),
        fresh=True,
        data_dir=data_dir,
        log=log,
    )
    return study.get_trials(), time.monotonic() - started


def rss_curve(trials: list[FrozenTrial]) -> np.ndarray:
    return np.array([t.user_attrs["worker_rss_mb"] for t in trials], dtype=float)


def gaps(trials: list[FrozenTrial]) -> tuple[list[float], list[float]]:
    """Seconds from one trial's end to the next one's start: in one process, across two."""
    same: list[float] = []
    new: list[float] = []
    for a, b in zip(trials, trials[1:], strict=False):
        assert a.datetime_complete is not None and b.datetime_start is not None
        gap = (b.datetime_start - a.datetime_complete).total_seconds()
        (same if a.user_attrs["worker"] == b.user_attrs["worker"] else new).append(gap)
    return same, new


def summarise(
    plain: list[FrozenTrial], recycled: list[FrozenTrial], walls: tuple[float, float], every: int
) -> str:
    without, with_ = rss_curve(plain), rss_curve(recycled)
    half = len(without) // 2
    slope = float(np.polyfit(np.arange(half, len(without)), without[half:], 1)[0])
    same, new = gaps(recycled)
    per_recycle = common.median(new) - common.median(same)
    trial_s = common.median([t.duration.total_seconds() for t in recycled if t.duration])
    n = len(recycled)
    return (
        f"RSS as the last trial started ({len(plain)} and {n} trials in all, rejections "
        f"included): {without[-1]:,.0f} MB without recycling, "
        f"{with_[-1]:,.0f} MB with a new process every {every} trials: "
        f"**{with_[-1] / without[-1]:.2f}x** (peak {without.max():,.0f} MB against "
        f"{with_.max():,.0f} MB). Without recycling the RSS grew {slope:+.1f} MB a trial over "
        f"the second half. Recycling replaced the process {len(new)} times; where the "
        f"process changed, the next trial started {common.median(new):.1f} s after the last "
        f"one ended (median), against {common.median(same):.2f} s within a process: "
        f"{per_recycle:.1f} s a recycle, **{per_recycle * len(new) / n:.2f} s a trial** "
        f"({per_recycle / every / TYPICAL_TRIAL:.2%} of a typical 183 s trial of the full "
        f"search, {per_recycle * len(new) / n / trial_s:.1%} of this run's {trial_s:.1f} s "
        f"tiny trials). Wall time: {walls[0]:.0f} s without recycling, {walls[1]:.0f} s with "
        f"({walls[1] / walls[0]:.2f}x)."
    )


def curve_table(plain: list[FrozenTrial], recycled: list[FrozenTrial]) -> str:
    """Every tenth trial's RSS both ways, and how many processes recycling had used by then."""
    rows = []
    for i in sorted({0, *range(9, len(plain), 10), len(plain) - 1}):
        rows.append(
            [
                i + 1,
                f"{plain[i].user_attrs['worker_rss_mb']:,}",
                f"{recycled[i].user_attrs['worker_rss_mb']:,}",
                len({t.user_attrs["worker"] for t in recycled[: i + 1]}),
            ]
        )
    header = ["trial", "RSS MB, no recycling", "RSS MB, recycling", "processes so far"]
    return common.table(header, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--recycle", type=int, default=run.RECYCLE_TRIALS)
    parser.add_argument(
        "--together",
        action="store_true",
        help="run both searches at once (half the wall time on a busy machine; the wall-time "
        "ratio then means nothing, the RSS and the start-up gaps still do)",
    )
    parser.add_argument(
        "--isolate",
        type=int,
        metavar="MODELS",
        default=0,
        help="then fit a plain Keras model MODELS times and count what stays",
    )
    args = common.add_common(parser).parse_args()
    for env in (run.ENV_RECYCLE_TRIALS, run.ENV_RECYCLE_MB):
        os.environ.pop(env, None)

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    folder = Path(tempfile.mkdtemp(prefix="memory-bench-"))
    preset = memory_preset(args)
    modes = [(0, "no recycling"), (args.recycle, "recycling")]
    with ThreadPoolExecutor(max_workers=2 if args.together else 1) as pool:
        runs = [
            pool.submit(measure, preset, n, folder, args.data_dir, label) for n, label in modes
        ]
        (plain, plain_s), (recycled, recycled_s) = (r.result() for r in runs)
    summary = summarise(plain, recycled, (plain_s, recycled_s), args.recycle)
    body = summary + "\n\n" + curve_table(plain, recycled)
    print(summary)
    if args.isolate:
        body += "\n\n" + isolate(args.isolate)
    if not args.no_write:
        common.write_section(
            "memory",
            common.section(
                f"Memory: RSS over {args.trials} trials, with and without recycling",
                body,
                extra=f"- Study: {args.trials} trials each way, {args.images:,} training "
                f"images, {args.epochs} epoch(s) a trial, architectures varied by the sampler; "
                "RSS read by the worker as each trial starts",
            ),
        )


if __name__ == "__main__":
    main()
