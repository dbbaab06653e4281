"""The Store: engine set-up, schema, and the queries the other layers need.

Rows leave this module as frozen dataclasses (`CertificateRecord`, `TransactionRecord`), so
no caller holds an ORM object beyond its session.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import enum
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from alembic import command as alembic_command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, event, func, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

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
    certificate_der: bytes | None = None
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
    """A frozen record from an ORM row: the fields of the same names, and `given`."""
    return cls(**{f.name: getattr(row, f.name) for f in dataclasses.fields(cls) if f.name not in given}, **given)


def _certificate(row: IssuedCertificate) -> CertificateRecord:
    return _record(CertificateRecord, row)


def _transaction(row: ScepTransaction, certificate_der: bytes | None) -> TransactionRecord:
    return _record(TransactionRecord, row, certificate_der=certificate_der)


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    # WAL lets readers run beside the one writer; busy_timeout makes concurrent writers
    # (several worker processes) wait instead of failing with "database is locked".
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


class UnitOfWork:
    """One database transaction: everything done through it commits together or not at all."""

    def __init__(self, session: Session) -> None:
        self.session = session

    def consume_otp(self, digest: str, transaction_id: str, now: dt.datetime | None = None) -> OtpOutcome:
        now = now or _now()
        # A conditional UPDATE is atomic in every engine: two servers racing for the same
        # password cannot both see "unused".
        result = self.session.execute(
            update(OneTimePassword)
            .where(
                OneTimePassword.digest == digest,
                OneTimePassword.used_at.is_(None),
                OneTimePassword.expires_at > now,
            )
            .values(used_at=now, used_by_transaction=transaction_id)
        )
        if result.rowcount == 1:
            return OtpOutcome.ACCEPTED
        row = self.session.scalar(select(OneTimePassword).where(OneTimePassword.digest == digest))
        if row is None:
            return OtpOutcome.UNKNOWN
        if row.used_at is not None:
            return OtpOutcome.USED
        return OtpOutcome.EXPIRED

    def use_challenge(self, jti: str, transaction_id: str, expires_at: dt.datetime) -> bool:
        """Spend an MDM challenge; False if it was spent before (by any server process).
        INSERT ... ON CONFLICT DO NOTHING is atomic and leaves the caller's transaction usable."""
        insert = _INSERTS[self.session.get_bind().dialect.name]
        inserted = self.session.execute(
            insert(UsedChallenge)
            .values(jti=jti, transaction_id=transaction_id, used_at=_now(), expires_at=expires_at)
            .on_conflict_do_nothing()
            .returning(UsedChallenge.jti)  # rowcount is not reliable here across drivers
        ).first()
        return inserted is not None

    def add_notification(self, kind: str, transaction_id: str, payload: dict, targets: tuple[str, ...]) -> None:
        """Queue a notification for each target, in the caller's transaction: a success is
        told if and only if its certificate is recorded."""
        now = _now()
        note = Notification(kind=kind, transaction_id=transaction_id, payload=json.dumps(payload), created_at=now)
        self.session.add(note)
        if targets:
            self.session.flush()  # the deliveries need the notification's id
        for target in targets:
            self.session.add(Delivery(notification_id=note.id, target=target, attempts=0, next_attempt_at=now))

    def add_certificate(self, record: CertificateRecord) -> None:
        self.session.add(IssuedCertificate(**dataclasses.asdict(record), created_at=_now()))

    def add_transaction(self, record: TransactionRecord) -> None:
        """Insert a new transaction; a concurrent insert of the same ID raises IntegrityError
        when the unit of work commits, so that exactly one of two racing requests wins.
        (SQLAlchemy inserts the certificate first: the foreign key orders the flush.)"""
        now = _now()
        columns = dataclasses.asdict(record)
        for derived in ("certificate_der", "created_at", "updated_at"):
            del columns[derived]
        self.session.add(ScepTransaction(**columns, created_at=now, updated_at=now))

    def decide_pending(self, transaction_id: str, status: str, *, serial: str | None = None, reason: str | None = None) -> bool:
        """Move a pending transaction to issued or denied. False when it is no longer pending
        (another administrator, or another server, decided first)."""
        result = self.session.execute(
            update(ScepTransaction)
            .where(ScepTransaction.transaction_id == transaction_id, ScepTransaction.status == "pending")
            .values(status=status, certificate_serial=serial, reason=reason, updated_at=_now())
        )
        return result.rowcount == 1

    def revoke(self, serial: str, reason: str, at: dt.datetime | None = None) -> bool:
        """Revoke a valid certificate. False when it is unknown or already revoked."""
        result = self.session.execute(
            update(IssuedCertificate)
            .where(IssuedCertificate.serial == serial, IssuedCertificate.status == "valid")
            .values(status="revoked", revoked_at=at or _now(), revocation_reason=reason)
        )
        return result.rowcount == 1

    def next_crl_number(self, issuer_key_id: str) -> int:
        current = self.session.scalar(
            select(func.max(RevocationList.number)).where(RevocationList.issuer_key_id == issuer_key_id)
        )
        return (current or 0) + 1

    def add_crl(self, record: CrlRecord) -> None:
        self.session.add(
            RevocationList(
                issuer_key_id=record.issuer_key_id,
                number=record.number,
                this_update=record.this_update,
                next_update=record.next_update,
                der=record.der,
            )
        )
        self.session.flush()


class Store:
    def __init__(self, url: str, echo: bool = False) -> None:
        self.url = url
        self.engine: Engine = create_engine(url, echo=echo)
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def _alembic(self, connection) -> AlembicConfig:
        config = AlembicConfig()
        config.set_main_option("script_location", str(MIGRATIONS))
        config.attributes["connection"] = connection
        return config

    def upgrade(self, revision: str = "head") -> None:
        """Apply the migrations up to `revision` (`scepd db upgrade`; `scepd serve` at start)."""
        with self.engine.begin() as connection:
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
    def unit_of_work(self) -> Iterator[UnitOfWork]:
        with self._sessions() as session, session.begin():
            yield UnitOfWork(session)

    # --- reads ----------------------------------------------------------------------------

    def find_transaction(self, transaction_id: str) -> TransactionRecord | None:
        with self._sessions() as session:
            row = session.execute(
                select(ScepTransaction, IssuedCertificate.der)
                .outerjoin(IssuedCertificate, IssuedCertificate.serial == ScepTransaction.certificate_serial)
                .where(ScepTransaction.transaction_id == transaction_id)
            ).first()
        return _transaction(row[0], row[1]) if row else None

    def list_transactions(self, status: str | None = None, limit: int = 100) -> list[TransactionRecord]:
        query = select(ScepTransaction).order_by(ScepTransaction.created_at.desc()).limit(limit)
        if status:
            query = query.where(ScepTransaction.status == status)
        with self._sessions() as session:
            return [_transaction(row, None) for row in session.scalars(query)]

    def find_certificate(self, serial: str) -> CertificateRecord | None:
        with self._sessions() as session:
            row = session.get(IssuedCertificate, serial.lower())
            return _certificate(row) if row else None

    def list_certificates(self, status: str | None = None, limit: int = 100) -> list[CertificateRecord]:
        query = select(IssuedCertificate).order_by(IssuedCertificate.created_at.desc()).limit(limit)
        if status:
            query = query.where(IssuedCertificate.status == status)
        with self._sessions() as session:
            return [_certificate(row) for row in session.scalars(query)]

    def certificate_count(self) -> int:
        with self._sessions() as session:
            return session.scalar(select(func.count()).select_from(IssuedCertificate)) or 0

    def revoked_certificates(self, issuer_key_id: str) -> list[CertificateRecord]:
        """Revoked and not yet expired (an expired certificate may leave the CRL)."""
        with self._sessions() as session:
            rows = session.scalars(
                select(IssuedCertificate).where(
                    IssuedCertificate.issuer_key_id == issuer_key_id,
                    IssuedCertificate.status == "revoked",
                    IssuedCertificate.not_after > _now(),
                )
            )
            return [_certificate(row) for row in rows]

    def latest_crl(self, issuer_key_id: str) -> CrlRecord | None:
        with self._sessions() as session:
            row = session.scalars(
                select(RevocationList)
                .where(RevocationList.issuer_key_id == issuer_key_id)
                .order_by(RevocationList.number.desc())
                .limit(1)
            ).first()
            if row is None:
                return None
            return CrlRecord(row.issuer_key_id, row.number, row.this_update, row.next_update, row.der)

    # --- notifications --------------------------------------------------------------------

    def notifications(self, transaction_id: str | None = None) -> list[dict]:
        query = select(Notification).order_by(Notification.id)
        if transaction_id:
            query = query.where(Notification.transaction_id == transaction_id)
        with self._sessions() as session:
            return [
                {"id": n.id, "kind": n.kind, "transaction_id": n.transaction_id, "payload": json.loads(n.payload)}
                for n in session.scalars(query)
            ]

    def claim_deliveries(self, limit: int = 20, lease: dt.timedelta = dt.timedelta(seconds=60)) -> list[PendingDelivery]:
        """Due deliveries, each leased to this process with a conditional UPDATE, so that
        several servers share the queue without sending anything twice."""
        now = _now()
        claimed = []
        with self._sessions() as session, session.begin():
            due = session.execute(
                select(Delivery.id, Delivery.target, Delivery.attempts, Notification.kind, Notification.payload)
                .join(Notification, Notification.id == Delivery.notification_id)
                .where(
                    Delivery.delivered_at.is_(None),
                    Delivery.gave_up.is_(False),
                    Delivery.next_attempt_at <= now,
                    (Delivery.lease_until.is_(None)) | (Delivery.lease_until < now),
                )
                .order_by(Delivery.next_attempt_at)
                .limit(limit)
            ).all()
            for row in due:
                won = session.execute(
                    update(Delivery)
                    .where(Delivery.id == row.id, (Delivery.lease_until.is_(None)) | (Delivery.lease_until < now))
                    .values(lease_until=now + lease)
                ).rowcount
                if won:
                    claimed.append(PendingDelivery(row.id, row.target, row.attempts, row.kind, row.payload))
        return claimed

    def finish_delivery(self, delivery_id: int, *, error: str | None, retry_in: dt.timedelta | None) -> None:
        now = _now()
        with self._sessions() as session, session.begin():
            values: dict = {"lease_until": None, "attempts": Delivery.attempts + 1}
            if error is None:
                values["delivered_at"] = now
            else:
                values["last_error"] = error[:2000]
                if retry_in is None:
                    values["gave_up"] = True
                else:
                    values["next_attempt_at"] = now + retry_in
            session.execute(update(Delivery).where(Delivery.id == delivery_id).values(**values))

    def delivery_states(self) -> list[dict]:
        with self._sessions() as session:
            return [
                {"id": d.id, "target": d.target, "attempts": d.attempts, "delivered": d.delivered_at is not None,
                 "gave_up": d.gave_up, "last_error": d.last_error}
                for d in session.scalars(select(Delivery).order_by(Delivery.id))
            ]

    # --- one-time passwords ---------------------------------------------------------------

    def add_otp(self, digest: str, expires_at: dt.datetime) -> None:
        with self._sessions() as session, session.begin():
            session.add(OneTimePassword(digest=digest, created_at=_now(), expires_at=expires_at))
