"""The Store: schema migrations, units of work, and the reads and queue operations that need
no unit of work of the caller's.

Rows leave this module as frozen records (`scepd.store.records`): the models define the
schema (and Alembic's migrations), the statements are Core (`scepd.store.tables`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path

from alembic import command as alembic_command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import exc as sa_exc
from sqlalchemy import func, insert, select, update
from sqlalchemy.engine import Connection

from scepd import metrics
from scepd.clock import SYSTEM_CLOCK, Clock
from scepd.store import tables as t
from scepd.store.engine import open_engine, serialise, sqlite_file
from scepd.store.errors import StoreUnavailable, unavailable_reason
from scepd.store.records import (
    CERTIFICATE_FIELDS,
    AuditRecord,
    CertificateRecord,
    CrlRecord,
    PendingDelivery,
    TransactionRecord,
    from_row,
)
from scepd.store.states import CertificateState, TransactionState
from scepd.store.unit_of_work import UnitOfWork

MIGRATIONS = Path(__file__).parent / "migrations"


class Store:
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
    def _begin(self) -> Iterator[Connection]:
        with self._available(), self.engine.begin() as connection:
            yield connection

    def _rows(self, query, parameters: dict | None = None) -> list:
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
        with self._begin() as connection:
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
        with self._begin() as connection:
            if lock is not None:
                serialise(connection, lock)
            yield UnitOfWork(connection, self.clock)

    # --- reads ----------------------------------------------------------------------------

    def find_transaction(self, transaction_id: str) -> TransactionRecord | None:
        """The newest request under `transaction_id` (what a CertPoll asks about)."""
        requests = self.find_requests(transaction_id)
        return requests[0] if requests else None

    def find_requests(self, transaction_id: str) -> list[TransactionRecord]:
        """Every request under `transaction_id`, newest first (usually one)."""
        rows = self._rows(t.FIND_TRANSACTIONS, {"transaction_id": transaction_id})
        return [from_row(TransactionRecord, row) for row in rows]

    def list_transactions(self, status: TransactionState | None = None, limit: int = 100) -> list[TransactionRecord]:
        query = select(t.TRANSACTIONS).order_by(t.TRANSACTIONS.c.created_at.desc()).limit(limit)
        if status:
            query = query.where(t.TRANSACTIONS.c.status == TransactionState(status))
        unjoined = dict.fromkeys(CERTIFICATE_FIELDS)  # the listing does not join the certificates
        return [from_row(TransactionRecord, row, **unjoined) for row in self._rows(query)]

    def find_certificate(self, serial: str) -> CertificateRecord | None:
        rows = self._rows(t.FIND_CERTIFICATE, {"serial": serial.lower()})
        return from_row(CertificateRecord, rows[0]) if rows else None

    def list_certificates(self, status: CertificateState | None = None, limit: int = 100) -> list[CertificateRecord]:
        query = select(t.CERTIFICATES).order_by(t.CERTIFICATES.c.created_at.desc()).limit(limit)
        if status:
            query = query.where(t.CERTIFICATES.c.status == CertificateState(status))
        return [from_row(CertificateRecord, row) for row in self._rows(query)]

    def certificate_count(self) -> int:
        return self._rows(select(func.count()).select_from(t.CERTIFICATES))[0][0]

    def revoked_certificates(self, issuer_key_id: str) -> list[CertificateRecord]:
        """Revoked and not yet expired (an expired certificate may leave the CRL)."""
        rows = self._rows(t.REVOKED, {"issuer_key_id": issuer_key_id, "now": self.clock.now()})
        return [from_row(CertificateRecord, row) for row in rows]

    def latest_crl(self, issuer_key_id: str) -> CrlRecord | None:
        rows = self._rows(t.LATEST_CRL, {"issuer_key_id": issuer_key_id})
        return from_row(CrlRecord, rows[0]) if rows else None

    def renewals_of(self, serial: str) -> list[CertificateRecord]:
        """Every certificate renewed from `serial`, transitively (the renewals of its renewals),
        oldest first; `serial` itself is not among them."""
        return [from_row(CertificateRecord, row) for row in self._rows(t.renewals_of(serial.lower()))]

    # --- one-time passwords ---------------------------------------------------------------

    def add_otp(self, digest: str, expires_at: dt.datetime) -> None:
        with self._begin() as connection:
            connection.execute(insert(t.OTPS), {"digest": digest, "created_at": self.clock.now(), "expires_at": expires_at})

    # --- notifications --------------------------------------------------------------------

    def notifications(self, transaction_id: str | None = None) -> list[dict]:
        query = select(t.NOTIFICATIONS).order_by(t.NOTIFICATIONS.c.id)
        if transaction_id:
            query = query.where(t.NOTIFICATIONS.c.transaction_id == transaction_id)
        return [
            {"id": n.id, "kind": n.kind, "transaction_id": n.transaction_id, "payload": json.loads(n.payload)}
            for n in self._rows(query)
        ]

    def claim_deliveries(self, limit: int = 20, lease: dt.timedelta = dt.timedelta(seconds=60)) -> list[PendingDelivery]:
        """Due deliveries, each leased to this process with a conditional UPDATE, so that
        several servers share the queue without sending anything twice."""
        now = self.clock.now()
        claimed = []
        with self._begin() as connection:
            for row in connection.execute(t.due_deliveries(now, limit)).all():
                won = connection.execute(
                    update(t.DELIVERIES).where(t.DELIVERIES.c.id == row.id, t.unleased(now)).values(lease_until=now + lease)
                ).rowcount
                if won:
                    claimed.append(PendingDelivery(row.id, row.target, row.attempts, row.kind, row.payload))
        return claimed

    def take_lease(self, name: str, holder: str, duration: dt.timedelta) -> bool:
        """Whether `holder` holds the lease `name` for `duration` from now: taken when free or
        expired, renewed when `holder` has it; False while another holder's lease lasts. Taken
        under the store's named lock, so two servers never both win it."""
        now = self.clock.now()
        with self._begin() as connection:
            serialise(connection, f"lease:{name}")
            row = connection.execute(select(t.LEASES.c.holder, t.LEASES.c.until).where(t.LEASES.c.name == name)).first()
            if row is None:
                connection.execute(insert(t.LEASES).values(name=name, holder=holder, until=now + duration))
            elif row.holder == holder or row.until <= now:
                connection.execute(update(t.LEASES).where(t.LEASES.c.name == name).values(holder=holder, until=now + duration))
            else:
                return False
        return True

    def finish_delivery(self, delivery_id: int, *, error: str | None, retry_in: dt.timedelta | None) -> None:
        now = self.clock.now()
        values: dict = {"lease_until": None, "attempts": t.DELIVERIES.c.attempts + 1}
        if error is None:
            values["delivered_at"] = now
        else:
            values["last_error"] = error[:2000]
            if retry_in is None:
                values["gave_up"] = True
            else:
                values["next_attempt_at"] = now + retry_in
        with self._begin() as connection:
            connection.execute(update(t.DELIVERIES).where(t.DELIVERIES.c.id == delivery_id).values(**values))

    def delivery_backlog(self) -> tuple[int, dt.datetime | None]:
        """Deliveries still owed (neither delivered nor given up), and when the oldest of
        them was first due: what a scrape reports of the queue."""
        d = t.DELIVERIES.c
        query = select(func.count(), func.min(d.next_attempt_at)).where(d.delivered_at.is_(None), d.gave_up.is_(False))
        count, oldest = self._rows(query)[0]
        if oldest is not None and oldest.tzinfo is None:  # an aggregate skips the column's type
            oldest = oldest.replace(tzinfo=dt.timezone.utc)
        return count, oldest

    # --- the audit trail ------------------------------------------------------------------

    def add_audit_event(self, event: AuditRecord) -> None:
        values = dataclasses.asdict(event)
        values["target"] = values["target"][:1024]
        with self._begin() as connection:
            connection.execute(insert(t.AUDIT_EVENTS), values)

    def audit_events(self, since: dt.datetime | None = None, limit: int = 1000,
                     action: str | None = None) -> list[AuditRecord]:
        """Administrative actions, oldest first; the newest `limit` of those `since` (of
        `action` only, when given)."""
        e = t.AUDIT_EVENTS.c
        query = select(t.AUDIT_EVENTS).order_by(e.id.desc()).limit(limit)
        if since is not None:
            query = query.where(e.at >= since)
        if action is not None:
            query = query.where(e.action == action)
        return [from_row(AuditRecord, row) for row in reversed(self._rows(query))]

    def delivery_states(self) -> list[dict]:
        return [
            {"id": d.id, "target": d.target, "attempts": d.attempts, "delivered": d.delivered_at is not None,
             "gave_up": d.gave_up, "last_error": d.last_error}
            for d in self._rows(select(t.DELIVERIES).order_by(t.DELIVERIES.c.id))
        ]
