"""Worker scaling: processes against threads, and how many workers one SQLite file serves.

    .venv/bin/python benchmarks/worker_scaling.py scaling
    .venv/bin/python benchmarks/worker_scaling.py sqlite-limit --workers 2 4 8 16

`scaling` runs the same small Fashion-MNIST search, in turn: one worker process with two
TensorFlow threads, then `--workers auto` (one process per core). Each run's study is created
here as `search start` creates it (search.store.prepare) and run by `search worker`, the same
worker code as `search start`'s. Every trial trains the lab's test-7 network for a fixed
number of epochs (no pruning, no early stop), and the rate is the epochs trained per minute
between the first trial's start and the last one's end, read from the study. It prints the
ratio, which is what transfers to another machine.

`sqlite-limit` starts N processes at once on one fresh SQLite file. Each opens the storage,
creates or joins the study and runs the real trial loop (run.run_trials, heartbeat on) with
an objective that writes what a real trial writes per epoch (an intermediate value and six
user attributes) without training, many times faster than training would. It reports the
storage errors ("database is locked") per N: a real search writes far less often.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import subprocess
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import common
import optuna

from search import define, run, store


def scaling_preset(args: argparse.Namespace) -> define.Preset:
    """One fixed network, the lab's test 7 (130,890 parameters), so both arms do the same work:
    every trial is an enqueued copy of it, so no sampler choice differs."""
    base = define.load_preset("demo")
    lab_test_7 = next(b for b in base.baselines if b.name == "lab test 7")
    return common.budget(
        base,
        args,
        name="scaling",
        narrow={
            "conv_layers": (3, 3),
            "filters": (32, 64),
            "kernel": (3,),
            "dropout": ("none",),
            "dense_units": (128,),
            "learning_rate": (0.001, 0.001),
        },
        val_size=1000,
        patience=args.epochs,
        seed=1,
        pruner="none",
        max_params=None,
        baselines=tuple(replace(lab_test_7, name=f"lab test 7 ({i})") for i in range(args.trials)),
    )


def scaling(args: argparse.Namespace) -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    folder = Path(tempfile.mkdtemp(prefix="worker-scaling-"))
    preset = scaling_preset(args)
    data_dir = ["--data-dir", str(args.data_dir)] if args.data_dir else []
    arms = {
        "1 worker x 2 threads": ["--workers", "1", "--threads", "2"],
        "--workers auto": ["--workers", "auto"],
    }
    rates: dict[str, list[float]] = {label: [] for label in arms}
    cores: dict[str, list[float]] = {label: [] for label in arms}
    for rep in range(args.reps):
        # A B, then B A: a slow spell of the shared machine hits both arms alike.
        for label in list(arms) if rep % 2 == 0 else list(arms)[::-1]:
            url = f"sqlite:///{folder / f'arm{list(arms).index(label)}-{rep}.db'}"
            rate, busy = run_arm(label, url, preset, [*data_dir, *arms[label]])
            rates[label].append(rate)
            cores[label].append(busy)
    one, auto = rates.values()
    ratios = [b / a for a, b in zip(one, auto, strict=True)]
    summary = (
        f"--workers auto / 1 worker x 2 threads: {common.median(ratios):.2f}x epochs per "
        f"minute (pairs: {', '.join(f'{r:.2f}' for r in ratios)}); target >= 1.8x, "
        f"{'met' if common.median(ratios) >= 1.8 else 'not met'}."
    )
    print(summary)
    body = (
        f"The same {args.trials} trials (the lab's test 7, {args.epochs} epochs each on "
        f"{args.images:,} images, no pruning) through `search worker`, {args.reps} "
        "interleaved repetitions of each arm; epochs per minute between the first trial's "
        "start and the last one's end.\n\n"
        + common.table(
            [
                "arm",
                "epochs per minute, median (min-max)",
                "cores busy (CPU s / wall s, start-up included)",
            ],
            [
                [label, common.spread(v, ".1f"), common.spread(cores[label], ".2f")]
                for label, v in rates.items()
            ],
        )
        + "\n\n"
        + summary
    )
    if not args.no_write:
        common.write_section("worker_scaling", common.section("2. Worker scaling", body))


def run_arm(
    label: str, url: str, preset: define.Preset, options: list[str]
) -> tuple[float, float]:
    """One run of an arm: the epochs per minute of training, and the cores it kept busy."""
    # Created here as `search start` creates it; `search worker` runs it to its total.
    store.prepare(preset, url=url)
    command = [
        str(common.ROOT / ".venv/bin/search"),
        "worker",
        "--storage",
        url,
        "--study",
        preset.name,
        *options,
    ]
    print(f"{label}: {' '.join(command)}", flush=True)
    started = time.perf_counter()
    before = os.times()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    after = os.times()
    wall = time.perf_counter() - started
    # CPU seconds of the command and every process it waited for: how many cores the
    # arm actually got, and what an epoch cost in CPU time.
    cpu = (
        after.children_user - before.children_user + after.children_system - before.children_system
    )
    trials = optuna.load_study(study_name="scaling", storage=url).get_trials()
    assert all(t.state.name == "COMPLETE" for t in trials), [t.state for t in trials]
    epochs = sum(t.user_attrs["epochs_trained"] for t in trials)
    first = min(common.started(t) for t in trials)
    last = max(common.ended(t) for t in trials)
    minutes = (last - first).total_seconds() / 60
    print(
        f"  {len(trials)} trials, {epochs} epochs in {minutes * 60:.0f} s of training "
        f"({wall:.0f} s with start-up): {epochs / minutes:.2f} epochs/min, "
        f"{cpu:.0f} CPU s ({cpu / wall:.2f} cores busy on average)",
        flush=True,
    )
    return epochs / minutes, cpu / wall


class Writes:
    """What a real trial writes per epoch, without the training in between."""

    def __init__(self, epochs: int, pause: float) -> None:
        self.epochs, self.pause = epochs, pause

    def __call__(self, trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", -10, 10)
        for epoch in range(self.epochs):
            time.sleep(self.pause)
            trial.report(x * x + 1 / (epoch + 1), epoch)
            for key in (
                "epochs_trained",
                "best_epoch",
                "val_loss",
                "val_accuracy",
                "seconds_per_epoch",
                "curves",
            ):
                trial.set_user_attr(key, epoch)
        return x * x


def stress_worker(
    url: str,
    total: int,
    epochs: int,
    pause: float,
    busy: int | None,
    results: multiprocessing.Queue,
) -> None:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    errors = []
    try:
        rdb = store.open_storage(url, busy_seconds=busy or store.SQLITE_BUSY_SECONDS)
        # Created or joined as `search start --trials TOTAL` does it, by every process at once.
        s = store.prepare(define.load_preset("demo"), storage=rdb, name="stress", trials=total)
        run.run_trials(s.study, Writes(epochs, pause), total, storage=rdb, log=lambda line: None)
    except Exception as e:  # every storage error counts against this many workers
        errors.append(f"{type(e).__name__}: {str(e).splitlines()[0]}")
    results.put(errors)


def sqlite_limit(args: argparse.Namespace) -> None:
    os.environ[store.ENV_HEARTBEAT] = "1"
    os.environ[store.ENV_GRACE] = "5"
    context = multiprocessing.get_context("spawn")
    print(f"{'workers':>7} {'trials':>6} {'seconds':>7} {'trials/s':>8} {'errors':>6}")
    for n in args.workers:
        folder = Path(tempfile.mkdtemp(prefix="sqlite-limit-"))
        url = f"sqlite:///{folder / 'stress.db'}"
        if args.wal:
            import sqlite3

            sqlite3.connect(folder / "stress.db").execute("PRAGMA journal_mode=WAL").close()
        total = args.trials_per_worker * n
        results: multiprocessing.Queue = context.Queue()
        processes = [
            context.Process(
                target=stress_worker,
                args=(url, total, args.epochs, args.pause, args.busy, results),
            )
            for _ in range(n)
        ]
        started = time.perf_counter()
        for p in processes:
            p.start()
        errors = [e for _ in processes for e in results.get()]
        for p in processes:
            p.join()
        seconds = time.perf_counter() - started
        s = optuna.load_study(study_name="stress", storage=url)
        done = len(s.get_trials(states=store.FINISHED))
        running = len(s.get_trials(states=(optuna.trial.TrialState.RUNNING,)))
        print(
            f"{n:>7} {done:>6} {seconds:>7.1f} {done / seconds:>8.2f} {len(errors):>6}"
            + (f"  running {running}" if running else "")
            + (f"  exceeded {done - total}" if done > total else "")
            + (f"  first: {errors[0]}" if errors else ""),
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("scaling", help="epochs per minute, 1 process x 2 threads vs 2 x 1")
    p.add_argument("--trials", type=int, default=8)  # with 4, the last trial runs alone
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--images", type=int, default=10_000)
    p.add_argument("--reps", type=int, default=2, help="interleaved repetitions of each arm")
    common.add_common(p)
    p = sub.add_parser("sqlite-limit", help="storage errors with N workers on one SQLite file")
    p.add_argument("--workers", type=int, nargs="+", default=[2, 4, 8, 16])
    p.add_argument("--trials-per-worker", type=int, default=10)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--pause", type=float, default=0.05, help="seconds per fake epoch")
    p.add_argument("--busy", type=int, help="SQLite busy timeout in seconds (default: ours)")
    p.add_argument("--wal", action="store_true", help="switch the file to WAL first")
    args = parser.parse_args()
    scaling(args) if args.command == "scaling" else sqlite_limit(args)


if __name__ == "__main__":
    main()
