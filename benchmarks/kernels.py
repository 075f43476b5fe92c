"""Where a trial's time goes: TensorFlow's profiler over the trial path, kernel by kernel.

Run by `benchmarks/trial_throughput.py --profile`, whose section of RESULTS.md it adds to.
"""

from __future__ import annotations

import collections
import functools
import glob
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import common

from search import define
from search.define import Config
from search.train import build, fit


def profile(data: define.Split, network: Config, steps: int) -> str:
    """`steps` steps of one epoch on the trial path, at batch 64 and 128, under TensorFlow's
    profiler: where the time went, kernel by kernel."""
    import tensorflow as tf
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    preset = define.load_preset("fashion_mnist")
    out = []
    for batch in (64, 128):
        config = replace(network, batch_size=batch)
        model = build(config, steps_per_execution=preset.steps_per_execution)
        x, y = data.x_train[: batch * steps], data.y_train[: batch * steps]
        fit(model, config, x[: batch * 10], y[: batch * 10], epochs=1)
        logdir = tempfile.mkdtemp(prefix="tf-profile-")
        tf.profiler.experimental.start(logdir)
        wall = common.timed(functools.partial(fit, model, config, x, y, epochs=1))
        tf.profiler.experimental.stop()
        space = xplane_pb2.XSpace()
        path = sorted(glob.glob(f"{logdir}/**/*.xplane.pb", recursive=True))[-1]
        space.ParseFromString(Path(path).read_bytes())
        by_kind = kernel_seconds(space)
        total = sum(by_kind.values())
        rows = [[k, f"{v:.2f}", f"{v / total:.0%}"] for k, v in by_kind.most_common(10)]
        out.append(
            f"Batch {batch}: {steps} steps in {wall:.2f} s ({wall / steps * 1000:.1f} ms a "
            f"step, {batch * steps / wall:.0f} samples/s); kernel time summed over "
            f"TensorFlow's compute threads {total:.2f} s "
            f"({total / steps * 1000:.1f} ms a step); the ten largest:\n\n"
            + common.table(["kernel (layer)", "seconds", "share"], rows)
        )
    return (
        "TensorFlow's profiler (tf.profiler.experimental) over the trial path:\n\n"
        + "\n\n".join(out)
    )


def kernel_seconds(space: Any) -> collections.Counter[str]:
    """Seconds of each kernel (and the layer it ran for) on TensorFlow's compute threads, from
    a profile (an XSpace)."""
    by_kind: collections.Counter[str] = collections.Counter()
    for plane in space.planes:
        if plane.name != "/host:CPU":
            continue
        for line in plane.lines:
            if not line.name.startswith("tf_Compute"):
                continue
            for event in line.events:
                name = plane.event_metadata[event.metadata_id].name
                if ":" not in name or "::" in name:
                    continue  # the executor's own events enclose the kernels: not counted
                scope, kind = name.rsplit(":", 1)
                layer = next(
                    (
                        p
                        for p in scope.split("/")
                        if p.startswith(("conv2d", "dense", "max_pooling", "rescaling", "flatten"))
                    ),
                    "other",
                )
                if "gradient_tape" in scope:
                    layer += " backward"
                by_kind[f"{kind} ({layer})"] += event.duration_ps / 1e12
    return by_kind
