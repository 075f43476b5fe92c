"""Locks: a fresh schema created once, a study's trials taken one at a time, a lock per name,
readers that never wait, and waits that say whom they wait for and end. On real PostgreSQL and
SQLite."""

from __future__ import annotations

import multiprocessing
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from search.define import presets
from search.store import storage, study
from search.store.storage import StorageError, masked


def open_at_once(
    url: str, ready: object, results: multiprocessing.Queue, must_exist: bool
) -> None:
    try:
        ready.wait()  # type: ignore[attr-defined]
        rdb = storage.open_storage(url, must_exist=must_exist)
        results.put(len(rdb.get_all_studies()))
    except BaseException as e:
        results.put(f"{type(e).__name__}: {str(e).splitlines()[0]}")


def test_many_processes_create_the_schema_of_a_fresh_database_at_once(url: str) -> None:
    # Half of them only read, as `search status` does while `search start` creates the tables:
    # Optuna creates missing tables on any open, so readers too must wait for the creator.
    path = storage.sqlite_path(url)
    if path is not None:
        path.parent.mkdir(parents=True)
        path.touch()  # the file exists, its tables not yet, as when a start has just begun
    context = multiprocessing.get_context("spawn")
    ready = context.Barrier(8)
    results: multiprocessing.Queue = context.Queue()
    processes = [
        context.Process(target=open_at_once, args=(url, ready, results, i % 2 == 1))
        for i in range(8)
    ]
    for p in processes:
        p.start()
    outcomes = [results.get(timeout=120) for _ in processes]
    for p in processes:
        p.join(timeout=30)
    assert outcomes == [0] * 8  # every process opened it; none tripped over another's tables


HOLD = """
import sys, time
from search.define import presets
from search.store import storage, study
with storage.exclusive(sys.argv[1], "trials:x"):
    print("held", flush=True)
    time.sleep(600)
"""


def test_the_trial_lock_excludes_other_processes_and_dies_with_its_holder(url: str) -> None:
    storage.open_storage(url)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, url], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        taken = threading.Event()

        def take() -> None:
            with storage.exclusive(url, "trials:x"):
                taken.set()

        threading.Thread(target=take, daemon=True).start()
        assert not taken.wait(2)  # the holder has it
        holder.send_signal(signal.SIGKILL)  # a worker dies inside its critical section
        assert taken.wait(15)  # the server (or the kernel) let the lock go
    finally:
        holder.kill()
        holder.wait()


HOLD_NAMES = """
import sys, time
from contextlib import ExitStack
from search.store import storage
with ExitStack() as stack:
    for name in sys.argv[2:]:
        stack.enter_context(storage.exclusive(sys.argv[1], name))
    print("held", flush=True)
    time.sleep(600)
"""


def hold(url: str, *names: str) -> subprocess.Popen[str]:
    """Another process that holds the locks `names` on `url` until it is killed."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_NAMES, url, *names], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None
    if not select.select([holder.stdout], [], [], 60)[0]:  # one lock file for all: a hang
        holder.kill()
        raise AssertionError(f"the holder never took {names}")
    assert holder.stdout.readline() == "held\n"
    return holder


def test_a_reader_does_not_wait_behind_a_stopped_holder_of_any_lock(url: str) -> None:
    # A `search start` or `search copy` stopped with Ctrl-Z while it holds its locks.
    rdb = storage.open_storage(url)
    study.prepare(presets.load_preset("demo"), storage=rdb, name="tiny")
    holder = hold(url, "create:tiny", "trials:tiny", "schema")
    holder.send_signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        status = subprocess.run(
            [str(Path(sys.executable).with_name("search")), "status", "--storage", url],
            capture_output=True,
            text=True,
            timeout=60,  # the bound is 600 s: a wait would time out here
        )
        assert status.returncode == 0, status.stdout + status.stderr
        assert "Study 'tiny'" in status.stdout and "Waiting" not in status.stderr
        assert time.monotonic() - started < 30
    finally:
        holder.kill()
        holder.wait()


def test_a_wait_for_a_lock_names_its_holder_and_gives_up_at_the_bound(
    url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    storage.open_storage(url)
    holder = hold(url, "create:tiny")
    try:

        def another() -> None:
            with storage.exclusive(url, "trials:tiny"):
                pass

        other = threading.Thread(target=another, daemon=True)
        other.start()
        other.join(10)
        assert not other.is_alive(), "a lock of another name waited"  # it is free at once
        monkeypatch.setenv(storage.ENV_LOCK, "2.5")
        lines: list[tuple[float, str]] = []
        started = time.monotonic()
        with pytest.raises(StorageError) as error:
            with storage.exclusive(
                url, "create:tiny", log=lambda line: lines.append((time.monotonic(), line))
            ):
                raise AssertionError("taken while held")
        gave_up = time.monotonic() - started
        who = f"{socket.gethostname()}:{holder.pid} (python)"
        ((told, line),) = lines
        assert 0.9 < told - started < 2.0, lines
        assert line.startswith(f"Waiting for the lock 'create:tiny' of {describe(url)}, held by ")
        assert who in line and line.endswith(", for up to 2.5 s ..."), line
        assert 2.5 <= gave_up < 10
        sentence = str(error.value)
        assert sentence.startswith(
            f"Gave up after 2.5 s waiting for the lock 'create:tiny' of {describe(url)}, held by "
        )
        assert who in sentence and "if that process is stopped (Ctrl-Z), resume or end it" in (
            sentence
        )
        assert "\n" not in sentence  # one sentence, and on PostgreSQL without the password
        assert ":***@" in sentence or "postgresql" not in url
        # Without a log of its own the wait is told on stderr.
        monkeypatch.setenv(storage.ENV_LOCK, "1.3")
        with pytest.raises(StorageError, match="Gave up after 1.3 s"):
            with storage.exclusive(url, "create:tiny"):
                pass
        assert "Waiting for the lock 'create:tiny'" in capsys.readouterr().err
    finally:
        holder.kill()
        holder.wait()
    with storage.exclusive(url, "create:tiny"):  # let go when its holder died
        pass


def describe(url: str) -> str:
    path = storage.sqlite_path(url)
    return str(path) if path else masked(url)


def test_the_lock_bound_must_be_a_positive_number(monkeypatch: pytest.MonkeyPatch) -> None:
    for text in ("0", "-1", "soon", "inf"):
        monkeypatch.setenv(storage.ENV_LOCK, text)
        with pytest.raises(StorageError, match="must be a positive number of seconds"):
            storage.lock_seconds()
