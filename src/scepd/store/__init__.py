"""Persistence: issued certificates, SCEP transactions, one-time passwords and CRLs.

SQLAlchemy 2 models and the queries the other layers need, behind `Store` and its
`UnitOfWork`; SQLite (WAL) is the embedded default and the same code is meant for PostgreSQL.
Every issuance is committed together with its transaction record before a reply is sent;
state changes that can race (a password used, a request decided, a certificate revoked) are
conditional UPDATEs, atomic across server processes.
May import: SQLAlchemy and the standard library only (it stores DER bytes, not key objects);
a data migration that rewrites stored DER may use scepd.protocol (0002 strips challenge
passwords from stored requests with the same function that strips new ones).
"""

from sqlalchemy.exc import IntegrityError  # raised by a unit of work that lost a race

from scepd.store.store import (
    CertificateRecord,
    CrlRecord,
    OtpOutcome,
    Store,
    StoreUnavailable,  # the database cannot do its part now (locked, disk full, unreachable)
    TransactionRecord,
    UnitOfWork,
)

__all__ = [
    "CertificateRecord",
    "CrlRecord",
    "IntegrityError",
    "OtpOutcome",
    "Store",
    "StoreUnavailable",
    "TransactionRecord",
    "UnitOfWork",
]
