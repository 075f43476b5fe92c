"""Storage faults named as what they are: a full disk, a lost connection, a lock, no rights.

Optuna wraps every SQLAlchemy error in StorageInternalError, whose message blames invalid
data ("e.g. exceeding max length"), so a full disk or a restarted server would read as a bug.
The driver's own error, further down the exception's chain, says what happened; `classify`
reads it, `storage_fault` turns it into one sentence, and `retrying` retries the faults that
pass by themselves (a lost connection, a lock) a few times before giving up.
"""

from __future__ import annotations

import errno
import sqlite3
import time
from collections.abc import Callable, Iterator

import optuna
import sqlalchemy
import tenacity

from search.errors import Log, first_line
from search.store.storage import StorageError, masked, scrub

DISK_FULL = "disk full"
CONNECTION_LOST = "connection lost"
PERMISSION_DENIED = "permission denied"
LOCKED = "locked"
TRANSIENT = frozenset({CONNECTION_LOST, LOCKED})  # waiting may fix these; never the others
ATTEMPTS = 5
FIRST_WAIT_SECONDS = 1
MAX_WAIT_SECONDS = 16

# Lower-case fragments of SQLite's and libpq's messages, most specific first.
_MESSAGES = (
    ("database or disk is full", DISK_FULL),
    ("disk i/o error", DISK_FULL),
    ("no space left on device", DISK_FULL),
    ("disk quota exceeded", DISK_FULL),
    ("attempt to write a readonly database", PERMISSION_DENIED),
    ("unable to open database file", PERMISSION_DENIED),
    ("read-only transaction", PERMISSION_DENIED),  # a standby after a failover
    ("permission denied", PERMISSION_DENIED),
    ("database is locked", LOCKED),
    ("database table is locked", LOCKED),
    ("deadlock detected", LOCKED),
    ("could not obtain lock", LOCKED),
    ("connection refused", CONNECTION_LOST),
    ("server closed the connection", CONNECTION_LOST),
    ("terminating connection", CONNECTION_LOST),
    ("consuming input failed", CONNECTION_LOST),
    ("could not receive data from server", CONNECTION_LOST),
    ("could not send data to server", CONNECTION_LOST),
    ("the connection is closed", CONNECTION_LOST),
    ("the connection is lost", CONNECTION_LOST),
    ("connection timeout expired", CONNECTION_LOST),
    ("connection reset", CONNECTION_LOST),
    ("broken pipe", CONNECTION_LOST),
    ("the database system is", CONNECTION_LOST),  # ... shutting down, starting up, in recovery
)
# PostgreSQL's SQLSTATE codes, where the server sent one.
_SQLSTATES = {
    "53100": DISK_FULL,
    "42501": PERMISSION_DENIED,
    "25006": PERMISSION_DENIED,
    "55P03": LOCKED,
    "40P01": LOCKED,
    "57P01": CONNECTION_LOST,
    "57P02": CONNECTION_LOST,
    "57P03": CONNECTION_LOST,
}
_ERRNOS = {
    errno.ENOSPC: DISK_FULL,
    errno.EDQUOT: DISK_FULL,
    errno.EACCES: PERMISSION_DENIED,
    errno.EPERM: PERMISSION_DENIED,
    errno.EROFS: PERMISSION_DENIED,
    errno.ECONNREFUSED: CONNECTION_LOST,
    errno.ECONNRESET: CONNECTION_LOST,
    errno.ECONNABORTED: CONNECTION_LOST,
    errno.EPIPE: CONNECTION_LOST,
    errno.ETIMEDOUT: CONNECTION_LOST,
}


def _chain(error: BaseException) -> Iterator[BaseException]:
    """The error, then what caused it: __cause__, __context__, and SQLAlchemy's .orig."""
    seen: set[int] = set()
    todo = [error]
    while todo:
        e = todo.pop(0)
        if id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        orig = getattr(e, "orig", None) if isinstance(e, sqlalchemy.exc.DBAPIError) else None
        context = None if e.__suppress_context__ else e.__context__  # `from None` ends it
        todo += [c for c in (orig, e.__cause__, context) if isinstance(c, BaseException)]


def _is_driver(e: BaseException) -> bool:
    return isinstance(e, sqlite3.Error) or type(e).__module__.split(".")[0] == "psycopg"


def _kind_of(e: BaseException) -> str | None:
    """What one driver error or OSError says happened, or None."""
    if isinstance(e, OSError) and e.errno in _ERRNOS:
        return _ERRNOS[e.errno]
    if not (_is_driver(e) or isinstance(e, OSError)):
        return None
    sqlstate = getattr(e, "sqlstate", None)
    if isinstance(sqlstate, str) and (sqlstate in _SQLSTATES or sqlstate.startswith("08")):
        return _SQLSTATES.get(sqlstate, CONNECTION_LOST)  # class 08: connection exception
    text = str(e).lower()
    return next((kind for fragment, kind in _MESSAGES if fragment in text), None)


def _evidence(error: BaseException) -> tuple[str, BaseException] | None:
    """The fault and the exception that shows it; only errors of a database count."""
    chain = list(_chain(error))
    database = (optuna.exceptions.StorageInternalError, sqlalchemy.exc.SQLAlchemyError)
    if not any(isinstance(e, database) or _is_driver(e) for e in chain):
        return None  # an OSError of a model file or a report is no storage fault
    for e in chain:
        kind = _kind_of(e)
        if kind is not None:
            return kind, e
    for e in chain:  # SQLAlchemy saw the connection die, though the message is new to us
        if isinstance(e, sqlalchemy.exc.DBAPIError) and e.connection_invalidated:
            return CONNECTION_LOST, getattr(e, "orig", None) or e
    return None


def classify(error: BaseException) -> str | None:
    """DISK_FULL, CONNECTION_LOST, PERMISSION_DENIED or LOCKED, or None if no storage fault."""
    found = _evidence(error)
    return found[0] if found else None


def transient(error: BaseException) -> bool:
    """Whether the fault may pass by itself, so that the same call is worth another try.

    Never an interrupt, whatever it interrupted."""
    return isinstance(error, Exception) and classify(error) in TRANSIENT


def describe(error: BaseException, url: str | None) -> str | None:
    """'connection lost (the driver's first line)', without the password; None if no fault."""
    found = _evidence(error)
    if found is None:
        return None
    kind, evidence = found
    return f"{kind} ({scrub(first_line(evidence, type(evidence).__name__), url)})"


def storage_fault(error: BaseException, url: str | None) -> StorageError | None:
    """The one sentence for a storage fault, or None if `error` is none.

    Optuna writes each change in one transaction, so a fault leaves the study as it was, and
    a lost trial is failed and retried by the heartbeat.
    """
    what = describe(error, url)
    if what is None:
        return None
    where = f"The storage {masked(url)}" if url else "The storage"
    return StorageError(
        f"{where} failed: {what}; the study is consistent: rerun the same command to resume."
    )


def retrying(log: Log, sleep: Callable[[float], None] = time.sleep) -> tenacity.Retrying:
    """Call a storage function again on a transient fault: ATTEMPTS tries in all, the waits
    doubling from FIRST_WAIT_SECONDS, one line each. A full disk or missing rights is raised
    at once: waiting does not fix them, and the user should hear of them now."""

    def tell(state: tenacity.RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0
        kind = classify(error) if error else None
        log(
            f"storage {kind}; retrying in {wait:g} s "
            f"(attempt {state.attempt_number + 1} of {ATTEMPTS})"
        )

    return tenacity.Retrying(
        stop=tenacity.stop_after_attempt(ATTEMPTS),
        wait=tenacity.wait_exponential(multiplier=FIRST_WAIT_SECONDS, max=MAX_WAIT_SECONDS),
        retry=tenacity.retry_if_exception(transient),
        before_sleep=tell,
        sleep=sleep,
        reraise=True,
    )
