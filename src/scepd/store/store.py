"""The Store: engine set-up, schema, and the queries the other layers need.

Rows leave this module as frozen dataclasses (`CertificateRecord`, `TransactionRecord`, ...):
the models define the schema (and Alembic's migrations), the statements here are Core.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import enum
import hashlib
import json
import math
import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from alembic import command as alembic_command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import bindparam, create_engine, event, func, insert, select, update
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Engine, make_url

from scepd.store.models import (
    Delivery,
    IssuedCertificate,
    Notification,
    OneTimePassword,
    RevocationList,
    ScepTransaction,
    UsedChallenge,
)

MIGRATIONS = Path(__file__).parent / "migrations"

# Dialects with INSERT ... ON CONFLICT: the two engines scepd supports.
_INSERTS = {"sqlite": sqlite_insert, "postgresql": postgresql_insert}


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


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


def _advisory_lock_key(name: str) -> int:
    """A stable signed 64-bit key for PostgreSQL's advisory locks."""
    return int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "big", signed=True)


def _sqlite_file(url: str) -> Path | None:
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


class OtpOutcome(enum.Enum):
    ACCEPTED = "accepted"
    UNKNOWN = "unknown"
    EXPIRED = "expired"
    USED = "used"


@dataclass(frozen=True)
class CertificateRecord:
    serial: str
    issuer_key_id: str
    subject: str
    template: str
    not_before: dt.datetime
    not_after: dt.datetime
    sha256: str
    der: bytes
    transaction_id: str | None = None
    renewal_of: str | None = None
    status: str = "valid"
    revoked_at: dt.datetime | None = None
    revocation_reason: str | None = None


@dataclass(frozen=True)
class TransactionRecord:
    transaction_id: str
    message_type: str
    status: str  # pending | issued | denied
    subject: str
    template: str
    public_key_sha256: str
    signer_key_sha256: str
    csr_der: bytes
    renewal_of: str | None = None
    client: str | None = None
    reason: str | None = None
    certificate_serial: str | None = None
    # What tells a resend from a new request under the same transactionID (see models).
    request_sha256: str = ""
    certificate_der: bytes | None = None
    certificate_status: str | None = None  # of the issued certificate: valid | revoked
    certificate_not_after: dt.datetime | None = None
    created_at: dt.datetime | None = None
    updated_at: dt.datetime | None = None


@dataclass(frozen=True)
class PendingDelivery:
    id: int
    target: str
    attempts: int
    kind: str
    payload: str  # JSON


@dataclass(frozen=True)
class CrlRecord:
    issuer_key_id: str
    number: int
    this_update: dt.datetime
    next_update: dt.datetime
    der: bytes


def _record(cls, row, **given):
    """A frozen record from a result row: the fields of the same names, and `given`."""
    return cls(**{f.name: getattr(row, f.name) for f in dataclasses.fields(cls) if f.name not in given}, **given)


# Core tables: every statement below is SQLAlchemy Core on a Connection. The ORM's unit of
# work (identity map, flush ordering, object state) cost over a quarter of an enrollment's
# time in-process (14.7 -> 10.6 ms without it) and bought nothing here, where rows leave as
# frozen records anyway.
CERTIFICATES = IssuedCertificate.__table__
TRANSACTIONS = ScepTransaction.__table__
OTPS = OneTimePassword.__table__
CRLS = RevocationList.__table__
USED_CHALLENGES = UsedChallenge.__table__
NOTIFICATIONS = Notification.__table__
DELIVERIES = Delivery.__table__

# The statements of every enrollment, built once: constructing a statement and computing its
# cache key cost SQLAlchemy more than SQLite takes to run it (the lookup: 0.17 ms built per
# call, 0.05 ms prebuilt).
_FIND_TRANSACTIONS = (
    select(
        TRANSACTIONS,
        CERTIFICATES.c.der.label("certificate_der"),
        CERTIFICATES.c.status.label("certificate_status"),
        CERTIFICATES.c.not_after.label("certificate_not_after"),
    )
    .outerjoin(CERTIFICATES, CERTIFICATES.c.serial == TRANSACTIONS.c.certificate_serial)
    .where(TRANSACTIONS.c.transaction_id == bindparam("transaction_id"))
    .order_by(TRANSACTIONS.c.id.desc())  # the newest request first
)
_FIND_CERTIFICATE = select(CERTIFICATES).where(CERTIFICATES.c.serial == bindparam("serial"))
_LATEST_CRL = (
    select(CRLS).where(CRLS.c.issuer_key_id == bindparam("issuer_key_id")).order_by(CRLS.c.number.desc()).limit(1)
)
_REVOKED = select(CERTIFICATES).where(
    CERTIFICATES.c.issuer_key_id == bindparam("issuer_key_id"),
    CERTIFICATES.c.status == "revoked",
    CERTIFICATES.c.not_after > bindparam("now"),
)
_INSERT_CERTIFICATE = insert(CERTIFICATES)
_INSERT_TRANSACTION = insert(TRANSACTIONS)
_INSERT_NOTIFICATION = insert(NOTIFICATIONS).returning(NOTIFICATIONS.c.id)
_INSERT_DELIVERY = insert(DELIVERIES)


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


class UnitOfWork:
    """One database transaction: everything done through it commits together or not at all.
    Statements run as they are called, so a conflicting insert raises IntegrityError at once
    (and the whole unit rolls back)."""

    def __init__(self, connection: Connection) -> None:
        self.connection = connection
        self._insert = _INSERTS[connection.dialect.name]

    def consume_otp(self, digest: str, transaction_id: str, now: dt.datetime | None = None) -> OtpOutcome:
        now = now or _now()
        # A conditional UPDATE is atomic in every engine: two servers racing for the same
        # password cannot both see "unused".
        result = self.connection.execute(
            update(OTPS)
            .where(OTPS.c.digest == digest, OTPS.c.used_at.is_(None), OTPS.c.expires_at > now)
            .values(used_at=now, used_by_transaction=transaction_id)
        )
        if result.rowcount == 1:
            return OtpOutcome.ACCEPTED
        row = self.connection.execute(select(OTPS.c.used_at).where(OTPS.c.digest == digest)).first()
        if row is None:
            return OtpOutcome.UNKNOWN
        if row.used_at is not None:
            return OtpOutcome.USED
        return OtpOutcome.EXPIRED

    def use_challenge(self, jti: str, transaction_id: str, expires_at: dt.datetime) -> bool:
        """Spend an MDM challenge; False if it was spent before (by any server process).
        INSERT ... ON CONFLICT DO NOTHING is atomic and leaves the caller's transaction usable."""
        inserted = self.connection.execute(
            self._insert(USED_CHALLENGES)
            .values(jti=jti, transaction_id=transaction_id, used_at=_now(), expires_at=expires_at)
            .on_conflict_do_nothing()
            .returning(USED_CHALLENGES.c.jti)  # rowcount is not reliable here across drivers
        ).first()
        return inserted is not None

    def add_notification(self, kind: str, transaction_id: str, payload: dict, targets: tuple[str, ...]) -> None:
        """Queue a notification for each target, in the caller's transaction: a success is
        told if and only if its certificate is recorded."""
        now = _now()
        values = {"kind": kind, "transaction_id": transaction_id, "payload": json.dumps(payload), "created_at": now}
        note_id = self.connection.execute(_INSERT_NOTIFICATION, values).scalar_one()
        if targets:
            self.connection.execute(
                _INSERT_DELIVERY,
                [{"notification_id": note_id, "target": t, "attempts": 0, "next_attempt_at": now} for t in targets],
            )

    def add_certificate(self, record: CertificateRecord) -> None:
        self.connection.execute(_INSERT_CERTIFICATE, {**vars(record), "created_at": _now()})

    def add_transaction(self, record: TransactionRecord) -> None:
        """Insert a new transaction; a concurrent insert of the same ID raises IntegrityError,
        so that exactly one of two racing requests wins. (Its certificate, if any, must be
        added first: the transaction refers to it.)"""
        now = _now()
        columns = dict(vars(record))  # shallow: asdict() would deep-copy the DER
        for derived in ("certificate_der", "certificate_status", "certificate_not_after", "created_at", "updated_at"):
            del columns[derived]
        self.connection.execute(_INSERT_TRANSACTION, {**columns, "created_at": now, "updated_at": now})

    def decide_pending(self, transaction_id: str, status: str, *, serial: str | None = None, reason: str | None = None) -> bool:
        """Move a pending transaction to issued or denied. False when it is no longer pending
        (another administrator, or another server, decided first). Of several requests under
        one transactionID, only the newest can be pending."""
        newest = (
            select(func.max(TRANSACTIONS.c.id)).where(TRANSACTIONS.c.transaction_id == transaction_id).scalar_subquery()
        )
        result = self.connection.execute(
            update(TRANSACTIONS)
            .where(TRANSACTIONS.c.id == newest, TRANSACTIONS.c.status == "pending")
            .values(status=status, certificate_serial=serial, reason=reason, updated_at=_now())
        )
        return result.rowcount == 1

    def revoke(self, serial: str, reason: str, at: dt.datetime | None = None) -> bool:
        """Revoke a valid certificate. False when it is unknown or already revoked."""
        result = self.connection.execute(
            update(CERTIFICATES)
            .where(CERTIFICATES.c.serial == serial, CERTIFICATES.c.status == "valid")
            .values(status="revoked", revoked_at=at or _now(), revocation_reason=reason)
        )
        return result.rowcount == 1

    def latest_crl(self, issuer_key_id: str) -> CrlRecord | None:
        row = self.connection.execute(_LATEST_CRL, {"issuer_key_id": issuer_key_id}).first()
        return _record(CrlRecord, row) if row else None

    def revoked_certificates(self, issuer_key_id: str) -> list[CertificateRecord]:
        """Revoked and not yet expired (an expired certificate may leave the CRL)."""
        rows = self.connection.execute(_REVOKED, {"issuer_key_id": issuer_key_id, "now": _now()}).all()
        return [_record(CertificateRecord, row) for row in rows]

    def next_crl_number(self, issuer_key_id: str) -> int:
        current = self.connection.scalar(select(func.max(CRLS.c.number)).where(CRLS.c.issuer_key_id == issuer_key_id))
        return (current or 0) + 1

    def add_crl(self, record: CrlRecord) -> None:
        self.connection.execute(insert(CRLS), vars(record))


class Store:
    """`busy_timeout` (seconds, [database] busy_timeout) bounds every wait for the database:
    SQLite's lock, PostgreSQL's locks and statements, a free connection in the pool. Past it
    the call raises StoreUnavailable."""

    def __init__(self, url: str, echo: bool = False, busy_timeout: float = 5.0) -> None:
        self.url = url
        self.busy_timeout = busy_timeout
        options: dict = {"echo": echo}
        sqlite_file = _sqlite_file(url)
        backend = make_url(url).get_backend_name()
        if backend == "sqlite" and sqlite_file is None:
            pass  # in memory: one connection per thread, no pool to wait for
        elif backend == "sqlite":
            _create_private(sqlite_file)
            options.update(pool_timeout=busy_timeout, connect_args={"timeout": busy_timeout})
        elif backend == "postgresql":
            milliseconds = int(busy_timeout * 1000)
            given = make_url(url).query.get("options", "")  # the URL's own options are kept
            options.update(pool_timeout=busy_timeout, connect_args={
                "connect_timeout": max(2, math.ceil(busy_timeout)),  # libpq's minimum is 2 s
                "options": f"{given} -c lock_timeout={milliseconds} -c statement_timeout={milliseconds}".strip(),
            })
        self.sqlite_file = sqlite_file
        self.engine: Engine = create_engine(url, **options)
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas(busy_timeout))

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
            raise StoreUnavailable(f"{reason}, busy_timeout {self.busy_timeout:g} s") from exc

    @contextlib.contextmanager
    def _begin(self) -> Iterator[Connection]:
        with self._available(), self.engine.begin() as connection:
            yield connection

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
                self._serialise(connection, lock)
            yield UnitOfWork(connection)

    @staticmethod
    def _serialise(connection: Connection, lock: str) -> None:
        if connection.dialect.name == "sqlite":
            # pysqlite would begin with a deferred BEGIN before the first write, so that the
            # reads before it could see a state another process is about to change; beginning
            # IMMEDIATE takes the write lock first, and pysqlite then adds no BEGIN of its own.
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            connection.execute(select(func.pg_advisory_xact_lock(_advisory_lock_key(lock))))

    def _rows(self, query, parameters: dict | None = None) -> list:
        with self._available(), self.engine.connect() as connection:
            return connection.execute(query, parameters).all()

    # --- reads ----------------------------------------------------------------------------

    def find_transaction(self, transaction_id: str) -> TransactionRecord | None:
        """The newest request under `transaction_id` (what a CertPoll asks about)."""
        requests = self.find_requests(transaction_id)
        return requests[0] if requests else None

    def find_requests(self, transaction_id: str) -> list[TransactionRecord]:
        """Every request under `transaction_id`, newest first (usually one)."""
        rows = self._rows(_FIND_TRANSACTIONS, {"transaction_id": transaction_id})
        return [_record(TransactionRecord, row) for row in rows]

    def list_transactions(self, status: str | None = None, limit: int = 100) -> list[TransactionRecord]:
        query = select(TRANSACTIONS).order_by(TRANSACTIONS.c.created_at.desc()).limit(limit)
        if status:
            query = query.where(TRANSACTIONS.c.status == status)
        return [
            _record(TransactionRecord, row, certificate_der=None, certificate_status=None, certificate_not_after=None)
            for row in self._rows(query)
        ]

    def find_certificate(self, serial: str) -> CertificateRecord | None:
        rows = self._rows(_FIND_CERTIFICATE, {"serial": serial.lower()})
        return _record(CertificateRecord, rows[0]) if rows else None

    def list_certificates(self, status: str | None = None, limit: int = 100) -> list[CertificateRecord]:
        query = select(CERTIFICATES).order_by(CERTIFICATES.c.created_at.desc()).limit(limit)
        if status:
            query = query.where(CERTIFICATES.c.status == status)
        return [_record(CertificateRecord, row) for row in self._rows(query)]

    def certificate_count(self) -> int:
        return self._rows(select(func.count()).select_from(CERTIFICATES))[0][0]

    def revoked_certificates(self, issuer_key_id: str) -> list[CertificateRecord]:
        """Revoked and not yet expired (an expired certificate may leave the CRL)."""
        rows = self._rows(_REVOKED, {"issuer_key_id": issuer_key_id, "now": _now()})
        return [_record(CertificateRecord, row) for row in rows]

    def latest_crl(self, issuer_key_id: str) -> CrlRecord | None:
        rows = self._rows(_LATEST_CRL, {"issuer_key_id": issuer_key_id})
        return _record(CrlRecord, rows[0]) if rows else None

    # --- notifications --------------------------------------------------------------------

    def notifications(self, transaction_id: str | None = None) -> list[dict]:
        query = select(NOTIFICATIONS).order_by(NOTIFICATIONS.c.id)
        if transaction_id:
            query = query.where(NOTIFICATIONS.c.transaction_id == transaction_id)
        return [
            {"id": n.id, "kind": n.kind, "transaction_id": n.transaction_id, "payload": json.loads(n.payload)}
            for n in self._rows(query)
        ]

    def claim_deliveries(self, limit: int = 20, lease: dt.timedelta = dt.timedelta(seconds=60)) -> list[PendingDelivery]:
        """Due deliveries, each leased to this process with a conditional UPDATE, so that
        several servers share the queue without sending anything twice."""
        now = _now()
        claimed = []
        unleased = DELIVERIES.c.lease_until.is_(None) | (DELIVERIES.c.lease_until < now)
        with self._begin() as connection:
            due = connection.execute(
                select(DELIVERIES.c.id, DELIVERIES.c.target, DELIVERIES.c.attempts, NOTIFICATIONS.c.kind, NOTIFICATIONS.c.payload)
                .join(NOTIFICATIONS, NOTIFICATIONS.c.id == DELIVERIES.c.notification_id)
                .where(
                    DELIVERIES.c.delivered_at.is_(None),
                    DELIVERIES.c.gave_up.is_(False),
                    DELIVERIES.c.next_attempt_at <= now,
                    unleased,
                )
                .order_by(DELIVERIES.c.next_attempt_at)
                .limit(limit)
            ).all()
            for row in due:
                won = connection.execute(
                    update(DELIVERIES).where(DELIVERIES.c.id == row.id, unleased).values(lease_until=now + lease)
                ).rowcount
                if won:
                    claimed.append(PendingDelivery(row.id, row.target, row.attempts, row.kind, row.payload))
        return claimed

    def finish_delivery(self, delivery_id: int, *, error: str | None, retry_in: dt.timedelta | None) -> None:
        now = _now()
        values: dict = {"lease_until": None, "attempts": DELIVERIES.c.attempts + 1}
        if error is None:
            values["delivered_at"] = now
        else:
            values["last_error"] = error[:2000]
            if retry_in is None:
                values["gave_up"] = True
            else:
                values["next_attempt_at"] = now + retry_in
        with self._begin() as connection:
            connection.execute(update(DELIVERIES).where(DELIVERIES.c.id == delivery_id).values(**values))

    def delivery_states(self) -> list[dict]:
        return [
            {"id": d.id, "target": d.target, "attempts": d.attempts, "delivered": d.delivered_at is not None,
             "gave_up": d.gave_up, "last_error": d.last_error}
            for d in self._rows(select(DELIVERIES).order_by(DELIVERIES.c.id))
        ]

    # --- one-time passwords ---------------------------------------------------------------

    def add_otp(self, digest: str, expires_at: dt.datetime) -> None:
        with self._begin() as connection:
            connection.execute(insert(OTPS), {"digest": digest, "created_at": _now(), "expires_at": expires_at})

    # --- renewal chains -------------------------------------------------------------------

    def renewals_of(self, serial: str) -> list[CertificateRecord]:
        """Every certificate renewed from `serial`, transitively (the renewals of its renewals),
        oldest first; `serial` itself is not among them. One recursive query; UNION (not UNION
        ALL) drops repeats, so even a corrupt chain that loops back ends."""
        chain = select(CERTIFICATES.c.serial).where(CERTIFICATES.c.renewal_of == serial.lower()).cte("chain", recursive=True)
        chain = chain.union(select(CERTIFICATES.c.serial).where(CERTIFICATES.c.renewal_of == chain.c.serial))
        query = (
            select(CERTIFICATES)
            .where(CERTIFICATES.c.serial.in_(select(chain.c.serial)), CERTIFICATES.c.serial != serial.lower())
            .order_by(CERTIFICATES.c.created_at, CERTIFICATES.c.serial)
        )
        return [_record(CertificateRecord, row) for row in self._rows(query)]
