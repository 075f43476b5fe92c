"""Where studies live: the storage URL, engine options, and a password-safe way to print it."""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import re
import socket
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from urllib.parse import quote

import optuna
import sqlalchemy
from optuna.storages._rdb import models as optuna_models
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from search.errors import Log, SearchError, first_line

ENV_URL = "SEARCH_STORAGE"
ENV_DIR = "SEARCH_DIR"
DEFAULT_FILE = "search.db"
HEARTBEAT_SECONDS = 30
GRACE_SECONDS = 120
# Both may be shortened through these variables (the tests kill workers and wait for recovery).
ENV_HEARTBEAT = "SEARCH_HEARTBEAT_SECONDS"
ENV_GRACE = "SEARCH_GRACE_SECONDS"
MAX_RETRIES = 3  # a configuration that kills its worker every time is not retried forever
SQLITE_BUSY_SECONDS = 300
# How long a lock is waited for before the command gives up and says who holds it: generous,
# since a `search copy` holds a study's creation lock for its whole run.
LOCK_SECONDS = 600
ENV_LOCK = "SEARCH_LOCK_SECONDS"
LOCK_NOTICE_SECONDS = 1.0  # a wait longer than this is told, once
LOCK_POLL_SECONDS = 0.1
# Under Optuna's logger, so its verbosity applies and worker processes relay the lines.
_logger = logging.getLogger("optuna.search.storage")


class StorageError(SearchError):
    """The storage URL is wrong or the database cannot be reached; the message says which."""


def home() -> Path:
    """The folder for the embedded database, saved models and reports."""
    return Path(os.environ.get(ENV_DIR, "storage")).resolve()


def safe_name(study_name: str) -> str:
    """A study name made safe as a file or folder name under storage/."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", study_name).strip(".") or "study"


def default_url() -> str:
    return f"sqlite:///{home() / DEFAULT_FILE}"


def resolve_url(url: str | None) -> str:
    """--storage, else $SEARCH_STORAGE, else the SQLite file under storage/."""
    return url or os.environ.get(ENV_URL) or default_url()


def parse(url: str) -> URL:
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):  # ValueError: e.g. a port that is not a number
        raise StorageError(
            "The storage URL is malformed; use sqlite:///path/to/file.db or "
            "postgresql+psycopg://user@host/dbname."
        ) from None
    backend = parsed.get_backend_name()
    if backend not in ("sqlite", "postgresql"):
        raise StorageError(
            f"Unsupported storage scheme '{parsed.drivername}'; use sqlite:/// or "
            "postgresql+psycopg://."
        )
    if backend == "postgresql" and parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")  # psycopg 3 is the driver we ship
    return parsed


def masked(url: str) -> str:
    """The URL as it may be printed: SQLAlchemy's rendering with the password as ***."""
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        return "<malformed URL>"
    if "password" in parsed.query:  # libpq also takes ?password=...
        parsed = parsed.update_query_dict({"password": "***"})
    return parsed.render_as_string(hide_password=True)


def sqlite_path(url: str) -> Path | None:
    parsed = parse(url)
    if (
        parsed.get_backend_name() != "sqlite"
        or not parsed.database
        or parsed.database == ":memory:"
    ):
        return None
    return Path(parsed.database).resolve()


def describe_url(url: str) -> str:
    path = sqlite_path(url)
    return f"SQLite file {path}" if path else masked(url)


def engine_kwargs(url: URL, busy_seconds: int = SQLITE_BUSY_SECONDS) -> dict[str, object]:
    if url.get_backend_name() == "sqlite":
        # Several local workers share one file: wait for the lock instead of failing at once.
        return {"connect_args": {"timeout": busy_seconds}}
    # Trials run for minutes between writes: check connections before use and recycle old ones.
    # An unreachable server fails within seconds instead of hanging the command.
    return {
        "pool_pre_ping": True,
        "pool_size": 2,
        "max_overflow": 2,
        "pool_recycle": 1800,
        "connect_args": {"connect_timeout": 10, **_application_name(url)},
    }


def _application_name(url: URL) -> dict[str, str]:
    # Names this process in pg_stat_activity, so a lock's waiters can say who holds it.
    return {} if "application_name" in url.query else {"application_name": holder()[:63]}


def heartbeat() -> tuple[int, int]:
    """The heartbeat interval and the grace period after which a silent trial is failed."""
    values = []
    for env, default in ((ENV_HEARTBEAT, HEARTBEAT_SECONDS), (ENV_GRACE, GRACE_SECONDS)):
        text = os.environ.get(env, "").strip()
        value = int(text) if text.isdigit() else (default if not text else 0)
        if value <= 0:
            raise StorageError(f"${env} must be a whole number of seconds, not '{text}'.")
        values.append(value)
    interval, grace = values
    if grace <= interval:
        raise StorageError(
            f"${ENV_GRACE} ({grace}) must be longer than ${ENV_HEARTBEAT} "
            f"({interval}), or live trials would be failed as stale."
        )
    return interval, grace


def scrub(text: str, url: str | None = None) -> str:
    """`text` with the database password (in the URL or in $PGPASSWORD) replaced by ***.

    For messages that did not come from `masked`: driver errors and worker processes' output.
    """
    secrets = {os.environ.get("PGPASSWORD", "")}
    if url:
        try:
            parsed = make_url(url)
        except (ArgumentError, ValueError):
            parsed = None
        for password in (parsed.password, parsed.query.get("password")) if parsed else ():
            if password and isinstance(password, str):
                secrets |= {password, quote(password, safe="")}
    for secret in sorted(secrets, key=len, reverse=True):
        if secret:
            text = text.replace(secret, "***")
    return text


def _lock_key(name: str) -> int:
    # PostgreSQL advisory locks are keyed by a signed 64-bit integer.
    digest = hashlib.sha256(f"search:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def lock_seconds() -> float:
    """How long a lock is waited for: $SEARCH_LOCK_SECONDS, else LOCK_SECONDS."""
    text = os.environ.get(ENV_LOCK, "").strip()
    try:
        value = float(text) if text else LOCK_SECONDS
    except ValueError:
        value = 0
    if not 0 < value < float("inf"):
        raise StorageError(f"${ENV_LOCK} must be a positive number of seconds, not '{text}'.")
    return value


def holder() -> str:
    """This process as a lock's waiters see it: host:pid and what it does ("search copy")."""
    argv = sys.argv or [""]
    program = Path(argv[0]).name if argv[0] not in ("", "-c", "-m") else "python"
    # Only a subcommand's name: the rest may hold a URL with a password.
    command = argv[1] if len(argv) > 1 and re.fullmatch(r"[a-z][a-z-]*", argv[1]) else ""
    return f"{socket.gethostname()}:{os.getpid()} ({' '.join(filter(None, [program, command]))})"


def lock_path(path: Path, name: str) -> Path:
    """The file beside the SQLite database `path` that holds the lock `name`: one per name,
    so that different locks (a study's creation, its trials, the schema) never wait for each
    other, as PostgreSQL's advisory locks do not."""
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return path.with_name(f"{path.name}.{safe_name(name)[:60]}.{digest}.lock")


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _wait(take: Callable[[], bool], held_by: Callable[[], str], what: str, log: Log) -> None:
    """Take a lock through `take` (True once held) within lock_seconds(), telling `log` after a
    second whom it waits for: a holder stopped with Ctrl-Z would otherwise hang it silently."""
    bound = lock_seconds()
    started = time.monotonic()
    told = False
    while not take():
        waited = time.monotonic() - started
        if waited >= bound:
            raise StorageError(
                f"Gave up after {bound:g} s waiting for {what}, held by {held_by()}; if that "
                f"process is stopped (Ctrl-Z), resume or end it, or set ${ENV_LOCK} to wait "
                "longer."
            )
        if not told and waited >= LOCK_NOTICE_SECONDS:
            log(f"Waiting for {what}, held by {held_by()}, for up to {bound:g} s ...")
            told = True
        time.sleep(LOCK_POLL_SECONDS)


@contextmanager
def _file_lock(path: Path, name: str, log: Log) -> Iterator[None]:
    """An flock on the lock file of `name`, which then names its holder for waiters."""
    try:
        handle = open(lock_path(path, name), "a+")
    except OSError as e:
        raise StorageError(f"Cannot write beside the database {path}: {e.strerror}.") from None

    def take() -> bool:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def held_by() -> str:
        handle.seek(0)
        return handle.read(200).strip() or "another process"

    with handle:
        _wait(take, held_by, f"the lock '{name}' of {path}", log)
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(holder() + "\n")
            handle.flush()
        except OSError:
            pass  # the lock holds without its note
        yield  # closing the file releases the lock


# The holder of an advisory lock: a bigint key shows in pg_locks as two 32-bit halves.
_PG_HOLDER = sqlalchemy.text(
    "SELECT l.pid, a.application_name FROM pg_locks l "
    "LEFT JOIN pg_stat_activity a ON a.pid = l.pid "
    "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
    "AND l.classid::text::bigint = :high AND l.objid::text::bigint = :low "
    "AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"
)


def _pg_wait(connection: sqlalchemy.Connection, name: str, what: str, log: Log) -> None:
    """Take the advisory lock `name` in `connection`'s transaction, as _wait does."""
    key = _lock_key(name)
    unsigned = key % 2**64

    def take() -> bool:
        query = sqlalchemy.text("SELECT pg_try_advisory_xact_lock(:key)")
        return bool(connection.execute(query, {"key": key}).scalar())

    def held_by() -> str:
        try:
            with connection.begin_nested():  # a failed look leaves the transaction usable
                row = connection.execute(
                    _PG_HOLDER, {"high": unsigned >> 32, "low": unsigned & 0xFFFFFFFF}
                ).first()
        except sqlalchemy.exc.SQLAlchemyError:
            row = None
        if row is None:
            return "another session"
        return f"{row.application_name or 'a session'} (PostgreSQL backend {row.pid})"

    _wait(take, held_by, what, log)


@contextmanager
def exclusive(
    url: str, name: str, engine: sqlalchemy.Engine | None = None, log: Log = _stderr
) -> Iterator[None]:
    """A lock called `name` that every process on this storage, on any machine, respects.

    PostgreSQL: a transaction-level advisory lock. SQLite: an exclusive flock on a file of its
    own beside the database. Either is released when the section ends or its holder dies, so a
    killed worker never leaves it taken. A wait is told to `log` after a second and ends in a
    StorageError after lock_seconds(). `engine` reuses a storage's connection pool.
    """
    parsed = parse(url)
    path = sqlite_path(url)
    if path is not None:
        with _file_lock(path, name, log):
            yield
        return
    if parsed.get_backend_name() != "postgresql":
        yield  # an in-memory SQLite database lives in one process
        return
    own = engine is None
    if engine is None:
        engine = sqlalchemy.create_engine(
            parsed,
            poolclass=sqlalchemy.pool.NullPool,
            connect_args=engine_kwargs(parsed).get("connect_args", {}),
        )
    try:
        with engine.connect() as connection:
            _pg_wait(connection, name, f"the lock '{name}' of {masked(url)}", log)
            yield  # leaving the block rolls the transaction back, which releases the lock
    finally:
        if own:
            engine.dispose()


class Storage(optuna.storages.RDBStorage):
    """Optuna's RDB storage, whose heartbeat outlives a failed beat.

    Optuna's heartbeat thread calls record_heartbeat every interval and ends at its first
    exception: one beat lost to a restarted server or a lock would silence a trial that still
    runs, and after the grace period another worker would fail it and run it again.
    """

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            super().record_heartbeat(trial_id)
        except (optuna.exceptions.StorageInternalError, sqlalchemy.exc.SQLAlchemyError) as e:
            from search.store.faults import describe  # faults imports this module

            what = describe(e, self.url) or scrub(first_line(e, type(e).__name__), self.url)
            # ERROR, not WARNING: workers keep Optuna's logger at ERROR, and a trial that
            # misses beats up to the grace period is failed; its worker's output says why.
            _logger.error(
                f"The heartbeat of trial {trial_id} was not recorded: the storage failed: "
                f"{what}; the next beat, in {self.heartbeat_interval} s, tries again."
            )


def _check_folder(path: Path, must_exist: bool) -> None:
    """The SQLite file must exist (`must_exist`), or its folder must be there and writable."""
    if must_exist and not path.is_file():
        raise StorageError(f"No study database at {path}; run 'search start' first.")
    if must_exist:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise StorageError(
            f"Cannot create the storage folder {path.parent}: {e.strerror}."
        ) from None
    if not os.access(path.parent, os.W_OK):
        raise StorageError(
            f"The storage folder {path.parent} is not writable; fix its permissions or pass "
            "--storage."
        )


def _schema_ready(url: URL, busy_seconds: int) -> bool:
    """Whether Optuna's schema is whole: every table, and the revision it stamps last.

    Opening such a schema only reads, so it needs no lock."""
    engine = sqlalchemy.create_engine(
        url,
        poolclass=sqlalchemy.pool.NullPool,
        connect_args=engine_kwargs(url, busy_seconds).get("connect_args", {}),
    )
    try:
        with engine.connect() as connection:
            tables = set(sqlalchemy.inspect(connection).get_table_names())
            if not set(optuna_models.BaseModel.metadata.tables) <= tables:
                return False
            if "alembic_version" not in tables:
                return False
            stamp = sqlalchemy.text("SELECT version_num FROM alembic_version")
            return connection.execute(stamp).first() is not None
    finally:
        engine.dispose()


def open_storage(
    url: str, *, must_exist: bool = False, busy_seconds: int = SQLITE_BUSY_SECONDS
) -> optuna.storages.RDBStorage:
    """An RDB storage with heartbeats on, so trials of killed workers are failed and retried.

    With `must_exist`, a missing SQLite file is an error rather than a new empty database.
    `busy_seconds` is how long a SQLite connection waits for another's lock before it fails.
    """
    parsed = parse(url)
    path = sqlite_path(url)
    if path is not None:
        _check_folder(path, must_exist)
    interval, grace = heartbeat()
    # Optuna creates any missing tables on every open, and its table creation is not safe
    # against itself. Many workers may open a fresh database at once, and a command that only
    # reads may open one that `search start` is still filling; so one process creates the
    # schema while the others wait and then find it. Once the schema is whole an open only
    # reads, and skips the lock: a reader never waits behind a writer that holds it. A folder
    # that cannot hold the lock file cannot hold a database being created either.
    lockable = path is None or os.access(path.parent, os.W_OK)
    try:
        fresh = (path is not None and not path.is_file()) or not _schema_ready(
            parsed, busy_seconds
        )
        schema_lock = exclusive(url, "schema") if lockable and fresh else nullcontext()
        with warnings.catch_warnings(), schema_lock:
            # Heartbeats have worked since Optuna 2.8 but are still flagged experimental.
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return Storage(
                parsed.render_as_string(hide_password=False),
                engine_kwargs=engine_kwargs(parsed, busy_seconds),
                heartbeat_interval=interval,
                grace_period=grace,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                    max_retry=MAX_RETRIES
                ),
            )
    except sqlalchemy.exc.DBAPIError as e:  # refused, unreachable, not a database, no rights
        # The driver's message can quote the URL; keep only its first line, without secrets.
        detail = scrub(first_line(e.orig or e), url)
        raise StorageError(f"Cannot open the storage {masked(url)}: {detail}") from None
