"""Worker processes: one study's trials run by N processes on this machine.

Processes, not threads: measured on two cores, two processes with one TensorFlow thread each
trained twice the epochs of one process with two threads. They are started with spawn, not
fork, because TensorFlow's thread pools cannot be forked safely once they run. Each process
pins its thread pools to its share of the cores, loads the data once, seeds its sampler apart
from the others, and sends its output to this process, which prints every line with the
worker's index: one terminal shows all of them.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import random
import signal
import sys
import threading
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from multiprocessing.context import SpawnProcess
from typing import TYPE_CHECKING

from search import interrupt, loop
from search import storage as storage_mod
from search import study as study_mod
from search.errors import SearchError, first_line
from search.runtime import Log, available_memory
from search.study import StudyError

if TYPE_CHECKING:
    import optuna

    from search.presets import Preset

AUTO = "auto"
# Resident memory of one training process (TensorFlow, the 60,000 uint8 images, a model),
# with a margin: the full Fashion-MNIST search held about 1.1 GB.
WORKER_BYTES = 3 * 2**29
# Local worker processes measured on one SQLite file without a "database is locked" (64 held,
# at many times a real search's write rate: benchmarks/worker_scaling.py sqlite-limit). `auto`
# stays within what was measured; beyond it, use PostgreSQL.
SQLITE_WORKERS = 64
STOP_SECONDS = 60  # how long workers get to record their interrupted trials


def cores() -> int:
    """The cores this process may run on (a container's or taskset's share, not the host's)."""
    return len(os.sched_getaffinity(0))


def auto_count(url: str) -> int:
    """One process per core, no more than memory holds; on SQLite, no more than it serves."""
    count = cores()
    memory = available_memory()
    if memory is not None:
        count = min(count, memory // WORKER_BYTES)
    if storage_mod.parse(url).get_backend_name() == "sqlite":
        count = min(count, SQLITE_WORKERS)
    return max(1, count)


def count(value: str | int, url: str) -> int:
    """The number of worker processes for `--workers N|auto`."""
    if value == AUTO:
        return auto_count(url)
    return int(value)


def thread_share(workers: int) -> int:
    """TensorFlow threads for each of `workers` processes: the cores shared out evenly."""
    return max(1, cores() // workers)


@dataclass(frozen=True)
class Job:
    """What a worker process needs; sent through a pipe, never on a command line."""

    index: int
    url: str
    study: str
    total: int
    seed: int
    threads: int
    data_dir: str | None


def seed_base(fresh: bool, workers: int) -> int:
    # A new study's workers take sampler seeds 0..N-1, so a one-process search is reproducible.
    # Workers that resume or join a study under way cannot know which seeds other workers hold,
    # and a repeated seed would repeat their suggestions, so they draw one at random.
    return 0 if fresh else random.SystemRandom().randrange(1, 2**30 - workers)


def run_study(
    study: optuna.Study,
    preset: Preset,
    total: int,
    *,
    storage: optuna.storages.RDBStorage,
    url: str,
    workers: int,
    threads: int | None,
    fresh: bool,
    data_dir: str | None,
    log: Log,
) -> None:
    """Run the study to its total: in this process for one worker, else in `workers` processes.

    Other workers on other machines may share the study at the same time.
    """
    base = seed_base(fresh, workers)
    if workers == 1:
        if base:
            study.sampler = study_mod.sampler(preset, worker=base)
        loop.run_worker(
            study, preset, total, storage=storage, data_dir=data_dir, log=log, threads=threads
        )
        return
    if study_mod.finished(study) >= total:
        log(
            f"Study '{study.study_name}' already has {study_mod.finished(study)} finished "
            f"trials (of {total}); nothing to do."
        )
        return
    if storage_mod.sqlite_path(url) is not None and workers > SQLITE_WORKERS:
        log(
            f"Warning: {workers} workers on one SQLite file; it was measured to serve "
            f"{SQLITE_WORKERS}. Use PostgreSQL for more."
        )
    threads = threads or thread_share(workers)
    log(f"Workers: {workers} processes, {threads} TensorFlow thread(s) each, on {cores()} cores.")
    jobs = [
        Job(i, url, study.study_name, total, base + i, threads, data_dir) for i in range(workers)
    ]
    errors = spawn(jobs, log=lambda line: log(storage_mod.scrub(line, url)))
    _check_done(study, total, errors, url)


def _check_done(study: optuna.Study, total: int, errors: dict[int, str], url: str) -> None:
    """Workers that stopped short of the total: the first error, or that they stopped."""
    done = study_mod.finished(study)
    if done >= total or (study_mod.time_is_up(study) and not errors):
        return
    if errors:
        index, message = next(iter(errors.items()))
        raise StudyError(f"Worker {index} stopped: {storage_mod.scrub(message, url)}")
    raise StudyError(
        f"The workers stopped with {done} of {total} trials finished (see the "
        "lines above); rerun the command to resume."
    )


def spawn(jobs: list[Job], log: Log) -> dict[int, str]:
    """Run one process per job until all end; relay their lines; return their errors by index."""
    context = multiprocessing.get_context("spawn")
    readers: dict[Connection, int] = {}
    processes: list[SpawnProcess] = []
    errors: dict[int, str] = {}
    for job in jobs:
        reader, writer = context.Pipe(duplex=False)
        process = context.Process(
            target=_main, args=(job, writer), daemon=True, name=f"search-worker-{job.index}"
        )
        with _sigint_ignored():  # a child starts with Ctrl-C ignored: the parent relays it
            process.start()
        writer.close()
        readers[reader] = job.index
        processes.append(process)

    try:
        with interrupt.sigterm_as_interrupt():
            _relay(readers, log, errors)
    except KeyboardInterrupt:
        # Each worker fails its running trial (SIGTERM reaches its trial loop as an interrupt),
        # so nothing is left RUNNING, then exits.
        for process in processes:
            if process.is_alive():
                process.terminate()
        _relay(readers, log, errors, timeout=STOP_SECONDS)
        raise
    finally:
        for process in processes:
            process.join(timeout=STOP_SECONDS)
            if process.is_alive():
                process.kill()
    for job, process in zip(jobs, processes, strict=True):
        if process.exitcode is not None and process.exitcode < 0:
            log(
                f"[w{job.index}] was killed by signal {-process.exitcode}; the other workers "
                "retry its trial."
            )
    return errors


def _relay(
    readers: dict[Connection, int], log: Log, errors: dict[int, str], timeout: float | None = None
) -> None:
    while readers:
        ready = wait(list(readers), timeout=timeout)
        if not ready:  # only with a timeout: the workers did not stop in time
            return
        for reader in ready:
            assert isinstance(reader, Connection)  # wait() returns what it was given
            index = readers[reader]
            try:
                kind, text = reader.recv()
            except (EOFError, OSError):  # the worker exited (or was killed)
                del readers[reader]
                continue
            if kind == "error":
                errors[index] = text
                log(f"[w{index}] Error: {text}")
            else:
                log(f"[w{index}] {text}")


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

    debug = bool(os.environ.get("SEARCH_DEBUG"))
    import optuna

    optuna.logging.disable_default_handler()
    optuna.logging.get_logger("optuna").addHandler(_Relay(log))
    optuna.logging.set_verbosity(optuna.logging.DEBUG if debug else optuna.logging.ERROR)
    code = 0
    try:
        rdb = storage_mod.open_storage(job.url, must_exist=True)
        study, preset = study_mod.load(rdb, job.study, worker=job.seed)
        loop.run_worker(
            study,
            preset,
            job.total,
            storage=rdb,
            data_dir=job.data_dir,
            log=log,
            threads=job.threads,
        )
    except KeyboardInterrupt:
        code = 130
    except SearchError as e:
        send("error", str(e))
        code = 1
    except Exception as e:
        if debug:
            log(traceback.format_exc())
        send("error", f"unexpected {type(e).__name__}: {first_line(e)}")
        code = 1
    finally:
        conn.close()
    sys.exit(code)
