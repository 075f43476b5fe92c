"""Two search jobs side by side, each read as of the same minute: what a preset buys in time.

    .venv/bin/python benchmarks/side_by_side.py --job LABEL=sqlite:///PATH/search.db \\
        --job LABEL=sqlite:///PATH/search.db [--study fashion_mnist] [--minutes 60]
        [--early 12] [--section NAME]

Each job is a study that `search start` ran, on its own machine time. Each is read as it
stood `--minutes` after its first trial started (a trial not ended by then counts as running,
with the rungs it had finished), so two jobs of different lengths compare at equal wall time.
Per job: the distinct configurations with a finished look (a rung, or without a ladder a
trial that ended after training) by `--early` and by `--minutes`, the full runs finished,
the best searched (not enqueued) configuration's full-run val_accuracy, the best overall, the
minute a finished trial first reached 93 % and 94 %, and the test accuracy `retrain-best`
recorded on the study (whenever it ran: it is the job's answer, not a figure as of the
minute).
"""

from __future__ import annotations

import argparse
import datetime as dt
from typing import Any

import common
from search_job import first_reached, kind, looked_by


def read(url: str, name: str, minutes: float, early: float) -> dict[str, str]:
    study, trials, t0 = common.started_trials(url, name)
    moment = t0 + dt.timedelta(minutes=minutes)

    def at(when: dt.datetime) -> float:
        return (when - t0).total_seconds() / 60

    def distinct(by: float) -> str:
        seen = looked_by(trials, at, by)
        return f"{len({t.user_attrs.get('config') for t in seen})} ({len(seen)} trials)"

    done = [t for t in trials if t.state.name == "COMPLETE" and common.ended(t) <= moment]

    def best(pool: list[Any]) -> str:
        if not pool:
            return "none"
        t = max(pool, key=lambda t: float(t.user_attrs["val_accuracy"]))
        return (
            f"{float(t.user_attrs['val_accuracy']):.2%}: #{t.number} ({kind(t)}), "
            f"{t.user_attrs.get('epochs_trained')} epochs, minute {at(common.ended(t)):.0f}"
        )

    record = study.user_attrs.get("retrain")
    answer = "not run"
    if record:
        flips = record.get("plain_test_accuracy")
        answer = (
            f"{record['test_accuracy']:.2%}"
            + (f" (with flips; {flips:.2%} without)" if record.get("flips") else "")
            + f": #{record['trial']}, {record['epochs']} epochs"
        )
    return {
        f"distinct configurations with a finished look by minute {early:g}": distinct(early),
        f"distinct configurations with a finished look by minute {minutes:g}": distinct(minutes),
        "full runs finished": str(len(done)),
        "best searched configuration's full run": best([t for t in done if kind(t) == "searched"]),
        "best overall": best(done),
        "a finished trial first at 93 % / 94 % (minute)": " / ".join(first_reached(done, at)),
        "`retrain-best` test accuracy": answer,
    }


def main() -> None:
    args = options().parse_args()
    jobs = [job.split("=", 1) for job in args.job]
    columns = {label: read(url, args.study, args.minutes, args.early) for label, url in jobs}
    keys = list(next(iter(columns.values())))
    body = common.table(
        [f"as of minute {args.minutes:g}", *columns],
        [[key, *(column[key] for column in columns.values())] for key in keys],
    )
    if args.section:
        common.write_section(args.section, common.section(args.title, body))
    print(body)


def options() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--job", action="append", required=True, help="LABEL=STORAGE_URL, once per job"
    )
    parser.add_argument("--study", default="fashion_mnist")
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--early", type=float, default=12.0)
    parser.add_argument("--section", help="write the table as this section of RESULTS.md")
    parser.add_argument("--title", default="Side by side: two search jobs at equal wall time")
    return parser


if __name__ == "__main__":
    main()
