"""What a person reads about trials: the progress line per trial, the best trial, the table."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from search.define.presets import Preset, from_json
from search.errors import Log
from search.store.trials import MAX_TOTAL, ORIGIN, RESUMES, best, counted, counts, pareto, trained


def summary(trial: FrozenTrial) -> dict[str, Any]:
    """The fields `status` and the progress lines show for one trial."""
    attrs = trial.user_attrs
    return {
        "number": trial.number,
        "state": trial.state.name,
        "val_loss": attrs.get("val_loss"),
        "val_accuracy": attrs.get("val_accuracy"),
        "params": attrs.get("params"),
        "epochs": attrs.get("epochs_trained") or 0,
        "seconds": (trial.duration.total_seconds() if trial.duration else None),
        "architecture": attrs.get("architecture", ""),
        "reason": attrs.get("reason") or "",
    }


def _val_accuracy(trial: FrozenTrial) -> float:
    return float(trial.user_attrs.get("val_accuracy", float("nan")))


def best_line(study: optuna.Study) -> str:
    """The best trial in one line, for the end of a run and for `status`."""
    b = best(study)
    if b is None:
        return "No trial has completed yet."
    a = b.user_attrs
    return (
        f"Best: trial #{b.number} val_loss {b.values[0]:.4f} val_accuracy "
        f"{_val_accuracy(b):.4f} at epoch {a.get('best_epoch')}, "
        f"{a.get('params', 0):,} params, {a.get('architecture', '')}"
    )


def duration(delta: timedelta) -> str:
    """A duration as a person plans with it: 45s, 12m, 3h 05m, 2d 04h (rounded down)."""
    seconds = max(0, int(delta.total_seconds()))
    minutes, hours, days = seconds // 60, seconds // 3600, seconds // 86400
    if seconds < 60:
        return f"{seconds}s"
    if minutes < 60:
        return f"{minutes}m"
    if hours < 24:
        return f"{hours}h {minutes % 60:02d}m"
    return f"{days}d {hours % 24:02d}h"


@dataclass
class _Climb:
    """One configuration on a ladder, as far as its trials tell."""

    done: int = 0  # steps finished (rungs, then the full run)
    active: bool = False  # a trial of it runs or waits to run: it is in step `done` + 1
    paces: list[timedelta] = field(default_factory=list)  # each finished trial's time a pass
    spent: timedelta = timedelta()  # how long its running trial has been in its step

    @property
    def pace(self) -> timedelta | None:
        """Its mean time per pass over the training split; None before a step finished."""
        return sum(self.paces, timedelta()) / len(self.paces) if self.paces else None


@dataclass(frozen=True)
class LadderPlan:
    """What configurations cost on a preset's ladder, for the estimate of the time left.

    All configurations train the first rung, and a share of those that finish a step climb
    to the next; the last step is the full run. Costs are in passes over the training split
    (a rung's share times its epochs; the full run's epochs). The shares are the study's own
    so far (:meth:`climb_rates`): successive halving keeps 1/`reduction` of a rung's peers at
    the moment a trial reaches it, but a sampler that improves sends most of its later
    configurations up, so the share that climbs is often far above 1/`reduction`.
    """

    costs: tuple[float, ...]  # each rung's, then the full run's
    reduction: int  # 1: every configuration climbs every rung (no pruner)

    @classmethod
    def of(cls, preset: Preset) -> LadderPlan | None:
        """The preset's ladder; None for a preset whose trials are full runs alone."""
        if not preset.rungs:
            return None
        costs = (*(rung.cost for rung in preset.rungs), float(preset.epochs))
        return cls(costs, 1 if preset.pruner == "none" else preset.pruner_reduction)

    def climbs(self, trials: Sequence[FrozenTrial], now: datetime) -> dict[int, _Climb]:
        """Each configuration that has trained or trains now, by its first look's number."""
        found: dict[int, _Climb] = {}
        for t in trials:
            climb = found.setdefault(int(t.user_attrs.get(ORIGIN, t.number)), _Climb())
            rungs = t.user_attrs.get("rungs") or []
            steps = len(self.costs) if t.state == TrialState.COMPLETE else len(rungs)
            climb.done = max(climb.done, steps)
            if t.state in (TrialState.RUNNING, TrialState.WAITING):
                # Its rungs so far are on record: their training time is its pace.
                climb.active = True
                passes = _own_passes(rungs)
                seconds = sum(float(r["seconds"]) for r in rungs if "from" not in r)
                if passes > 0:
                    climb.paces.append(timedelta(seconds=seconds / passes))
                if t.datetime_start is not None:
                    in_step = now - t.datetime_start - timedelta(seconds=seconds)
                    climb.spent = max(climb.spent, in_step)
                continue
            passes = trained_passes(t)
            if t.duration is not None and passes > 0 and not t.user_attrs.get("reason"):
                climb.paces.append(t.duration / passes)
        return {n: c for n, c in found.items() if c.done or c.active}

    def climb_rates(self, climbs: dict[int, _Climb]) -> tuple[float, ...]:
        """For each rung, the share of the configurations that finished it and went on to
        the next step: (went on + 1) / (finished + reduction), which is 1/reduction before
        any finished and the study's own share once many have."""
        rates = []
        for k in range(1, len(self.costs)):
            at_k = [c for c in climbs.values() if c.done >= k]
            on = sum(c.done > k or c.active for c in at_k)
            rates.append((on + 1) / (len(at_k) + self.reduction))
        return tuple(rates)

    def passes(self, configurations: int, rates: Sequence[float] | None = None) -> float:
        """The training that `configurations` new configurations take, climbs included, with
        these climb rates (1/reduction at every rung by default)."""
        return configurations * self._from(0, rates)

    def _from(self, step: int, rates: Sequence[float] | None = None) -> float:
        """The passes one configuration still trains from `step` (0: its first rung), the
        step itself certain and each later one at its climb rate."""
        if rates is None:
            rates = [1 / self.reduction] * (len(self.costs) - 1)
        passes, reach = 0.0, 1.0
        for k in range(step, len(self.costs)):
            passes += reach * self.costs[k]
            if k < len(rates):
                reach *= rates[k]
        return passes

    def time_left(
        self, trials: Sequence[FrozenTrial], total: int, workers: int, now: datetime
    ) -> tuple[timedelta, timedelta] | None:
        """The training still to come, shared among `workers`, and a full run's time at the
        mean pace; None before a trial has finished a step.

        A configuration running or queued trains the rest of its step and climbs on at the
        study's rates, at its own pace (time per pass, measured on its finished steps), or at
        the mean pace of the configurations measured (each counts once: one network's pass
        costs 30 times another's) where it has none yet, less the time its running trial has
        spent in the step so far; one stopped at a rung is counted as staying there. The
        configurations still to come train from the first rung at the mean pace."""
        climbs = self.climbs(trials, now)
        paces = [c.pace for c in climbs.values() if c.pace is not None]
        if not paces:
            return None
        mean = sum(paces, timedelta()) / len(paces)
        rates = self.climb_rates(climbs)
        left = timedelta()
        for c in climbs.values():
            if c.active and c.done < len(self.costs):
                pace = mean if c.pace is None else c.pace
                step = max(timedelta(), pace * self.costs[c.done] - c.spent)
                left += step + pace * (self._from(c.done, rates) - self.costs[c.done])
        begun = sum(1 for c in climbs.values() if c.done or c.active)
        left += mean * self.passes(max(0, total - begun), rates)
        return left / max(1, workers), mean * self.costs[-1]


def trained_passes(trial: FrozenTrial) -> float:
    """The passes over the training split a finished trial trained itself: its own rungs
    (not those a continuation carries over from its first look) and, if it completed, its
    full run."""
    passes = _own_passes(trial.user_attrs.get("rungs") or [])
    if trial.state == TrialState.COMPLETE:
        passes += float(trial.user_attrs.get("epochs_trained") or 0)
    return passes


def _own_passes(rungs: Sequence[dict[str, Any]]) -> float:
    """The passes of the rungs a trial trained itself (a continuation's carried rungs are
    marked "from")."""
    return sum(float(r["share"]) * int(r["epochs"]) for r in rungs if "from" not in r)


def timing(
    trials: Sequence[FrozenTrial],
    total: int,
    workers: int,
    now: datetime,
    deadline: datetime | None = None,
    ladder: LadderPlan | None = None,
) -> str:
    """The time since the study's first trial started and an estimate of the time left.

    The estimate is plain arithmetic on what the study has done: the mean training time of
    the configurations that count toward the total (trained ones; a rejection takes no
    training), times the configurations still to come, shared among `workers` trials
    running at a time. It does not guess which trials the pruner will stop early; the mean
    holds the share stopped so far. On a `ladder` the first trials are short first looks
    and the full runs come later, so a mean of the trials so far says little: there the
    estimate is the training still to come of the configurations under way and of those
    still to come, each step at the share of configurations that has climbed to it so far
    (see LadderPlan.time_left).
    A study with a `deadline` (--hours) ends sooner where that comes first: no trial starts
    after it, and the ones running then finish, a mean trial (on a ladder, a full run) later
    at most.
    """
    starts = [t.datetime_start for t in trials if t.datetime_start is not None]
    if not starts:
        return ""
    text = f"elapsed {duration(now - min(starts))}"
    ended = [t for t in trials if trained(t)]
    took = [t.duration for t in ended if t.duration is not None]
    configurations = counted(trials)
    left = total - configurations
    estimate: timedelta | None = None
    if not took or not configurations:
        return text
    # Per configuration: the continuations of those that climbed count in their time.
    last = mean = sum(took, timedelta()) / configurations
    if ladder is not None:
        found = ladder.time_left(trials, total, workers, now)
        if found is not None and found[0] > timedelta():
            estimate, last = found
    elif left > 0:
        estimate = mean * left / max(1, min(workers, left))
    if estimate is not None:
        if deadline is not None:
            estimate = min(estimate, max(deadline - now, timedelta()) + last)
        text += f", ~{duration(estimate)} left"
    return text


def deadline_of(study: optuna.Study) -> datetime | None:
    """When the study's --hours run out, on the clock trials are stamped with; None: never."""
    deadline = study.user_attrs.get("deadline")
    return None if deadline is None else datetime.fromtimestamp(deadline)


def of_total(done: int, total: int, sep: str = "/") -> str:
    """'3/50' (or '3 of 50' with sep " of "), or '3' for a search bounded by --hours alone."""
    return f"{done}" if total >= MAX_TOTAL else f"{done}{sep}{total}"


@dataclass
class Progress:
    """One line per finished trial: n/N, state, this trial, the best so far, and the time.

    It only displays; when a worker stops is decided in ending.py. `now` is the clock, which
    tests fix.
    """

    total: int
    log: Log
    now: Callable[[], datetime] = datetime.now
    ladder: LadderPlan | None = None

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        trials = study.get_trials(deepcopy=False)
        done = counted(trials)
        # The other workers' running trials, and this worker, which goes on to its next one.
        workers = 1 + sum(t.state == TrialState.RUNNING for t in trials)
        s = summary(trial)
        rejected = trial.state == TrialState.PRUNED and not trained(trial)
        state = "REJECTED" if rejected else s["state"]
        which = f"#{trial.number}"
        if (resumed := trial.user_attrs.get(RESUMES)) is not None:
            which += f", continuing #{resumed}"
        head = f"trial {of_total(done, self.total)} ({which}) {state}"
        if trial.state == TrialState.COMPLETE:
            head += f": val_loss {s['val_loss']:.4f} val_accuracy {s['val_accuracy']:.4f}"
        elif s["reason"]:
            head += f": {s['reason']}"
        elif trial.state == TrialState.PRUNED and (rungs := trial.user_attrs.get("rungs")):
            head += f" after rung {len(rungs)}: {_rung(rungs[-1])}"
        b = best(study)
        tail = (
            ""
            if b is None
            else (
                f" | best #{b.number} val_loss {b.values[0]:.4f} "
                f"val_accuracy {_val_accuracy(b):.4f}"
            )
        )
        clock = timing(trials, self.total, workers, self.now(), deadline_of(study), self.ladder)
        self.log(f"{head} | {s['architecture']}{tail}" + (f" | {clock}" if clock else ""))


def _rung(rung: dict[str, Any]) -> str:
    return (
        f"val_loss {rung['val_loss']:.4f} val_accuracy {rung['val_accuracy']:.4f} "
        f"({rung['share']:.0%} of the images, {rung['epochs']} epochs)"
    )


def _fmt(value: Any, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def trial_table(study: optuna.Study) -> Iterator[str]:
    """`status`'s table: a header, then one line per trial with its reason where it failed."""
    yield (
        f"{'#':>4} {'state':<8} {'val_loss':>8} {'val_acc':>7} {'params':>10} "
        f"{'epochs':>6} {'seconds':>8}  architecture"
    )
    for trial in study.get_trials(deepcopy=False):
        s = summary(trial)
        line = (
            f"{s['number']:>4} {s['state']:<8} {_fmt(s['val_loss'], '.4f'):>8} "
            f"{_fmt(s['val_accuracy'], '.4f'):>7} {_fmt(s['params'], ',d'):>10} "
            f"{s['epochs']:>6} {_fmt(s['seconds'], '.0f'):>8}  {s['architecture']}"
        )
        if s["reason"] and s["state"] != "COMPLETE":
            line += f"  ({s['reason']})"
        yield line


def running_line(study: optuna.Study, now: datetime) -> str | None:
    """For a study with trials running: how many, the time since it began, the time left."""
    trials = study.get_trials(deepcopy=False)
    running = sum(t.state == TrialState.RUNNING for t in trials)
    if not running:
        return None
    total = study.user_attrs.get("trials")
    clock = timing(
        trials,
        total if isinstance(total, int) else 0,
        running,
        now,
        deadline_of(study),
        _ladder_of(study),
    )
    return f"Running: {running} trial(s) now; {clock}."


def _ladder_of(study: optuna.Study) -> LadderPlan | None:
    """The ladder of the preset a study stores; None without one (or a preset unreadable
    here, which `status` still shows the trials of)."""
    text = study.user_attrs.get("preset")
    if not isinstance(text, str):
        return None
    try:
        return LadderPlan.of(from_json(text))
    except (ValueError, KeyError, TypeError):
        return None


def status_lines(study: optuna.Study, now: datetime | None = None) -> Iterator[str]:
    """Everything `status` prints after its heading: table, counts, the time left while it
    runs, best, front, test result."""
    yield from trial_table(study)
    states = {k: v for k, v in counts(study).items() if v}
    yield "Trials: " + (", ".join(f"{v} {k.lower()}" for k, v in states.items()) or "none")
    running = running_line(study, now or datetime.now())
    if running:
        yield running
    yield best_line(study)
    front = pareto(study)
    if front:
        yield (
            "Pareto front (val_loss against parameters; retrain any with "
            "'search retrain-best --trial N'):"
        )
        for t in front:
            yield (
                f"  #{t.number:<4} val_loss {t.values[0]:.4f}  val_accuracy "
                f"{_val_accuracy(t):.4f}  {int(t.values[1]):>10,} "
                f"params  {t.user_attrs.get('architecture', '')}"
            )
    if "test_accuracy" in study.user_attrs:
        yield f"Retrained: test accuracy {study.user_attrs['test_accuracy']:.4f}"
