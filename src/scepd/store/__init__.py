"""Persistence: issued certificates, SCEP transactions and one-time passwords.

SQLAlchemy 2 models and the queries the other layers need, behind `Store` and its
`UnitOfWork`; SQLite (WAL) is the embedded default and the same code is meant for PostgreSQL.
Every issuance is committed together with its transaction record before a reply is sent.
May import: SQLAlchemy and the standard library only (it stores DER bytes, not key objects).
"""

from scepd.store.store import OtpOutcome, Store, UnitOfWork

__all__ = ["OtpOutcome", "Store", "UnitOfWork"]
