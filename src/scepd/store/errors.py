"""StoreUnavailable: the database cannot do its part now; and which driver errors mean that."""

from __future__ import annotations

import sqlite3

from sqlalchemy import exc as sa_exc


class StoreUnavailable(Exception):
    """The database cannot do its part now: locked by another process past the busy timeout,
    its disk full, an I/O error, its server unreachable or past its lock/statement timeout.
    Expected and transient, not a bug: callers answer with a named refusal and try again
    later; the store needs no repair once the cause is gone."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# SQLite's primary result codes (the low byte of an extended code such as SQLITE_IOERR_WRITE)
# that mean "not now" rather than a bug in a statement.
_SQLITE_UNAVAILABLE = {
    sqlite3.SQLITE_BUSY: "the database is locked by another connection",
    sqlite3.SQLITE_LOCKED: "the database is locked by another connection",
    sqlite3.SQLITE_FULL: "the database or its disk is full",
    sqlite3.SQLITE_IOERR: "disk I/O error",
    sqlite3.SQLITE_CANTOPEN: "the database file cannot be opened",
    sqlite3.SQLITE_READONLY: "the database is read-only",
    sqlite3.SQLITE_PROTOCOL: "SQLite's locking protocol failed",
}


def unavailable_reason(exc: BaseException) -> str | None:
    """Why `exc` (an error SQLAlchemy raised) means the store is unavailable, or None when it
    is some other error (a bug, a constraint)."""
    if isinstance(exc, sa_exc.TimeoutError):
        return "every database connection of this process stayed busy"
    if not isinstance(exc, sa_exc.DBAPIError):
        return None
    original = exc.orig
    code = getattr(original, "sqlite_errorcode", None)
    if code is not None:
        what = _SQLITE_UNAVAILABLE.get(code & 0xFF)
        return f"{what} ({original.sqlite_errorname})" if what else None
    if isinstance(exc, sa_exc.OperationalError):
        # PostgreSQL (psycopg): lock_timeout (55P03), statement_timeout (57014), disk full
        # (53100), a server that is down or restarting (08xxx, no SQLSTATE at all).
        state = getattr(original, "sqlstate", None)
        text = (str(original).strip().splitlines() or [type(original).__name__])[0]
        return f"the database server: {text}" + (f" (SQLSTATE {state})" if state else "")
    return None
