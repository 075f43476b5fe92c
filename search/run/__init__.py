"""Running a study: one trial, the worker loop, worker processes and their sizing, GPUs,
Ctrl-C and SIGTERM, and the lines a person reads while it runs.

Joins the layers below: the store's studies and the train layer's networks.
"""

from search.run.ending import INTERRUPTED, Ending, Outcome
from search.run.gpus import ENV_GPUS, GpuError, cards, parse_list
from search.run.interrupt import sigterm_as_interrupt
from search.run.loop import run_trials, run_worker
from search.run.objective import Objective, trial_seed
from search.run.progress import LadderPlan, best_line, of_total, status_lines, timing
from search.run.sizing import (
    ENV_RECYCLE_MB,
    ENV_RECYCLE_TRIALS,
    RECYCLE_MB,
    RECYCLE_TRIALS,
    WorkerError,
    WorkerRequest,
    worker_count,
)
from search.run.workers import run_study

__all__ = [
    "ENV_GPUS",
    "ENV_RECYCLE_MB",
    "ENV_RECYCLE_TRIALS",
    "INTERRUPTED",
    "RECYCLE_MB",
    "RECYCLE_TRIALS",
    "Ending",
    "GpuError",
    "LadderPlan",
    "Objective",
    "Outcome",
    "WorkerError",
    "WorkerRequest",
    "best_line",
    "cards",
    "of_total",
    "parse_list",
    "run_study",
    "run_trials",
    "run_worker",
    "sigterm_as_interrupt",
    "status_lines",
    "timing",
    "trial_seed",
    "worker_count",
]
