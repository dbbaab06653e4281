"""The console's accounts and sessions in the store: the rows `scepd admin` and the sign-in
read and write. What a sign-in decides (hashes, lock-out, expiry) is service/accounts.py's;
here are the statements, each change that can race a conditional UPDATE."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import delete, insert, select, update

from scepd.store.models import AdminAccount, AdminSession
from scepd.store.records import from_row
from scepd.store.store import Store

ACCOUNTS = AdminAccount.__table__
SESSIONS = AdminSession.__table__


@dataclass(frozen=True)
class AccountRecord:
    name: str
    password_hash: str
    role: str
    failed_attempts: int = 0
    locked_until: dt.datetime | None = None
    created_at: dt.datetime | None = None


@dataclass(frozen=True)
class SessionRecord:
    id_sha256: str
    account: str
    csrf_token: str
    address: str | None
    created_at: dt.datetime
    last_seen: dt.datetime


class AccountStore:
    """The accounts and sessions tables of `store`'s database."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def find(self, name: str) -> AccountRecord | None:
        rows = self.store.rows(select(ACCOUNTS).where(ACCOUNTS.c.name == name))
        return from_row(AccountRecord, rows[0]) if rows else None

    def all(self) -> list[AccountRecord]:
        return [from_row(AccountRecord, r) for r in self.store.rows(select(ACCOUNTS).order_by(ACCOUNTS.c.name))]

    def add(self, name: str, password_hash: str, role: str) -> bool:
        """False when an account of that name exists."""
        with self.store.begin() as db:
            if db.execute(select(ACCOUNTS.c.name).where(ACCOUNTS.c.name == name)).first():
                return False
            db.execute(insert(ACCOUNTS).values(name=name, password_hash=password_hash, role=role, failed_attempts=0,
                                               created_at=self.store.clock.now()))
        return True

    def remove(self, name: str) -> bool:
        with self.store.begin() as db:
            db.execute(delete(SESSIONS).where(SESSIONS.c.account == name))
            return db.execute(delete(ACCOUNTS).where(ACCOUNTS.c.name == name)).rowcount > 0

    def set_password(self, name: str, password_hash: str) -> bool:
        """A new password ends every session of the account and lifts a lock-out."""
        with self.store.begin() as db:
            db.execute(delete(SESSIONS).where(SESSIONS.c.account == name))
            changed = update(ACCOUNTS).where(ACCOUNTS.c.name == name)
            return db.execute(changed.values(password_hash=password_hash, failed_attempts=0, locked_until=None)).rowcount > 0

    def count_failure(self, name: str, limit: int, lock_for: dt.timedelta) -> bool:
        """One more failed sign-in; at the `limit`-th the account is locked for `lock_for`
        and counting starts again. Whether it is locked now. One increment in the database
        (not read, add, write), so failures from several servers all count."""
        now = self.store.clock.now()
        with self.store.begin() as db:
            db.execute(update(ACCOUNTS).where(ACCOUNTS.c.name == name).values(failed_attempts=ACCOUNTS.c.failed_attempts + 1))
            locking = update(ACCOUNTS).where(ACCOUNTS.c.name == name, ACCOUNTS.c.failed_attempts >= limit)
            return db.execute(locking.values(failed_attempts=0, locked_until=now + lock_for)).rowcount > 0

    def clear_failures(self, name: str) -> None:
        with self.store.begin() as db:
            db.execute(update(ACCOUNTS).where(ACCOUNTS.c.name == name).values(failed_attempts=0, locked_until=None))

    def add_session(self, record: SessionRecord) -> None:
        with self.store.begin() as db:
            db.execute(insert(SESSIONS).values(**record.__dict__))

    def find_session(self, id_sha256: str) -> SessionRecord | None:
        rows = self.store.rows(select(SESSIONS).where(SESSIONS.c.id_sha256 == id_sha256))
        return from_row(SessionRecord, rows[0]) if rows else None

    def touch_session(self, id_sha256: str, at: dt.datetime) -> None:
        with self.store.begin() as db:
            db.execute(update(SESSIONS).where(SESSIONS.c.id_sha256 == id_sha256).values(last_seen=at))

    def remove_session(self, id_sha256: str) -> None:
        with self.store.begin() as db:
            db.execute(delete(SESSIONS).where(SESSIONS.c.id_sha256 == id_sha256))

    def remove_sessions_before(self, created: dt.datetime, seen: dt.datetime) -> int:
        """Sessions past their absolute or idle expiry: they would be refused anyway."""
        with self.store.begin() as db:
            stale = delete(SESSIONS).where((SESSIONS.c.created_at < created) | (SESSIONS.c.last_seen < seen))
            return db.execute(stale).rowcount
