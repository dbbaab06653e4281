"""What a SCEP request comes to (`Outcome`), and what the HTTP layer sends and logs of it."""

from __future__ import annotations

from dataclasses import dataclass, field

from cryptography import x509

from scepd.protocol import PkiStatus
from scepd.protocol.errors import ErrorCode, Refusal
from scepd.protocol.message import CertRepReply

CA_RA_CERT = "application/x-x509-ca-ra-cert"
CA_CERT = "application/x-x509-ca-cert"
NEXT_CA_CERT = "application/x-x509-next-ca-cert"
PKI_MESSAGE = "application/x-pki-message"


@dataclass(frozen=True)
class Outcome:
    """What one request comes to, before it is written as a CertRep."""

    reply: CertRepReply
    refusal: Refusal | None = None
    serial: str | None = None

    @classmethod
    def failure(cls, refusal: Refusal) -> "Outcome":
        reply = CertRepReply(PkiStatus.FAILURE, fail_info=refusal.fail_info, fail_info_text=refusal.fail_info_text)
        return cls(reply, refusal)

    @classmethod
    def refuse(cls, code: ErrorCode, reason: str) -> "Outcome":
        return cls.failure(Refusal(code, reason))

    @classmethod
    def success(cls, cert: x509.Certificate) -> "Outcome":
        return cls(CertRepReply(PkiStatus.SUCCESS, (cert,)), serial=format(cert.serial_number, "x"))

    @classmethod
    def crl(cls, crl: x509.CertificateRevocationList) -> "Outcome":
        return cls(CertRepReply(PkiStatus.SUCCESS, crls=(crl,)))

    @classmethod
    def pending(cls) -> "Outcome":
        return cls(CertRepReply(PkiStatus.PENDING))


@dataclass
class OperationResult:
    """The answer to one PKIOperation and what the log line says about it."""

    http_status: int
    content_type: str
    body: bytes
    transaction_id: str | None = None
    message_type: str | None = None
    status: str = "FAILURE"
    refusal: Refusal | None = None
    serial: str | None = None
    details: dict = field(default_factory=dict)
