"""Creating the engine: SQLite (WAL, a private file, a busy timeout) or PostgreSQL (lock and
statement timeouts), and the cross-process lock a unit of work may take."""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path

from sqlalchemy import create_engine, event, func, select
from sqlalchemy.engine import Connection, Engine, make_url


def sqlite_file(url: str) -> Path | None:
    """The database file of a SQLite URL; None for another engine or an in-memory database."""
    parsed = make_url(url)
    database = parsed.database
    if parsed.get_backend_name() != "sqlite" or not database or database == ":memory:":
        return None
    if database.startswith("file:") or parsed.query.get("mode") == "memory":
        return None
    return Path(database)


def _create_private(path: Path) -> None:
    """Create a missing database file 0600. SQLite would create it with the umask's mode (0644
    as a rule) and gives its -wal and -shm files the database file's mode, so creating the
    file first keeps all three private. An empty file is an empty SQLite database."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError:
        pass  # it exists, or its directory does not: then SQLite's own error names it


def _sqlite_pragmas(busy_timeout: float):
    def on_connect(dbapi_connection, _record) -> None:
        cursor = dbapi_connection.cursor()
        # WAL lets readers run beside the one writer; busy_timeout makes concurrent writers
        # (several worker processes) wait instead of failing with "database is locked", but
        # only that long: then the request is refused as StoreUnavailable.
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    return on_connect


def open_engine(url: str, *, echo: bool, busy_timeout: float) -> Engine:
    """An engine whose every wait (a lock, a statement, a pooled connection) ends after
    `busy_timeout` seconds; a SQLite file is created 0600 if missing."""
    options: dict = {"echo": echo}
    file = sqlite_file(url)
    backend = make_url(url).get_backend_name()
    if backend == "sqlite" and file is None:
        pass  # in memory: one connection per thread, no pool to wait for
    elif backend == "sqlite":
        _create_private(file)
        options.update(pool_timeout=busy_timeout, connect_args={"timeout": busy_timeout})
    elif backend == "postgresql":
        milliseconds = int(busy_timeout * 1000)
        given = make_url(url).query.get("options", "")  # the URL's own options are kept
        options.update(pool_timeout=busy_timeout, connect_args={
            "connect_timeout": max(2, math.ceil(busy_timeout)),  # libpq's minimum is 2 s
            "options": f"{given} -c lock_timeout={milliseconds} -c statement_timeout={milliseconds}".strip(),
        })
    engine = create_engine(url, **options)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas(busy_timeout))
    return engine


def _advisory_lock_key(name: str) -> int:
    """A stable signed 64-bit key for PostgreSQL's advisory locks."""
    return int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "big", signed=True)


def serialise(connection: Connection, lock: str) -> None:
    """Take the lock named `lock` for the rest of the connection's transaction."""
    if connection.dialect.name == "sqlite":
        # pysqlite would begin with a deferred BEGIN before the first write, so that the
        # reads before it could see a state another process is about to change; beginning
        # IMMEDIATE takes the write lock first, and pysqlite then adds no BEGIN of its own.
        connection.exec_driver_sql("BEGIN IMMEDIATE")
    else:
        connection.execute(select(func.pg_advisory_xact_lock(_advisory_lock_key(lock))))
