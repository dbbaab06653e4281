"""The Store: the reads and queue operations that need no unit of work of the caller's (the
connection, units of work and the schema are its base, `scepd.store.database.Database`).

Rows leave this module as frozen records (`scepd.store.records`): the models define the
schema (and Alembic's migrations), the statements are Core (`scepd.store.tables`).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json

from sqlalchemy import func, insert, select, update

from scepd.store import tables as t
from scepd.store.database import Database
from scepd.store.engine import serialise
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


class Store(Database):
    """What the other layers read and queue, over the `Database` connection."""

    # --- reads ----------------------------------------------------------------------------

    def find_transaction(self, transaction_id: str) -> TransactionRecord | None:
        """The newest request under `transaction_id` (what a CertPoll asks about)."""
        requests = self.find_requests(transaction_id)
        return requests[0] if requests else None

    def find_requests(self, transaction_id: str) -> list[TransactionRecord]:
        """Every request under `transaction_id`, newest first (usually one)."""
        rows = self.rows(t.FIND_TRANSACTIONS, {"transaction_id": transaction_id})
        return [from_row(TransactionRecord, row) for row in rows]

    def list_transactions(self, status: TransactionState | None = None, limit: int = 100) -> list[TransactionRecord]:
        query = select(t.TRANSACTIONS).order_by(t.TRANSACTIONS.c.created_at.desc()).limit(limit)
        if status:
            query = query.where(t.TRANSACTIONS.c.status == TransactionState(status))
        unjoined = dict.fromkeys(CERTIFICATE_FIELDS)  # the listing does not join the certificates
        return [from_row(TransactionRecord, row, **unjoined) for row in self.rows(query)]

    def find_certificate(self, serial: str) -> CertificateRecord | None:
        rows = self.rows(t.FIND_CERTIFICATE, {"serial": serial.lower()})
        return from_row(CertificateRecord, rows[0]) if rows else None

    def list_certificates(self, status: CertificateState | None = None, limit: int = 100) -> list[CertificateRecord]:
        query = select(t.CERTIFICATES).order_by(t.CERTIFICATES.c.created_at.desc()).limit(limit)
        if status:
            query = query.where(t.CERTIFICATES.c.status == CertificateState(status))
        return [from_row(CertificateRecord, row) for row in self.rows(query)]

    def certificate_count(self) -> int:
        return self.rows(select(func.count()).select_from(t.CERTIFICATES))[0][0]

    def revoked_certificates(self, issuer_key_id: str) -> list[CertificateRecord]:
        """Revoked and not yet expired (an expired certificate may leave the CRL)."""
        rows = self.rows(t.REVOKED, {"issuer_key_id": issuer_key_id, "now": self.clock.now()})
        return [from_row(CertificateRecord, row) for row in rows]

    def latest_crl(self, issuer_key_id: str) -> CrlRecord | None:
        rows = self.rows(t.LATEST_CRL, {"issuer_key_id": issuer_key_id})
        return from_row(CrlRecord, rows[0]) if rows else None

    def renewals_of(self, serial: str) -> list[CertificateRecord]:
        """Every certificate renewed from `serial`, transitively (the renewals of its renewals),
        oldest first; `serial` itself is not among them."""
        return [from_row(CertificateRecord, row) for row in self.rows(t.renewals_of(serial.lower()))]

    # --- one-time passwords ---------------------------------------------------------------

    def add_otp(self, digest: str, expires_at: dt.datetime) -> None:
        with self.begin() as connection:
            connection.execute(insert(t.OTPS), {"digest": digest, "created_at": self.clock.now(), "expires_at": expires_at})

    # --- notifications --------------------------------------------------------------------

    def notifications(self, transaction_id: str | None = None) -> list[dict]:
        query = select(t.NOTIFICATIONS).order_by(t.NOTIFICATIONS.c.id)
        if transaction_id:
            query = query.where(t.NOTIFICATIONS.c.transaction_id == transaction_id)
        return [
            {"id": n.id, "kind": n.kind, "transaction_id": n.transaction_id, "payload": json.loads(n.payload)}
            for n in self.rows(query)
        ]

    def claim_deliveries(self, limit: int = 20, lease: dt.timedelta = dt.timedelta(seconds=60)) -> list[PendingDelivery]:
        """Due deliveries, each leased to this process with a conditional UPDATE, so that
        several servers share the queue without sending anything twice."""
        now = self.clock.now()
        claimed = []
        with self.begin() as connection:
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
        with self.begin() as connection:
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
        with self.begin() as connection:
            connection.execute(update(t.DELIVERIES).where(t.DELIVERIES.c.id == delivery_id).values(**values))

    def delivery_backlog(self) -> tuple[int, dt.datetime | None]:
        """Deliveries still owed (neither delivered nor given up), and when the oldest of
        them was first due: what a scrape reports of the queue."""
        d = t.DELIVERIES.c
        query = select(func.count(), func.min(d.next_attempt_at)).where(d.delivered_at.is_(None), d.gave_up.is_(False))
        count, oldest = self.rows(query)[0]
        if oldest is not None and oldest.tzinfo is None:  # an aggregate skips the column's type
            oldest = oldest.replace(tzinfo=dt.timezone.utc)
        return count, oldest

    # --- the audit trail ------------------------------------------------------------------

    def add_audit_event(self, event: AuditRecord) -> None:
        values = dataclasses.asdict(event)
        values["target"] = values["target"][:1024]
        with self.begin() as connection:
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
        return [from_row(AuditRecord, row) for row in reversed(self.rows(query))]

    def delivery_states(self) -> list[dict]:
        return [
            {"id": d.id, "target": d.target, "attempts": d.attempts, "delivered": d.delivered_at is not None,
             "gave_up": d.gave_up, "last_error": d.last_error}
            for d in self.rows(select(t.DELIVERIES).order_by(t.DELIVERIES.c.id))
        ]
