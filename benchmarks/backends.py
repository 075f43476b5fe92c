"""Backends and compile settings: seconds per epoch of a trial on each Keras backend.

    .venv/bin/python benchmarks/backends.py [--rounds 3] [--images 4000] [--epochs 3]
        [--backends tensorflow,jax,torch] [--data-dir DIR] [--no-write]

Each arm trains the lab's Fashion test 7 network (130,890 parameters) through the product's
own path (`search.train.build`, `search.train.fit`, validation included) on a subset, with
one backend and one setting of `jit_compile` and `steps_per_execution`; only those two are
changed from what `search.train.compile_options` would choose. A backend is fixed when Keras
is imported, so every arm runs in its own process. The arms alternate in rounds, in a rotated
order, and each is compared with the product's TensorFlow arm of the same round: the figure is
the median of those ratios, never a lone absolute time. Epoch 1 includes compilation and is
reported apart; the seconds per epoch are the median of the later epochs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

import common

SECTION = "backends"
BASELINE = ("tensorflow", False, 16)  # the product on a CPU before this benchmark


@dataclass(frozen=True)
class Arm:
    backend: str
    jit: bool
    steps: int

    @property
    def name(self) -> str:
        return f"{self.backend}, jit_compile={self.jit}, steps_per_execution={self.steps}"


class ArmRun(TypedDict):
    """What one run of an arm reports, from its own process."""

    seconds: list[float]  # per epoch; the first includes compilation
    val_accuracy: float
    jit_after_fit: bool
    devices: str


ARMS = [
    Arm(*BASELINE),
    Arm("tensorflow", True, 16),
    Arm("jax", True, 16),
    Arm("jax", True, 1),
    Arm("jax", False, 16),
    Arm("torch", False, 1),
]


def child(arm: Arm, images: int, epochs: int, data_dir: Path | None) -> ArmRun:
    """One arm in this process (KERAS_BACKEND was set by the parent)."""
    from search import define, train
    from search.train import build, fit

    train.configure()

    config = next(
        b.config for b in define.load_preset("fashion_mnist").baselines if b.name == "lab test 7"
    )
    x, y = define.load_train("fashion_mnist", data_dir)
    split = define.split(x, y, 1000, train_size=images)
    # The product's path with only the two settings under test replaced.
    model = build(
        config, compile_settings={"jit_compile": arm.jit, "steps_per_execution": arm.steps}
    )
    history = fit(
        model,
        config,
        split.x_train,
        split.y_train,
        epochs=epochs,
        validation=(split.x_val, split.y_val),
    )
    return {
        "seconds": history.seconds,
        "val_accuracy": history.val_accuracy[-1],
        "jit_after_fit": bool(model.jit_compile),
        "devices": train.devices(),
    }


def run_arm(arm: Arm, args: argparse.Namespace) -> ArmRun:
    command = [
        sys.executable,
        __file__,
        "--child",
        json.dumps(arm.__dict__),
        "--images",
        str(args.images),
        "--epochs",
        str(args.epochs),
    ]
    if args.data_dir:
        command += ["--data-dir", str(args.data_dir)]
    env = {**os.environ, "KERAS_BACKEND": arm.backend, "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1800)
    if result.returncode != 0:
        raise SystemExit(f"{arm.name} failed:\n{result.stderr[-3000:]}")
    run: ArmRun = json.loads(result.stdout.strip().splitlines()[-1])
    return run


def measure(arms: list[Arm], args: argparse.Namespace) -> dict[Arm, list[ArmRun]]:
    runs: dict[Arm, list[ArmRun]] = {arm: [] for arm in arms}
    for r in range(args.rounds):
        order = arms[r % len(arms) :] + arms[: r % len(arms)]
        for arm in order:
            out = run_arm(arm, args)
            runs[arm].append(out)
            per_epoch = common.median(out["seconds"][1:])
            print(
                f"round {r + 1}: {arm.name}: {per_epoch:.2f} s/epoch after a first of "
                f"{out['seconds'][0]:.1f} s; jit after fit {out['jit_after_fit']}",
                flush=True,
            )
    return runs


def report(runs: dict[Arm, list[ArmRun]], args: argparse.Namespace) -> str:
    base = runs[Arm(*BASELINE)]
    rows = []
    for arm, outs in runs.items():
        later = [common.median(o["seconds"][1:]) for o in outs]
        ratios = [s / common.median(b["seconds"][1:]) for s, b in zip(later, base, strict=True)]
        rows.append(
            [
                arm.name,
                common.spread(ratios, ".2f"),
                common.spread(later, ".2f"),
                common.spread([o["seconds"][0] for o in outs], ".1f"),
                "yes" if all(o["jit_after_fit"] for o in outs) else "no",
                f"{common.median([o['val_accuracy'] for o in outs]):.3f}",
            ]
        )
    header = [
        "arm",
        "time per epoch / TensorFlow's (median, min-max)",
        "s per epoch, epochs 2+",
        "epoch 1 (compiles), s",
        "compiled (jit_compile after fit)",
        "val_accuracy",
    ]
    devices = sorted({str(o["devices"]) for outs in runs.values() for o in outs})
    return (
        f"The lab's test 7 network through `search.train.build` and `search.train.fit` on "
        f"{args.images:,} training and 1,000 validation images, {args.epochs} epochs, batch "
        f"64, {args.rounds} rounds of every arm in its own process, the order rotated each "
        f"round. Devices: {'; '.join(devices)}. Ratio: the arm's seconds per epoch (epochs 2 "
        f"on) over the TensorFlow arm's of the same round (below 1 is faster).\n\n"
        + common.table(header, rows)
    )


def versions() -> str:
    code = (
        "import importlib.metadata as m\n"
        "print(', '.join(f'{p} {m.version(p)}' for p in ('keras', 'tensorflow', 'jax', 'torch')"
        " if __import__('importlib.util').util.find_spec(p)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    return out.stdout.strip()


def main() -> None:
    parser = common.add_common(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--images", type=int, default=4000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--backends", default="tensorflow,jax,torch")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(
            json.dumps(
                child(Arm(**json.loads(args.child)), args.images, args.epochs, args.data_dir)
            )
        )
        return
    wanted = args.backends.split(",")
    arms = [arm for arm in ARMS if arm.backend in wanted or arm == Arm(*BASELINE)]
    runs = measure(arms, args)
    body = report(runs, args)
    print(body)
    if not args.no_write:
        text = common.section(
            "6. Backends and compile settings", body, extra=f"- Versions: {versions()}"
        )
        common.write_section(SECTION, text)


if __name__ == "__main__":
    main()
