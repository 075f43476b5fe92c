"""How many worker processes a machine runs, their threads and cores, and when one is replaced
(`Recycle`, which each worker's job carries to its process).

workers.py starts the processes and watches them; this module only sizes them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from search.errors import Log, SearchError
from search.run import gpus as gpus_mod
from search.store import storage as storage_mod
from search.train import cgroup
from search.train.runtime import available_memory, resident_memory

if TYPE_CHECKING:
    from search.define.presets import Preset

AUTO = "auto"
# Resident memory of one training process (TensorFlow, the 60,000 uint8 images, a model),
# with a margin: the full Fashion-MNIST search held about 1.1 GB.
WORKER_BYTES = 3 * 2**29
# Local worker processes measured on one SQLite file without a "database is locked" (64 held,
# at many times a real search's write rate: benchmarks/worker_scaling.py sqlite-limit). `auto`
# stays within what was measured; beyond it, use PostgreSQL.
SQLITE_WORKERS = 64
# `--workers N` is refused past what the machine holds: the processes memory holds (as `auto`
# counts them, each WORKER_BYTES), since past it the kernel kills workers and each kill is a
# retry, and PER_CORE a core. Past the cores, workers take turns on them (one thread each),
# which still pays where trials wait on GPUs or on the storage; past four a core, each trial
# runs on under a quarter of one and the 13.5 s start-up of every process dominates.
PER_CORE = 4
# Recycling (benchmarks/RESULTS.md, memory): without it, a worker's RSS rose from 770 MB at
# its first tiny trial to 1,115 MB at trial 30 and 2,198 MB after 200 (+5.5 to +9 MB a trial,
# linearly). Replaced every 30 trials, it stayed under 1,130 MB, within WORKER_BYTES, and held
# 0.43x the memory after 200 trials; each new process cost 13.5 s of start-up, 0.34 s a
# trial, 0.25 % of a typical 183 s trial (44 s on a machine loaded near 10).
# Large networks grow faster than those tiny ones; a process past twice WORKER_BYTES is
# replaced early whatever its count.
RECYCLE_TRIALS = 30
RECYCLE_MB = 2 * WORKER_BYTES // 2**20
ENV_RECYCLE_TRIALS = "SEARCH_RECYCLE_TRIALS"
ENV_RECYCLE_MB = "SEARCH_RECYCLE_MB"


@dataclass(frozen=True)
class WorkerRequest:
    """What --workers, --threads and --gpus asked for; run_study resolves it on this machine."""

    workers: str | int = 1  # a number, or AUTO
    threads: int | None = None  # per process; None: the cores shared out
    gpus: tuple[str, ...] | None = None  # the cards (nvidia-smi's numbers); None: all


class WorkerError(SearchError):
    """A worker setting (--workers, an environment variable) is malformed or more than this
    machine holds; the message names it."""


def cores(root: Path = cgroup.ROOT, own: Path = cgroup.OWN) -> int:
    """The cores this process may run on: a taskset's share, or fewer where its cgroup's CPU
    quota (a container's limit) allows fewer; never the host's."""
    allowed = len(os.sched_getaffinity(0))
    quota = cgroup.cpu_limit(root, own)
    return allowed if quota is None else max(1, min(allowed, quota))


def _on_sqlite(url: str) -> bool:
    return storage_mod.parse(url).get_backend_name() == "sqlite"


def auto_count(url: str, cards: Sequence[gpus_mod.Gpu] = ()) -> int:
    """One process per core, no more than memory holds; on SQLite, no more than it serves.

    With GPUs, also no more than the cards' free memory holds.
    """
    count = cores()
    if cards:
        count = min(count, gpus_mod.capacity(list(cards)))
    memory = available_memory()
    if memory is not None:
        count = min(count, memory // WORKER_BYTES)
    if _on_sqlite(url):
        count = min(count, SQLITE_WORKERS)
    return max(1, count)


def worker_count(
    value: str | int, url: str, cards: Sequence[gpus_mod.Gpu] = (), log: Log | None = None
) -> int:
    """The number of worker processes for `--workers N|auto`.

    A number is taken as given up to what the machine holds (most_workers), and refused past
    it; beyond what one SQLite file was measured to serve, `log` hears a warning.
    """
    if value == AUTO:
        return auto_count(url, cards)
    count = int(value)
    held, memory = cores(), available_memory()
    if count > most_workers(held, memory):
        raise WorkerError(_too_many(count, held, memory))
    if log and count > SQLITE_WORKERS and _on_sqlite(url):
        log(
            f"Warning: {count} workers on one SQLite file; it was measured to serve "
            f"{SQLITE_WORKERS}. Use PostgreSQL for more."
        )
    return count


def most_workers(cores: int, memory: int | None) -> int:
    """The most worker processes a machine of `cores` and `memory` bytes free holds (one at
    least): PER_CORE a core, and no more than memory holds (as `auto` counts them)."""
    count = PER_CORE * cores
    if memory is not None:
        count = min(count, memory // WORKER_BYTES)
    return max(1, count)


def _too_many(count: int, cores: int, memory: int | None) -> str:
    most = most_workers(cores, memory)
    held = f"{cores} core{'s' if cores > 1 else ''} ({PER_CORE} workers a core at most)"
    if memory is not None:
        held += (
            f" and {memory / 2**30:.1f} GiB of memory free (room for "
            f"{memory // WORKER_BYTES} workers of {WORKER_BYTES / 2**30:.1f} GiB)"
        )
    return (
        f"--workers {count} is more than this machine holds: {held}; use --workers auto, "
        f"or --workers {most} or fewer."
    )


def thread_share(workers: int) -> int:
    """Threads for each of `workers` processes: the cores shared out evenly."""
    return max(1, cores() // workers)


def _setting(env: str, preset_value: int | None, default: int, unit: str) -> int:
    text = os.environ.get(env, "").strip()
    if not text:
        return default if preset_value is None else preset_value
    if not text.isdigit():
        raise WorkerError(f"${env} must be a whole number of {unit} (0: never), not '{text}'.")
    return int(text)


def recycling(preset: Preset) -> Recycle:
    """When a worker process is replaced: the environment, else the preset, else the default."""
    trials = _setting(ENV_RECYCLE_TRIALS, preset.recycle_trials, RECYCLE_TRIALS, "trials")
    megabytes = _setting(ENV_RECYCLE_MB, preset.recycle_mb, RECYCLE_MB, "megabytes")
    return Recycle(trials=trials, rss_bytes=megabytes * 2**20)


@dataclass(frozen=True)
class Recycle:
    """When a worker process makes way for a fresh one: once it has run `trials` trials, or
    once its resident memory has passed `rss_bytes` (0 turns either off).

    TensorFlow keeps each model's traced graphs after clear_session, so a process grows with
    every trial (6-9 MB a small trial, benchmarks/RESULTS.md); only a new process starts
    from zero. The check runs between trials, after a trial is recorded, so none is cut short.
    """

    trials: int = 0
    rss_bytes: int = 0

    def due(self, ran: int) -> str | None:
        """Why a process that has run `ran` trials should retire now, or None."""
        if ran == 0:  # one trial at least, or a limit below the start-up size would loop
            return None
        rss = resident_memory() or 0
        held = f"at {rss / 2**20:,.0f} MB resident"
        if self.trials and ran >= self.trials:
            return f"after {ran} trials (its limit), {held}"
        if self.rss_bytes and rss >= self.rss_bytes:
            return f"after {ran} trials, {held} (its limit: {self.rss_bytes / 2**20:,.0f} MB)"
        return None


def cpu_sets(workers: int, threads: int) -> list[tuple[int, ...]]:
    """The cores of each worker, `threads` apiece, in turn (for backends pinned by cores)."""
    allowed = sorted(os.sched_getaffinity(0))
    return [
        tuple(allowed[(i * threads + k) % len(allowed)] for k in range(min(threads, len(allowed))))
        for i in range(workers)
    ]
