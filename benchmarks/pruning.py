"""Pruning efficiency: epochs, seconds and best val_loss with each pruner against none.

    .venv/bin/python benchmarks/pruning.py [--seeds 1 2 3] [--trials 16] [--pruners ...]
    .venv/bin/python benchmarks/pruning.py --replay STUDY.db [STUDY.db ...]

One fixed small study (a Fashion-MNIST subset, run by the product's worker loop,
search.run.loop.run_worker: the same sampler, objective, early stopping and SQLite storage as
`search start`) is run once per pruner and seed, each to --trials finished (complete or
pruned) trials; its seconds are those of the trials, after the data is loaded. With the same
seed, the sampler suggests the same first trials; from the first pruned trial on, TPE sees
different histories, as it would in a real search. The target: a pruner spends at most 1/3 of
the epochs of no pruning, for the same trial count, and reaches a best val_loss no more than
1 % (relative) worse.

With --replay, no network is trained: studies that were searched without pruning (their
learning curves whole) are run, trial after trial, through the product's pruners over a grid
of their settings (first epoch judged, reduction factor, ratio), and each is scored on the
epochs it would have spent and the best val_loss among the trials it let finish. The sampled
configurations stay those of the unpruned search: in a real pruned search the sampler would
see the pruned trials and suggest others.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import TypedDict

import common

from search import define, store


def pruning_preset(pruner: str, seed: int, args: argparse.Namespace) -> define.Preset:
    """The demo preset (its space with a wider learning-rate range) at this benchmark's budget,
    with no lab runs enqueued: the sampler picks every trial."""
    return common.budget(
        define.load_preset("demo"),
        args,
        name=f"p-{pruner}-{seed}",
        val_size=1000,
        patience=3,
        seed=seed,
        pruner=pruner,
        narrow={"learning_rate": (0.0001, 0.01)},
        baselines=(),
    )


def run_one(folder: Path, pruner: str, seed: int, args: argparse.Namespace) -> dict[str, float]:
    preset = pruning_preset(pruner, seed, args)
    url = f"sqlite:///{folder / f'{pruner}-{seed}.db'}"
    prepared = store.prepare(preset, url=url, name="pruning")
    started: list[float] = []  # the clock starts once the data is loaded, before the trials
    common.run_quietly(
        prepared, args.data_dir, on_data=lambda data: started.append(time.perf_counter())
    )
    wall = time.perf_counter() - started[0]
    study = prepared.study
    trials = study.get_trials(deepcopy=False)
    best = store.best(study)
    assert best is not None, f"no trial completed with pruner {pruner}, seed {seed}"
    return {
        "epochs": sum(t.user_attrs.get("epochs_trained", 0) for t in trials),
        "seconds": wall,
        # The pruner's work, apart from the configurations rejected before training.
        "pruned": sum(
            t.state.name == "PRUNED" and "epochs_trained" in t.user_attrs for t in trials
        ),
        "rejected": sum(
            t.state.name == "PRUNED" and "epochs_trained" not in t.user_attrs for t in trials
        ),
        "failed": sum(t.state.name == "FAIL" for t in trials),
        "best_val_loss": float(best.value),  # type: ignore[arg-type]
        "best_val_accuracy": float(best.user_attrs["val_accuracy"]),
    }


def main() -> None:
    args = common.add_common(options()).parse_args()
    if args.replay:
        main_replay(args)
        return

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    runs = run_all(args)
    body = summary(runs, args)
    detail = every_run(runs)
    print(body)
    if args.no_write:
        return
    study_text = (
        f"- Study: {args.trials} trials per run, {args.images:,} training and 1,000 "
        f"validation images, at most {args.epochs} epochs a trial, early stopping "
        f"patience 3, seeds {', '.join(map(str, args.seeds))}; every run in one "
        "process, in turn."
    )
    common.write_section(
        "pruning",
        common.section(
            "3. Pruning efficiency", body + "\n\nEvery run:\n\n" + detail, extra=study_text
        ),
    )


def options() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--trials", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=9)
    parser.add_argument("--images", type=int, default=3000, help="training images")
    parser.add_argument(
        "--pruners",
        nargs="+",
        default=["hyperband", "sha", "median"],
        choices=[p for p in define.PRUNERS if p != "none"],
    )
    parser.add_argument(
        "--replay",
        nargs="+",
        type=Path,
        metavar="DB",
        help="judge a grid of pruners on these SQLite studies, searched without pruning "
        "(benchmarks/samplers.py keeps such studies), instead of running new searches",
    )
    return parser


Runs = dict[tuple[str, int], dict[str, float]]  # by (pruner, seed): run_one's figures


def run_all(args: argparse.Namespace) -> Runs:
    """Every pruner (and none) on every seed, one after another in this process."""
    folder = Path(tempfile.mkdtemp(prefix="pruning-bench-"))
    runs: Runs = {}
    order = ["none", *args.pruners]
    for i, seed in enumerate(args.seeds):
        # Rotate the order per seed, so a slow spell of the machine does not hit one pruner.
        for pruner in order[i % len(order) :] + order[: i % len(order)]:
            r = run_one(folder, pruner, seed, args)
            runs[pruner, seed] = r
            print(
                f"seed {seed} {pruner:>9}: {r['epochs']:4.0f} epochs {r['seconds']:6.0f} s "
                f"{r['pruned']:2.0f} pruned, best val_loss {r['best_val_loss']:.4f} "
                f"val_accuracy {r['best_val_accuracy']:.4f}",
                flush=True,
            )
    return runs


def summary(runs: Runs, args: argparse.Namespace) -> str:
    """Each pruner against none, seed by seed, and whether it met the target."""
    rows = []
    for pruner in args.pruners:
        e = [runs[pruner, s]["epochs"] / runs["none", s]["epochs"] for s in args.seeds]
        t = [runs[pruner, s]["seconds"] / runs["none", s]["seconds"] for s in args.seeds]
        v = [
            runs[pruner, s]["best_val_loss"] / runs["none", s]["best_val_loss"] for s in args.seeds
        ]
        met = common.median(e) <= 1 / 3 and common.median(v) <= 1.01
        rows.append(
            [
                pruner,
                " / ".join(
                    f"{runs[pruner, s]['epochs']:.0f} vs {runs['none', s]['epochs']:.0f}"
                    for s in args.seeds
                ),
                common.spread(e, ".2f"),
                common.spread(t, ".2f"),
                " / ".join(
                    f"{runs[pruner, s]['best_val_loss']:.4f} vs "
                    f"{runs['none', s]['best_val_loss']:.4f}"
                    for s in args.seeds
                ),
                common.spread(v, ".3f"),
                "met" if met else "not met",
            ]
        )
    return common.table(
        [
            "pruner",
            "epochs per seed (pruner vs none)",
            "epochs ratio, median (min-max)",
            "seconds ratio",
            "best val_loss per seed (pruner vs none)",
            "val_loss ratio",
            "target (<= 0.33 epochs, <= 1.01 val_loss)",
        ],
        rows,
    )


def every_run(runs: Runs) -> str:
    """Every run's own figures, by seed."""
    return common.table(
        [
            "seed",
            "pruner",
            "epochs",
            "seconds",
            "pruned",
            "rejected untrained",
            "failed",
            "best val_loss",
            "best val_accuracy",
        ],
        [
            [
                s,
                p,
                f"{r['epochs']:.0f}",
                f"{r['seconds']:.0f}",
                f"{r['pruned']:.0f}",
                f"{r['rejected']:.0f}",
                f"{r['failed']:.0f}",
                f"{r['best_val_loss']:.4f}",
                f"{r['best_val_accuracy']:.4f}",
            ]
            for (p, s), r in sorted(runs.items(), key=lambda kv: (kv[0][1], kv[0][0]))
        ],
    )


# --- Replay: pruners judged on the learning curves of searches that ran without pruning ---


class Settings(TypedDict, total=False):
    """The preset's pruner settings a point of the grid sets; the rest stay the preset's."""

    pruner_min_epochs: int
    pruner_reduction: int
    pruner_ratio: float


REPLAY_GRID: list[tuple[str, Settings]] = [
    ("median", Settings()),
    *[
        (kind, Settings(pruner_min_epochs=m, pruner_reduction=r))
        for kind in ("hyperband", "sha")
        for m in (1, 2, 3)
        for r in (2, 3, 4)
    ],
    *[
        ("behind", Settings(pruner_min_epochs=m, pruner_ratio=q))
        for m in (1, 2, 3, 4)
        for q in (1.05, 1.1, 1.2, 1.3, 1.5)
    ],
]


Curve = tuple[dict[int, float], float | None, str]


def recorded(path: Path) -> tuple[define.Preset, list[Curve]]:
    """A study that ran without pruning: its preset, and each trained trial's val_loss per epoch
    (in trial order) with its value if it completed, and how it ended."""
    rdb = store.open_storage(f"sqlite:///{path}")
    (name,) = store.names(rdb)
    study, preset = store.load_study(rdb, name)
    if preset.pruner != "none":
        raise SystemExit(f"{path} was searched with pruner {preset.pruner}; replay needs none")
    curves = [
        (
            dict(t.intermediate_values),
            t.value if t.state.name == "COMPLETE" else None,
            t.state.name,
        )
        for t in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
        if t.intermediate_values and t.state.is_finished()
    ]
    return preset, curves


def replay(
    preset: define.Preset,
    curves: list[Curve],
    pruner: str,
    settings: Settings,
) -> tuple[int, float]:
    """Run `curves` through the product's pruner, one trial after another as a single worker
    runs them: the epochs they would have trained, and the best value of those not pruned."""
    import optuna

    judged = store.pruner(replace(preset, pruner=pruner, **settings))
    study = optuna.create_study(study_name="replay", pruner=judged)
    epochs, best = 0, math.inf
    for values, value, state in curves:
        trial = study.ask()
        pruned = False
        for step in sorted(values):
            trial.report(values[step], step)
            epochs += 1
            if trial.should_prune():
                pruned = True
                break
        if pruned or value is None:  # or it ended as recorded: diverged (pruned) or failed
            study.tell(trial, state=optuna.trial.TrialState[state if not pruned else "PRUNED"])
        else:
            study.tell(trial, value)
            best = min(best, value)
    return epochs, best


def label(pruner: str, settings: Settings) -> str:
    short = {"pruner_min_epochs": "from", "pruner_reduction": "keep 1/", "pruner_ratio": "x"}
    return " ".join([pruner, *(f"{short[k]}{v:g}" for k, v in settings.items())]).replace(
        "/ ", "/"
    )


def main_replay(args: argparse.Namespace) -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    studies = [(path, *recorded(path)) for path in args.replay]
    unpruned = [replay(preset, curves, "none", {}) for _, preset, curves in studies]
    rows = []
    for pruner, settings in REPLAY_GRID:
        e, v = [], []
        for (_, preset, curves), (full, best) in zip(studies, unpruned, strict=True):
            epochs, pruned_best = replay(preset, curves, pruner, settings)
            e.append(epochs / full)
            v.append(pruned_best / best)
        met = sum(a <= 1 / 3 and b <= 1.01 for a, b in zip(e, v, strict=True))
        rows.append((common.median(e), label(pruner, settings), e, v, met))
    rows.sort(key=lambda r: (common.median(r[3]) > 1.01, r[0]))
    body = common.table(
        [
            "pruner",
            "epochs ratio, median (min-max)",
            "best val_loss ratio, median (min-max)",
            f"studies meeting the target (of {len(studies)})",
        ],
        [
            [name, common.spread(e, ".2f"), common.spread(v, ".3f"), met]
            for _, name, e, v, met in rows
        ],
    )
    print(body)
    if args.no_write:
        return
    counts = ", ".join(str(len(c)) for _, _, c in studies)
    preset = studies[0][1]
    extra = (
        f"- Replayed: {len(studies)} studies searched without pruning ({counts} trained trials; "
        f"at most {preset.epochs} epochs a trial, early stopping patience {preset.patience}), "
        f"each run through every pruner below, trial after trial as one worker runs them\n"
        f"- Studies: {', '.join(str(p) for p, _, _ in studies)}"
    )
    common.write_section(
        "pruning_replay",
        common.section(
            "3b. Pruners replayed on whole learning curves",
            "Target: at most 1/3 of the epochs of no pruning, best val_loss at most 1 % worse "
            "(ratio <= 1.01), for the same trials. Rows whose median val_loss ratio meets it "
            "first, by epochs.\n\n" + body,
            extra=extra,
        ),
    )


if __name__ == "__main__":
    main()
