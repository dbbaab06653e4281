"""The tables as SQLAlchemy Core: the statements of every enrollment, built once, and the
builders of the others.

Every statement of the store is Core on a Connection. The ORM's unit of work (identity map,
flush ordering, object state) cost over a quarter of an enrollment's time in-process (14.7 ->
10.6 ms without it) and bought nothing here, where rows leave as frozen records anyway.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import bindparam, insert, select

from scepd.store.models import (
    AuditEvent,
    Delivery,
    IssuedCertificate,
    Lease,
    Notification,
    OneTimePassword,
    RevocationList,
    ScepTransaction,
    UsedChallenge,
)
from scepd.store.states import CertificateState

CERTIFICATES = IssuedCertificate.__table__
TRANSACTIONS = ScepTransaction.__table__
OTPS = OneTimePassword.__table__
CRLS = RevocationList.__table__
USED_CHALLENGES = UsedChallenge.__table__
NOTIFICATIONS = Notification.__table__
DELIVERIES = Delivery.__table__
LEASES = Lease.__table__
AUDIT_EVENTS = AuditEvent.__table__

# Constructing a statement and computing its cache key cost SQLAlchemy more than SQLite takes
# to run it (the lookup: 0.17 ms built per call, 0.05 ms prebuilt).
FIND_TRANSACTIONS = (
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
FIND_CERTIFICATE = select(CERTIFICATES).where(CERTIFICATES.c.serial == bindparam("serial"))
LATEST_CRL = (
    select(CRLS).where(CRLS.c.issuer_key_id == bindparam("issuer_key_id")).order_by(CRLS.c.number.desc()).limit(1)
)
# Revoked and not yet expired: an expired certificate may leave the CRL.
REVOKED = select(CERTIFICATES).where(
    CERTIFICATES.c.issuer_key_id == bindparam("issuer_key_id"),
    CERTIFICATES.c.status == CertificateState.REVOKED,
    CERTIFICATES.c.not_after > bindparam("now"),
)
INSERT_CERTIFICATE = insert(CERTIFICATES)
INSERT_TRANSACTION = insert(TRANSACTIONS)
INSERT_NOTIFICATION = insert(NOTIFICATIONS).returning(NOTIFICATIONS.c.id)
INSERT_DELIVERY = insert(DELIVERIES)


def renewals_of(serial: str):
    """The certificates renewed from `serial`, transitively, oldest first, without `serial`.
    One recursive query; UNION (not UNION ALL) drops repeats, so even a corrupt chain that
    loops back ends."""
    chain = select(CERTIFICATES.c.serial).where(CERTIFICATES.c.renewal_of == serial).cte("chain", recursive=True)
    chain = chain.union(select(CERTIFICATES.c.serial).where(CERTIFICATES.c.renewal_of == chain.c.serial))
    return (
        select(CERTIFICATES)
        .where(CERTIFICATES.c.serial.in_(select(chain.c.serial)), CERTIFICATES.c.serial != serial)
        .order_by(CERTIFICATES.c.created_at, CERTIFICATES.c.serial)
    )


def unleased(now: dt.datetime):
    """A delivery no process holds a lease on at `now`."""
    return DELIVERIES.c.lease_until.is_(None) | (DELIVERIES.c.lease_until < now)


def due_deliveries(now: dt.datetime, limit: int):
    """Deliveries to attempt at `now`, oldest due first, with their notification's kind and payload."""
    return (
        select(DELIVERIES.c.id, DELIVERIES.c.target, DELIVERIES.c.attempts, NOTIFICATIONS.c.kind, NOTIFICATIONS.c.payload)
        .join(NOTIFICATIONS, NOTIFICATIONS.c.id == DELIVERIES.c.notification_id)
        .where(
            DELIVERIES.c.delivered_at.is_(None),
            DELIVERIES.c.gave_up.is_(False),
            DELIVERIES.c.next_attempt_at <= now,
            unleased(now),
        )
        .order_by(DELIVERIES.c.next_attempt_at)
        .limit(limit)
    )
