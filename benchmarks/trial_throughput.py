"""Trial throughput: the product's training path against the lab's plain Keras code.

    .venv/bin/python benchmarks/trial_throughput.py [--reps 5] [--levers] [--profile]
        [--data-dir DIR] [--no-write]

Both train the lab's Fashion test 7 network (130,890 parameters) for one epoch on the 55,000
training images and validate on the 5,000 held-out ones, as every trial does:

- the lab: float32 arrays scaled in NumPy, one-hot labels, `model.fit(x, y, batch_size=64,
  validation_data=...)` with Keras' defaults (jit_compile="auto");
- ours: `search.train.build` and `search.train.fit`, the code path of every trial, with
  the settings of studies/fashion_mnist.toml.

The two alternate (A B B A ...) in one process, after one warm-up epoch each, so a slow spell
of a shared machine hits both; the figure is the median of the pairwise ratios.

--levers measures each candidate speed-up alone on chunks of the training set, interleaved
the same way: input pipeline, steps_per_execution, batch size, bfloat16, XLA, validation
cost, and TensorFlow's thread pools (in child processes, since they are fixed at start-up).
--profile runs TensorFlow's profiler over the trial path and prints where a step's time goes.

Nothing outside this repository is read except the Fashion-MNIST IDX files (--data-dir, else
Debian's dataset-fashion-mnist). It runs unchanged on a GPU machine and names the device.
"""

from __future__ import annotations

import argparse
import functools
import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import common
import kernels
import numpy as np

from search import define
from search.define import Config, size
from search.train import VAL_BATCH, build, configure, fit

SECTION = "trial_throughput"


def lab_config() -> Config:
    preset = define.load_preset("fashion_mnist")
    return next(b.config for b in preset.baselines if b.name == "lab test 7")


def device_name() -> str:
    """The device the Keras backend trains on, in words; it starts the backend."""
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        gpus = [d for d in jax.devices() if d.platform == "gpu"]
        if gpus:
            return f"GPU: {gpus[0].device_kind} ({len(gpus)} visible to JAX)"
    elif backend == "torch":
        import torch

        if torch.cuda.is_available():
            return f"GPU: {torch.cuda.get_device_name(0)} (visible to PyTorch)"
    else:
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            details = tf.config.experimental.get_device_details(gpus[0])
            return f"GPU: {details.get('device_name', gpus[0].name)} ({len(gpus)} visible)"
    return f"CPU: {common.cpu_model()} ({common.nproc()} cores), no GPU visible to {backend}"


def versions() -> str:
    import keras

    backend = keras.backend.backend()
    module = __import__({"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}[backend])
    return f"{backend} {module.__version__}, Keras {keras.__version__}"


# ---------------------------------------------------------------------------------------------
# The headline: one full epoch each way.
# ---------------------------------------------------------------------------------------------
def headline(data: define.Split, reps: int, batch_sizes: list[int]) -> tuple[str, list[str]]:
    preset = define.load_preset("fashion_mnist")
    n = len(data.x_train)
    runners = headline_runners(data, batch_sizes, preset.steps_per_execution)
    for name, run in runners.items():  # warm-up epoch: tracing, allocator, caches
        print(f"warm-up: {name} {common.timed(run):.1f} s", flush=True)
    seconds: dict[str, list[float]] = {name: [] for name in runners}
    names = list(runners)
    for rep in range(reps):
        for name in names if rep % 2 == 0 else names[::-1]:
            seconds[name].append(common.timed(runners[name]))
        print(
            f"rep {rep + 1}: " + ", ".join(f"{k} {v[-1]:.1f} s" for k, v in seconds.items()),
            flush=True,
        )
    rows, verdicts = headline_rows(seconds, n)
    body = (
        f"One epoch of the lab's test 7 network on {n:,} images plus validation on "
        f"{len(data.x_val):,}, {reps} interleaved repetitions after a warm-up epoch each; "
        f"ours uses steps_per_execution={preset.steps_per_execution} "
        "(studies/fashion_mnist.toml). Ratio: the lab's seconds / ours, pair by pair.\n\n"
        + common.table(
            [
                "code",
                "seconds per epoch, median (min-max)",
                "samples/s, median (min-max)",
                "ratio to the lab",
                "target >= 1.5x",
            ],
            rows,
        )
    )
    return body, verdicts


def headline_runners(
    data: define.Split, batch_sizes: list[int], steps: int
) -> dict[str, Callable[[], object]]:
    """One epoch with validation, each: the lab's code, and ours at each batch size."""
    import keras

    base = lab_config()
    xf, yf = common.lab_arrays(data.x_train, data.y_train)
    xvf, yvf = common.lab_arrays(data.x_val, data.y_val)

    runners: dict[str, Callable[[], object]] = {}
    keras.utils.set_random_seed(0)
    lab: Any = common.lab_model(base)
    runners["lab"] = lambda: lab.fit(
        xf, yf, batch_size=64, epochs=1, validation_data=(xvf, yvf), verbose=0
    )
    for batch in batch_sizes:
        config = replace(base, batch_size=batch)
        model = build(config, steps_per_execution=steps)

        def ours(model: Any = model, config: Config = config) -> object:
            return fit(
                model,
                config,
                data.x_train,
                data.y_train,
                epochs=1,
                validation=(data.x_val, data.y_val),
            )

        runners[f"ours, batch {batch}"] = ours
    assert size(base).params == lab.count_params() == 130_890
    return runners


def headline_rows(seconds: dict[str, list[float]], n: int) -> tuple[list[list[str]], list[str]]:
    """A row for each code timed on `n` images, and for ours, the verdict on the target."""
    rows, verdicts = [], []
    for name in seconds:
        rate = [n / s for s in seconds[name]]
        ratio = [lab_s / s for lab_s, s in zip(seconds["lab"], seconds[name], strict=True)]
        row = [name, common.spread(seconds[name], ".1f"), common.spread(rate)]
        if name == "lab":
            row += ["1.00", "-"]
        else:
            met = common.median(ratio) >= 1.5
            row += [common.spread(ratio, ".2f"), "met" if met else "not met"]
            verdicts.append(f"{name}: {common.median(ratio):.2f}x the lab's samples/s")
        rows.append(row)
    return rows, verdicts


# ---------------------------------------------------------------------------------------------
# Levers, each alone, on chunks of the training set.
# ---------------------------------------------------------------------------------------------
def lever_model(
    config: Config, *, spe: int = 1, jit: bool = False, policy: str = "float32"
) -> Any:
    import keras

    keras.mixed_precision.set_global_policy(policy)
    try:
        model = build(config, steps_per_execution=spe)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    if jit:
        model.compile(
            optimizer=type(model.optimizer)(learning_rate=config.learning_rate),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
            steps_per_execution=spe,
            jit_compile=True,
        )
    return model


def tf_dataset(x: np.ndarray, y: np.ndarray, batch: int) -> Any:
    import tensorflow as tf

    return (
        tf.data.Dataset.from_tensor_slices((x, y))
        .shuffle(len(x))
        .batch(batch)
        .prefetch(tf.data.AUTOTUNE)
    )


def levers(data: define.Split, reps: int, images: int) -> str:
    import keras

    base = lab_config()
    x, y = data.x_train[:images], data.y_train[:images]
    runs = {}
    for name, make in lever_variants(base, x, y).items():
        keras.utils.set_random_seed(0)
        runs[name] = make()
        runs[name]()  # warm-up: tracing
    val_model = lever_model(base)
    val_model.evaluate(data.x_val, data.y_val, batch_size=64, verbose=0)
    val_model.evaluate(data.x_val, data.y_val, batch_size=VAL_BATCH, verbose=0)

    seconds: dict[str, list[float]] = {name: [] for name in runs}
    val: dict[int, list[float]] = {64: [], VAL_BATCH: []}
    names = list(runs)
    for rep in range(reps):
        for name in names if rep % 2 == 0 else names[::-1]:
            seconds[name].append(common.timed(runs[name]))
        for batch in val:
            evaluate = functools.partial(
                val_model.evaluate, data.x_val, data.y_val, batch_size=batch, verbose=0
            )
            val[batch].append(common.timed(evaluate))
        print(f"levers rep {rep + 1}/{reps} done", flush=True)
    return lever_report(data, images, reps, seconds, val)


def lever_variants(
    base: Config, x: np.ndarray, y: np.ndarray
) -> dict[str, Callable[[], Callable[[], object]]]:
    """Each variant's maker: it builds the model and returns one epoch of its fit on (x, y)."""
    xf, yf = common.lab_arrays(x, y)

    def with_batch(batch: int) -> Config:
        return replace(base, batch_size=batch)

    def numpy_fit(model: Any, batch: int) -> Callable[[], object]:
        return lambda: model.fit(x, y, batch_size=batch, epochs=1, verbose=0)

    def numpy_run(config: Config = base, batch: int = 64, **lever: Any) -> Callable[[], object]:
        """Our path, with lever_model's `lever` moved, fitted on the uint8 NumPy arrays."""
        return numpy_fit(lever_model(config, **lever), batch)

    def lab_run() -> Callable[[], object]:
        model: Any = common.lab_model(base)
        return lambda: model.fit(xf, yf, batch_size=64, epochs=1, verbose=0)

    def tf_data_run() -> Callable[[], object]:
        model = lever_model(base)
        return lambda: model.fit(tf_dataset(x, y, 64), epochs=1, verbose=0)

    variants: dict[str, Callable[[], Callable[[], object]]] = {
        "lab: float32 NumPy, one-hot, batch 64": lab_run,
        "uint8 in memory, scaled in the graph (NumPy into fit)": numpy_run,
        "uint8 through tf.data, shuffle + prefetch": tf_data_run,
        **{
            f"steps_per_execution {spe}": functools.partial(numpy_run, spe=spe)
            for spe in (4, 16, 64)
        },
        **{f"batch {b}": functools.partial(numpy_run, with_batch(b), b) for b in (128, 256)},
        "mixed_bfloat16 policy": functools.partial(numpy_run, policy="mixed_bfloat16"),
        "XLA (jit_compile=True)": functools.partial(numpy_run, jit=True),
    }
    return variants


def lever_report(
    data: define.Split,
    images: int,
    reps: int,
    seconds: dict[str, list[float]],
    val: dict[int, list[float]],
) -> str:
    """Each lever's samples/s against the lab's code, and what validation costs an epoch."""
    names = list(seconds)
    lab_name = names[0]
    rows = []
    for name in names:
        ratio = [a / b for a, b in zip(seconds[lab_name], seconds[name], strict=True)]
        rows.append(
            [name, common.spread([images / s for s in seconds[name]]), common.spread(ratio, ".2f")]
        )
    epoch_s = common.median(seconds[names[1]]) * len(data.x_train) / images
    val_rows = [
        [
            f"validation of {len(data.x_val):,} images at batch {b}",
            common.spread(v, ".2f"),
            f"{common.median(v) / epoch_s:.1%}",
        ]
        for b, v in val.items()
    ]
    return (
        f"Each lever alone on the test 7 network, {images:,}-image chunks, {reps} "
        "interleaved repetitions; ratio to the lab's code, pair by pair.\n\n"
        + common.table(["variant", "samples/s, median (min-max)", "ratio to the lab"], rows)
        + "\n\nValidation cost per epoch (forward pass only), against one training epoch of "
        "55,000 images on the uint8 path:\n\n"
        + common.table(["what", "seconds, median (min-max)", "share of an epoch"], val_rows)
    )


def thread_child(intra: int, inter: int, images: int, data_dir: str | None) -> None:
    """One child: pin the pools, warm up, time one chunk on the trial path, print JSON."""
    import os

    configure()  # imports TF quietly; the pools are still unset until the first op
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(intra)
    tf.config.threading.set_inter_op_parallelism_threads(inter)
    images_all, labels = define.load_train("fashion_mnist", Path(data_dir) if data_dir else None)
    data = define.split(images_all, labels, 5000)
    x, y = data.x_train[:images], data.y_train[:images]
    config = lab_config()
    model = build(config)
    model.fit(x[:1280], y[:1280], batch_size=64, epochs=1, verbose=0)
    seconds = common.timed(lambda: fit(model, config, x, y, epochs=1))
    print(json.dumps({"intra": intra, "inter": inter, "seconds": seconds, "pid": os.getpid()}))


def threads(reps: int, images: int, data_dir: Path | None) -> str:
    n = common.nproc()
    settings = sorted({(n, n), (n, 1), (1, 1), (max(1, n // 2), 1)}, reverse=True)
    seconds: dict[tuple[int, int], list[float]] = {s: [] for s in settings}
    for rep in range(reps):
        for intra, inter in settings if rep % 2 == 0 else settings[::-1]:
            cmd = [
                sys.executable,
                __file__,
                "--thread-child",
                str(intra),
                str(inter),
                "--lever-images",
                str(images),
            ]
            if data_dir:
                cmd += ["--data-dir", str(data_dir)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            seconds[intra, inter].append(json.loads(out.strip().splitlines()[-1])["seconds"])
        print(f"threads rep {rep + 1}/{reps} done", flush=True)
    default = (n, n)
    rows = [
        [
            f"intra {a}, inter {b}" + (" (TensorFlow's default)" if (a, b) == default else ""),
            common.spread([images / s for s in v]),
            common.spread([d / s for d, s in zip(seconds[default], v, strict=True)], ".2f"),
        ]
        for (a, b), v in seconds.items()
    ]
    return (
        f"TensorFlow's thread pools on the trial path (one process at a time, {images:,} "
        f"images, {reps} interleaved repetitions, each in a fresh process):\n\n"
        + common.table(["threads", "samples/s, median (min-max)", "ratio to the default"], rows)
    )


# ---------------------------------------------------------------------------------------------
# Profile: where a step's time goes.
# ---------------------------------------------------------------------------------------------
def main() -> None:
    args = common.add_common(options()).parse_args()
    if args.thread_child:
        intra, inter = args.thread_child
        thread_child(
            intra, inter, args.lever_images, str(args.data_dir) if args.data_dir else None
        )
        return

    configure()
    device = device_name()
    print(f"Device: {device}; {versions()}", flush=True)
    images, labels = define.load_train("fashion_mnist", args.data_dir)
    data = define.split(images, labels, 5000, args.images)
    body, verdicts = headline(data, args.reps, args.batch)
    parts = [body]
    if args.levers:
        parts.append(levers(data, args.lever_reps, args.lever_images))
        parts.append(threads(args.lever_reps, args.lever_images, args.data_dir))
    if args.profile:
        parts.append(kernels.profile(data, lab_config(), steps=200))
    text = "\n\n".join(parts)
    print(text)
    print("\n".join(verdicts))
    if not args.no_write:
        name = SECTION + "_gpu" if device.startswith("GPU") else SECTION
        title = "1. Trial throughput against the lab's code" + (
            " (GPU)" if name.endswith("gpu") else ""
        )
        common.write_section(
            name,
            common.section(
                title,
                text,
                extra=f"- Device: {device}; {versions()}",
            ),
        )


def options() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5, help="repetitions of each epoch")
    parser.add_argument(
        "--batch",
        type=int,
        nargs="+",
        default=[64, 128],
        help="batch sizes of our path (the lab's is 64)",
    )
    parser.add_argument("--levers", action="store_true", help="also measure each lever")
    parser.add_argument("--lever-reps", type=int, default=5)
    parser.add_argument("--lever-images", type=int, default=12_800)
    parser.add_argument("--profile", action="store_true", help="also profile the trial path")
    parser.add_argument("--images", type=int, help="train on fewer images (a quick check)")
    parser.add_argument("--thread-child", type=int, nargs=2, help=argparse.SUPPRESS)
    return parser


if __name__ == "__main__":
    main()
