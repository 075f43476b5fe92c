"""KerasTuner's Hyperband against the search: best val_accuracy at fixed minutes, same split.

    .venv/bin/python benchmarks/peer_kerastuner.py [--minutes 45] [--marks 5,10,15,20,30,45]
        [--dataset fashion_mnist] [--workers auto] [--images N] [--max-epochs E]
        [--folder DIR] [--no-retrain] [--data-dir DIR] [--no-write]

Needs keras-tuner (and tensorboard, which it imports), which the product does not:
`pip install -e '.[bench]'`.

Two searches run back to back, each in a fresh process, on the same data and split (the
preset's: the first 5,000 training images validate; with --images N only the next N train),
each for --minutes of wall clock counted from the launch of its process:

- KerasTuner's Hyperband (objective val_accuracy), written the way its documentation shows:
  a build_model(hp) over the lab's axes, read from the preset's [space] (1-5 convs, each
  one's filters, kernel and pooling, dropout placement and rate, 1-2 Dense layers and their
  width, the learning rate), RMSprop, batch 64, EarlyStopping on val_loss with patience 3,
  max_epochs the preset's epochs and factor 3. No trial starts after the deadline, and the
  running one stops after its current batch.
- The search: `search start --dataset D --hours MINUTES/60 --workers W` in a fresh SQLite
  storage (with --images, the shipped preset plus `train_size = N`), stopped at the deadline
  with SIGTERM, as Ctrl-C would stop it.

A side's best val_accuracy at a mark is the highest val_accuracy of any epoch that ended by
then, in any trial, running or not: KerasTuner's on_epoch_end, and the search's epoch lines,
timed as they are printed. That is what a user watching either search sees, and it does not
penalise a trial for training long. Beside it, the same over the trials that had ended by the
mark: KerasTuner's trial score, the highest value in the search's per-epoch curves, and the
search's own record (the val_accuracy at each trial's lowest-val_loss epoch).

Then (unless --no-retrain) each side's best network is retrained the way `retrain-best`
retrains the search's best, by the product's own retrain on the preset the search ran: all the
training images, the preset's final recipe over the network's best epoch count, tested once.
KerasTuner's best is the trial its oracle ranks first, rebuilt from its hyperparameters by the
same function that defined them; it keeps its optimizer (RMSprop), learning rate and batch.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import common

EPOCH_LINE = re.compile(r"trial (\d+) epoch (\d+)/\d+: .*val_accuracy ([0-9.]+)")

SECTION = "peer_kerastuner"
BATCH = 64  # the lab's
PATIENCE = 3  # KerasTuner's documented example stops on val_loss after 3 epochs without gain
FACTOR = 3
ITERATIONS = 100  # Hyperband sweeps: more than fit in the budget, so the clock ends the search
STOP_SECONDS = 120  # how long a stopped search may take to exit


class TimeUp(Exception):
    """The KerasTuner side's deadline passed before a new trial."""


def lab_config(hp: Any, space: Any) -> Any:
    """The network a KerasTuner trial's hyperparameters describe, over the lab's axes.

    It declares the hyperparameters as it reads them, the way KerasTuner's build_model(hp)
    does, so it both defines the space and rebuilds the best trial's network for the retrain.
    """
    from search.define import Config, Conv

    dropout = hp.Choice("dropout", list(space.dropout))
    rate = hp.Float("dropout_rate", *space.dropout_rate)
    convs = []
    side = 28  # the feature map's width, so that no layer asks for more than is left
    for i in range(hp.Int("conv_layers", *space.conv_layers)):
        filters = hp.Choice(f"filters_{i}", list(space.filters))
        kernel = hp.Choice(f"kernel_{i}", list(space.kernel))
        if kernel > side:
            break
        side -= kernel - 1
        pool = bool(hp.Choice(f"pool_{i}", list(space.pool))) and side >= 2
        if pool:
            side //= 2
        convs.append(Conv(filters, kernel, pool))
    dense = [
        hp.Choice(f"units_{i}", list(space.dense_units))
        for i in range(hp.Int("dense_layers", *space.dense_layers))
    ]
    learning_rate = hp.Float("learning_rate", *space.learning_rate, sampling="log")
    return Config(
        convs=tuple(convs),
        dense=tuple(dense),
        dropout=dropout,
        dropout_rate=rate,
        learning_rate=learning_rate,
        batch_size=BATCH,
    )


def build_model_for(space: Any) -> Any:
    """KerasTuner's build_model(hp) over the lab's axes, bounded by the preset's space."""
    import keras
    from keras import layers

    def build_model(hp: Any) -> Any:
        config = lab_config(hp, space)
        model = keras.Sequential([keras.Input((28, 28, 1)), layers.Rescaling(1 / 255)])
        for conv in config.convs:
            model.add(layers.Conv2D(conv.filters, conv.kernel, activation="relu"))
            if conv.pool:
                model.add(layers.MaxPooling2D(2))
                if config.has_dropout_blocks:
                    model.add(layers.Dropout(config.dropout_rate))
        model.add(layers.Flatten())
        if config.has_dropout_flatten:
            model.add(layers.Dropout(config.dropout_rate))
        for units in config.dense:
            model.add(layers.Dense(units, activation="relu"))
        model.add(layers.Dense(10, activation="softmax"))
        model.compile(
            optimizer=keras.optimizers.RMSprop(config.learning_rate),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
        )
        return model

    return build_model


def timed_hyperband(started: float, deadline: float) -> Any:
    """A Hyperband tuner that keeps to a deadline and records each trial's end."""
    import keras_tuner

    class TimedHyperband(keras_tuner.Hyperband):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.ends: list[dict[str, Any]] = []
            self.epoch_ends: list[dict[str, Any]] = []
            self.epochs = 0
            self.trial_epochs = 0

        def pre_create_trial(self) -> None:
            if time.time() >= deadline:
                raise TimeUp

        def on_trial_begin(self, trial: Any) -> None:
            super().on_trial_begin(trial)
            self.trial_epochs = 0

        def on_batch_end(self, trial: Any, model: Any, batch: int, logs: Any = None) -> None:
            if time.time() >= deadline:
                model.stop_training = True

        def on_epoch_end(self, trial: Any, model: Any, epoch: int, logs: Any = None) -> None:
            super().on_epoch_end(trial, model, epoch, logs=logs)
            self.epochs += 1
            self.trial_epochs += 1
            score = (logs or {}).get("val_accuracy")
            if score is not None and math.isfinite(score):
                self.epoch_ends.append({"end": time.time() - started, "score": float(score)})

        def on_trial_end(self, trial: Any) -> None:
            super().on_trial_end(trial)
            ended = self.oracle.get_trial(trial.trial_id)
            score = ended.score if ended.status == "COMPLETED" else None
            if score is not None and not math.isfinite(score):
                score = None
            end = time.time() - started
            self.ends.append(
                {"end": end, "score": score, "status": ended.status, "epochs": self.trial_epochs}
            )
            shown = "none" if score is None else f"{score:.4f}"
            print(
                f"KerasTuner trial {trial.trial_id} {ended.status}: val_accuracy {shown}, "
                f"{self.trial_epochs} epochs, ended at {end / 60:.1f} min",
                file=sys.stderr,
                flush=True,
            )

    return TimedHyperband


def kerastuner_side(args: argparse.Namespace) -> dict[str, Any]:
    """The KerasTuner side, in its own process: search until the deadline, return the ends."""
    import keras
    import keras_tuner

    from search import define

    preset = define.load_preset(args.dataset)
    data = load_split(preset, args)
    keras.utils.set_random_seed(preset.seed)
    max_epochs = args.max_epochs or preset.epochs
    tuner = timed_hyperband(args.started, args.started + args.minutes * 60)(
        build_model_for(preset.space),
        objective="val_accuracy",
        max_epochs=max_epochs,
        factor=FACTOR,
        hyperband_iterations=ITERATIONS,
        seed=preset.seed,
        directory=str(args.tuner_dir),
        project_name="hyperband",
        overwrite=True,
    )
    stop_early = keras.callbacks.EarlyStopping(monitor="val_loss", patience=PATIENCE)
    try:
        tuner.search(
            data.x_train[..., None],
            data.y_train,
            validation_data=(data.x_val[..., None], data.y_val),
            epochs=max_epochs,
            batch_size=BATCH,
            callbacks=[stop_early],
            verbose=0,
        )
    except TimeUp:
        pass
    return {
        "best": best_network(tuner, preset.space),
        "trials": tuner.ends,
        "epoch_ends": tuner.epoch_ends,
        "epochs": tuner.epochs,
        "max_epochs": max_epochs,
        "version": keras_tuner.__version__,
    }


def best_network(tuner: Any, space: Any) -> dict[str, Any] | None:
    """KerasTuner's best trial, as its documentation gets it: network, score and best epoch.

    The epoch count includes the epochs of the earlier Hyperband rounds whose weights the trial
    took over (its `tuner/initial_epoch`); `best_step` counts from there.
    """
    best = tuner.oracle.get_best_trials(1)
    if not best or best[0].score is None:
        return None
    from search.define import size

    trial = best[0]
    hp = trial.hyperparameters
    config = lab_config(hp.copy(), space)
    built = tuner.hypermodel.build(hp.copy()).count_params()
    if built != size(config).params:  # the retrain must train the network KerasTuner chose
        raise SystemExit(
            f"KerasTuner's best network has {built:,} params, its rebuild {size(config).params:,}."
        )
    return {
        "trial": trial.trial_id,
        "config": config.to_json(),
        "score": float(trial.score),
        "best_epoch": int(hp.values.get("tuner/initial_epoch", 0)) + int(trial.best_step) + 1,
    }


def load_split(preset: Any, args: argparse.Namespace) -> Any:
    """The product's loader and split: the preset's validation images, --images to train."""
    from search import define

    images, labels = define.load_train(preset.dataset, args.data_dir)
    return define.split(images, labels, preset.val_size, args.images)


def child_env(**extra: str) -> dict[str, str]:
    """This checkout's code first, TensorFlow's start-up notes off."""
    path = [str(common.ROOT), os.environ.get("PYTHONPATH", "")]
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in path if p),
        "TF_CPP_MIN_LOG_LEVEL": "2",
        **extra,
    }


def run_kerastuner(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    out = tmp / "kerastuner.json"
    load = os.getloadavg()[0]
    started = time.time()
    command = [sys.executable, __file__, "--child", "--started", repr(started)]
    command += ["--tuner-dir", str(tmp / "kerastuner"), "--out", str(out)]
    command += ["--dataset", args.dataset, "--minutes", repr(args.minutes)]
    for option in ("images", "max_epochs", "data_dir"):
        if getattr(args, option) is not None:
            command += [f"--{option.replace('_', '-')}", str(getattr(args, option))]
    print(f"KerasTuner's Hyperband for {args.minutes:g} minutes", flush=True)
    result = subprocess.run(command, env=child_env(), timeout=args.minutes * 60 + 1800)
    if result.returncode != 0:
        raise SystemExit(f"The KerasTuner side failed with exit status {result.returncode}.")
    return {**json.loads(out.read_text()), "load": load}


def search_command(args: argparse.Namespace, tmp: Path) -> list[str]:
    """`search start` for the budget; with --images, on a preset that trains on N images."""
    from search import define

    script = Path(sys.executable).with_name("search")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "search"]
    command += ["start", "--hours", repr(args.minutes / 60), "--workers", str(args.workers)]
    if args.data_dir:
        command += ["--data-dir", str(Path(args.data_dir).resolve())]
    if args.images is None:
        return [*command, "--dataset", args.dataset]
    shipped = define.find(args.dataset)
    if shipped is None:
        raise SystemExit(f"No shipped preset for {args.dataset}.")
    lines = shipped.read_text().splitlines(keepends=True)
    first_table = next(i for i, line in enumerate(lines) if line.startswith("["))
    lines.insert(first_table, f"train_size = {args.images}\n\n")
    preset = tmp / "presets" / shipped.name  # the same name: the study is named after it
    preset.parent.mkdir()
    preset.write_text("".join(lines))
    return [*command, "--preset", str(preset)]


def run_search(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    url = f"sqlite:///{tmp / 'search.db'}"
    command = search_command(args, tmp)
    print(f"The search for {args.minutes:g} minutes: {' '.join(command[1:])}", flush=True)
    load = os.getloadavg()[0]
    started = time.time()
    process = subprocess.Popen(
        command,
        env=child_env(SEARCH_STORAGE=url, PYTHONUNBUFFERED="1"),
        cwd=tmp,
        stdout=subprocess.PIPE,
        text=True,
        errors="replace",
        start_new_session=True,  # its workers too can be killed as one group
    )
    epoch_ends: list[dict[str, Any]] = []
    reader = threading.Thread(target=read_epochs, args=(process, started, epoch_ends), daemon=True)
    reader.start()
    try:
        process.wait(timeout=max(0.0, started + args.minutes * 60 - time.time()))
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGTERM)  # as Ctrl-C: running trials end as failed
        try:
            process.wait(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # the workers hold the pipe open too
            process.wait()
    except BaseException:  # Ctrl-C here: the search runs in a session of its own
        os.killpg(process.pid, signal.SIGTERM)
        raise
    else:
        if process.returncode != 0:
            raise SystemExit(f"The search failed with exit status {process.returncode}.")
    finally:
        reader.join(timeout=STOP_SECONDS)  # a worker left running must not hold the report
    return {**read_study(url, started), "epoch_ends": epoch_ends, "load": load, "url": url}


def read_epochs(
    process: subprocess.Popen[str], started: float, epoch_ends: list[dict[str, Any]]
) -> None:
    """Echo the search's output, timing each epoch line as it is printed.

    It reads to the end whatever happens to the echo, so the search never blocks on a full pipe.
    """
    assert process.stdout is not None
    for line in process.stdout:
        try:
            sys.stdout.write(line)
            sys.stdout.flush()
        except (OSError, ValueError):  # our own output closed: keep timing, stop echoing
            pass
        match = EPOCH_LINE.search(line)
        if match:
            epoch_ends.append({"end": time.time() - started, "score": float(match[3])})


def read_study(url: str, started: float) -> dict[str, Any]:
    """Each trained trial's end and val_accuracy, the epochs, and the trials that did not count."""
    import optuna

    from search.store import trained

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    (name,) = optuna.study.get_all_study_names(storage=url)
    study = optuna.load_study(study_name=name, storage=url)
    trials, epochs, rejected, failed = [], 0, 0, 0
    for t in study.get_trials(deepcopy=False):
        epochs += t.user_attrs.get("epochs_trained") or 0
        if t.state.name == "FAIL":
            failed += 1
        elif t.state.is_finished() and not trained(t):
            rejected += 1
        elif t.state.is_finished() and t.datetime_complete:
            curve = (t.user_attrs.get("curves") or {}).get("val_accuracy") or []
            recorded = t.user_attrs.get("val_accuracy")
            trials.append(
                {
                    "end": t.datetime_complete.timestamp() - started,
                    "score": max(curve) if curve else recorded,
                    "recorded": recorded,
                    "epochs": t.user_attrs.get("epochs_trained") or 0,
                }
            )
    return {"trials": trials, "epochs": epochs, "rejected": rejected, "failed": failed}


def best_by(trials: list[dict[str, Any]], minutes: float, key: str = "score") -> float | None:
    """The highest `key` among the trials that ended within `minutes`; None if none did."""
    values = [t[key] for t in trials if t["end"] <= minutes * 60 and t[key] is not None]
    return max(values, default=None)


def first_at(trials: list[dict[str, Any]], goal: float) -> float | None:
    """The minutes until an epoch (or a trial) first ended with a score of at least `goal`."""
    ends = [t["end"] for t in trials if t["score"] is not None and t["score"] >= goal]
    return min(ends) / 60 if ends else None


def cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def leader(tuner: float | None, ours: float | None) -> str:
    if tuner is None or ours is None:
        return (
            "-"
            if tuner is None and ours is None
            else ("search" if tuner is None else "KerasTuner")
        )
    return "tie" if tuner == ours else ("search" if ours > tuner else "KerasTuner")


def marks_table(tuner: dict[str, Any], ours: dict[str, Any], marks: list[float]) -> str:
    rows = []
    for mark in marks:
        kt, us = best_by(tuner["epoch_ends"], mark), best_by(ours["epoch_ends"], mark)
        kt_ended, us_ended = best_by(tuner["trials"], mark), best_by(ours["trials"], mark)
        recorded = best_by(ours["trials"], mark, "recorded")
        rows.append(
            [
                f"{mark:g}",
                cell(kt),
                cell(us),
                leader(kt, us),
                cell(kt_ended),
                cell(us_ended),
                cell(recorded),
                leader(kt_ended, us_ended),
            ]
        )
    return common.table(
        [
            "minutes",
            "KerasTuner, any epoch",
            "search, any epoch",
            "ahead",
            "KerasTuner, ended trials",
            "search, ended trials",
            "search, ended, at each trial's best val_loss epoch",
            "ahead (ended trials)",
        ],
        rows,
    )


def counts(tuner: dict[str, Any], ours: dict[str, Any], minutes: float) -> str:
    budget = minutes * 60
    kt_done = [t for t in tuner["trials"] if t["end"] <= budget]
    kt_failed = sum(t["status"] != "COMPLETED" for t in kt_done)
    us_done = [t for t in ours["trials"] if t["end"] <= budget]
    return (
        f"Within the {minutes:g} minutes KerasTuner ended {len(kt_done)} trial(s) "
        f"({kt_failed} failed) and trained {tuner['epochs']} epochs in all; the search ended "
        f"{len(us_done)} trained trial(s), beside {ours['rejected']} network(s) rejected "
        f"untrained and {ours['failed']} trial(s) stopped at the deadline or failed, and "
        f"trained {ours['epochs']} epochs in all. The epoch totals include the epochs of "
        "trials cut short at the deadline."
    )


def reach(tuner: dict[str, Any], ours: dict[str, Any], minutes: float) -> str:
    """When each side first reached the lower of the two final bests, as a ratio."""
    kt, us = best_by(tuner["epoch_ends"], minutes), best_by(ours["epoch_ends"], minutes)
    if kt is None or us is None:
        return "One side ended no epoch within the budget."
    goal = min(kt, us)
    kt_at, us_at = first_at(tuner["epoch_ends"], goal), first_at(ours["epoch_ends"], goal)
    assert kt_at is not None and us_at is not None
    return (
        f"Both reached {goal:.4f}, the lower of the two final bests: the search after "
        f"{us_at:.1f} minutes, KerasTuner after {kt_at:.1f}; search / KerasTuner = "
        f"{us_at / kt_at:.2f}."
    )


def retrain_both(tuner: dict[str, Any], url: str, folder: Path, args: argparse.Namespace) -> str:
    """Each side's best network retrained as `retrain-best` does, tested once: the report.

    Both go through the product's retrain on the preset the search ran, so they share the
    final recipe, the training images and the code; KerasTuner's network keeps its own
    optimizer, learning rate and batch, as the search's keeps its own.
    """
    import optuna

    from search import define
    from search.store import best

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    (name,) = optuna.study.get_all_study_names(storage=url)
    ours = optuna.load_study(study_name=name, storage=url)
    preset = define.from_json(ours.user_attrs["preset"])
    rows = []
    if tuner["best"] is not None:
        theirs = optuna.create_study(
            study_name="kerastuner-best",
            storage=f"sqlite:///{folder / 'kerastuner-best.db'}",
            direction="maximize",
        )
        theirs.add_trial(
            optuna.trial.create_trial(
                value=tuner["best"]["score"],
                user_attrs={
                    "config": tuner["best"]["config"],
                    "best_epoch": tuner["best"]["best_epoch"],
                    "val_accuracy": tuner["best"]["score"],
                },
            )
        )
        rows.append(retrain_row("KerasTuner", theirs, 0, preset, folder, args))
    ours_best = best(ours)
    if ours_best is not None:
        rows.append(retrain_row("search", ours, ours_best.number, preset, folder, args))
    if not rows:
        return "Neither side ended a trial, so there was nothing to retrain."
    header = [
        "side",
        "network",
        "params",
        "val_accuracy in its search",
        "best epoch",
        "epochs retrained",
        "test accuracy",
        "retrain minutes",
    ]
    return (
        f"Each side's best network, retrained the way `retrain-best` retrains the search's "
        f"best, then tested once: the preset's final recipe ({preset.final_epochs:g} times the "
        f"network's best epoch count, learning rate on a {preset.final_schedule} schedule), on "
        "the training images the preset uses, validation images included. KerasTuner's best "
        "is the trial its oracle ranks first (what `get_best_hyperparameters()` returns), with "
        "its highest val_accuracy; its best epoch counts the epochs of the Hyperband rounds it "
        "continued. The search's best is its trial of lowest val_loss, with the val_accuracy "
        "of that epoch. The retrains ran after both searches, one after the other:\n\n"
        + common.table(header, rows)
    )


def retrain_row(
    side: str,
    study: Any,
    number: int,
    preset: Any,
    folder: Path,
    args: argparse.Namespace,
) -> list[str]:
    from search.final import retrain_trial

    trial = study.trials[number]
    print(f"Retraining {side}'s best network", flush=True)
    started = time.time()
    result = retrain_trial(
        study, preset, out_dir=folder, number=number, data_dir=args.data_dir, log=print
    )
    return [
        side,
        f"`{result.architecture}`",
        f"{result.params:,}",
        f"{trial.user_attrs['val_accuracy']:.4f}",
        str(trial.user_attrs["best_epoch"]),
        str(result.epochs),
        f"**{result.test_accuracy:.4f}**",
        f"{(time.time() - started) / 60:.1f}",
    ]


def report(tuner: dict[str, Any], ours: dict[str, Any], args: argparse.Namespace) -> str:
    marks = [m for m in (float(x) for x in args.marks.split(",")) if m <= args.minutes]
    images = f"the first {args.images:,}" if args.images else "all the"
    return (
        f"{args.dataset}, {images} training images after the preset's validation images, "
        f"{args.minutes:g} minutes each, KerasTuner first (load average {tuner['load']:.1f} at "
        f"its start), then the search (load average {ours['load']:.1f}). Best val_accuracy "
        "of any epoch ended by each mark, and among the trials ended by then:\n\n"
        + marks_table(tuner, ours, marks or [args.minutes])
        + "\n\n"
        + counts(tuner, ours, args.minutes)
        + "\n\n"
        + reach(tuner, ours, args.minutes)
    )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=45.0, help="budget of each side")
    parser.add_argument("--marks", default="5,10,15,20,30,45", help="minutes to report at")
    parser.add_argument("--dataset", default="fashion_mnist", choices=["fashion_mnist", "mnist"])
    parser.add_argument("--workers", default="auto", help="the search's --workers")
    parser.add_argument("--images", type=int, help="train on only the first N images")
    parser.add_argument(
        "--max-epochs", type=int, help="KerasTuner's max_epochs (default: the preset's epochs)"
    )
    parser.add_argument(
        "--folder", type=Path, help="keep both searches and the retrained models here"
    )
    parser.add_argument(
        "--no-retrain",
        dest="retrain",
        action="store_false",
        help="skip retraining each side's best network on all images and testing it",
    )
    # The KerasTuner side runs this script again in a process of its own.
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--started", type=float, help=argparse.SUPPRESS)
    parser.add_argument("--tuner-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    return common.add_common(parser).parse_args()


@contextlib.contextmanager
def working_folder(folder: Path | None) -> Iterator[Path]:
    """The folder both searches and the retrains work in: --folder, kept, or a temporary one."""
    if folder is None:
        with tempfile.TemporaryDirectory(prefix="peer-kerastuner-") as tmp:
            yield Path(tmp)
        return
    if folder.exists() and any(folder.iterdir()):
        raise SystemExit(f"{folder} is not empty; the search would resume the study in it.")
    folder.mkdir(parents=True, exist_ok=True)
    yield folder.resolve()


def main() -> None:
    args = parse_args()
    if args.child:
        args.out.write_text(json.dumps(kerastuner_side(args)))
        return
    with working_folder(args.folder) as folder:
        tuner = run_kerastuner(args, folder)
        ours = run_search(args, folder)
        body = report(tuner, ours, args)
        print(body, flush=True)
        if args.retrain:
            retrained = retrain_both(tuner, ours["url"], folder, args)
            print(retrained)
            body += "\n\n" + retrained
    if not args.no_write:
        common.write_section(
            SECTION,
            common.section(
                "7. KerasTuner's Hyperband against the search",
                body,
                extra=(
                    f"- KerasTuner {tuner['version']}: Hyperband(objective='val_accuracy', "
                    f"max_epochs={tuner['max_epochs']}, factor={FACTOR}), "
                    f"RMSprop, batch {BATCH}, EarlyStopping(monitor='val_loss', "
                    f"patience={PATIENCE})\n- The search: --workers {args.workers}"
                    + (
                        f"\n- Both searches and the models kept in {args.folder}"
                        if args.folder
                        else ""
                    )
                ),
            ),
        )


if __name__ == "__main__":
    main()
