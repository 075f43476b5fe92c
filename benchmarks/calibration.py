"""Calibration, not search: one fixed network under each new training piece, one at a time.

    .venv/bin/python benchmarks/calibration.py [--epochs 30] [--variants start,crop,...]
        [--part I/N] [--threads 1] [--out benchmarks/calibration.jsonl] [--images N]
    .venv/bin/python benchmarks/calibration.py --storage URL --trial N [--study NAME] ...
    .venv/bin/python benchmarks/calibration.py --report

The Fashion-MNIST preset's start network, trained the product's way (search.train.
build_and_fit: its seed, its cosine decay over --epochs) on the preset's 55,000 training
images and validated on its 5,000 every epoch, then tested once, with and without test-time
flips (search.train.network.with_flips). Each variant changes one thing:

    start    the preset's start as it is (flips, AdamW on a cosine, batch 128), or the trial's
    crop     its augmentation with pad-and-crop (for the start, "crop+flip")
    erase    its augmentation with random erasing ("flip+erase")
    ema      its weights averaged (ema)
    resnet   ResNet-20's layout (stages 16-32-64 of three blocks) under a 64-unit head, with
             the start's recipe
    field    the start with all of crop, flip, erasing and EMA at once: the field's recipe

With --trial, the variants change a stored trial's network instead (its own augmentation with
the pieces added, on a cosine as retrain-best's final recipe trains it): what the preset's
final_augment and final_ema are chosen on, on validation.

Each finished variant appends one JSON row to --out as it ends, so a stopped run keeps what
it did, and a rerun skips what is there. `--part I/N` runs every N-th variant from the I-th,
for one process per core. --report prints the table and writes section "calibration" of
benchmarks/RESULTS.md. The test set is read here by design: this measures the pieces, it
chooses nothing a search uses.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import common

VARIANTS = ("start", "crop", "erase", "ema", "resnet", "field")
OUT = Path(__file__).with_name("calibration.jsonl")


def base(args: argparse.Namespace) -> Any:
    """The network the variants change: the preset's start, or a stored trial's on a cosine."""
    from search import define

    if args.trial is None:
        return define.load_preset("fashion_mnist").starts[0].config
    import optuna

    from search import store

    study = optuna.load_study(study_name=args.study, storage=args.storage)
    return dataclasses.replace(store.config_of(study.trials[args.trial]), schedule="cosine")


def variant(name: str, start: Any) -> Any:
    """`start` with one piece changed."""
    from search import define

    with_pieces = define.with_pieces
    changes: dict[str, dict[str, Any]] = {
        "start": {},
        "crop": {"augment": with_pieces(start.augment, "crop")},
        "erase": {"augment": with_pieces(start.augment, "erase")},
        "ema": {"ema": True},
        "field": {"augment": with_pieces(start.augment, "crop+erase"), "ema": True},
        "resnet": {
            "convs": (),
            "stages": tuple(define.Stage(16 * 2**i, 3) for i in range(3)),
            "dense": (64,),
            "dropout": "none",
            "dropout_rate": 0.0,
            "head": "gap",
        },
    }
    return dataclasses.replace(start, **changes[name])


def train(args: argparse.Namespace) -> None:
    from search import define, train

    train.configure(threads=args.threads)
    preset = define.load_preset("fashion_mnist")
    x, y = define.load_train(preset.dataset, args.data_dir)
    data = define.split(x, y, preset.val_size, train_size=preset.train_size)
    tests = define.load_test(preset.dataset, args.data_dir)
    start = base(args)
    here = "start" if args.trial is None else f"#{args.trial}"
    rows = [json.loads(line) for line in _lines(args.out)]
    seen = {r["variant"] for r in rows if r.get("base", "start") == here}
    index, parts = (int(v) for v in args.part.split("/"))
    names = [n for i, n in enumerate(args.variants) if i % parts == index and n not in seen]
    for name in names:
        config = variant(name, start)
        started = time.perf_counter()

        def on_epoch(history: Any, epoch: int, name: str = name) -> None:
            print(
                f"{name} epoch {epoch + 1}/{args.epochs}: val_accuracy "
                f"{history.val_accuracy[-1]:.4f} ({history.seconds[-1]:.0f} s)",
                flush=True,
            )

        model, history = train.build_and_fit(
            preset,
            config,
            data.x_train[: args.images],
            data.y_train[: args.images],
            seed=args.seed,
            epochs=args.epochs,
            validation=(data.x_val, data.y_val),
            on_epoch=on_epoch,
        )
        model = train.for_inference(model)
        flips = train.with_flips(model)
        val = (data.x_val, data.y_val)
        _, val_plain = model.evaluate(*val, batch_size=1024, verbose=0)
        _, val_flipped = flips.evaluate(*val, batch_size=1024, verbose=0)
        _, plain = model.evaluate(*tests, batch_size=1024, verbose=0)
        _, flipped = flips.evaluate(*tests, batch_size=1024, verbose=0)
        row = {
            "base": here,
            "variant": name,
            "architecture": define.describe(config),
            "params": define.size(config).params,
            "mflops": round(define.size(config).flops / 1e6, 1),
            "epochs": len(history.val_loss),
            "val_accuracy": history.val_accuracy[-1],
            "best_val_accuracy": max(history.val_accuracy),
            # The final model (with EMA, its averaged weights) on the validation split, and
            # with test-time flips: what chooses the preset's final recipe, never the test set.
            "val_accuracy_final": float(val_plain),
            "val_accuracy_final_flips": float(val_flipped),
            "train_accuracy": history.accuracy[-1],
            "history": history.as_dict(),
            "test_accuracy": float(plain),
            "test_accuracy_flips": float(flipped),
            "minutes": round((time.perf_counter() - started) / 60, 1),
        }
        with args.out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(json.dumps(row), flush=True)


def _lines(path: Path) -> list[str]:
    return (
        [line for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    )


def report(args: argparse.Namespace) -> None:
    rows = [json.loads(line) for line in _lines(args.out)]
    header = [
        "network",
        "variant",
        "architecture",
        "params",
        "MFLOPs",
        "epochs",
        "minutes",
        "val_accuracy (last)",
        "val, flips",
        "train accuracy",
        "test",
        "test, flips",
    ]
    table = common.table(
        header,
        [
            [
                r.get("base", "start"),
                r["variant"],
                f"`{r['architecture']}`",
                f"{r['params']:,}",
                r["mflops"],
                r["epochs"],
                r["minutes"],
                f"{r['val_accuracy_final']:.2%}",
                f"{r['val_accuracy_final_flips']:.2%}",
                f"{r['train_accuracy']:.2%}",
                f"{r['test_accuracy']:.2%}",
                f"{r['test_accuracy_flips']:.2%}",
            ]
            for r in rows
        ],
    )
    print(table)
    if not args.no_write:
        extra = (
            "- Each row: this script without --report, for the row's epochs (`--epochs`) on "
            "the preset's 55,000 training images, seed 42; a stored trial's network with "
            "`--storage URL --trial N`; one process per core, one thread each\n"
        ) + "".join(f"- {note}\n" for note in args.note)
        common.write_section(
            "calibration",
            common.section("9. Calibration: one network, each piece", table, extra=extra),
        )


def main() -> None:
    parser = common.add_common(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument(
        "--variants", type=lambda s: s.split(","), default=list(VARIANTS), help=",".join(VARIANTS)
    )
    parser.add_argument("--part", default="0/1", help="I/N: every N-th variant from the I-th")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--images", type=int, help="the first N training images (a smoke run)")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--storage", help="with --trial: the study's storage URL")
    parser.add_argument("--study", help="with --trial: the study (default: the only one)")
    parser.add_argument("--trial", type=int, help="change this stored trial's network instead")
    parser.add_argument("--report", action="store_true")
    parser.add_argument(
        "--note", action="append", default=[], help="with --report: a line for the section"
    )
    args = parser.parse_args()
    report(args) if args.report else train(args)


if __name__ == "__main__":
    main()
