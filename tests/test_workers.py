"""Worker processes: their jobs and seeds, how they are replaced and how their errors come back.

`search start --workers N` end to end (a killed worker, Ctrl-C) is in test_parallel.py.
"""

from __future__ import annotations

import importlib.util
import json
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from search.define import presets
from search.run import interrupt, sizing, workers
from search.run.ending import Ending, Outcome
from search.store import storage, study
from search.store.trials import FINISHED, finished, trained
from search.train import runtime
from tests.helpers import (
    check_exact,
    db_url,
    load_study,
    popen,
    run,
    swallow_an_interrupt,
    write_preset,
)
from tests.postgres import Cluster


def test_a_new_study_s_workers_take_seeds_from_zero_others_draw_theirs() -> None:
    assert workers.seed_base(True, 4) == 0  # a one-process search is reproducible
    drawn = {workers.seed_base(False, 4) for _ in range(50)}
    assert len(drawn) > 1 and all(1 <= seed < 2**30 - 4 for seed in drawn)


def test_each_worker_s_error_comes_back_with_its_index(tmp_path: Path) -> None:
    missing = tmp_path / "none.db"
    jobs = [workers.Job(i, f"sqlite:///{missing}", "tiny", 2, i, 1, None) for i in range(2)]
    lines: list[str] = []
    ended = workers.spawn(jobs, log=lines.append)  # real processes, started with spawn
    expected = f"No study database at {missing}; run 'search start' first."
    assert ended.errors == {0: expected, 1: expected} and ended.killed == []
    assert sorted(lines) == [f"[w0] Error: {expected}", f"[w1] Error: {expected}"]
    assert not missing.exists()


def two_workers(
    s: optuna.Study,
    preset: presets.Preset,
    total: int,
    url: str,
    data_dir: Path,
    lines: list[str],
    *,
    fresh: bool,
) -> Outcome:
    """run_study as `search start --workers 2` calls it, its lines kept in `lines`."""
    request = sizing.WorkerRequest(workers=2)
    return workers.run_study(
        s,
        preset,
        total,
        url=url,
        request=request,
        fresh=fresh,
        data_dir=data_dir,
        log=lines.append,
    )


def test_a_study_at_its_total_starts_no_process(private_storage: Path, tmp_path: Path) -> None:
    url = db_url(private_storage)
    rdb = storage.open_storage(url)
    preset = presets.load_preset(write_preset(tmp_path))
    s = study.prepare(preset, storage=rdb, name="tiny").study
    s.add_trial(optuna.create_trial(value=0.5))
    lines: list[str] = []
    outcome = two_workers(s, preset, 1, url, tmp_path / "nowhere", lines, fresh=False)
    assert lines == ["Study 'tiny' already has 1 finished trials (of 1); nothing to do."]
    assert outcome == Outcome(Ending.REACHED)


def test_a_worker_error_stops_the_study_without_the_password(
    postgres: Cluster, pg_url: str, tmp_path: Path
) -> None:
    rdb = storage.open_storage(pg_url)
    preset = presets.load_preset(write_preset(tmp_path))
    s = study.prepare(preset, storage=rdb, name="tiny").study
    # The workers fail on the data folder, whose name happens to hold the password.
    nowhere = tmp_path / f"data-{postgres.password}"
    lines: list[str] = []
    outcome = two_workers(s, preset, 2, pg_url, nowhere, lines, fresh=True)
    assert outcome.ending is Ending.WORKER_ERROR and outcome.exit_code == 1
    message = outcome.message
    assert message.startswith(("Worker 0 stopped: --data-dir ", "Worker 1 stopped: --data-dir "))
    assert message.endswith("data-*** is not a folder.")
    assert (
        lines[0] == f"Workers: 2 processes, {sizing.thread_share(2)} thread(s) "
        f"each, on {sizing.cores()} cores."
    )
    assert sum("Error: --data-dir" in line for line in lines) == 2
    for text in (message, *lines):
        assert postgres.password not in text
    assert finished(s) == 0  # no trial ran


# Recycling: a worker process makes way for a fresh one ----------------------------------------
def test_a_process_retires_between_trials_after_at_least_one() -> None:
    rss = runtime.resident_memory()
    assert rss is not None and rss > 10 * 2**20  # this Python process, read from /proc
    by_count = sizing.Recycle(trials=2)
    assert by_count.due(0) is None and by_count.due(1) is None
    assert (by_count.due(2) or "").startswith("after 2 trials (its limit), at ")
    by_memory = sizing.Recycle(rss_bytes=2**20)  # 1 MB: any process is past it
    assert by_memory.due(0) is None  # a fresh process always runs one trial
    assert (by_memory.due(1) or "").endswith("MB resident (its limit: 1 MB)")
    assert sizing.Recycle().due(10_000) is None  # 0 and 0: never
    assert sizing.Recycle(rss_bytes=2**50).due(3) is None


def test_a_successor_never_takes_a_seed_another_process_of_the_run_holds() -> None:
    first = [workers.Job(i, "sqlite://", "s", 9, 100 + i, None, None) for i in range(3)]
    seeds = {job.seed for job in first}
    for job in first:
        for _ in range(4):
            job = workers.successor(job, 3)
            assert job.seed not in seeds and job.index in (0, 1, 2)
            seeds.add(job.seed)
    assert len(seeds) == 15


def test_a_recycled_worker_s_processes_run_exactly_the_total(
    tmp_path: Path, private_storage: Path, fashion_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    preset = write_preset(tmp_path, "small", pruner="none", **{"epochs = 3": "epochs = 1"})
    monkeypatch.setenv(sizing.ENV_RECYCLE_TRIALS, "2")
    result = run("start", "--preset", str(preset), "--trials", "5")
    assert result.exit_code == 0, result.output
    trials = load_study(private_storage).get_trials()
    check_exact(trials, 5)  # exactly the total: none lost, none counted twice
    assert TrialState.FAIL not in [t.state for t in trials]
    # Two trained trials a process (a rejection builds no model and is not counted), in
    # order: three processes, none of them this one.
    holders = [t.user_attrs["worker"] for t in trials if trained(t)]
    assert holders[0] == holders[1] != holders[2] == holders[3] != holders[4]
    pids = {int(holder.rsplit(":", 1)[1]) for holder in holders}
    assert len(pids) == 3 and os.getpid() not in pids
    assert result.output.count("retired after 2 trials (its limit)") == 2
    assert "[w0]" not in result.output and "trial 5/5 (#" in result.output
    # Each successor seeds its sampler afresh: it does not repeat its predecessor's choices.
    sampled = [t for t in trials if "baseline" not in t.user_attrs]
    suggested = [json.dumps(t.params, sort_keys=True) for t in sampled]
    assert len(sampled) >= 3 and len(set(suggested)) == len(suggested)
    assert all(t.user_attrs["worker_rss_mb"] > 100 for t in trials)  # TensorFlow is loaded


def test_a_lone_worker_killed_mid_trial_is_one_sentence_and_the_rerun_retries_its_trial(
    tmp_path: Path, private_storage: Path, fashion_dir: Path, short_heartbeat: dict[str, str]
) -> None:
    # The out-of-memory killer's way: SIGKILL to the process that trains, not to the command.
    preset = write_preset(tmp_path, "small", "long", pruner="none")
    command = [sys.executable, "-m", "search", "start", "--preset", str(preset), "--trials", "1"]
    start = popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert start.stdout is not None
    try:
        for line in start.stdout:  # until the trial is in its second epoch
            if "epoch 1/6" in line:
                break
        trial = load_study(private_storage).trials[0]
        os.kill(int(trial.user_attrs["worker"].rsplit(":", 1)[1]), signal.SIGKILL)
        out, _ = start.communicate(timeout=120)
    finally:
        start.kill()
    assert start.returncode == 1, out
    assert out.rstrip().endswith(
        "Error: The worker process was killed by signal 9 with 0 of 1 trials finished; rerun "
        "the command to resume (its trial is retried)."
    )
    assert "Traceback" not in out and "[w0]" not in out
    assert load_study(private_storage).trials[0].state == TrialState.RUNNING
    # After the grace period (4 s here) a rerun fails the lost trial and queues it again, behind
    # the lab's second run, which was queued first; with a total of 2 it runs both.
    result = run("start", "--preset", str(preset), "--trials", "2")
    assert result.exit_code == 0, result.output
    lost, second, retry = load_study(private_storage).trials
    assert lost.state == TrialState.FAIL and second.state in FINISHED
    assert retry.state in FINISHED and retry.params == lost.params
    assert retry.system_attrs["failed_trial"] == 0


def test_each_job_carries_the_backend_its_card_and_its_own_cores(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(runtime.ENV_BACKEND, "jax")
    jobs = workers.make_jobs("s", "sqlite:///x.db", 9, 100, 3, 1, None, ["0", "1", "0"])
    allowed = sorted(os.sched_getaffinity(0))
    assert [job.seed for job in jobs] == [100, 101, 102]
    assert [(job.backend, job.gpu, job.threads) for job in jobs] == [
        ("jax", "0", 1),
        ("jax", "1", 1),
        ("jax", "0", 1),
    ]
    assert [job.cpus for job in jobs] == [(allowed[i % len(allowed)],) for i in range(3)]
    assert sizing.cpu_sets(1, 2 * len(allowed)) == [tuple(allowed)]  # never a core twice
    cpu_only = workers.make_jobs("s", "sqlite:///x.db", 9, 0, 2, None, None, [])
    assert [job.gpu for job in cpu_only] == [None, None]
    assert cpu_only[0].threads == sizing.thread_share(2)


def test_a_spawned_worker_enters_its_backend_and_card_before_keras(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for key in (runtime.ENV_BACKEND, "CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER"):
        monkeypatch.setenv(key, "")  # recorded, so enter's values are undone after the test
        monkeypatch.delenv(key)
    job = workers.Job(0, "sqlite:///x.db", "s", 1, 0, 1, None, backend="torch", gpu="3")
    workers.enter(job)
    assert os.environ[runtime.ENV_BACKEND] == "torch"
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "3"
    workers.enter(workers.Job(1, "sqlite:///x.db", "s", 1, 0, 1, None, backend="jax"))
    assert os.environ[runtime.ENV_BACKEND] == "jax"
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "3"  # no card: the environment's choice


def test_a_spawned_worker_runs_on_the_job_s_backend(private_storage: Path, tmp_path: Path) -> None:
    url = db_url(private_storage)
    preset = presets.load_preset(write_preset(tmp_path))
    study.prepare(preset, url=url, name="tiny")
    # This process runs TensorFlow; the worker must not. Its data folder is missing, so it
    # stops right after its backend has started.
    job = workers.Job(0, url, "tiny", 1, 0, 1, tmp_path / "nowhere", backend="theano")
    lines: list[str] = []
    ended = workers.spawn([job], log=lines.append)
    assert ended.errors == {
        0: "KERAS_BACKEND='theano' is not a backend this search runs on; set "
        "it to tensorflow, jax or torch."
    }
    if not importlib.util.find_spec("jax"):
        pytest.skip("JAX is not installed")
    lines.clear()
    job = workers.Job(0, url, "tiny", 1, 0, 1, tmp_path / "nowhere", backend="jax")
    ended = workers.spawn([job], log=lines.append)
    assert lines[0] == "[w0] Backend: jax on cpu (1 device)"
    assert ended.errors[0].endswith("is not a folder.")


def test_a_process_that_ended_leaves_no_pipe_or_handle_open() -> None:
    """A day of short trials replaces hundreds of processes: each one's pipe and sentinel are
    closed when it ends, not held until the search ends."""
    pool = workers._Pool(lambda line: None, prefixed=False, workers=1)
    reader, writer = multiprocessing.Pipe(duplex=False)
    job = workers.Job(0, "sqlite://", "x", total=1, seed=0, threads=None, data_dir=None)
    process = multiprocessing.get_context("spawn").Process(target=time.sleep, args=(0,))
    process.start()
    pool.processes.append(process)
    pool.readers[reader] = (job, process)
    writer.close()  # as a worker's end of its pipe closes when it exits
    pool.relay(lambda: False)
    assert pool.processes == [] and reader.closed
    with pytest.raises(ValueError, match="closed"):
        process.sentinel  # noqa: B018  (closed: the handle is let go)


def test_the_parent_stops_waiting_on_its_workers_when_an_interrupt_was_swallowed() -> None:
    """A SIGTERM whose raise Python swallowed (in a GC callback) still stops `search start`.

    The parent waits on its workers' pipes; it looks at the stop flag at least once a second.
    """
    pool = workers._Pool(lambda line: None, prefixed=False, workers=1)
    reader, writer = multiprocessing.Pipe(duplex=False)
    job = workers.Job(0, "sqlite://", "x", total=1, seed=0, threads=None, data_dir=None)
    pool.readers[reader] = (job, multiprocessing.get_context("spawn").Process())
    closer = threading.Timer(15, writer.close)  # without the check, relay would wait this long
    closer.start()
    try:
        with pytest.raises(KeyboardInterrupt), interrupt.sigterm_as_interrupt():
            swallow_an_interrupt()  # as if SIGTERM came while a GC callback ran in the parent
            started = time.monotonic()
            pool.relay(lambda: True)
        assert time.monotonic() - started < 3 * workers.POLL_SECONDS
    finally:
        closer.cancel()
        writer.close()


def test_a_pool_replaces_a_killed_process_only_a_few_times() -> None:
    """A network that gets every process training it killed must not cycle without end."""
    lines: list[str] = []
    pool = workers._Pool(lines.append, prefixed=True, workers=2)
    pool.kills[1] = workers.KILLED_LIMIT  # killed and replaced that often already
    reader, writer = multiprocessing.Pipe(duplex=False)
    job = workers.Job(1, "sqlite://", "x", total=9, seed=1, threads=None, data_dir=None)
    process = multiprocessing.get_context("spawn").Process(target=os.abort)  # SIGABRT
    process.start()
    pool.processes.append(process)
    pool.readers[reader] = (job, process)
    writer.close()
    pool.relay(lambda: True)  # trials remain
    assert pool.processes == [] and pool.ended.killed == [signal.SIGABRT]
    assert lines == [
        f"[w1] was killed by signal {signal.SIGABRT}; its trial is retried. Killed "
        f"{workers.KILLED_LIMIT + 1} times in this run, it is not replaced."
    ]
