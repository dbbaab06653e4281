"""Persistence: issued certificates, SCEP transactions, one-time passwords, CRLs and the
notification queue.

SQLAlchemy 2 models and the queries the other layers need, behind `Store` and its
`UnitOfWork`; SQLite (WAL) is the embedded default, PostgreSQL the other engine. Every
issuance is committed together with its transaction record before a reply is sent; state
changes that can race (a password used, a request decided, a certificate revoked) are
conditional UPDATEs, atomic across server processes, that move only along the transitions
of `scepd.store.states`. Rows leave as frozen records.
- database: the connection (driver errors as StoreUnavailable, units of work, the schema)
- store: the Store over it (reads, the delivery queue and leases, the audit trail)
- accounts: the console's administrator accounts and sessions
- unit_of_work: the writes of one transaction
- records, states: what rows leave as, and the states they carry
- tables, models, engine, errors: statements, schema, engine set-up, StoreUnavailable
May import: SQLAlchemy, Alembic, scepd.clock, scepd.metrics (outages counted where they are
raised) and the standard library only (it stores DER
bytes, not key objects); a data migration that rewrites stored DER may use scepd.protocol
(0002 strips challenge passwords from stored requests with the same function that strips
new ones).
"""

from sqlalchemy.exc import IntegrityError  # raised by a unit of work that lost a race

from scepd.store.errors import (
    StoreUnavailable,  # the database cannot do its part now (locked, full, unreachable)
)
from scepd.store.records import (
    AuditRecord,
    CertificateRecord,
    CrlRecord,
    OtpOutcome,
    PendingDelivery,
    TransactionRecord,
)
from scepd.store.states import CertificateState, NotificationKind, TransactionState
from scepd.store.store import Store
from scepd.store.unit_of_work import UnitOfWork

__all__ = [
    "AuditRecord",
    "CertificateRecord",
    "CertificateState",
    "CrlRecord",
    "IntegrityError",
    "NotificationKind",
    "OtpOutcome",
    "PendingDelivery",
    "Store",
    "StoreUnavailable",
    "TransactionRecord",
    "TransactionState",
    "UnitOfWork",
]
