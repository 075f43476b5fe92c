"""How well a short first look ranks networks: each rung of a ladder against the full run.

    .venv/bin/python benchmarks/ladder_ranking.py [--configs 24] [--rungs 0.05x2,0.1x3,0.25x4]
        [--full-epochs 8] [--part 0/1] [--threads T]
    .venv/bin/python benchmarks/ladder_ranking.py --report
    .venv/bin/python benchmarks/ladder_ranking.py --warm [--part 0/1] [--threads T]
    .venv/bin/python benchmarks/ladder_ranking.py --warm --report

The configurations are the Fashion-MNIST preset's start and lab runs (those its cost guard
lets through), then seeded random draws from its space, skipping what the guard rejects.
Each is trained at every candidate rung (a complete run on the first SHARE of the training
images for EPOCHS epochs, its cosine decaying within them) and at the full run (all 55,000
training images for --full-epochs epochs, early stopping on), through the product's own
trial code (search.run.Objective), with the same seed at every rung, and validated on the
whole validation split. Every result is appended to a JSON-lines file as it finishes, so a
run that is stopped resumes where it was; the cheapest configurations go first, and `--part I/N`
trains every N-th of them, so N processes share the work. `--max-mflops` leaves out the networks
dearer than that (forward MFLOPs an image) from the draws. `--report` reads the file and writes the
RESULTS.md section: Spearman's rank correlation of each rung's val_loss with the full run's, how
many of the full run's top 3 each rung keeps in its top third (what successive halving with
reduction 3 promotes), and each rung's cost against the full run's, in images seen and in seconds.

`--warm` asks whether a rung should continue the previous rung's weights instead of starting
from the seeded initialisation: each configuration trains the first rung from scratch, then
every later rung and the full run from the weights the one before ended with (a new optimizer,
its cosine decaying within the new run), into a file of its own. Its report sets these beside
the runs from scratch: how the continued rungs rank against the full run from scratch, and
whether the full run that continues the ladder ends better or worse than the one that does not.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
from pathlib import Path
from typing import Any

import common

DEFAULT_OUT = common.ROOT / "benchmarks" / "ladder_ranking.jsonl"
WARM_OUT = common.ROOT / "benchmarks" / "ladder_warm.jsonl"
FULL = "full"
WARM = " warm"  # a label's suffix: this run continued the previous rung's weights


def configs(count: int, seed: int, max_mflops: float | None = None) -> list[tuple[str, Any]]:
    """The preset's enqueued networks the guard allows, then seeded draws from its space;
    with `max_mflops`, only networks of at most that many forward MFLOPs an image."""
    import optuna

    from search import define

    # The preset's parameter budget, and `max_mflops` (None: any) for its FLOP budget.
    preset = dataclasses.replace(define.load_preset("fashion_mnist"), max_mflops=max_mflops)

    def allowed(config: define.Config) -> bool:
        return preset.refusal(config) is None

    chosen = [
        (f"{kind}: {b.name}", b.config) for kind, b in preset.enqueued() if allowed(b.config)
    ]
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    draws = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    while len(chosen) < count:
        trial = draws.ask()
        config = define.suggest(trial, preset.space)
        draws.tell(trial, 0.0)
        if allowed(config):
            chosen.append((f"draw {trial.number}", config))
    return chosen[:count]


def done(out: Path) -> set[tuple[str, str]]:
    if not out.is_file():
        return set()
    rows = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    return {(r["config"], r["rung"]) for r in rows}


def train(args: argparse.Namespace) -> None:
    import optuna

    from search import define, run, train

    train.configure(threads=args.threads)
    preset = define.load_preset("fashion_mnist")
    ladder = common.ladder(args.rungs)
    # The product's trial with the benchmark's ladder and full run; no pruning anywhere.
    preset = dataclasses.replace(preset, rungs=ladder, epochs=args.full_epochs, pruner="none")
    x, y = define.load_train(preset.dataset, args.data_dir)
    data = define.split(x, y, preset.val_size, train_size=preset.train_size)
    objective = run.Objective(preset, data, log=lambda line: None)
    index, parts = (int(v) for v in args.part.split("/"))
    seen = done(args.out)
    compared = {name for name, label in done(DEFAULT_OUT) if label == FULL}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    chosen = configs(args.configs, args.seed, args.max_mflops)
    # The cheapest first, so that a run stopped early has the most configurations whole.
    order = sorted(range(len(chosen)), key=lambda i: define.size(chosen[i][1]).flops)
    for position, number in enumerate(order):
        if position % parts != index:
            continue
        name, config = chosen[number]
        seed = run.trial_seed(preset, number)
        # --warm: only what has a full run from scratch to compare with; a rung continues
        # the one before, so a configuration is trained whole.
        if args.warm and (
            name not in compared or set(labels(ladder)) <= {r for c, r in seen if c == name}
        ):
            continue
        weights = None  # --warm: what the previous rung ended with
        for k, rung in enumerate((*ladder, None)):
            label = FULL if rung is None else f"{rung.share:g}x{rung.epochs}"
            label += WARM if args.warm and k else ""
            if args.warm:
                history, weights = continued(preset, data, config, seed, rung, weights)
                if (name, label) in seen:
                    continue
            elif (name, label) in seen:
                continue
            else:
                trial = optuna.create_study().ask()
                history = objective.fit(trial, config, seed, rung, "")
            best = history.best_epoch - 1
            row = {
                "config": name,
                "architecture": define.describe(config),
                "params": define.size(config).params,
                "rung": label,
                "cost": rung.cost if rung else 1.0 * len(history.val_loss),
                "epochs": len(history.val_loss),
                "val_loss": history.val_loss[best] if history.val_loss else math.inf,
                "val_accuracy": history.val_accuracy[best] if history.val_accuracy else 0.0,
                "seconds": round(sum(history.seconds), 2),
            }
            with args.out.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(
                f"{name:>28} {label:>8}: val_accuracy {row['val_accuracy']:.4f} "
                f"({row['seconds']:.0f} s)",
                flush=True,
            )


def labels(ladder: tuple[Any, ...]) -> list[str]:
    """--warm's labels: the first rung's, then each later one's and the full run's, continued."""
    rest = [f"{r.share:g}x{r.epochs}{WARM}" for r in ladder[1:]]
    return [f"{ladder[0].share:g}x{ladder[0].epochs}", *rest, FULL + WARM]


def continued(
    preset: Any, data: Any, config: Any, seed: int, rung: Any, weights: list[Any] | None
) -> tuple[Any, list[Any]]:
    """One run as the product's trial trains it (run.Objective.fit: the rung's first images,
    its own cosine, early stopping, the whole validation split), starting from `weights` when
    given; returns its history and the weights it ended with."""
    import keras

    from search import train

    epochs = rung.epochs if rung else preset.epochs
    images = max(1, round(rung.share * len(data.x_train))) if rung else len(data.x_train)
    keras.backend.clear_session(free_memory=True)
    keras.utils.set_random_seed(seed)
    model = train.build(
        config,
        flip=preset.flip_ok,
        steps_per_execution=preset.steps_per_execution,
        decay_steps=train.decay_steps(config, images, epochs),
    )
    if weights is not None:
        model.set_weights(weights)
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=preset.patience)
    history = train.fit(
        model,
        config,
        data.x_train[:images],
        data.y_train[:images],
        epochs=epochs,
        validation=(data.x_val, data.y_val),
        callbacks=[stop],
        patience=preset.patience,
    )
    return history, model.get_weights()


def spearman(a: list[float], b: list[float]) -> float:
    from scipy import stats

    return float(stats.spearmanr(a, b).statistic)


def _rung_row(label: str, results: dict[str, Any], full: dict[str, Any]) -> list[object]:
    """One rung's figures over the configurations trained both at it and in full."""
    names = sorted((n for n in full if n in results), key=lambda n: full[n]["val_loss"])
    keep = math.ceil(len(names) / 3)  # what successive halving with reduction 3 promotes
    kept = sorted(names, key=lambda n: results[n]["val_loss"])[:keep]
    full_epochs = sum(full[n]["epochs"] for n in names) / len(names)

    def of(rows: dict[str, Any], key: str, sign: float = 1.0) -> list[float]:
        return [sign * rows[n][key] for n in names]

    seconds = sum(of(results, "seconds")) / sum(of(full, "seconds"))
    return [
        label,
        len(names),
        f"{spearman(of(results, 'val_loss'), of(full, 'val_loss')):.2f}",
        f"{spearman(of(results, 'val_accuracy', -1), of(full, 'val_accuracy', -1)):.2f}",
        f"{sum(n in kept for n in names[:3])} of 3",
        f"{results[names[0]]['cost'] / full_epochs:.3f}",
        f"{seconds:.3f}",
    ]


HEADER = [
    "rung (share x epochs)",
    "configs",
    "Spearman, val_loss",
    "Spearman, val_accuracy",
    "full run's top 3 in the rung's top third",
    "images seen / full run's (mean)",
    "seconds / full run's (sum)",
]


def by_rung(path: Path) -> dict[str, dict[str, dict[str, Any]]]:
    """A results file's rows: rung label -> configuration -> row."""
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    by: dict[str, dict[str, dict[str, Any]]] = {}
    for r in rows:
        by.setdefault(r["rung"], {})[r["config"]] = r
    return by


def report(args: argparse.Namespace) -> str:
    by = by_rung(args.out)
    full = by.pop(FULL, {})
    table = [
        _rung_row(label, results, full)
        for label, results in sorted(by.items(), key=lambda kv: common.ladder(kv[0])[0].share)
        if sum(n in full for n in results) >= 3
    ]
    top = sorted(full, key=lambda n: full[n]["val_loss"])[:3]
    best = "; ".join(
        f"{full[n]['val_accuracy']:.4f} {n} ({full[n]['architecture']}, "
        f"{full[n]['params']:,} params, {full[n]['epochs']} epochs)"
        for n in top
    )
    return f"{common.table(HEADER, table)}\n\nThe full run's top 3 (val_accuracy): {best}.\n"


def warm_report(args: argparse.Namespace) -> str:
    """The continued ladder (args.out) beside the ladder from scratch (DEFAULT_OUT)."""
    scratch, warm = by_rung(DEFAULT_OUT), by_rung(args.out)
    full = scratch[FULL]
    order = labels(common.ladder(args.rungs))
    table = [
        _rung_row(label, warm[label], full)
        for label in order
        if label in warm and sum(n in full for n in warm[label]) >= 3
    ]
    table += [  # the same rungs from scratch (section 3c), over the same configurations
        _rung_row(
            f"{lab.removesuffix(WARM)} from scratch",
            {n: r for n, r in scratch[lab.removesuffix(WARM)].items() if n in warm[lab]},
            full,
        )
        for lab in order[1:-1]
        if lab in warm and lab.removesuffix(WARM) in scratch
    ]
    ended = warm.get(FULL + WARM, {})
    names = sorted((n for n in ended if n in full), key=lambda n: full[n]["val_loss"])
    pairs = [
        [
            f"{n} ({full[n]['architecture']})",
            f"{full[n]['val_loss']:.4f}",
            f"{ended[n]['val_loss']:.4f}",
            f"{full[n]['val_accuracy']:.4f}",
            f"{ended[n]['val_accuracy']:.4f}",
            f"{full[n]['epochs']} / {ended[n]['epochs']}",
        ]
        for n in names
    ]
    better = sum(ended[n]["val_loss"] < full[n]["val_loss"] for n in names)
    gain = [ended[n]["val_accuracy"] - full[n]["val_accuracy"] for n in names]
    summary = (
        f"The full run that continues the ladder ended with the lower val_loss for {better} of "
        f"{len(names)} configurations; its val_accuracy minus that from scratch: median "
        f"{common.median(gain) * 100:+.2f} points (min {min(gain) * 100:+.2f}, max "
        f"{max(gain) * 100:+.2f})."
        if names
        else "No configuration has both full runs yet."
    )
    head = [
        "configuration (best full run from scratch first)",
        "val_loss, from scratch",
        "val_loss, continued",
        "val_accuracy, from scratch",
        "val_accuracy, continued",
        "epochs",
    ]
    return f"{common.table(HEADER, table)}\n\n{summary}\n\n{common.table(head, pairs)}\n"


def main() -> None:
    parser = common.add_common(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    parser.add_argument("--configs", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0, help="the random draws' seed")
    parser.add_argument("--rungs", default="0.05x2,0.1x3,0.25x4")
    parser.add_argument("--full-epochs", type=int, default=8)
    parser.add_argument(
        "--max-mflops", type=float, help="leave out networks dearer than this, forward MFLOPs"
    )
    parser.add_argument("--part", default="0/1", help="I/N: every N-th configuration from I")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, help="the JSON-lines file (one per mode by default)")
    parser.add_argument(
        "--warm", action="store_true", help="each rung continues the previous rung's weights"
    )
    parser.add_argument("--report", action="store_true")
    args = parser.parse_args()
    args.out = args.out or (WARM_OUT if args.warm else DEFAULT_OUT)
    if not args.report:
        train(args)
        return
    if args.warm:
        body = warm_report(args)
        print(body)
        if not args.no_write:
            extra = (
                "- Each configuration of section 3c trained again through this ladder, every "
                "rung after the first and the full run starting from the weights the run "
                "before ended with; the full run from scratch is 3c's. A rung's cost is the "
                "same either way: a trial on the ladder trains every rung below the one it "
                "reaches"
            )
            common.write_section(
                "ladder warm",
                common.section(
                    "3d. Ladder: rungs that continue the previous rung's weights",
                    body,
                    extra=extra,
                ),
            )
        return
    body = report(args)
    print(body)
    if not args.no_write:
        extra = (
            f"- Configurations: the preset's start and lab runs, then RandomSampler(seed="
            f"{args.seed}) draws, all within its cost guard and {args.max_mflops or 'any'} "
            "MFLOPs; trained by this command without --report, in one `--part I/N` process "
            "per core with `--threads 1`\n"
            f"- Full run: all 55,000 training images for at most {args.full_epochs} epochs "
            "(the preset's, chosen from these figures, is 8; it was 30 when they were "
            "measured), early stopping as the preset's; 5,000 validation images for every rung"
        )
        common.write_section(
            "ladder ranking",
            common.section("3c. Ladder: how each rung ranks", body, extra=extra),
        )


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    main()
