"""UnitOfWork: one database transaction, through which every write of a request is made."""

from __future__ import annotations

import datetime as dt
import json

from sqlalchemy import func, insert, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection

from scepd.clock import Clock
from scepd.store import tables as t
from scepd.store.records import (
    CERTIFICATE_FIELDS,
    CertificateRecord,
    CrlRecord,
    OtpOutcome,
    TransactionRecord,
    from_row,
)
from scepd.store.states import (
    CertificateState,
    NotificationKind,
    TransactionState,
    sources,
)

# Dialects with INSERT ... ON CONFLICT: the two engines scepd supports.
_INSERTS = {"sqlite": sqlite_insert, "postgresql": postgresql_insert}


class UnitOfWork:
    """One database transaction: everything done through it commits together or not at all.
    Statements run as they are called, so a conflicting insert raises IntegrityError at once
    (and the whole unit rolls back)."""

    def __init__(self, connection: Connection, clock: Clock) -> None:
        self.connection = connection
        self.clock = clock
        self._insert = _INSERTS[connection.dialect.name]

    def rollback(self) -> None:
        """Undo everything done through this unit (a refused request spends nothing): the
        unit commits nothing when its block ends. Use no further statements on it."""
        self.connection.rollback()

    def consume_otp(self, digest: str, transaction_id: str) -> OtpOutcome:
        now = self.clock.now()
        # A conditional UPDATE is atomic in every engine: two servers racing for the same
        # password cannot both see "unused".
        result = self.connection.execute(
            update(t.OTPS)
            .where(t.OTPS.c.digest == digest, t.OTPS.c.used_at.is_(None), t.OTPS.c.expires_at > now)
            .values(used_at=now, used_by_transaction=transaction_id)
        )
        if result.rowcount == 1:
            return OtpOutcome.ACCEPTED
        row = self.connection.execute(select(t.OTPS.c.used_at).where(t.OTPS.c.digest == digest)).first()
        if row is None:
            return OtpOutcome.UNKNOWN
        if row.used_at is not None:
            return OtpOutcome.USED
        return OtpOutcome.EXPIRED

    def use_challenge(self, jti: str, transaction_id: str, expires_at: dt.datetime) -> bool:
        """Spend an MDM challenge; False if it was spent before (by any server process).
        INSERT ... ON CONFLICT DO NOTHING is atomic and leaves the caller's transaction usable."""
        inserted = self.connection.execute(
            self._insert(t.USED_CHALLENGES)
            .values(jti=jti, transaction_id=transaction_id, used_at=self.clock.now(), expires_at=expires_at)
            .on_conflict_do_nothing()
            .returning(t.USED_CHALLENGES.c.jti)  # rowcount is not reliable here across drivers
        ).first()
        return inserted is not None

    def add_notification(self, kind: NotificationKind, transaction_id: str, payload: dict, targets: tuple[str, ...]) -> None:
        """Queue a notification for each target, in the caller's transaction: a success is
        told if and only if its certificate is recorded."""
        now = self.clock.now()
        values = {"kind": kind, "transaction_id": transaction_id, "payload": json.dumps(payload), "created_at": now}
        note_id = self.connection.execute(t.INSERT_NOTIFICATION, values).scalar_one()
        if targets:
            self.connection.execute(
                t.INSERT_DELIVERY,
                [{"notification_id": note_id, "target": u, "attempts": 0, "next_attempt_at": now} for u in targets],
            )

    def add_certificate(self, record: CertificateRecord) -> None:
        self.connection.execute(t.INSERT_CERTIFICATE, {**vars(record), "created_at": self.clock.now()})

    def add_transaction(self, record: TransactionRecord) -> None:
        """Insert a new transaction; a concurrent insert of the same ID raises IntegrityError,
        so that exactly one of two racing requests wins. (Its certificate, if any, must be
        added first: the transaction refers to it.)"""
        now = self.clock.now()
        columns = dict(vars(record))  # shallow: asdict() would deep-copy the DER
        for derived in (*CERTIFICATE_FIELDS, "created_at", "updated_at"):
            del columns[derived]
        self.connection.execute(t.INSERT_TRANSACTION, {**columns, "created_at": now, "updated_at": now})

    def decide_pending(self, transaction_id: str, status: TransactionState, *, serial: str | None = None,
                       reason: str | None = None) -> bool:
        """Move a pending transaction to issued or denied. False when it is no longer pending
        (another administrator, or another server, decided first). Of several requests under
        one transactionID, only the newest can be pending."""
        status = TransactionState(status)
        newest = (
            select(func.max(t.TRANSACTIONS.c.id)).where(t.TRANSACTIONS.c.transaction_id == transaction_id).scalar_subquery()
        )
        result = self.connection.execute(
            update(t.TRANSACTIONS)
            .where(t.TRANSACTIONS.c.id == newest, t.TRANSACTIONS.c.status.in_(sources(status)))
            .values(status=status, certificate_serial=serial, reason=reason, updated_at=self.clock.now())
        )
        return result.rowcount == 1

    def revoke(self, serial: str, reason: str, at: dt.datetime | None = None) -> bool:
        """Revoke a valid certificate. False when it is unknown or already revoked."""
        result = self.connection.execute(
            update(t.CERTIFICATES)
            .where(t.CERTIFICATES.c.serial == serial, t.CERTIFICATES.c.status.in_(sources(CertificateState.REVOKED)))
            .values(status=CertificateState.REVOKED, revoked_at=at or self.clock.now(), revocation_reason=reason)
        )
        return result.rowcount == 1

    def latest_crl(self, issuer_key_id: str) -> CrlRecord | None:
        row = self.connection.execute(t.LATEST_CRL, {"issuer_key_id": issuer_key_id}).first()
        return from_row(CrlRecord, row) if row else None

    def revoked_certificates(self, issuer_key_id: str) -> list[CertificateRecord]:
        """Revoked and not yet expired (an expired certificate may leave the CRL)."""
        rows = self.connection.execute(t.REVOKED, {"issuer_key_id": issuer_key_id, "now": self.clock.now()}).all()
        return [from_row(CertificateRecord, row) for row in rows]

    def next_crl_number(self, issuer_key_id: str) -> int:
        current = self.connection.scalar(select(func.max(t.CRLS.c.number)).where(t.CRLS.c.issuer_key_id == issuer_key_id))
        return (current or 0) + 1

    def add_crl(self, record: CrlRecord) -> None:
        self.connection.execute(insert(t.CRLS), vars(record))
