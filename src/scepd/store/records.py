"""The frozen records rows leave the store as: the other layers never see a Row or a model."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
from dataclasses import dataclass

from scepd.store.states import CertificateState, NotificationKind, TransactionState


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
    status: CertificateState = CertificateState.VALID
    revoked_at: dt.datetime | None = None
    revocation_reason: str | None = None


@dataclass(frozen=True)
class TransactionRecord:
    transaction_id: str
    message_type: str
    status: TransactionState
    subject: str
    template: str
    public_key_sha256: str
    signer_key_sha256: str
    csr_der: bytes
    renewal_of: str | None = None
    client: str | None = None
    reason: str | None = None
    certificate_serial: str | None = None
    # What tells a resend from a new request under the same transactionID (see models).
    request_sha256: str = ""
    certificate_der: bytes | None = None
    certificate_status: CertificateState | None = None  # of the issued certificate
    certificate_not_after: dt.datetime | None = None
    created_at: dt.datetime | None = None
    updated_at: dt.datetime | None = None


# The TransactionRecord fields read from the issued certificate's row, not the transaction's.
CERTIFICATE_FIELDS = ("certificate_der", "certificate_status", "certificate_not_after")


@dataclass(frozen=True)
class PendingDelivery:
    id: int
    target: str
    attempts: int
    kind: NotificationKind
    payload: str  # JSON


@dataclass(frozen=True)
class CrlRecord:
    issuer_key_id: str
    number: int
    this_update: dt.datetime
    next_update: dt.datetime
    der: bytes


@dataclass(frozen=True)
class AuditRecord:
    """One administrative action as recorded (see models.AuditEvent)."""

    at: dt.datetime
    actor_kind: str
    actor: str
    address: str
    action: str
    target: str
    result: str
    detail: str | None = None


def from_row(cls, row, **given):
    """A frozen record from a result row: the fields of the same names, and `given`."""
    return cls(**{f.name: getattr(row, f.name) for f in dataclasses.fields(cls) if f.name not in given}, **given)
