"""The Store: engine set-up, schema, and the few queries the service needs."""

from __future__ import annotations

import contextlib
import datetime as dt
import enum
from collections.abc import Iterator
from dataclasses import dataclass

from sqlalchemy import create_engine, event, func, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from scepd.store.models import Base, IssuedCertificate, OneTimePassword, ScepTransaction


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class OtpOutcome(enum.Enum):
    ACCEPTED = "accepted"
    UNKNOWN = "unknown"
    EXPIRED = "expired"
    USED = "used"


@dataclass(frozen=True)
class IssuedRecord:
    """What the service needs back about a transaction that already succeeded."""

    transaction_id: str
    public_key_sha256: str
    certificate_der: bytes


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

    def record_issuance(
        self,
        *,
        transaction_id: str,
        message_type: str,
        public_key_sha256: str,
        serial: str,
        subject: str,
        not_before: dt.datetime,
        not_after: dt.datetime,
        sha256: str,
        der: bytes,
    ) -> None:
        now = _now()
        self.session.add(
            IssuedCertificate(
                serial=serial,
                subject=subject,
                not_before=not_before,
                not_after=not_after,
                sha256=sha256,
                der=der,
                transaction_id=transaction_id,
                status="valid",
                created_at=now,
            )
        )
        self.session.flush()  # the certificate row must exist before the transaction refers to it
        self.session.add(
            ScepTransaction(
                transaction_id=transaction_id,
                message_type=message_type,
                status="success",
                public_key_sha256=public_key_sha256,
                certificate_serial=serial,
                created_at=now,
                updated_at=now,
            )
        )


class Store:
    def __init__(self, url: str, echo: bool = False) -> None:
        self.url = url
        self.engine: Engine = create_engine(url, echo=echo)
        if self.engine.dialect.name == "sqlite":
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def create_schema(self) -> None:
        Base.metadata.create_all(self.engine)

    def check_schema(self) -> list[str]:
        """Names of the tables the code expects but the database lacks."""
        from sqlalchemy import inspect

        present = set(inspect(self.engine).get_table_names())
        return sorted(set(Base.metadata.tables) - present)

    def dispose(self) -> None:
        self.engine.dispose()

    @contextlib.contextmanager
    def unit_of_work(self) -> Iterator[UnitOfWork]:
        with self._sessions() as session, session.begin():
            yield UnitOfWork(session)

    # --- reads ----------------------------------------------------------------------------

    def find_issued(self, transaction_id: str) -> IssuedRecord | None:
        with self._sessions() as session:
            row = session.execute(
                select(ScepTransaction.public_key_sha256, IssuedCertificate.der)
                .join(IssuedCertificate, IssuedCertificate.serial == ScepTransaction.certificate_serial)
                .where(ScepTransaction.transaction_id == transaction_id, ScepTransaction.status == "success")
            ).first()
        return IssuedRecord(transaction_id, row[0], row[1]) if row else None

    def certificate_count(self) -> int:
        with self._sessions() as session:
            return session.scalar(select(func.count()).select_from(IssuedCertificate)) or 0

    def list_certificates(self, limit: int = 100) -> list[IssuedCertificate]:
        with self._sessions() as session:
            return list(
                session.scalars(select(IssuedCertificate).order_by(IssuedCertificate.created_at.desc()).limit(limit))
            )

    # --- one-time passwords ---------------------------------------------------------------

    def add_otp(self, digest: str, expires_at: dt.datetime) -> None:
        with self._sessions() as session, session.begin():
            session.add(OneTimePassword(digest=digest, created_at=_now(), expires_at=expires_at))


__all__ = ["IntegrityError", "IssuedRecord", "OtpOutcome", "Store", "UnitOfWork"]
