"""What one search job did, minute by minute: the figures a ladder is judged on.

    .venv/bin/python benchmarks/search_job.py --storage sqlite:///PATH/search.db \\
        [--study fashion_mnist] [--minutes 12] [--marks 5,10,30] [--load-log FILE]
        [--section NAME]

It reads a study that `search start` ran (or still runs) and reports how many distinct
configurations had trained at least one complete look (a rung, or an epoch without a ladder)
by `--minutes`, each state's count, the best searched (not enqueued) trial's val_accuracy
against the enqueued start's, the minute a finished trial first reached 93 % and 94 %
val_accuracy, and, once `retrain-best` has run, the final model's test accuracy.

It also replays the time left that the progress lines gave at `--marks` minutes: the
estimate from the preset's ladder (search.run.timing with a LadderPlan, what `search start`
prints now) and the mean of the trials so far (without one), each as the end it foretold,
against the search's real end (the last trial's end; a fair end only for a search that
ran once to its total, never stopped and resumed).

A rung's end is its trial's start plus the seconds of its rungs so far (`rungs` attribute),
which leaves out each rung's model building: the figure by `--minutes` is at most a few
seconds early per trial. `--load-log` reads lines of "ISO-TIME LOAD1 LOAD5 LOAD15 ..." (the
machine's /proc/loadavg, stamped once a minute) and prints the 1-minute load over the job.
With `--section`, the figures replace that section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import copy
import datetime as dt
from collections.abc import Callable
from pathlib import Path
from typing import Any

import common
from optuna.trial import TrialState

GOALS = (0.93, 0.94)


def rung_ends(trial: Any) -> list[tuple[dict[str, Any], dt.datetime | None]]:
    """Each stored rung of a trial with when it ended: its trial's start plus the seconds of its
    own rungs so far. A continuation's rungs carried over from an earlier trial (marked "from")
    were that trial's, and end None here."""
    start, spent, ends = common.started(trial), 0.0, []
    for rung in trial.user_attrs.get("rungs") or []:
        end = None
        if "from" not in rung:
            spent += float(rung["seconds"])
            end = start + dt.timedelta(seconds=spent)
        ends.append((rung, end))
    return ends


def looks(trial: Any) -> list[dt.datetime]:
    """When each complete look of a trial ended: its own rungs, then its full run's end."""
    ends = [end for _, end in rung_ends(trial) if end is not None]
    if trial.state.name == "COMPLETE":
        ends.append(common.ended(trial))
    elif not ends and trial.user_attrs.get("epochs_trained") and trial.datetime_complete:
        ends.append(common.ended(trial))  # stopped during its first run, epochs done
    return ends


def kind(trial: Any) -> str:
    if "start" in trial.user_attrs:
        return f"start: {trial.user_attrs['start']}"
    if "baseline" in trial.user_attrs:
        return f"lab: {trial.user_attrs['baseline']}"
    return "searched"


def looked_by(trials: list[Any], minute: Callable[[dt.datetime], float], by: float) -> list[Any]:
    """The trials with a finished look (a rung, or a run) by minute `by` of the job."""
    return [t for t in trials if any(minute(end) <= by for end in looks(t))]


def first_reached(complete: list[Any], minute: Callable[[dt.datetime], float]) -> list[str]:
    """For each of GOALS, the minute a finished trial first reached it, or "not reached"."""
    reached = []
    for goal in GOALS:
        hits = [minute(common.ended(t)) for t in complete if t.user_attrs["val_accuracy"] >= goal]
        reached.append(f"{min(hits):.0f}" if hits else "not reached")
    return reached


def figures(url: str, name: str, minutes: float) -> tuple[str, dict[str, Any]]:
    study, trials, t0 = common.started_trials(url, name)
    last = max((t.datetime_complete or t.datetime_start) for t in trials if t.datetime_start)

    def at(moment: dt.datetime) -> float:
        return (moment - t0).total_seconds() / 60

    early = looked_by(trials, at, minutes)
    complete = [t for t in trials if t.state.name == "COMPLETE"]
    rejected = [t for t in trials if t.state.name == "PRUNED" and not looks(t)]
    climbs = [t for t in trials if "resumes" in t.user_attrs]
    by_rung: dict[int, int] = {}
    for t in trials:
        if t.state.name == "PRUNED" and looks(t):
            k = len(t.user_attrs.get("rungs") or [])
            by_rung[k] = by_rung.get(k, 0) + 1
    rows = []
    for t in sorted(complete, key=lambda t: -float(t.user_attrs.get("val_accuracy", 0))):
        rows.append(
            [
                f"#{t.number}",
                kind(t),
                f"`{t.user_attrs.get('architecture', '?')}`",
                f"{t.user_attrs.get('params', 0):,}",
                f"{float(t.user_attrs['val_accuracy']):.2%}",
                t.user_attrs.get("epochs_trained"),
                f"{at(common.ended(t)):.0f}",
            ]
        )
    reached = [
        f"{goal:.0%}: {minute}" + (" min" if minute != "not reached" else "")
        for goal, minute in zip(GOALS, first_reached(complete, at), strict=True)
    ]
    searched = [t for t in complete if kind(t) == "searched"]
    best_searched = max(searched, key=lambda t: t.user_attrs["val_accuracy"], default=None)
    starts = [t for t in complete if kind(t).startswith("start")]
    lines = [
        f"- Trials: {len(trials)} started, {len(complete)} complete (full runs), "
        + ", ".join(f"{n} stopped after rung {k}" for k, n in sorted(by_rung.items()))
        + f", {len(rejected)} rejected untrained ({len(climbs)} of all these continue an "
        f"earlier trial's climb); {at(last):.0f} minutes from the first "
        "trial's start to the last trial's end.",
        f"- Distinct configurations with a complete look by minute {minutes:g}: "
        f"**{len({t.user_attrs.get('config') for t in early})}** "
        f"({len(early)} trials).",
        "- A finished trial first at " + "; ".join(reached) + ".",
    ]
    if best_searched is not None:
        lines.append(
            f"- Best searched configuration: #{best_searched.number} "
            f"`{best_searched.user_attrs['architecture']}`, "
            f"{best_searched.user_attrs['val_accuracy']:.2%} val_accuracy"
            + (
                f", against the start's {starts[0].user_attrs['val_accuracy']:.2%}."
                if starts
                else "."
            )
        )
    record = study.user_attrs.get("retrain")
    if record:
        lines.append(
            f"- `retrain-best`: trial #{record['trial']} `{record['architecture']}`, "
            f"{record['epochs']} epochs on {record['train_images']:,} images: test accuracy "
            f"**{record['test_accuracy']:.2%}**."
        )
    body = "\n".join(lines) + "\n\nFull runs, best first:\n\n"
    header = ["trial", "kind", "architecture", "params", "val_accuracy", "epochs", "ended (min)"]
    body += common.table(header, rows)
    return body, {"t0": t0, "last": last}


def as_of(trial: Any, moment: dt.datetime) -> Any:
    """The trial as the storage held it at `moment`: running if it had not ended by then,
    with the rungs it had finished (as looks() times them)."""
    if trial.datetime_complete is not None and trial.datetime_complete <= moment:
        return trial
    then = copy.copy(trial)
    then.state = TrialState.RUNNING
    then.datetime_complete = None
    rungs = []
    for rung, end in rung_ends(trial):
        if end is not None and end > moment:
            break
        rungs.append(rung)
    then.user_attrs = {**trial.user_attrs, "rungs": rungs}
    return then


def foretold(study: Any, trials: list[Any], t0: dt.datetime, marks: list[float]) -> str:
    """At each mark, the end each estimate of the time left foretold, against the real one."""
    from search.define import from_json
    from search.run import LadderPlan, timing

    ladder = LadderPlan.of(from_json(study.user_attrs["preset"]))
    total = int(study.user_attrs.get("trials") or 0)
    stamp = study.user_attrs.get("deadline")
    deadline = None if stamp is None else dt.datetime.fromtimestamp(stamp)
    end = max((common.ended(t) for t in trials if t.datetime_complete), default=None)
    if end is None:
        return "No trial has ended yet: no time left to replay."
    real = (end - t0).total_seconds() / 60
    rows = []
    for mark in (m for m in marks if m < real):
        moment = t0 + dt.timedelta(minutes=mark)
        then = [as_of(t, moment) for t in trials if common.started(t) <= moment]
        workers = max(1, sum(t.state == TrialState.RUNNING for t in then))
        row: list[object] = [f"{mark:g}"]
        for plan in (ladder, None):
            text = timing(then, total, workers, moment, deadline, plan)
            left = text.split("~")[1].removesuffix(" left") if "~" in text else "-"
            row.append(left)
        rows.append(row)
    header = ["minute", "left, from the ladder (now)", "left, mean of the trials (before)"]
    ended = (
        f"the search is still running; its latest trial ended at minute {real:.0f}"
        if any(t.state == TrialState.RUNNING for t in trials)
        else f"the search really ended at minute {real:.0f}"
    )
    return (
        f"Time left as the progress lines gave it (replayed from the study); {ended}:\n\n"
        + common.table(header, rows)
    )


def load_over(path: Path, t0: dt.datetime, last: dt.datetime) -> str:
    values = []
    for line in path.read_text().splitlines():
        stamp, load1, *_ = line.split()
        # Optuna's times are naive local time.
        moment = dt.datetime.fromisoformat(stamp.replace("Z", "+00:00")).astimezone()
        moment = moment.replace(tzinfo=None)
        if t0 <= moment <= last:
            values.append(float(load1))
    return f"- 1-minute load over the job: {common.spread(values, '.1f')}" if values else ""


def main() -> None:
    args = options().parse_args()
    body, span = figures(args.storage, args.study, args.minutes)
    study, trials, t0 = common.started_trials(args.storage, args.study)
    body += "\n\n" + foretold(study, trials, t0, args.marks)
    extra = load_over(args.load_log, span["t0"], span["last"]) if args.load_log else ""
    if args.section:
        common.write_section(args.section, common.section(args.title, body, extra=extra))
    print(extra)
    print(body)


def options() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--storage", required=True, help="the study's storage URL")
    parser.add_argument("--study", default="fashion_mnist")
    parser.add_argument("--minutes", type=float, default=12.0)
    parser.add_argument(
        "--marks",
        type=lambda text: [float(m) for m in text.split(",")],
        default=[5, 10, 15, 30, 45, 60, 90, 120],
        help="minutes at which to replay the time left, comma-separated",
    )
    parser.add_argument("--load-log", type=Path, help="lines of ISO-TIME LOAD1 ...")
    parser.add_argument("--section", help="write the figures as this section of RESULTS.md")
    parser.add_argument("--title", default="Search job: the default preset on its ladder")
    return parser


if __name__ == "__main__":
    main()
