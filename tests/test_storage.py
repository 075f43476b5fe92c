"""Storage: passwords, engine options, heartbeats and faults, on real PostgreSQL and SQLite."""

from __future__ import annotations

import errno
import logging
import socket
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path

import optuna
import pytest
import sqlalchemy
from optuna.storages._heartbeat import get_heartbeat_thread

from search.define import presets
from search.run import loop
from search.run.ending import Ending
from search.store import faults, storage, study
from search.store.storage import StorageError, masked, scrub
from search.store.trials import finished
from tests.helpers import db_url, run
from tests.postgres import Cluster, free_port


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


# Storage faults: named from the driver's error, retried when they pass, survived by heartbeats


class Relay:
    """A TCP relay to the test server, which a test cuts as a network or a restart would.

    `cut` closes every connection through it, and while it is down it takes new ones and
    closes them at once; `heal` lets them through again. With `trigger` set, the relay cuts
    itself when a client sends that text (PostgreSQL's protocol sends the SQL as it is), so a
    command loses its server at a chosen query, after it has opened the storage.
    """

    def __init__(self, port: int) -> None:
        self.target = port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.down = False
        self.trigger: bytes | None = None
        self.lock = threading.Lock()
        self.live: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, url: str) -> str:
        return url.replace(f":{self.target}/", f":{self.port}/")

    def cut(self) -> None:
        with self.lock:
            self.down = True
            sockets, self.live = self.live, []
        for s in sockets:
            _close(s)

    def heal(self) -> None:
        self.down = False

    def close(self) -> None:
        self.cut()
        self.listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:  # closed
                return
            if self.down:
                _close(client)
                continue
            server = socket.create_connection(("127.0.0.1", self.target))
            with self.lock:
                self.live += [client, server]
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                if self.trigger and self.trigger in data:
                    self.trigger = None
                    self.cut()
                    return
                sink.sendall(data)
        except OSError:
            pass
        finally:
            _close(source)
            _close(sink)


def _close(s: socket.socket) -> None:
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    s.close()


@pytest.fixture
def relay(postgres: Cluster) -> Iterator[Relay]:
    r = Relay(postgres.port)
    try:
        yield r
    finally:
        r.close()


def raised(action: Callable[[], object]) -> BaseException:
    try:
        action()
    except Exception as e:
        return e
    raise AssertionError("no error")


def test_a_read_only_full_or_locked_sqlite_file_is_named_as_such(private_storage: Path) -> None:
    path = private_storage / "search.db"
    rdb = storage.open_storage(f"sqlite:///{path}", busy_seconds=1)
    s = optuna.create_study(storage=rdb, study_name="faults")
    # Read-only: the file opened as such (root would ignore a chmod).
    read_only = optuna.storages.RDBStorage(f"sqlite:///file:{path}?mode=ro&uri=true")
    error = raised(lambda: optuna.create_study(storage=read_only, study_name="other"))
    assert isinstance(error, optuna.exceptions.StorageInternalError)
    assert faults.classify(error) == faults.PERMISSION_DENIED and not faults.transient(error)
    assert str(faults.storage_fault(error, f"sqlite:///{path}")) == (
        f"The storage sqlite:///{path} failed: permission denied (attempt to write a readonly "
        "database); the study is consistent: rerun the same command to resume."
    )
    # Locked: another connection holds the database past this one's busy timeout.
    blocker = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    blocker.execute("BEGIN EXCLUSIVE")
    error = raised(lambda: s.set_user_attr("blocked", True))
    blocker.rollback()
    assert faults.classify(error) == faults.LOCKED and faults.transient(error)
    assert "locked (database is locked)" in str(faults.storage_fault(error, None))
    # Full: the database may not grow by a page.
    pages = blocker.execute("PRAGMA page_count").fetchone()[0]
    sqlalchemy.event.listen(
        rdb.engine, "connect", lambda conn, _: conn.execute(f"PRAGMA max_page_count = {pages}")
    )
    rdb.engine.dispose()
    error = raised(lambda: s.set_user_attr("big", "x" * 100_000))
    assert faults.classify(error) == faults.DISK_FULL and not faults.transient(error)
    assert "disk full (database or disk is full)" in str(faults.storage_fault(error, None))
    # Not storage faults: a bug, and an OSError outside any database call.
    assert faults.classify(ValueError("bad")) is None
    assert faults.classify(OSError(errno.ENOSPC, "No space left on device")) is None


def test_a_lost_postgresql_connection_is_named_without_the_password(
    postgres: Cluster, pg_url: str, relay: Relay
) -> None:
    url = relay.url(pg_url)
    rdb = storage.open_storage(url)
    optuna.create_study(storage=rdb, study_name="lost")
    relay.cut()  # the server restarts, or the network between goes down
    error = raised(rdb.get_all_studies)
    assert isinstance(error, optuna.exceptions.StorageInternalError)
    assert faults.classify(error) == faults.CONNECTION_LOST and faults.transient(error)
    sentence = str(faults.storage_fault(error, url))
    assert sentence.startswith(
        f"The storage postgresql+psycopg://search:***@127.0.0.1:{relay.port}/"
    )
    assert "failed: connection lost (" in sentence and "server closed the connection" in sentence
    assert postgres.password not in sentence and "\n" not in sentence
    relay.heal()
    assert [s.study_name for s in rdb.get_all_studies()] == ["lost"]
    # The server ends the backend in the middle of a transaction.
    with rdb.engine.connect() as connection:
        pid = connection.execute(sqlalchemy.text("SELECT pg_backend_pid()")).scalar_one()
        postgres.admin(f"SELECT pg_terminate_backend({pid})")
        time.sleep(0.5)
        error = raised(lambda: connection.execute(sqlalchemy.text("SELECT 1")))
    assert faults.classify(error) == faults.CONNECTION_LOST
    # Bad data is still bad data: a key longer than Optuna's column.
    error = raised(lambda: rdb.set_study_user_attr(1, "k" * 600, 1))
    assert isinstance(error, optuna.exceptions.StorageInternalError)
    assert faults.classify(error) is None and faults.storage_fault(error, url) is None


def heartbeat_of(path: Path, trial_id: int) -> str | None:
    with closing(sqlite3.connect(path, timeout=10)) as connection:
        row = connection.execute(
            "SELECT heartbeat FROM trial_heartbeats WHERE trial_id = ?", (trial_id,)
        ).fetchone()
    return None if row is None else str(row[0])


def wait_for(condition: Callable[[], bool], seconds: float = 10) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used")
def test_a_heartbeat_that_fails_once_goes_on_beating(
    private_storage: Path, short_heartbeat: dict[str, str]
) -> None:
    path = private_storage / "search.db"
    rdb = storage.open_storage(f"sqlite:///{path}", busy_seconds=1)
    trial_id = optuna.create_study(storage=rdb, study_name="beating").ask()._trial_id
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())  # type: ignore[method-assign]
    logging.getLogger("optuna").addHandler(handler)
    beats = get_heartbeat_thread(trial_id, rdb)
    beats.start()
    try:
        wait_for(lambda: heartbeat_of(path, trial_id) is not None)
        blocker = sqlite3.connect(path, isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")  # longer than the busy timeout and the interval
        time.sleep(3)
        (stuck,) = blocker.execute(
            "SELECT heartbeat FROM trial_heartbeats WHERE trial_id = ?", (trial_id,)
        ).fetchone()
        blocker.rollback()
        wait_for(lambda: (heartbeat_of(path, trial_id) or "") > stuck)  # beating again
        assert beats._thread is not None and beats._thread.is_alive()  # type: ignore[attr-defined]
    finally:
        beats.join()
        logging.getLogger("optuna").removeHandler(handler)
    assert any(
        f"The heartbeat of trial {trial_id} was not recorded: the storage failed: locked "
        "(database is locked); the next beat, in 1 s, tries again." == line
        for line in lines
    ), lines


def test_the_loop_rides_out_a_connection_lost_between_trials(
    postgres: Cluster, pg_url: str, relay: Relay
) -> None:
    rdb = storage.open_storage(relay.url(pg_url))
    s = optuna.create_study(storage=rdb, study_name="outage")
    calls: list[int] = []

    def stop() -> None:  # asked before each trial: the server goes away after the first
        calls.append(1)
        if len(calls) == 2:
            relay.cut()
            threading.Timer(2.5, relay.heal).start()

    lines: list[str] = []
    outcome = loop.run_trials(
        s, lambda t: t.suggest_float("x", 0, 1), 3, storage=rdb, log=lines.append, stop=stop
    )
    assert outcome.ending is Ending.REACHED and finished(s) == 3
    assert "storage connection lost; retrying in 1 s (attempt 2 of 5)" in lines, lines
