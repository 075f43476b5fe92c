"""Where studies live: the storage URL, engine options, and a password-safe way to print it."""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from urllib.parse import quote

import optuna
import sqlalchemy
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from search.errors import SearchError, first_line

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
        "connect_args": {"connect_timeout": 10},
    }


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


@contextmanager
def exclusive(url: str, name: str, engine: sqlalchemy.Engine | None = None) -> Iterator[None]:
    """A lock called `name` that every process on this storage, on any machine, respects.

    PostgreSQL: a transaction-level advisory lock. SQLite: an exclusive flock on a file beside
    the database. Either is released when the section ends or its holder dies, so a killed
    worker never leaves it taken. `engine` reuses a storage's connection pool.
    """
    parsed = parse(url)
    path = sqlite_path(url)
    if path is not None:
        try:
            handle = open(path.with_name(path.name + ".lock"), "a")
        except OSError as e:
            raise StorageError(f"Cannot write beside the database {path}: {e.strerror}.") from None
        with handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            yield  # closing the file releases the lock
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
            connection.execute(
                sqlalchemy.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _lock_key(name)}
            )
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
        if must_exist and not path.is_file():
            raise StorageError(f"No study database at {path}; run 'search start' first.")
        if not must_exist:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise StorageError(
                    f"Cannot create the storage folder {path.parent}: {e.strerror}."
                ) from None
            if not os.access(path.parent, os.W_OK):
                raise StorageError(
                    f"The storage folder {path.parent} is not writable; fix its "
                    "permissions or pass --storage."
                )
    interval, grace = heartbeat()
    # Optuna creates any missing tables on every open, and its table creation is not safe
    # against itself. Many workers may open a fresh database at once, and a command that only
    # reads may open one that `search start` is still filling; so one process creates the
    # schema while the others wait and then find it. A folder that cannot hold the lock file
    # cannot hold a database being created either.
    lockable = path is None or os.access(path.parent, os.W_OK)
    schema_lock = exclusive(url, "schema") if lockable else nullcontext()
    try:
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
