"""How a run ends: every stop rule of a worker and of a study, and the outcome a command prints.

A worker stops when the study holds its total (the loop finds that under its slot lock), when
--hours run out, when its process is due to make way for a fresh one, or when it gives up:
trials failing in a row (a broken setup, not an unlucky network) or configurations rejected
in a row (a budget that admits almost nothing). A study's run, over all its workers, ends in
one of the `Ending`s below. The CLI prints the outcome's message and exits with its code; the
progress lines only display.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING

from optuna.trial import FrozenTrial, TrialState

from search.errors import Log
from search.run.progress import of_total
from search.store.trials import time_is_up, trained

if TYPE_CHECKING:
    import optuna

    from search.run.sizing import Recycle

MAX_CONSECUTIVE_FAILURES = 5  # trials failing in a row: the setup is broken, not one network
MAX_REJECTIONS_IN_A_ROW = 50  # rejected before training: the budget leaves almost nothing
INTERRUPTED = "Interrupted. The study is consistent; rerun the same command to resume."


class Ending(Enum):
    REACHED = "the study holds its total"
    TIME_UP = "its hours ran out"
    RETIRED = "the worker process makes way for a fresh one"  # a worker's ending, never a run's
    FAILURES = "trials failed in a row"
    REJECTIONS = "configurations were rejected in a row"
    WORKER_ERROR = "a worker stopped with an error"
    KILLED = "the worker process was killed"
    INTERRUPTED = "Ctrl-C or SIGTERM"


@dataclass(frozen=True)
class Outcome:
    """How a worker or a run ended, and the sentence a person reads about it (may be empty)."""

    ending: Ending
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.ending in (Ending.REACHED, Ending.TIME_UP, Ending.RETIRED)

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 130 if self.ending is Ending.INTERRUPTED else 1


@dataclass
class Watch:
    """An Optuna callback of one worker: counts its trials and decides when it stops.

    `ran` counts the trials it trained or failed, rejections aside (a rejection builds no
    model, so it does not grow the process): recycling counts those.
    """

    log: Log
    recycle: Recycle | None = None
    failures_in_a_row: int = 0
    rejections_in_a_row: int = 0
    ran: int = 0
    gave_up: Outcome | None = None

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        rejected = trial.state == TrialState.PRUNED and not trained(trial)
        self.ran += not rejected
        self.failures_in_a_row = (
            self.failures_in_a_row + 1 if trial.state == TrialState.FAIL else 0
        )
        self.rejections_in_a_row = self.rejections_in_a_row + 1 if rejected else 0
        if self.failures_in_a_row >= MAX_CONSECUTIVE_FAILURES:
            self.log(
                f"{MAX_CONSECUTIVE_FAILURES} trials failed in a row; stopping this "
                "worker (see 'search status' for the reasons)."
            )
            self._give_up(study, Ending.FAILURES, "")
        elif self.rejections_in_a_row >= MAX_REJECTIONS_IN_A_ROW:
            reason = trial.user_attrs.get("reason", "")
            self._give_up(
                study,
                Ending.REJECTIONS,
                f"The last {MAX_REJECTIONS_IN_A_ROW} configurations were all rejected before "
                f"training (the last: {reason}); raise the budget (--max-params, or the "
                "preset's max_params and max_mflops) or narrow the space.",
            )

    def _give_up(self, study: optuna.Study, ending: Ending, message: str) -> None:
        self.gave_up = Outcome(ending, message)
        study.stop()

    def due(self, study: optuna.Study) -> Outcome | None:
        """Why this worker stops before its next trial, or None to go on."""
        if self.gave_up:
            return self.gave_up
        if time_is_up(study):
            return Outcome(Ending.TIME_UP)
        reason = self.recycle.due(self.ran) if self.recycle else None
        return Outcome(Ending.RETIRED, reason) if reason else None


@dataclass
class Ended:
    """How a run's worker processes ended: errors by worker index, the signals that killed
    some, and the workers that gave up after trials failed in a row."""

    errors: dict[int, str] = field(default_factory=dict)
    killed: list[int] = field(default_factory=list)
    gave_up: list[int] = field(default_factory=list)


def of_run(done: int, total: int, time_up: bool, ended: Ended, *, single: bool) -> Outcome:
    """The outcome of a study's run over its workers, once they have all ended.

    `done` is the study's finished trials now; with one worker, its error is the command's.
    """
    left = f"{done} of {total} trials finished"
    if done >= total:
        return Outcome(Ending.REACHED)
    if time_up and not ended.errors:
        trained_so_far = of_total(done, total, sep=" of ")
        return Outcome(
            Ending.TIME_UP, f"Time is up with {trained_so_far} trials trained; rerun to go on."
        )
    if ended.errors:
        index, message = next(iter(ended.errors.items()))
        return Outcome(
            Ending.WORKER_ERROR, message if single else f"Worker {index} stopped: {message}"
        )
    if single and ended.killed:
        return Outcome(
            Ending.KILLED,
            f"The worker process was killed by signal {ended.killed[0]} with {left}; rerun "
            "the command to resume (its trial is retried).",
        )
    if single:
        return Outcome(
            Ending.FAILURES,
            f"Stopped with {left} because trials kept failing; 'search status' shows "
            "their reasons.",
        )
    ending = (
        Ending.FAILURES
        if ended.gave_up
        else Ending.KILLED
        if ended.killed
        else Ending.WORKER_ERROR
    )
    return Outcome(
        ending,
        f"The workers stopped with {left} (see the lines above); rerun the command to resume.",
    )
