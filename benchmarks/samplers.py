"""Samplers against the default: the best val_accuracy each reached by 15, 30, 45 and 60 minutes.

    .venv/bin/python benchmarks/samplers.py [--samplers tpe-grouped tpe random] [--seeds 1 2]
        [--minutes 60] [--images 2000] [--epochs 8] [--patience 3] [--folder DIR]
        [--ladder 0.1x3,0.25x4]
    .venv/bin/python benchmarks/samplers.py --read --folder DIR   # report on searches run before

Every (sampler, seed) pair is its own search, run by the product's worker loop
(search.run.loop.run_worker) on the fashion_mnist preset's space, and all of them run at once,
each in its own process with one TensorFlow thread, so each has the same share of the machine
for the same minutes. The preset's enqueued networks (the known-good start and the lab's runs)
are left out: every trial is the sampler's. The training set is a subset (--images, after the
first 1,000 images, which validate) and a trial trains at most --epochs, so that an hour holds
a few dozen trials; there is no pruning, so every trial's learning curve is whole, and
benchmarks/pruning.py --replay can judge pruners on the same trials afterwards.

Samplers: "tpe-grouped" (multivariate TPE over groups of parameters that occur together),
"tpe" (independent TPE, the presets' default), "gp" (Optuna's GPSampler, which models the
parameters every trial has and draws the others at random), and "random", Optuna's
RandomSampler, as the floor. With --ladder, each trial first trains those rungs (complete runs
on a share of the training images) and successive halving decides who trains the full run,
as a preset's `rungs` make the product do; its section is written apart ("8b").
The TPE samplers start with the preset's 10 random trials, the same ones random search draws
with the same seed, so the samplers part only after those.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import common

from search import define, store

SAMPLERS = ("tpe-grouped", "tpe", "random", "gp")


def preset_for(sampler: str, seed: int, args: argparse.Namespace) -> define.Preset:
    base = define.load_preset("fashion_mnist")
    return replace(
        base,
        name=f"s-{sampler}-{seed}",
        trials=100_000,
        val_size=1000,
        train_size=args.images,
        epochs=args.epochs,
        patience=args.patience,
        seed=seed,
        # With a ladder, the preset's own pruner (asynchronous successive halving) judges each
        # trial at each rung, as in the product; without, no pruning, so every learning curve
        # stays whole.
        pruner=base.pruner if args.ladder else "none",
        rungs=common.ladder(args.ladder),
        sampler="tpe" if sampler in ("random", "gp") else sampler,
        baselines=(),
        starts=(),
        hours=args.minutes / 60,
    )


def db_path(folder: Path, sampler: str, seed: int) -> Path:
    return folder / f"{sampler}-{seed}.db"


def child(args: argparse.Namespace) -> None:
    """One search: `--child SAMPLER SEED`, until its deadline."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler, seed = args.child[0], int(args.child[1])
    preset = preset_for(sampler, seed, args)
    # Created as `search start` creates it, which starts its clock: preset.hours from now.
    url = f"sqlite:///{db_path(args.folder, sampler, seed)}"
    prepared = store.prepare(preset, url=url, name="samplers")
    if sampler == "random":
        prepared.study.sampler = optuna.samplers.RandomSampler(seed=seed)
    if sampler == "gp":  # Gaussian-process BO: models the parameters all trials share
        prepared.study.sampler = optuna.samplers.GPSampler(
            seed=seed, n_startup_trials=preset.startup_trials
        )
    common.run_quietly(prepared, args.data_dir, threads=1)


def read_run(path: Path, marks: list[int]) -> dict[str, object]:
    """Per mark: the best val_accuracy and val_loss among the trials complete by then."""
    import optuna

    study = optuna.load_study(study_name="samplers", storage=f"sqlite:///{path}")
    trials = study.get_trials(deepcopy=False)
    t0 = min(t.datetime_start for t in trials if t.datetime_start is not None)
    done = [
        (
            (t.datetime_complete - t0).total_seconds() / 60,
            float(t.user_attrs["val_accuracy"]),
            float(t.value),  # type: ignore[arg-type]
        )
        for t in trials
        if t.state.name == "COMPLETE" and t.datetime_complete is not None
    ]
    # On a ladder, a trial's first look is its first rung's end.
    looks = [
        (t.datetime_start - t0).total_seconds() / 60 + t.user_attrs["rungs"][0]["seconds"] / 60
        for t in trials
        if t.datetime_start is not None and t.user_attrs.get("rungs")
    ]
    row: dict[str, object] = {"marks": {}}
    for mark in marks:
        by = [d for d in done if d[0] <= mark]
        row["marks"][mark] = {  # type: ignore[index]
            "looks": sum(minute <= mark for minute in looks),
            "trained": len(by),
            "val_accuracy": max((d[1] for d in by), default=None),
            "val_loss": min((d[2] for d in by), default=None),
        }
    row["rejected"] = sum(
        t.state.name == "PRUNED" and "epochs_trained" not in t.user_attrs for t in trials
    )
    row["epochs"] = sum(t.user_attrs.get("epochs_trained", 0) for t in trials)
    return row


def main() -> None:
    args = common.add_common(options()).parse_args()
    if args.child:
        child(args)
        return
    runs = [(s, seed) for seed in args.seeds for s in args.samplers]
    if args.read:
        if args.folder is None:
            sys.exit("--read needs --folder.")
        missing = [str(db_path(args.folder, s, seed)) for s, seed in runs]
        missing = [p for p in missing if not Path(p).exists()]
        if missing:
            sys.exit(f"no such studies: {', '.join(missing)}")
        report(args, runs, load=None)
        return
    new_folder(args, runs)
    report(args, runs, run_all(args, runs))


def options() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samplers", nargs="+", default=list(SAMPLERS), choices=SAMPLERS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--minutes", type=float, default=60)
    parser.add_argument("--marks", type=int, nargs="+", default=[15, 30, 45, 60])
    parser.add_argument("--images", type=int, default=2000, help="training images")
    parser.add_argument("--epochs", type=int, default=8, help="the most a trial trains")
    parser.add_argument("--patience", type=int, default=3, help="early stopping on val_loss")
    parser.add_argument(
        "--ladder", help="rungs before each full run, as SHARExEPOCHS,...: '0.1x3,0.25x4'"
    )
    parser.add_argument(
        "--folder", type=Path, help="where the studies are kept (a new folder by default)"
    )
    parser.add_argument(
        "--read", action="store_true", help="report on the searches in --folder; run none"
    )
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    return parser


def new_folder(args: argparse.Namespace, runs: list[tuple[str, int]]) -> None:
    """--folder, or a new one, made ready for the searches: none of their studies is there."""
    if args.folder is None:
        stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M")
        args.folder = Path(f"samplers-{stamp}").resolve()
    args.folder.mkdir(parents=True, exist_ok=True)
    for s, seed in runs:
        if db_path(args.folder, s, seed).exists():
            sys.exit(f"{db_path(args.folder, s, seed)} exists; pass a new --folder.")
    print(
        f"{len(runs)} searches at once, {args.minutes:g} minutes each, studies in {args.folder}",
        flush=True,
    )


def run_all(args: argparse.Namespace, runs: list[tuple[str, int]]) -> float:
    """Every search at once, each in its own process, until all have ended; the load average
    before they started."""
    shared = [
        "--minutes", str(args.minutes), "--images", str(args.images),
        "--epochs", str(args.epochs), "--patience", str(args.patience),
        "--folder", str(args.folder),
    ]  # fmt: skip
    if args.ladder:
        shared += ["--ladder", args.ladder]
    if args.data_dir:
        shared += ["--data-dir", str(args.data_dir)]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    load = os.getloadavg()[0]
    procs = []
    try:
        for s, seed in runs:
            log = (args.folder / f"{s}-{seed}.log").open("w")
            procs.append(
                subprocess.Popen(
                    [sys.executable, __file__, "--child", s, str(seed), *shared],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                )
            )
        started = time.monotonic()
        while any(p.poll() is None for p in procs):
            time.sleep(30)
            minutes = (time.monotonic() - started) / 60
            running = sum(p.poll() is None for p in procs)
            print(f"{minutes:5.1f} min: {running} running", flush=True)
    except BaseException:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        raise
    failed = [f"{s}-{seed}" for (s, seed), p in zip(runs, procs, strict=True) if p.returncode]
    if failed:
        sys.exit(f"these searches failed (their logs are in {args.folder}): {', '.join(failed)}")
    return load


def report(args: argparse.Namespace, runs: list[tuple[str, int]], load: float | None) -> None:
    results = {(s, seed): read_run(db_path(args.folder, s, seed), args.marks) for s, seed in runs}
    (args.folder / "results.json").write_text(
        json.dumps({f"{s}-{seed}": r for (s, seed), r in results.items()}, indent=1)
    )
    body, totals = tables(args, results)
    print(body + "\n\n" + totals)
    if args.no_write:
        return
    preset = store.load_study(
        store.open_storage(f"sqlite:///{db_path(args.folder, *runs[0])}"), "samplers"
    )[1]
    started = f" (load average {load:.1f} before they started)" if load is not None else ""
    pruning = f"the ladder {args.ladder}, pruner {preset.pruner}" if args.ladder else "no pruning"
    title = "8b. Samplers on the ladder" if args.ladder else "8. Samplers"
    extra = (
        f"- Study: the fashion_mnist preset's space without its enqueued networks, "
        f"{preset.train_size:,} training and {preset.val_size:,} validation images, at most "
        f"{preset.epochs} epochs a trial, early stopping patience {preset.patience}, "
        f"{pruning}; {len(runs)} searches at once, one TensorFlow thread each{started}\n"
        f"- Studies kept in {args.folder}"
    )
    common.write_section(
        "samplers_ladder" if args.ladder else "samplers",
        common.section(title, body + "\n\nIn all:\n\n" + totals, extra=extra),
    )


def tables(
    args: argparse.Namespace, results: dict[tuple[str, int], dict[str, object]]
) -> tuple[str, str]:
    """Each sampler's best by each mark, and what each spent in all."""

    def cell(s: str, mark: int, key: str, fmt: str) -> str:
        values = [results[s, seed]["marks"][mark][key] for seed in args.seeds]  # type: ignore[index]
        text = " / ".join("-" if v is None else f"{v:{fmt}}" for v in values)
        if fmt != "d" and len(values) > 1 and None not in values:
            text += f" (mean {sum(values) / len(values):{fmt}})"
        return text

    rows = []
    for mark in args.marks:
        for s in args.samplers:
            rows.append(
                [
                    mark,
                    s,
                    cell(s, mark, "val_accuracy", ".4f"),
                    cell(s, mark, "val_loss", ".4f"),
                    cell(s, mark, "trained", "d"),
                ]
                + ([cell(s, mark, "looks", "d")] if args.ladder else [])
            )
    seeds = ", ".join(map(str, args.seeds))
    body = common.table(
        [
            "minutes",
            "sampler",
            f"best val_accuracy (seed {seeds})",
            "best val_loss",
            "trials complete",
        ]
        + (["trials with a first rung"] if args.ladder else []),
        rows,
    )
    totals = common.table(
        ["sampler", "epochs trained (per seed)", "networks rejected untrained"],
        [
            [
                s,
                " / ".join(str(results[s, seed]["epochs"]) for seed in args.seeds),
                " / ".join(str(results[s, seed]["rejected"]) for seed in args.seeds),
            ]
            for s in args.samplers
        ],
    )
    return body, totals


if __name__ == "__main__":
    main()
