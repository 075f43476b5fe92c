"""Storage: passwords, engine options, schema creation and locks, on real PostgreSQL and SQLite."""

from __future__ import annotations

import multiprocessing
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import optuna
import pytest

from search.define import presets
from search.store import storage, study
from search.store.storage import StorageError, masked, scrub
from tests.helpers import db_url, run
from tests.postgres import Cluster, free_port


@pytest.fixture(params=["postgresql", "sqlite"])
def url(request: pytest.FixtureRequest, private_storage: Path) -> str:
    """A fresh database on each backend: an empty PostgreSQL database, or a new SQLite file."""
    if request.param == "postgresql":
        return str(request.getfixturevalue("pg_url"))
    return db_url(private_storage)


def test_masked_and_scrub_hide_the_password(monkeypatch: pytest.MonkeyPatch) -> None:
    url = "postgresql+psycopg://search:p%40ss%2Fw0rd@db.example:5432/search"
    assert masked(url) == "postgresql+psycopg://search:***@db.example:5432/search"
    text = f"login failed with p@ss/w0rd for {url}"
    assert scrub(text, url) == (
        "login failed with *** for postgresql+psycopg://search:***@db.example:5432/search"
    )
    monkeypatch.setenv("PGPASSWORD", "from-the-environment")
    assert scrub("password from-the-environment rejected") == "password *** rejected"


def test_a_refused_login_or_a_missing_server_is_one_sentence_without_the_password(
    postgres: Cluster, pg_url: str
) -> None:
    wrong = pg_url.replace(postgres.password, "not-" + postgres.password)
    nobody = pg_url.replace(f":{postgres.port}/", f":{free_port()}/")
    for url, reason in ((wrong, "password authentication failed"), (nobody, "Connection refused")):
        for command in (["start", "--preset", "demo"], ["status"], ["worker"]):
            result = run(*command, "--storage", url)
            assert result.exit_code == 1, result.output
            assert "Cannot open the storage postgresql+psycopg://search:***@" in result.output
            assert reason in result.output and "Traceback" not in result.output
            assert postgres.password not in result.output


def test_the_password_may_come_from_pgpassword(
    postgres: Cluster, pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    bare = pg_url.replace(f":{postgres.password}@", "@")
    assert postgres.password not in bare
    monkeypatch.delenv("PGPASSWORD", raising=False)
    with pytest.raises(StorageError, match="no password supplied|password authentication"):
        storage.open_storage(bare)
    monkeypatch.setenv("PGPASSWORD", postgres.password)
    rdb = storage.open_storage(bare)
    study.prepare(presets.load_preset("demo"), storage=rdb, name="from-env")
    result = run("status", "--storage", bare)
    assert result.exit_code == 0, result.output
    assert "Study 'from-env'" in result.output and postgres.password not in result.output


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


def test_pooled_connections_survive_a_server_side_disconnect(
    postgres: Cluster, pg_url: str
) -> None:
    rdb = storage.open_storage(pg_url)
    optuna.create_study(storage=rdb, study_name="kept")
    database = pg_url.rsplit("/", 1)[1]
    # What a server restart, a failover or an idle timeout does to a trial's pooled connection.
    postgres.admin(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        f"WHERE datname = '{database}' AND usename = 'search'"
    )
    assert [s.study_name for s in rdb.get_all_studies()] == ["kept"]  # pre-ping reconnected


def test_the_heartbeat_is_on_and_its_timing_comes_from_the_environment(
    private_storage: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = db_url(private_storage)
    rdb = storage.open_storage(url)
    assert (rdb.heartbeat_interval, rdb.grace_period) == (
        storage.HEARTBEAT_SECONDS,
        storage.GRACE_SECONDS,
    )
    assert rdb.get_heartbeat_stale_trial_callback() is not None
    monkeypatch.setenv(storage.ENV_HEARTBEAT, "2")
    monkeypatch.setenv(storage.ENV_GRACE, "7")
    rdb = storage.open_storage(url)
    assert (rdb.heartbeat_interval, rdb.grace_period) == (2, 7)
    for heartbeat, grace, problem in (
        ("x", "7", "whole number"),
        ("0", "7", "whole number"),
        ("5", "5", "must be longer"),
    ):
        monkeypatch.setenv(storage.ENV_HEARTBEAT, heartbeat)
        monkeypatch.setenv(storage.ENV_GRACE, grace)
        result = run("status")
        assert result.exit_code == 1 and problem in result.output, result.output


def test_sqlite_waits_out_a_lock_longer_than_its_default_timeout(private_storage: Path) -> None:
    path = private_storage / "search.db"
    rdb = storage.open_storage(f"sqlite:///{path}")
    s = optuna.create_study(storage=rdb, study_name="patient")
    blocker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    blocker.execute("BEGIN EXCLUSIVE")  # another process's long write, as seen by this one
    releaser = threading.Timer(6, blocker.rollback)  # longer than sqlite3's default 5 s
    releaser.start()
    started = time.monotonic()
    s.set_user_attr("written", True)  # waits instead of failing with "database is locked"
    assert time.monotonic() - started > 5
    releaser.join()
    assert optuna.load_study(study_name="patient", storage=rdb).user_attrs == {"written": True}


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
