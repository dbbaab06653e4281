"""Tables. Times are stored as naive UTC and handed back timezone-aware."""

from __future__ import annotations

import datetime as dt
import enum

from sqlalchemy import (
    DateTime,
    ForeignKey,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from scepd.store.states import CertificateState, NotificationKind, TransactionState


class UTCDateTime(TypeDecorator):
    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are not stored; pass an aware UTC datetime")
        return value.astimezone(dt.timezone.utc).replace(tzinfo=None)

    def process_result_value(self, value, dialect):
        return value.replace(tzinfo=dt.timezone.utc) if value is not None else None


class StateString(TypeDecorator):
    """A state enum stored as its value in a VARCHAR(16), the column type every migration
    made: what is written must be a member's value, what is read comes back as the member."""

    impl = String
    cache_ok = True

    def __init__(self, states: type[enum.StrEnum]) -> None:
        super().__init__(16)
        self.states = states

    def process_bind_param(self, value, dialect):
        return None if value is None else self.states(value).value

    def process_result_value(self, value, dialect):
        return None if value is None else self.states(value)


class Base(DeclarativeBase):
    type_annotation_map = {dt.datetime: UTCDateTime}


class IssuedCertificate(Base):
    __tablename__ = "certificates"

    serial: Mapped[str] = mapped_column(String(64), primary_key=True)  # lower-case hex
    issuer_key_id: Mapped[str] = mapped_column(String(64), index=True)  # hex SKI of the issuing CA
    subject: Mapped[str] = mapped_column(String(1024))
    template: Mapped[str] = mapped_column(String(128))
    not_before: Mapped[dt.datetime]
    not_after: Mapped[dt.datetime] = mapped_column(index=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    der: Mapped[bytes] = mapped_column(LargeBinary)
    transaction_id: Mapped[str | None] = mapped_column(String(128), index=True)
    renewal_of: Mapped[str | None] = mapped_column(String(64))  # serial of the renewed certificate
    status: Mapped[CertificateState] = mapped_column(StateString(CertificateState), default=CertificateState.VALID)
    revoked_at: Mapped[dt.datetime | None]
    revocation_reason: Mapped[str | None] = mapped_column(String(32))
    created_at: Mapped[dt.datetime]


class ScepTransaction(Base):
    """One enrollment request: pending, issued or denied.

    A transactionID alone does not name a request: most clients derive it from the public
    key, so a renewal for the same key repeats the enrollment's ID. A request is the
    transactionID with its fingerprint (message type, request without challenge, signer
    certificate); the same pair again is a resend, any other one a new request."""

    __tablename__ = "transactions"
    __table_args__ = (UniqueConstraint("transaction_id", "request_sha256"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    transaction_id: Mapped[str] = mapped_column(String(128), index=True)
    request_sha256: Mapped[str] = mapped_column(String(64))
    message_type: Mapped[str] = mapped_column(String(16))
    status: Mapped[TransactionState] = mapped_column(StateString(TransactionState), index=True)
    subject: Mapped[str] = mapped_column(String(1024))
    template: Mapped[str] = mapped_column(String(128))
    public_key_sha256: Mapped[str] = mapped_column(String(64))  # the key being certified
    signer_key_sha256: Mapped[str] = mapped_column(String(64))  # the key that signed the request
    csr_der: Mapped[bytes] = mapped_column(LargeBinary)
    renewal_of: Mapped[str | None] = mapped_column(String(64))
    client: Mapped[str | None] = mapped_column(String(64))
    certificate_serial: Mapped[str | None] = mapped_column(ForeignKey("certificates.serial"))
    reason: Mapped[str | None] = mapped_column(Text)  # why it was denied
    created_at: Mapped[dt.datetime]
    updated_at: Mapped[dt.datetime]


class OneTimePassword(Base):
    __tablename__ = "one_time_passwords"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    digest: Mapped[str] = mapped_column(String(64), unique=True)  # SHA-256 of the password
    created_at: Mapped[dt.datetime]
    expires_at: Mapped[dt.datetime] = mapped_column(index=True)
    used_at: Mapped[dt.datetime | None]
    used_by_transaction: Mapped[str | None] = mapped_column(String(128))


class RevocationList(Base):
    """Every CRL issued, per CA; the newest is served. Numbers only grow (RFC 5280 5.2.3)."""

    __tablename__ = "crls"
    __table_args__ = (UniqueConstraint("issuer_key_id", "number"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    issuer_key_id: Mapped[str] = mapped_column(String(64), index=True)
    number: Mapped[int] = mapped_column(Integer)
    this_update: Mapped[dt.datetime]
    next_update: Mapped[dt.datetime]
    der: Mapped[bytes] = mapped_column(LargeBinary)


class UsedChallenge(Base):
    """MDM challenges spent, by their jti: each is accepted once, across all servers."""

    __tablename__ = "used_challenges"

    jti: Mapped[str] = mapped_column(String(128), primary_key=True)
    transaction_id: Mapped[str] = mapped_column(String(128))
    used_at: Mapped[dt.datetime]
    expires_at: Mapped[dt.datetime] = mapped_column(index=True)  # rows may be pruned after this


class Notification(Base):
    """An enrollment's outcome, to be told to the MDM and webhooks (a durable queue)."""

    __tablename__ = "notifications"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    kind: Mapped[NotificationKind] = mapped_column(StateString(NotificationKind))
    transaction_id: Mapped[str] = mapped_column(String(128), index=True)
    payload: Mapped[str] = mapped_column(Text)  # JSON
    created_at: Mapped[dt.datetime]


class Delivery(Base):
    """One notification to one target URL, retried with backoff until delivered."""

    __tablename__ = "deliveries"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    notification_id: Mapped[int] = mapped_column(ForeignKey("notifications.id"), index=True)
    target: Mapped[str] = mapped_column(String(1024))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime] = mapped_column(index=True)
    lease_until: Mapped[dt.datetime | None]
    delivered_at: Mapped[dt.datetime | None]
    gave_up: Mapped[bool] = mapped_column(default=False)
    last_error: Mapped[str | None] = mapped_column(Text)


class Lease(Base):
    """A background task that one server of those sharing the database runs at a time (the
    Intune revocation poll): held by `holder` until `until`, then free for any."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(128))
    until: Mapped[dt.datetime]


class AuditEvent(Base):
    """One administrative action (approve, revoke, an OTP or a challenge issued, keys rolled
    over): who (`actor_kind`: cli, api, console; `actor`: the OS user, the API token's ID, the
    console's account), from where (`address`: tty and host, or the peer's IP), what
    (`action` and its `target`), and the result ("ok" or an ErrorCode's value)."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    at: Mapped[dt.datetime] = mapped_column(index=True)
    actor_kind: Mapped[str] = mapped_column(String(16))
    actor: Mapped[str] = mapped_column(String(128))
    address: Mapped[str] = mapped_column(String(256))
    action: Mapped[str] = mapped_column(String(64))
    target: Mapped[str] = mapped_column(String(1024))
    result: Mapped[str] = mapped_column(String(64))
    detail: Mapped[str | None] = mapped_column(Text)


class AdminAccount(Base):
    """An operator of the console (`scepd admin add`): an Argon2id hash, never the password;
    failed sign-ins counted per account until it is locked for a while."""

    __tablename__ = "admin_accounts"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16))  # viewer | operator
    failed_attempts: Mapped[int] = mapped_column(Integer, default=0)
    locked_until: Mapped[dt.datetime | None]
    created_at: Mapped[dt.datetime]


class AdminSession(Base):
    """A signed-in console session, found by the SHA-256 of its cookie: a copy of the table
    signs nobody in."""

    __tablename__ = "admin_sessions"

    id_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    account: Mapped[str] = mapped_column(ForeignKey("admin_accounts.name", ondelete="CASCADE"), index=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    address: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[dt.datetime]
    last_seen: Mapped[dt.datetime]
