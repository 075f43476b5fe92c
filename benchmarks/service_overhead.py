"""Service overhead: what a trial costs besides training, on SQLite and on PostgreSQL.

    .venv/bin/python benchmarks/service_overhead.py [--trials 10 1000] [--samples 10]
        [--typical-from sqlite:///PATH/search.db]

For each backend and each study size (trials already stored), it times what the product does
around the training of one trial, with the product's own functions and the fashion_mnist
preset:

- sampler: `study.ask()` and `search.define.space.suggest` (seeded TPE reads the stored trials);
- storage: the user attributes a trial writes before training, then, for each of 9 epochs,
  the pruning callback's report and should_prune (the pruner reads the study) and the six
  per-epoch attributes, then `tell`;
- model build: `keras.backend.clear_session` and `search.train.build` of the suggested network.

The stored trials are copies of realistic ones (the preset's parameters, 9 epochs of
intermediate values, the same user attributes as a real trial). PostgreSQL is a throwaway
cluster on loopback made with Debian's binaries by the tests' launcher (tests/postgres.py:
password authentication, as the `postgres` user when run as root), with PostgreSQL's default
durability settings (fsync, synchronous_commit and full_page_writes on). The target: the total
below 1 % of a typical trial, whose length comes from --typical-from (a real search's median
trial that trained) or else from --typical-seconds.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import common

from search import define, store
from search.define import describe, impossible, size, suggest
from search.run import trial_seed
from search.train import build, configure

EPOCHS = 9  # writes of a trial that trains this many epochs


# tests/postgres.py's server turns durability off to speed the tests up; these figures are of
# PostgreSQL's default durability, as a deployment runs it.
DURABLE = {"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on"}


@contextlib.contextmanager
def postgres() -> Iterator[str]:
    """A throwaway PostgreSQL cluster (the tests' launcher), with a fresh database's URL."""
    # Imported here: only this backend needs the tests' helpers (and pytest, a dev extra).
    from tests.postgres import start_cluster

    try:
        cluster = start_cluster(DURABLE)
    except RuntimeError as e:  # no server binaries, or it did not start: one sentence
        raise SystemExit(str(e)) from None
    try:
        yield cluster.url(cluster.create_database())
    finally:
        cluster.stop()


def realistic_trials(preset: define.Preset, count: int) -> list[Any]:
    """`count` finished trials as a real search stores them, made quickly in memory."""
    import optuna

    rng = random.Random(0)
    scratch = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    made = []
    for number in range(count):
        trial = scratch.ask()
        config = suggest(trial, preset.space)
        epochs = rng.randint(1, EPOCHS)
        curve = [round(0.6 - 0.03 * e + rng.random() * 0.05, 4) for e in range(epochs)]
        for epoch, value in enumerate(curve):
            trial.report(value, epoch)
        attrs = {
            "architecture": describe(config),
            "params": size(config).params,
            "mflops": round(size(config).flops / 1e6, 3),
            "seed": trial_seed(preset, number),
            "config": config.to_json(),
            "epochs_trained": epochs,
            "best_epoch": epochs,
            "val_loss": min(curve),
            "val_accuracy": 0.9,
            "seconds_per_epoch": 10.0,
            "curves": {
                "loss": curve,
                "accuracy": [0.9] * epochs,
                "val_loss": curve,
                "val_accuracy": [0.9] * epochs,
            },
        }
        for key, attr in attrs.items():
            trial.set_user_attr(key, attr)
        state = (
            optuna.trial.TrialState.COMPLETE
            if epochs == EPOCHS
            else optuna.trial.TrialState.PRUNED
        )
        scratch.tell(
            trial, min(curve) if state == optuna.trial.TrialState.COMPLETE else None, state=state
        )
        made.append(scratch.trials[-1])
    return made


def one_trial(study: Any, preset: define.Preset) -> dict[str, float]:
    """Time the sampler, the storage writes and the model build of one trial."""
    import keras

    t0 = time.perf_counter()
    trial = study.ask()
    config = suggest(trial, preset.space)
    t1 = time.perf_counter()
    cost = size(config)
    for key, value in {
        "architecture": describe(config),
        "params": cost.params,
        "mflops": round(cost.flops / 1e6, 3),
        "seed": 1,
        "config": config.to_json(),
    }.items():
        trial.set_user_attr(key, value)
    curve: list[float] = []
    for epoch in range(EPOCHS):
        curve.append(0.5 - 0.01 * epoch)
        trial.report(curve[-1], epoch)  # what KerasPruningCallback does each epoch
        trial.should_prune()
        for key, value in {
            "epochs_trained": epoch + 1,
            "best_epoch": epoch + 1,
            "val_loss": curve[-1],
            "val_accuracy": 0.9,
            "seconds_per_epoch": 10.0,
            "curves": {"val_loss": curve, "loss": curve},
        }.items():
            trial.set_user_attr(key, value)
    study.tell(trial, curve[-1])
    t2 = time.perf_counter()
    built = 0.0
    if impossible(config) is None:  # the cost guard rejects the others before any build
        keras.backend.clear_session(free_memory=True)
        start = time.perf_counter()
        build(config)
        built = time.perf_counter() - start
    return {"sampler": t1 - t0, "storage": t2 - t1, "build": built}


def measure(
    url: str, preset: define.Preset, stored: list[Any], samples: int
) -> dict[str, list[float]]:
    import optuna

    rdb = store.open_storage(url)
    # The product's sampler and pruner; the stored copies stand for a search's history.
    study = optuna.create_study(
        storage=rdb,
        study_name=f"overhead-{len(stored)}",
        direction="minimize",
        sampler=store.sampler(preset),
        pruner=store.pruner(preset),
    )
    study.add_trials(stored)
    times: dict[str, list[float]] = {"sampler": [], "storage": [], "build": []}
    for _ in range(samples):
        for key, value in one_trial(study, preset).items():
            times[key].append(value)
    built = [b for b in times["build"] if b > 0]
    times["build"] = built or [0.0]
    return times


def typical_seconds(url: str | None, fallback: float) -> tuple[float, str]:
    if not url:
        return fallback, f"{fallback:.0f} s (--typical-seconds)"
    import optuna

    trials = []
    for summary in optuna.get_all_study_summaries(store.open_storage(url, must_exist=True)):
        study = optuna.load_study(
            study_name=summary.study_name, storage=store.open_storage(url, must_exist=True)
        )
        trials += [
            t.duration.total_seconds()
            for t in study.get_trials(deepcopy=False)
            if t.duration and t.user_attrs.get("epochs_trained")
        ]
    if not trials:
        return fallback, f"{fallback:.0f} s (no trained trial in {store.masked(url)})"
    value = common.median(trials)
    return value, (
        f"{value:.0f} s, the median of the {len(trials)} trials that trained in "
        f"{store.masked(url)}"
    )


def main() -> None:
    args = common.add_common(options(), data=False).parse_args()

    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    configure()
    preset = define.load_preset("fashion_mnist")
    typical, typical_text = typical_seconds(args.typical_from, args.typical_seconds)
    rows, raw = measure_all(args, preset, typical)
    body = (
        f"Median of {args.samples} trials per case, milliseconds; storage = the writes of a "
        f"trial that trains {EPOCHS} epochs. A typical trial: {typical_text}.\n\n"
        + common.table(
            [
                "backend",
                "trials stored",
                "sampler ms",
                "storage ms",
                "model build ms",
                "total ms",
                "share of a typical trial",
                "target < 1 %",
            ],
            rows,
        )
    )
    print(body)
    print(
        json.dumps(
            {
                f"{b}-{n}": {k: round(common.median(v), 4) for k, v in t.items()}
                for (b, n), t in raw.items()
            }
        )
    )
    if not args.no_write:
        common.write_section("service_overhead", common.section("5. Service overhead", body))


def options() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--trials", type=int, nargs="+", default=[10, 1000], help="trials already in the study"
    )
    parser.add_argument("--samples", type=int, default=10, help="trials timed per case")
    parser.add_argument("--typical-from", metavar="URL", help="a real search's storage")
    parser.add_argument("--typical-seconds", type=float, default=120.0)
    parser.add_argument(
        "--backends", nargs="+", default=["sqlite", "postgresql"], choices=["sqlite", "postgresql"]
    )
    return parser


def measure_all(
    args: argparse.Namespace, preset: define.Preset, typical: float
) -> tuple[list[list[str]], dict[tuple[str, int], dict[str, list[float]]]]:
    """Every backend at every study size: the rows of the table, and the times themselves
    (seconds a trial, by what they went to)."""
    made = {n: realistic_trials(preset, n) for n in args.trials}
    rows: list[list[str]] = []
    raw: dict[tuple[str, int], dict[str, list[float]]] = {}
    folder = Path(tempfile.mkdtemp(prefix="overhead-"))
    for backend in args.backends:
        with (
            postgres()
            if backend == "postgresql"
            else contextlib.nullcontext(f"sqlite:///{folder / 'bench.db'}")
        ) as url:
            # Each study size gets its own study (and so its own rows) in the same database.
            for n in args.trials:
                times = measure(url, preset, made[n], args.samples)
                raw[backend, n] = times
                total = sum(common.median(v) for v in times.values())
                share = total / typical
                rows.append(
                    [
                        backend,
                        f"{n:,}",
                        *(
                            f"{common.median(times[k]) * 1000:.0f}"
                            for k in ("sampler", "storage", "build")
                        ),
                        f"{total * 1000:.0f}",
                        f"{share:.2%}",
                        "met" if share < 0.01 else "not met",
                    ]
                )
                print(" | ".join(rows[-1]), flush=True)
    return rows, raw


if __name__ == "__main__":
    main()
