"""The connection to the database every part of the store goes through: the engine, driver
errors that mean "not now" turned into StoreUnavailable, transactions and units of work, and
the schema's migrations."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from alembic import command as alembic_command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection

from scepd import metrics
from scepd.clock import SYSTEM_CLOCK, Clock
from scepd.store.engine import open_engine, serialise, sqlite_file
from scepd.store.errors import StoreUnavailable, unavailable_reason
from scepd.store.unit_of_work import UnitOfWork

MIGRATIONS = Path(__file__).parent / "migrations"


class Database:
    """`busy_timeout` (seconds, [database] busy_timeout) bounds every wait for the database:
    SQLite's lock, PostgreSQL's locks and statements, a free connection in the pool. Past it
    the call raises StoreUnavailable. `clock` stamps every row and decides what is due or
    expired."""

    def __init__(self, url: str, echo: bool = False, busy_timeout: float = 5.0, clock: Clock = SYSTEM_CLOCK) -> None:
        self.url = url
        self.busy_timeout = busy_timeout
        self.clock = clock
        self.sqlite_file = sqlite_file(url)
        self.engine = open_engine(url, echo=echo, busy_timeout=busy_timeout)

    @property
    def sqlite_files(self) -> tuple[Path, ...]:
        """The SQLite database file with its -wal and -shm companions; () for another engine."""
        if self.sqlite_file is None:
            return ()
        return (self.sqlite_file, *(self.sqlite_file.with_name(self.sqlite_file.name + s) for s in ("-wal", "-shm")))

    @contextlib.contextmanager
    def _available(self) -> Iterator[None]:
        """Driver errors that mean "not now" become StoreUnavailable; the rest pass."""
        try:
            yield
        except (sa_exc.DBAPIError, sa_exc.TimeoutError) as exc:
            reason = unavailable_reason(exc)
            if reason is None:
                raise
            metrics.STORE_UNAVAILABLE.inc()
            raise StoreUnavailable(f"{reason}, busy_timeout {self.busy_timeout:g} s") from exc

    @contextlib.contextmanager
    def begin(self) -> Iterator[Connection]:
        """One transaction on a connection of its own (committed unless it raises)."""
        with self._available(), self.engine.begin() as connection:
            yield connection

    def rows(self, query, parameters: dict | None = None) -> list:
        """The rows of one read, on a connection returned to the pool at once."""
        with self._available(), self.engine.connect() as connection:
            return connection.execute(query, parameters).all()

    # --- schema ---------------------------------------------------------------------------

    def _alembic(self, connection) -> AlembicConfig:
        config = AlembicConfig()
        config.set_main_option("script_location", str(MIGRATIONS))
        config.attributes["connection"] = connection
        return config

    def upgrade(self, revision: str = "head") -> None:
        """Apply the migrations up to `revision` (`scepd db upgrade`; `scepd serve` at start)."""
        with self.begin() as connection:
            if connection.dialect.name == "postgresql":
                # A migration may rewrite a large table: not bound by the per-request limit.
                connection.exec_driver_sql("SET LOCAL statement_timeout = 0")
            alembic_command.upgrade(self._alembic(connection), revision)

    create_schema = upgrade

    def schema_revisions(self) -> tuple[str | None, str]:
        """(the database's revision, the code's head revision)."""
        with self.engine.connect() as connection:
            current = MigrationContext.configure(connection).get_current_revision()
            head = ScriptDirectory.from_config(self._alembic(connection)).get_current_head()
        return current, head

    def check_schema(self) -> list[str]:
        """What keeps the schema from being current; empty when it is."""
        current, head = self.schema_revisions()
        if current == head:
            return []
        return [f"the database is at revision {current or 'none'}, the code needs {head}"]

    def dispose(self) -> None:
        self.engine.dispose()

    @contextlib.contextmanager
    def unit_of_work(self, lock: str | None = None) -> Iterator[UnitOfWork]:
        """One transaction. Units of work naming the same `lock` run one at a time across all
        server processes (on SQLite every locked unit excludes every other writer): SQLite's
        write lock taken as the transaction begins, PostgreSQL's transaction-scoped advisory
        lock; both are waited for at most busy_timeout."""
        with self.begin() as connection:
            if lock is not None:
                serialise(connection, lock)
            yield UnitOfWork(connection, self.clock)
