"""Worker processes: one study's trials run by N processes on this machine.

Processes, not threads: measured on two cores, two processes with one TensorFlow thread each
trained twice the epochs of one process with two threads. They are started with spawn, not
fork, because TensorFlow's thread pools cannot be forked safely once they run, and so that each
chooses its Keras backend and its GPU before it imports Keras. Each process pins its threads
to its share of the cores (and, on a GPU machine, sees one card), loads the data once, seeds
its sampler apart from the others, and sends its output to this process, which prints every
line with the worker's index: one terminal shows all of them. A process that has run its
share of trials, or grown past its memory limit, retires between trials and a fresh one takes
its place, so a long search holds bounded memory. One worker runs in such a process too, for
the same reasons.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import random
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from multiprocessing.connection import Connection, wait
from multiprocessing.context import SpawnProcess
from pathlib import Path
from typing import TYPE_CHECKING

from search.errors import Log, SearchError, debugging, first_line
from search.run import gpus as gpus_mod
from search.run import interrupt, loop, sizing
from search.run.ending import INTERRUPTED, Ended, Ending, Outcome, of_run
from search.store.faults import storage_fault
from search.store.pruners import climbs_left
from search.store.storage import open_storage, scrub
from search.store.study import load_study
from search.store.trials import finished, time_is_up
from search.train import runtime

if TYPE_CHECKING:
    import optuna

    from search.define.presets import Preset

STOP_SECONDS = 60  # how long workers get to record their interrupted trials
# How often the parent, waiting on its workers, looks whether a stop was asked for: a SIGTERM
# that lands in a garbage collector's callback has its raise swallowed (interrupt.py).
POLL_SECONDS = 1.0
# How often a worker of a pool may be killed (say, by the out-of-memory killer) and replaced in
# one run; after that its place stays empty, so a network that kills every process that trains
# it cannot cycle without end (its trial is retried a bounded number of times too).
KILLED_LIMIT = 3


@dataclass(frozen=True)
class Job:
    """What a worker process needs; sent through a pipe, never on a command line."""

    index: int
    url: str
    study: str
    total: int
    seed: int
    threads: int | None
    data_dir: Path | None
    recycle: sizing.Recycle = field(default_factory=sizing.Recycle)
    backend: str = runtime.DEFAULT_BACKEND  # set in the process before it imports Keras
    gpu: str | None = None  # the one card it sees (CUDA_VISIBLE_DEVICES)
    cpus: tuple[int, ...] = ()  # the cores it runs on, for backends pinned that way (JAX)


def seed_base(fresh: bool, workers: int) -> int:
    # A new study's workers take sampler seeds 0..N-1, so a one-process search is reproducible.
    # Workers that resume or join a study under way cannot know which seeds other workers hold,
    # and a repeated seed would repeat their suggestions, so they draw one at random.
    return 0 if fresh else random.SystemRandom().randrange(1, 2**30 - workers)


def successor(job: Job, workers: int) -> Job:
    """The job of the process that replaces a retired one.

    It must not reuse its predecessor's seed: TPE's first trials are drawn at random from the
    seed alone, whatever the study holds, so the same seed would suggest the same
    configurations again. Worker i's k-th successor takes base + i + k * workers, a seed no
    other process of this run holds, and a one-worker search stays reproducible (base, base+1,
    ...) for a given recycling limit.
    """
    return replace(job, seed=job.seed + workers)


def run_study(
    study: optuna.Study,
    preset: Preset,
    total: int,
    *,
    url: str,
    request: sizing.WorkerRequest,
    fresh: bool,
    data_dir: Path | None,
    log: Log,
) -> Outcome:
    """Run the study to its total in worker processes, each replaced as it retires, and
    return how the run ended.

    The request's worker count (a number, or auto) is resolved here, on the cards it names:
    each worker sees one of them. Other workers on other machines may share the study at the
    same time. With one worker, its lines are printed as they are and its error
    is this run's error.
    """
    if finished(study) >= total and not climbs_left(study):
        log(
            f"Study '{study.study_name}' already has {finished(study)} finished "
            f"trials (of {total}); nothing to do."
        )
        return Outcome(Ending.REACHED)
    count, plan = _plan(request, url, log)
    base, recycle = seed_base(fresh, count), sizing.recycling(preset)
    jobs = make_jobs(
        study.study_name, url, total, base, count, request.threads, data_dir, plan, recycle
    )
    if count > 1 or plan:
        log(_workers_line(jobs))
    try:
        ended = spawn(
            jobs,
            log=lambda line: log(scrub(line, url)),
            # A ladder's waiting climbs outlast the total: a retiring worker is replaced.
            unfinished=lambda: (
                (finished(study) < total or climbs_left(study)) and not time_is_up(study)
            ),
            prefixed=count > 1,
        )
    except KeyboardInterrupt:
        return Outcome(Ending.INTERRUPTED, INTERRUPTED)
    ended.errors = {i: scrub(message, url) for i, message in ended.errors.items()}
    return of_run(finished(study), total, time_is_up(study), ended, single=count == 1)


def _plan(request: sizing.WorkerRequest, url: str, log: Log) -> tuple[int, list[str]]:
    """The worker count the request comes to on this machine, and each worker's card."""
    cards = gpus_mod.cards(list(request.gpus) if request.gpus is not None else None)
    count = sizing.worker_count(request.workers, url, cards, log)
    return count, gpus_mod.assign(list(cards), count)


def _workers_line(jobs: list[Job]) -> str:
    count, plan = len(jobs), [job.gpu for job in jobs if job.gpu is not None]
    return (
        f"Workers: {count} process{'es' if count > 1 else ''}, "
        f"{jobs[0].threads or sizing.cores()} thread(s) each, on {sizing.cores()} cores"
        + (f"; {gpus_mod.summary(plan)}." if plan else ".")
    )


def make_jobs(
    study: str,
    url: str,
    total: int,
    base: int,
    workers: int,
    threads: int | None,
    data_dir: Path | None,
    plan: list[str],
    recycle: sizing.Recycle | None = None,
) -> list[Job]:
    """One job per worker: its seed, its share of the cores and, where `plan` has one, its GPU.

    One worker keeps every core unless `threads` says otherwise.
    """
    threads = threads or (sizing.thread_share(workers) if workers > 1 else None)
    cpus = sizing.cpu_sets(workers, threads) if threads else [()] * workers
    backend = runtime.backend()
    return [
        Job(
            i,
            url,
            study,
            total,
            base + i,
            threads,
            data_dir,
            recycle=recycle or sizing.Recycle(),
            backend=backend,
            gpu=plan[i] if plan else None,
            cpus=cpus[i],
        )
        for i in range(workers)
    ]


def spawn(
    jobs: list[Job],
    log: Log,
    *,
    unfinished: Callable[[], bool] = lambda: True,
    prefixed: bool = True,
) -> Ended:
    """Run one process per job until all end, replacing each that retires while the study is
    `unfinished`; relay their lines, prefixed with the worker's index where `prefixed`."""
    pool = _Pool(log, prefixed, len(jobs))
    for job in jobs:
        pool.start(job)
    try:
        # Deferred: `unfinished` reads the storage, and relay checks for a stop every poll.
        with interrupt.sigterm_as_interrupt(deferred=True):
            pool.relay(unfinished)
    except KeyboardInterrupt:
        # Each worker fails its running trial (SIGTERM reaches its trial loop as an interrupt),
        # so nothing is left RUNNING, then exits.
        for process in pool.processes:
            if process.is_alive():
                process.terminate()
        pool.relay(lambda: False, timeout=STOP_SECONDS)
        raise
    finally:
        for process in pool.processes:
            process.join(timeout=STOP_SECONDS)
            if process.is_alive():
                process.kill()
    return pool.ended


class _Pool:
    """The worker processes of one command and the pipes their lines come through."""

    def __init__(self, log: Log, prefixed: bool, workers: int) -> None:
        self.context = multiprocessing.get_context("spawn")
        self.log, self.prefixed, self.workers = log, prefixed, workers
        self.readers: dict[Connection, tuple[Job, SpawnProcess]] = {}
        self.processes: list[SpawnProcess] = []
        self.retired: dict[SpawnProcess, str] = {}
        self.kills: dict[int, int] = {}  # by worker index: its processes killed so far
        self.ended = Ended()

    def prefix(self, job: Job) -> str:
        return f"[w{job.index}] " if self.prefixed else ""

    def start(self, job: Job) -> None:
        reader, writer = self.context.Pipe(duplex=False)
        process = self.context.Process(
            target=_main, args=(job, writer), daemon=True, name=f"search-worker-{job.index}"
        )
        with _sigint_ignored():  # a child starts with Ctrl-C ignored: the parent relays it
            process.start()
        writer.close()
        self.readers[reader] = (job, process)
        self.processes.append(process)

    def relay(self, unfinished: Callable[[], bool], timeout: float | None = None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.readers:
            interrupt.check()
            left = POLL_SECONDS if deadline is None else deadline - time.monotonic()
            if left <= 0:  # the workers did not stop in time
                return
            ready = wait(list(self.readers), timeout=min(left, POLL_SECONDS))
            for reader in ready:
                assert isinstance(reader, Connection)  # wait() returns what it was given
                job, process = self.readers[reader]
                try:
                    kind, text = reader.recv()
                except (EOFError, OSError):  # the worker exited (or was killed)
                    del self.readers[reader]
                    reader.close()
                    self.exited(job, process, unfinished)
                    continue
                if kind == "error":
                    self.ended.errors.setdefault(job.index, text)
                    self.log(f"{self.prefix(job)}Error: {text}")
                elif kind == "retire":
                    self.retired[process] = text
                elif kind == "gave up":
                    self.ended.gave_up.append(job.index)
                else:
                    self.log(f"{self.prefix(job)}{text}")

    def exited(self, job: Job, process: SpawnProcess, unfinished: Callable[[], bool]) -> None:
        """A process closed its pipe: replace it if it retired or, in a pool, was killed, and
        trials remain. A lone worker that is killed ends the command, which says so."""
        reason = self.retired.pop(process, None)
        if reason is not None and unfinished():
            self.log(
                f"{self.prefix(job)}Worker process {process.pid} retired {reason}; a new "
                "process takes its place."
            )
            self.start(successor(job, self.workers))
        process.join(timeout=STOP_SECONDS)
        if process.exitcode is not None and process.exitcode < 0:
            self.ended.killed.append(-process.exitcode)
            if self.prefixed:
                self.killed(job, -process.exitcode, unfinished)
        if process.exitcode is not None:
            # Its pipe and sentinel would stay open for the whole run otherwise: a search of
            # many short trials replaces hundreds of processes in a day.
            self.processes.remove(process)
            process.close()

    def killed(self, job: Job, signum: int, unfinished: Callable[[], bool]) -> None:
        """A pool's process was killed: its trial is retried; replace it, a few times."""
        kills = self.kills[job.index] = self.kills.get(job.index, 0) + 1
        line = f"{self.prefix(job)}was killed by signal {signum}; its trial is retried"
        if not unfinished():
            self.log(f"{line}.")
        elif kills > KILLED_LIMIT:
            self.log(f"{line}. Killed {kills} times in this run, it is not replaced.")
        else:
            self.log(f"{line}, and a new process takes its place.")
            self.start(successor(job, self.workers))


class _sigint_ignored:
    """Ignore SIGINT while a child is spawned: it inherits the disposition across exec."""

    def __enter__(self) -> None:
        try:
            self.previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        except ValueError:  # not the main thread: nothing to change
            self.previous = None

    def __exit__(self, *exc: object) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGINT, self.previous)


class _Relay(logging.Handler):
    """Optuna's own warnings go through the pipe too, so they carry the worker's index."""

    def __init__(self, log: Log) -> None:
        super().__init__()
        self.log = log

    def emit(self, record: logging.LogRecord) -> None:
        self.log(record.getMessage())


def enter(job: Job) -> None:
    """Give this new process the job's backend and card, before it imports Keras or CUDA."""
    os.environ[runtime.ENV_BACKEND] = job.backend
    if job.gpu is not None:
        gpus_mod.pin(job.gpu)


def _main(job: Job, conn: Connection) -> None:
    """A worker process: load the study, run trials to the total, report an error as a line."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent turns Ctrl-C into SIGTERM
    lock = threading.Lock()  # Optuna's heartbeat thread may log while the main thread does

    def send(kind: str, text: str) -> None:
        with lock:
            try:
                conn.send((kind, text))
            except OSError:  # the parent is gone: nobody is left to read
                pass

    def log(line: str) -> None:
        send("line", line)

    debug = debugging()
    enter(job)
    import optuna

    optuna.logging.disable_default_handler()
    optuna.logging.get_logger("optuna").addHandler(_Relay(log))
    optuna.logging.set_verbosity(optuna.logging.DEBUG if debug else optuna.logging.ERROR)
    code = 0
    try:
        outcome = _work(job, log)
        if outcome.ending is Ending.RETIRED:
            send("retire", outcome.message)
        elif outcome.ending is Ending.FAILURES:
            send("gave up", outcome.message)
        elif not outcome.ok:
            send("error", outcome.message)
            code = 1
    except KeyboardInterrupt:
        code = 130
    except SearchError as e:
        send("error", str(e))
        code = 1
    except Exception as e:
        if debug:
            log(traceback.format_exc())
        fault = storage_fault(e, job.url)  # a full disk or a lost server, named as such
        unexpected = f"unexpected {type(e).__name__}: {first_line(e)}" + (
            "" if debug else " (rerun with --debug for the full traceback)."
        )
        send("error", str(fault) if fault else unexpected)
        code = 1
    finally:
        conn.close()
    sys.exit(code)


def _work(job: Job, log: Log) -> Outcome:
    """A worker process's trials: to the total, or until it stops (ending.Watch)."""
    rdb = open_storage(job.url, must_exist=True)
    study, preset = load_study(rdb, job.study, worker=job.seed)
    return loop.run_worker(
        study,
        preset,
        job.total,
        storage=rdb,
        data_dir=job.data_dir,
        log=log,
        threads=job.threads,
        cpus=job.cpus,
        recycle=job.recycle,
    )
