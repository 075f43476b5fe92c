"""Where studies live: the storage URL, engine options, and a password-safe way to print it."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import optuna
import sqlalchemy
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

ENV_URL = "SEARCH_STORAGE"
ENV_DIR = "SEARCH_DIR"
DEFAULT_FILE = "search.db"
HEARTBEAT_SECONDS = 30
GRACE_SECONDS = 120
SQLITE_BUSY_SECONDS = 300


class StorageError(Exception):
    """The storage URL is wrong or the database cannot be reached; the message says which."""


def home() -> Path:
    """The folder for the embedded database, saved models and reports."""
    return Path(os.environ.get(ENV_DIR, "storage")).resolve()


def default_url() -> str:
    return f"sqlite:///{home() / DEFAULT_FILE}"


def resolve(url: str | None) -> str:
    """--storage, else $SEARCH_STORAGE, else the SQLite file under storage/."""
    return url or os.environ.get(ENV_URL) or default_url()


def parse(url: str) -> URL:
    try:
        parsed = make_url(url)
    except ArgumentError:
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
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<malformed URL>"


def sqlite_path(url: str) -> Path | None:
    parsed = parse(url)
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    return Path(parsed.database).resolve()


def describe(url: str) -> str:
    path = sqlite_path(url)
    return f"SQLite file {path}" if path else masked(url)


def engine_kwargs(url: URL) -> dict[str, object]:
    if url.get_backend_name() == "sqlite":
        # Several local workers share one file: wait for the lock instead of failing at once.
        return {"connect_args": {"timeout": SQLITE_BUSY_SECONDS}}
    # Trials run for minutes between writes: check connections before use and recycle old ones.
    return {"pool_pre_ping": True, "pool_size": 2, "max_overflow": 2, "pool_recycle": 1800}


def open_storage(url: str, *, must_exist: bool = False) -> optuna.storages.RDBStorage:
    """An RDB storage with heartbeats on, so trials of killed workers are failed and retried.

    With `must_exist`, a missing SQLite file is an error rather than a new empty database.
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
                raise StorageError(f"Cannot create the storage folder {path.parent}: "
                                   f"{e.strerror}.") from None
            if not os.access(path.parent, os.W_OK):
                raise StorageError(f"The storage folder {path.parent} is not writable; fix its "
                                   "permissions or pass --storage.")
    try:
        with warnings.catch_warnings():
            # Heartbeats have worked since Optuna 2.8 but are still flagged experimental.
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                parsed.render_as_string(hide_password=False),
                engine_kwargs=engine_kwargs(parsed),
                heartbeat_interval=HEARTBEAT_SECONDS,
                grace_period=GRACE_SECONDS,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(),
            )
    except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError) as e:
        # The driver's message can quote the URL; keep only its first line, without secrets.
        detail = str(e.orig if getattr(e, "orig", None) else e).splitlines()[0]
        if parsed.password:
            detail = detail.replace(parsed.password, "***")
        raise StorageError(f"Cannot open the storage {masked(url)}: {detail}") from None
